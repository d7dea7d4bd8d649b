"""Consume a BPF ring buffer in batches (libbpf's ``ring_buffer__*``).

The per-record C callback only copies the record's bytes into a list; decoding happens afterwards, a
batch at a time, so the Python cost per event stays small. Each poll is bounded by ``budget`` records:
libbpf 1.1's ``ring_buffer__poll()`` may otherwise never return while the producer outpaces Python
(PLATFORM.md trap 3). Stopping is done the documented way, by returning a negative value from the
callback; the record that returned it has already been consumed and is kept.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from bpf.libbpf import RINGBUF_SAMPLE_FN, LibbpfError, call, call_ptr, lib
from bpf.object import Map, MapType

_BUDGET_REACHED = -1024  # returned by the callback; no libbpf errno has this value


class RingBuffer:
    """A consumer of one RINGBUF map. ``event_type`` (a ctypes struct) decodes records, else bytes."""

    def __init__(self, ring: Map, event_type: type | None = None, budget: int = 4096) -> None:
        if ring.type != MapType.RINGBUF:
            raise TypeError(f"map {ring.name!r} is a {ring.type.name}, not a RINGBUF")
        self.map, self.event_type, self.budget = ring, event_type, budget
        self._records: list[bytes] = []
        self._callback = RINGBUF_SAMPLE_FN(self._on_record)  # kept alive as long as the handle
        self._handle = call_ptr(
            lib.ring_buffer__new,
            ring.fd,
            self._callback,
            None,
            None,
            what=f"ring buffer {ring.name}",
        )

    def _on_record(self, _ctx: int, data: int, size: int) -> int:
        self._records.append(ctypes.string_at(data, size))
        return _BUDGET_REACHED if len(self._records) >= self.budget else 0

    def _take(self) -> list:
        records, self._records = self._records, []
        if self.event_type is None:
            return records
        size = ctypes.sizeof(self.event_type)
        return [self.event_type.from_buffer_copy(r[:size]) for r in records]

    def _run(self, fn: Callable[..., int], *args: int) -> list:
        ret = fn(self._handle, *args)
        if ret < 0 and ret != _BUDGET_REACHED:
            self._records.clear()
            raise LibbpfError(-ret, f"ring buffer {self.map.name}")
        return self._take()

    def poll(self, timeout_ms: int = 100) -> list:
        """Wait up to ``timeout_ms`` for records; return at most ``budget`` of them."""
        return self._run(lib.ring_buffer__poll, timeout_ms)

    def drain(self) -> list:
        """Everything available now, without waiting (in ``budget``-sized steps)."""
        events = []
        while True:
            batch = self._run(lib.ring_buffer__consume)
            events.extend(batch)
            if len(batch) < self.budget:
                return events

    def fileno(self) -> int:
        """An epoll fd that becomes readable when records arrive (for select/selectors)."""
        return call(lib.ring_buffer__epoll_fd, self._handle, what="ring buffer epoll fd")

    def close(self) -> None:
        if self._handle:
            lib.ring_buffer__free(self._handle)
            self._handle = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
