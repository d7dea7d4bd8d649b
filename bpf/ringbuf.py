"""Consume a BPF ring buffer: decoded in batches (``RingBuffer``), or forwarded raw (``RingReader``).

The per-record C callback only copies the record's bytes into a list; decoding happens afterwards, a
batch at a time, so the Python cost per event stays small. Each poll is bounded by ``budget`` records:
libbpf 1.1's ``ring_buffer__poll()`` may otherwise never return while the producer outpaces Python
(PLATFORM.md trap 3). Stopping is done the documented way, by returning a negative value from the
callback; the record that returned it has already been consumed and is kept.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable, Iterator

from bpf.libbpf import RINGBUF_SAMPLE_FN, LibbpfError, call, call_ptr, lib
from bpf.object import Map, MapType

_BUDGET_REACHED = -1024  # returned by the callback; no libbpf errno has this value
_U32, _U64 = struct.Struct("=I"), struct.Struct("=Q")


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


class RingReader:
    """A RINGBUF map's memory read directly from Python, for forwarding records at high rates.

    ``RingBuffer`` pays a ctypes callback per record (~1.8 us: PLATFORM.md); forwarding frames (the
    VXLAN pipeline's ring-buffer mode) cannot afford that. This maps the ring as libbpf does: the
    consumer page read-write, the producer page and the data area (mapped twice in a row, so a
    record that wraps is contiguous) read-only; ``records()`` yields each committed record as a
    memoryview into the ring, and hands the space back to the producer when the iteration ends.
    Use one consumer per ring, never both classes on the same map at once.
    """

    _BUSY, _DISCARD, _HEADER = 1 << 31, 1 << 30, 8

    def __init__(self, ring: Map) -> None:
        if ring.type != MapType.RINGBUF:
            raise TypeError(f"map {ring.name!r} is a {ring.type.name}, not a RINGBUF")
        self.map, self.size = ring, ring.max_entries
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(ring.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(
            ring.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._producer)[page:]
        self._mask = self.size - 1

    def records(self, budget: int = 1 << 16) -> Iterator[memoryview]:
        """Committed records, oldest first, at most ``budget``; valid until the next iteration step
        after the last one (their space is released when the generator finishes)."""
        consumer = _U64.unpack_from(self._consumer)[0]
        producer = _U64.unpack_from(self._producer)[0]
        data, mask, header = self._data, self._mask, self._HEADER
        try:
            while consumer < producer and budget:
                start = consumer & mask
                length = _U32.unpack_from(data, start)[0]
                if length & self._BUSY:
                    break  # reserved, not yet submitted: everything after it waits too
                consumer += (length & ~self._DISCARD) + header + 7 & ~7
                if not length & self._DISCARD:
                    budget -= 1
                    yield data[start + header : start + header + length]
        finally:
            _U64.pack_into(self._consumer, 0, consumer)

    def fileno(self) -> int:
        """The map's fd: readable (for select/poll) when records are waiting."""
        return self.map.fd

    def close(self) -> None:
        self._data.release()
        self._producer.close()
        self._consumer.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
