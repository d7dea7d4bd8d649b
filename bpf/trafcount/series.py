"""The traffic counter's time series: the tables read N times a second, each read a bin holding the
packets and bytes each address and protocol gained since the read before.

``Sampler.sample()`` makes one bin; ``Sampler.run(hz, emit, stop)`` makes them on a fixed grid of
1/hz seconds (a read that runs late makes that bin longer: each bin carries the monotonic time of
its read, so widths are known, never assumed). The first bin holds everything counted since the
table was created. Bins add up exactly to the tables' counts while the LRU evicts nothing; an
address evicted and counted again starts from zero, so a bin then holds its new counts only (what
it gained between the last read and its eviction is lost with the entry, and counted as an
eviction by the data plane).

Formats, one per bin:

- JSON lines: ``{"bin": 0, "t_ns": 123, "deltas": [["10.0.0.1", 6, 12, 720], ...]}``, a delta being
  [address, IP protocol number, packets, bytes]; bins with no delta are written too.
- binary (``BinaryWriter``), little-endian: a file header ``b"TCTS"``, u16 format version (1), u16
  hz; then per bin a u64 bin number, u64 t_ns (CLOCK_MONOTONIC) and u32 count, followed by count
  deltas of u8 IP version, u8 protocol, 16 bytes of address (IPv4: 4 bytes then 12 zero bytes),
  u32 packets, u32 bytes: 20 bytes a bin, 26 a delta. ``read_binary`` reads it back.

Not for: reading the kernel (``TrafCount.snapshot``) or printing totals (``bpf.trafcount.cli``).
"""

from __future__ import annotations

import ipaddress
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from bpf.trafcount.model import TrafKey
from bpf.trafcount.trafcount import TrafCount, key_of

MAGIC = b"TCTS"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct("<4sHH")
BIN_HEADER = struct.Struct("<QQI")
DELTA = struct.Struct("<BB16sII")


@dataclass(frozen=True)
class Bin:
    index: int
    t_ns: int  # CLOCK_MONOTONIC at the read
    deltas: list[tuple[TrafKey, int, int]]  # (key, packets, bytes) gained since the last read


@dataclass
class Sampler:
    """Bins from one TrafCount's tables."""

    tc: TrafCount
    bins: int = 0
    late: int = 0  # bins read after the next grid point had passed
    totals: dict[bytes, list[int]] = field(default_factory=dict)  # the bins' sums, by raw key
    _last: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    _keys: dict[bytes, TrafKey] = field(default_factory=dict)  # made once per key

    def sample(self) -> Bin:
        now = self.tc.snapshot()
        t_ns = time.monotonic_ns()
        last, totals, keys = self._last, self.totals, self._keys
        deltas = []
        for key, (p, b) in now.items():
            before = last.get(key)
            if before is not None:
                if p == before[0] and b == before[1]:
                    continue
                if p >= before[0] and b >= before[1]:
                    p, b = p - before[0], b - before[1]
                # else: evicted and created again since the last read: all of it is new
            total = totals.get(key)
            if total is None:
                totals[key] = [p, b]
                keys[key] = key_of(key)
            else:
                total[0] += p
                total[1] += b
            deltas.append((keys[key], p, b))
        self._last = now
        bin_ = Bin(self.bins, t_ns, deltas)
        self.bins += 1
        return bin_

    def run(self, hz: float, emit: Callable[[Bin], None], stop: threading.Event) -> None:
        """Sample every 1/hz s on a fixed grid until ``stop`` is set, then once more (the last bin
        holds what came after the last grid point). A read that ends past the next grid point is
        late; one more than a whole period behind moves the grid (no burst of reads to catch up)."""
        period_ns = int(1e9 / hz)
        next_ns = time.monotonic_ns()
        while not stop.is_set():
            emit(self.sample())
            next_ns += period_ns
            wait_ns = next_ns - time.monotonic_ns()
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
            else:
                self.late += 1
                if -wait_ns > period_ns:
                    next_ns = time.monotonic_ns()
        emit(self.sample())

    def summed(self) -> dict[TrafKey, tuple[int, int]]:
        """What the bins so far add up to, per address and protocol."""
        return {self._keys[k]: (p, b) for k, (p, b) in self.totals.items()}


def json_writer(out: TextIO) -> Callable[[Bin], None]:
    names: dict[TrafKey, str] = {}  # each address's text, made once

    def emit(bin_: Bin) -> None:
        deltas = []
        for k, p, b in bin_.deltas:
            name = names.get(k)
            if name is None:
                name = names[k] = str(k.address)
            deltas.append([name, k.proto, p, b])
        out.write(json.dumps({"bin": bin_.index, "t_ns": bin_.t_ns, "deltas": deltas}) + "\n")

    return emit


class BinaryWriter:
    """Bins in the compact binary format (module docstring) to ``out``."""

    def __init__(self, out: BinaryIO, hz: int) -> None:
        self.out = out
        out.write(FILE_HEADER.pack(MAGIC, FORMAT_VERSION, hz))

    def __call__(self, bin_: Bin) -> None:
        parts = [BIN_HEADER.pack(bin_.index, bin_.t_ns, len(bin_.deltas))]
        parts += [DELTA.pack(k.version, k.proto, k.packed, p, b) for k, p, b in bin_.deltas]
        self.out.write(b"".join(parts))


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
