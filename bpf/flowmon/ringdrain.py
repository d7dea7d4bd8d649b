"""The flow-metrics ring reader: the ``records`` ring's flow records added up per flow, in C.

```python
with RingDrain(obj.maps["records"], obj.struct("flow_record"), keys) as ring:
    ring.drain()               # the records committed so far, added to the reader's table
    ring.flows()               # every flow the records added up to (struct flowmon_ringdrain_flow)
    ring.take(4, raw_key)      # one flow out of the table
```

The reader is C (``ringdrain.c``, ``libflowmon_ringdrain.so``, built ahead of time by ``bpf.build``):
it reads the ring's memory as libbpf does and adds each record to a hash table of its own, so the
interpreter takes no part in a record. The record's layout is read here from the object's BTF and
handed to it; nothing of it is written twice. ``drain`` releases the GIL (a ctypes call does), and
every call takes the reader's lock: one thread may drain while another reads the flows or takes
some; ``close`` only once no other thread can call.

Not for: merging with the kernel's tables or turning keys into flows (``bpf.flowmon.flowmon``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from ctypes import POINTER, c_bool, c_int, c_long, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p
from pathlib import Path

from bpf.build import c_define, require_native
from bpf.flowmon.model import TCP_FLAG_FIN, TCP_FLAG_SYN
from bpf.object import Map, MapType

__all__ = ["DrainedFlow", "RingDrain"]

LIBRARY = "bpf/flowmon/libflowmon_ringdrain.so"
_HEADER = Path(__file__).with_name("ringdrain.h")
KEY_MAX = c_define(_HEADER, "FLOWMON_RINGDRAIN_KEY_MAX")
_EVERYTHING = (1 << 64) - 1  # a budget: what the producer had committed when the call began


class _Field(ctypes.Structure):
    """``struct flowmon_ringdrain_field`` (ringdrain.h)."""

    _fields_ = [("offset", c_uint32), ("size", c_uint32)]


_RECORD_FIELDS = ("ts_ns", "packets", "bytes", "ip_version", "tcp_flags")


class _Layout(ctypes.Structure):
    """``struct flowmon_ringdrain_layout`` (ringdrain.h)."""

    _fields_ = [
        ("record_size", c_uint32),
        ("key_offset", c_uint32),
        ("key4_size", c_uint32),
        ("key6_size", c_uint32),
        *((name, _Field) for name in _RECORD_FIELDS),
        ("syn", c_uint32),
        ("fin", c_uint32),
    ]


class DrainedFlow(ctypes.Structure):
    """``struct flowmon_ringdrain_flow`` (ringdrain.h): struct flow_stats's names, so a flow adds
    up as a kernel entry does."""

    _fields_ = [
        ("packets", c_uint64),
        ("bytes", c_uint64),
        ("first_seen_ns", c_uint64),
        ("last_seen_ns", c_uint64),
        ("syn_ns", c_uint64),
        ("fin_ns", c_uint64),
        ("tcp_flags", c_uint32),
        ("ip_version", c_uint8),
        ("pad", c_uint8 * 3),
        ("key", c_uint8 * KEY_MAX),
    ]


@functools.cache
def _core() -> ctypes.CDLL:
    core = ctypes.CDLL(str(require_native(LIBRARY)), use_errno=True)
    core.flowmon_ringdrain_open.restype = c_void_p
    core.flowmon_ringdrain_open.argtypes = [c_int, c_uint32, POINTER(_Layout)]
    core.flowmon_ringdrain_drain.restype = c_long
    core.flowmon_ringdrain_drain.argtypes = [c_void_p, c_uint64]
    core.flowmon_ringdrain_flows.restype = c_size_t
    core.flowmon_ringdrain_flows.argtypes = [c_void_p, POINTER(DrainedFlow), c_size_t]
    core.flowmon_ringdrain_take.restype = c_int
    core.flowmon_ringdrain_take.argtypes = [
        c_void_p,
        c_uint8,
        ctypes.c_char_p,
        c_uint32,
        POINTER(DrainedFlow),
    ]
    core.flowmon_ringdrain_refused.restype = c_uint64
    core.flowmon_ringdrain_refused.argtypes = [c_void_p]
    core.flowmon_ringdrain_clear.restype = None
    core.flowmon_ringdrain_clear.argtypes = [c_void_p, c_bool]
    core.flowmon_ringdrain_close.restype = None
    core.flowmon_ringdrain_close.argtypes = [c_void_p]
    return core


def _layout(record: type, keys: dict[int, type]) -> _Layout:
    """The C reader's view of ``record`` (the BTF's struct flow_record) and its keys by IP version."""
    fields = {
        name: _Field(getattr(record, name).offset, getattr(record, name).size)
        for name in _RECORD_FIELDS
    }
    return _Layout(
        record_size=ctypes.sizeof(record),
        key_offset=record.key.offset,
        key4_size=ctypes.sizeof(keys[4]),
        key6_size=ctypes.sizeof(keys[6]),
        syn=TCP_FLAG_SYN,
        fin=TCP_FLAG_FIN,
        **fields,
    )


class RingDrain:
    """The reader of one RINGBUF map of flow records (``record``: the object's struct flow_record;
    ``keys``: struct flow_key4 and flow_key6 by IP version). Use one reader per ring."""

    def __init__(self, ring: Map, record: type, keys: dict[int, type]) -> None:
        if ring.type != MapType.RINGBUF:
            raise TypeError(f"map {ring.name!r} is a {ring.type.name}, not a RINGBUF")
        self.map = ring
        self._core = _core()
        self._key_size = {v: ctypes.sizeof(t) for v, t in keys.items()}
        self._flows = (DrainedFlow * 0)()
        self._handle = self._core.flowmon_ringdrain_open(
            ring.fd, ring.max_entries, ctypes.byref(_layout(record, keys))
        )
        if not self._handle:
            err = ctypes.get_errno()
            raise OSError(err, f"ring reader of {ring.name}: {os.strerror(err)}")

    def _open(self) -> int:
        if not self._handle:
            raise ValueError(f"ring reader of {self.map.name}: closed")
        return self._handle

    def drain(self, budget: int | None = None) -> int:
        """Add up to ``budget`` records to the table (None: every record committed when the call
        began), the GIL released; the number read."""
        n = self._core.flowmon_ringdrain_drain(
            self._open(), _EVERYTHING if budget is None else budget
        )
        if n < 0:
            raise OSError(
                -n,
                f"ring {self.map.name}: a record that is not a struct flow_record of this object "
                f"(read past it): {os.strerror(-n)}",
            )
        return n

    def flows(self) -> list[DrainedFlow]:
        """Every flow in the table, in no order."""
        while True:
            held = self._core.flowmon_ringdrain_flows(self._open(), self._flows, len(self._flows))
            if held <= len(self._flows):
                return list(self._flows[:held])
            self._flows = (DrainedFlow * (2 * held))()  # another thread may drain meanwhile

    def raw_key(self, flow: DrainedFlow) -> bytes:
        """The flow's key as the kernel lays it out (struct flow_key4 or flow_key6)."""
        return bytes(flow.key)[: self._key_size[flow.ip_version]]

    def take(self, ip_version: int, raw_key: bytes) -> DrainedFlow | None:
        """Remove the flow of ``raw_key`` (a struct flow_key4/flow_key6) and return it, or None."""
        out = DrainedFlow()
        found = self._core.flowmon_ringdrain_take(
            self._open(), ip_version, raw_key, len(raw_key), ctypes.byref(out)
        )
        if found < 0:
            raise ValueError(f"a {len(raw_key)}-byte key is not an IPv{ip_version} flow key")
        return out if found else None

    def refused(self) -> int:
        """Packets of records lost because the table could not grow for their new flow."""
        return self._core.flowmon_ringdrain_refused(self._open())

    def clear(self, counts: bool = False) -> None:
        """Empty the table; with ``counts``, zero ``refused`` too."""
        self._core.flowmon_ringdrain_clear(self._open(), counts)

    def close(self) -> None:
        if self._handle:
            self._core.flowmon_ringdrain_close(self._handle)
            self._handle = None

    def __enter__(self) -> RingDrain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
