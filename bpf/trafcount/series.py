"""The traffic counter's time series: the tables read N times a second, each read a bin holding the
packets and bytes each address and protocol gained since the read before.

```python
with Sampler(tc, hz=1000, out=f.fileno(), form=Format.BINARY) as sampler:
    threading.Timer(10.0, sampler.stop).start()
    sampler.run()              # bins on the grid until stop(), then one more; in C, without the GIL
    sampler.summed()           # what the bins add up to, per address and protocol
```

The reader is C (``series.c``, ``libtrafcount_series.so``, built ahead of time by ``bpf.build``): it
reads both tables with ``BPF_MAP_LOOKUP_BATCH``, keeps each key's last read in a hash table of its
own, writes each bin straight to the output fd, and runs the fixed grid of 1/hz seconds itself
(``run``), so the interpreter takes no part in a bin. A read that runs late makes that bin longer:
each bin carries the monotonic time of its read, so widths are known, never assumed; a read that
ends past the next grid point is counted late, and one more than a whole period behind moves the
grid (no burst of reads to catch up). ``sample()`` makes one bin and returns it as a ``Bin``.

The first bin holds everything counted since the table was created. Bins add up exactly to the
tables' counts while the LRU evicts nothing; an address evicted and counted again starts from zero,
so a bin then holds its new counts only (what it gained between the last read and its eviction is
lost with the entry, and counted as an eviction by the data plane). ``bpf.trafcount.model``'s
``SeriesModel`` states these rules and the two formats in Python; the unit tests hold the C to it.

Formats, one per bin:

- JSON lines: ``{"bin": 0, "t_ns": 123, "deltas": [["10.0.0.1", 6, 12, 720], ...]}``, a delta being
  [address, IP protocol number, packets, bytes]; bins with no delta are written too.
- binary, little-endian: a file header ``b"TCTS"``, u16 format version (1), u16 hz; then per bin a
  u64 bin number, u64 t_ns (CLOCK_MONOTONIC) and u32 count, followed by count deltas of u8 IP
  version, u8 protocol, 16 bytes of address (IPv4: 4 bytes then 12 zero bytes), u32 packets, u32
  bytes: 20 bytes a bin, 26 a delta. A delta past a u32 is written as several of the same key,
  which add up to it. ``read_binary`` reads it back.

Not for: reading the tables once (``TrafCount.counts``) or printing totals (``bpf.trafcount.cli``).
"""

from __future__ import annotations

import ctypes
import enum
import functools
import ipaddress
import json
import os
from collections.abc import Iterator
from ctypes import POINTER, c_int, c_long, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p
from pathlib import Path

from bpf.build import c_define, require_native
from bpf.trafcount.model import (
    BIN_HEADER,
    DELTA,
    FILE_HEADER,
    FORMAT_VERSION,
    MAGIC,
    Bin,
    TrafKey,
)
from bpf.trafcount.trafcount import TABLES, TrafCount

__all__ = ["Bin", "Format", "Sampler", "parse_json_line", "read_binary"]

LIBRARY = "bpf/trafcount/libtrafcount_series.so"
_HEADER = Path(__file__).with_name("series.h")
PIECE = c_define(_HEADER, "TRAFCOUNT_SERIES_PIECE")  # the smallest output buffer
OUT_BUFFER = 1 << 16  # bytes of output written at once at most


class Format(enum.IntEnum):
    """What the reader writes (series.h)."""

    JSON = c_define(_HEADER, "TRAFCOUNT_SERIES_JSON")
    BINARY = c_define(_HEADER, "TRAFCOUNT_SERIES_BINARY")


_FAILED = {
    c_define(_HEADER, "TRAFCOUNT_SERIES_READING"): "time series: reading the tables",
    c_define(_HEADER, "TRAFCOUNT_SERIES_WRITING"): "time series: writing a bin",
}


class _Delta(ctypes.Structure):
    """``struct trafcount_series_delta`` (series.h)."""

    _fields_ = [
        ("version", c_uint8),
        ("proto", c_uint8),
        ("addr", c_uint8 * 16),
        ("pad", c_uint8 * 6),
        ("packets", c_uint64),
        ("bytes", c_uint64),
    ]


class _Stats(ctypes.Structure):
    """``struct trafcount_series_stats`` (series.h)."""

    _fields_ = [("bins", c_uint64), ("late", c_uint64), ("failed", c_uint64)]


@functools.cache
def _core() -> ctypes.CDLL:
    core = ctypes.CDLL(str(require_native(LIBRARY)), use_errno=True)
    core.trafcount_series_open.restype = c_void_p
    core.trafcount_series_open.argtypes = [
        c_int,
        c_uint32,
        c_int,
        c_uint32,
        c_int,
        c_int,
        c_uint32,
        c_size_t,
        POINTER(_Stats),
    ]
    core.trafcount_series_sample.restype = c_long
    core.trafcount_series_sample.argtypes = [c_void_p]
    core.trafcount_series_t_ns.restype = c_uint64
    core.trafcount_series_t_ns.argtypes = [c_void_p]
    for name in ("trafcount_series_deltas", "trafcount_series_summed"):
        getattr(core, name).restype = c_size_t
        getattr(core, name).argtypes = [c_void_p, POINTER(_Delta), c_size_t]
    core.trafcount_series_run.restype = c_int
    core.trafcount_series_run.argtypes = [c_void_p, c_uint32]
    core.trafcount_series_stop.restype = None
    core.trafcount_series_stop.argtypes = [c_void_p]
    core.trafcount_series_close.restype = None
    core.trafcount_series_close.argtypes = [c_void_p]
    return core


class Sampler:
    """Bins from one TrafCount's tables, written to the fd ``out`` in ``form`` if given (a file's
    fd: the reader writes to it directly, so flush a Python file object before). One thread at a
    time: ``run``, ``sample`` and ``summed`` share the reader's state; ``stop`` is for any thread.
    Close it (or leave its ``with``) before the TrafCount."""

    def __init__(
        self,
        tc: TrafCount,
        hz: int = 1000,
        out: int | None = None,
        form: Format = Format.JSON,
        buffer_size: int = OUT_BUFFER,
    ) -> None:
        self.hz = hz
        self._core = _core()
        self._stats = _Stats()
        self._deltas = (_Delta * 0)()
        tables = [tc.obj.maps[TABLES[v]] for v in (4, 6)]
        self._handle = self._core.trafcount_series_open(
            tables[0].fd,
            tables[0].max_entries,
            tables[1].fd,
            tables[1].max_entries,
            -1 if out is None else out,
            0 if out is None else int(form),
            hz,
            buffer_size,
            ctypes.byref(self._stats),
        )
        if not self._handle:
            err = ctypes.get_errno()
            raise OSError(err, f"time series at {hz} Hz: {os.strerror(err)}")

    @property
    def bins(self) -> int:
        return self._stats.bins

    @property
    def late(self) -> int:
        """Bins read after the next grid point had passed."""
        return self._stats.late

    def _open(self) -> int:
        if not self._handle:
            raise ValueError("time series: the sampler is closed")
        return self._handle

    def _check(self, ret: int) -> int:
        if ret < 0:
            what = _FAILED.get(self._stats.failed, "time series")
            raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
        return ret

    def _array(self, n: int) -> ctypes.Array:
        if len(self._deltas) < n:
            self._deltas = (_Delta * max(n, 2 * len(self._deltas)))()
        return self._deltas

    @staticmethod
    def _key(d: _Delta) -> TrafKey:
        return TrafKey(d.version, bytes(d.addr)[: 4 if d.version == 4 else 16], d.proto)

    def sample(self) -> Bin:
        """Read one bin (and write it out); it, as a Bin."""
        index = self.bins
        n = self._check(self._core.trafcount_series_sample(self._open()))
        deltas = self._array(n)
        self._core.trafcount_series_deltas(self._handle, deltas, n)
        t_ns = self._core.trafcount_series_t_ns(self._handle)
        return Bin(index, t_ns, [(self._key(d), d.packets, d.bytes) for d in deltas[:n]])

    def run(self) -> None:
        """Bins every 1/hz s on a fixed grid until ``stop()``, then one more (what came after the
        last grid point); in C, the GIL released."""
        self._check(self._core.trafcount_series_run(self._open(), self.hz))

    def stop(self) -> None:
        """End ``run`` at once, from any thread (a stop before ``run`` makes it read one bin)."""
        self._core.trafcount_series_stop(self._open())

    def summed(self) -> dict[TrafKey, tuple[int, int]]:
        """What the bins so far add up to, per address and protocol."""
        n = self._core.trafcount_series_summed(self._open(), None, 0)
        sums = self._array(n)
        self._core.trafcount_series_summed(self._handle, sums, n)
        return {self._key(d): (d.packets, d.bytes) for d in sums[:n]}

    def close(self) -> None:
        if self._handle:
            self._core.trafcount_series_close(self._handle)
            self._handle = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_binary(data: bytes) -> tuple[int, Iterator[Bin]]:
    """The hz and the bins of a binary time series."""
    magic, version, hz = FILE_HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ValueError(f"not a trafcount time series (format {FORMAT_VERSION}): {data[:8]!r}")

    def bins() -> Iterator[Bin]:
        pos = FILE_HEADER.size
        while pos < len(data):
            index, t_ns, n = BIN_HEADER.unpack_from(data, pos)
            pos += BIN_HEADER.size
            deltas = []
            for _ in range(n):
                ip_version, proto, addr, p, b = DELTA.unpack_from(data, pos)
                pos += DELTA.size
                size = 4 if ip_version == 4 else 16
                deltas.append((TrafKey(ip_version, addr[:size], proto), p, b))
            yield Bin(index, t_ns, deltas)

    return hz, bins()


def parse_json_line(line: str) -> Bin:
    """A JSON-lines bin back as a Bin."""
    item = json.loads(line)
    deltas = []
    for addr, proto, p, b in item["deltas"]:
        a = ipaddress.ip_address(addr)
        deltas.append((TrafKey(a.version, a.packed, proto), p, b))
    return Bin(item["bin"], item["t_ns"], deltas)
