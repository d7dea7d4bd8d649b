"""The resolved field program: a template's bytes and the byte-level edits that turn it into packet i.

``TrafficSpec.resolve()`` (``injector.spec``) produces a ``FieldProgram``; every sender consumes it:
the Python expansion (``FieldProgram.packets()``, used by unit tests and the scapy backend), the TRex
translation (``injector.trex_worker``) and the in-kernel field engine of the xdp backend. Packet i is

1. ``template[:frame_sizes[i % len(frame_sizes)]]`` (the template is the largest frame; smaller ones
   are the same bytes trimmed, the payload being the last thing in every template);
2. every ``LengthField`` written as ``frame_len - base`` (only when there are several frame sizes);
3. every ``FieldOp`` written with its value for flow ``schedule[i % len(schedule)]``;
4. every ``ChecksumFix`` recomputed, in the listed order (inner headers first, so that an outer
   checksum covers the inner checksums already fixed).

All values are unsigned integers written big-endian. Checksums the template does not carry correctly
(deliberately bad ones, UDP checksum 0 over IPv4 meaning "none", truncated packets) are never listed,
so they are left as the template has them.

This module imports no scapy: the TRex worker runs in a process that has TRex's own scapy 2.4.3.
It does not know protocols beyond the IPv4/IPv6/TCP/UDP/ICMP checksums; paths and offsets are found
by ``injector.spec``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

MASK64 = (1 << 64) - 1


class OpKind(Enum):
    """How a varied field takes its value from the flow index ``f``."""

    RANGE = "range"  # min + step * (f % count), count = (max - min) // step + 1
    RANDOM = "random"  # min + mix64(seed, f) % (max - min + 1)
    LIST = "list"  # values[f % len(values)]


def mix64(seed: int, flow: int) -> int:
    """The per-flow pseudo-random number of RANDOM ops (splitmix64's finalizer), all arithmetic mod 2**64.

    ``x = seed ^ (flow * 0x9E3779B97F4A7C15)``, then ``x ^= x >> 30; x *= 0xBF58476D1CE4E5B9;
    x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31``. The kernel computes the same in u64.
    """
    x = (seed ^ (flow * 0x9E3779B97F4A7C15)) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class FieldOp:
    """One varied field: ``size`` bytes at ``offset`` of the frame, its value a function of the flow.

    For RANGE and RANDOM, ``max - min`` is below 2**64 even for 16-byte fields: a kernel computes the
    u64 offset from ``min`` and adds it to ``min`` with carry across the field's bytes.
    """

    path: str
    offset: int
    size: int
    kind: OpKind
    min: int = 0
    max: int = 0
    step: int = 1
    values: tuple[int, ...] = ()
    seed: int = 0

    @property
    def count(self) -> int:
        """How many distinct values the op cycles through (RANDOM: the size of its interval)."""
        if self.kind is OpKind.RANGE:
            return (self.max - self.min) // self.step + 1
        if self.kind is OpKind.RANDOM:
            return self.max - self.min + 1
        return len(self.values)

    def value_for(self, flow: int) -> int:
        if self.kind is OpKind.RANGE:
            return self.min + self.step * (flow % self.count)
        if self.kind is OpKind.RANDOM:
            return self.min + mix64(self.seed, flow) % (self.max - self.min + 1)
        return self.values[flow % len(self.values)]


@dataclass(frozen=True)
class LengthField:
    """A 2-byte length field rewritten as ``frame_len - base`` when frames are trimmed to a size."""

    path: str
    offset: int
    base: int


class ChecksumKind(Enum):
    IPV4_HEADER = "ipv4_header"
    TCP = "tcp"
    UDP = "udp"
    ICMPV4 = "icmpv4"
    ICMPV6 = "icmpv6"


_CSUM_FIELD_AT = {
    ChecksumKind.IPV4_HEADER: 10,
    ChecksumKind.TCP: 16,
    ChecksumKind.UDP: 6,
    ChecksumKind.ICMPV4: 2,
    ChecksumKind.ICMPV6: 2,
}
_L4_PROTO = {ChecksumKind.TCP: 6, ChecksumKind.UDP: 17, ChecksumKind.ICMPV6: 58}


@dataclass(frozen=True)
class ChecksumFix:
    """A checksum to recompute after the fields are written.

    ``ip_offset`` is the IPv4/IPv6 header that gives the lengths (and for TCP, UDP and ICMPv6 the
    pseudo-header: source, destination, L4 length, protocol). IPV4_HEADER covers ``ihl * 4`` bytes
    from ``ip_offset``. The L4 kinds cover ``l4_offset`` up to the IP packet's end: ``ip_offset +
    total_length`` (IPv4) or ``ip_offset + 40 + payload_length`` (IPv6), read from the frame after
    the length fields are written. A UDP checksum that computes to 0 is sent as 0xFFFF (RFC 768).
    """

    kind: ChecksumKind
    ip_offset: int
    l4_offset: int
    ip_version: int

    @property
    def csum_offset(self) -> int:
        start = self.ip_offset if self.kind is ChecksumKind.IPV4_HEADER else self.l4_offset
        return start + _CSUM_FIELD_AT[self.kind]

    @property
    def pseudo_header(self) -> bool:
        return self.kind in _L4_PROTO


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 ones'-complement checksum of ``data`` (odd length padded with a zero byte)."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def l4_end(frame: bytes | bytearray, ip_offset: int, ip_version: int) -> int:
    """Where the IP packet at ``ip_offset`` ends according to its own length field."""
    if ip_version == 4:
        return ip_offset + int.from_bytes(frame[ip_offset + 2 : ip_offset + 4], "big")
    return ip_offset + 40 + int.from_bytes(frame[ip_offset + 4 : ip_offset + 6], "big")


def checksum_of(frame: bytes | bytearray, fix: ChecksumFix) -> int:
    """The correct value of the checksum ``fix`` names, computed with its field taken as zero."""
    buf = bytearray(frame)
    buf[fix.csum_offset : fix.csum_offset + 2] = b"\x00\x00"
    if fix.kind is ChecksumKind.IPV4_HEADER:
        ihl = (buf[fix.ip_offset] & 0x0F) * 4
        return internet_checksum(buf[fix.ip_offset : fix.ip_offset + ihl])
    end = l4_end(buf, fix.ip_offset, fix.ip_version)
    segment = bytes(buf[fix.l4_offset : end])
    pseudo = b""
    if fix.pseudo_header:
        o = fix.ip_offset
        addrs = buf[o + 12 : o + 20] if fix.ip_version == 4 else buf[o + 8 : o + 40]
        length = len(segment).to_bytes(4 if fix.ip_version == 6 else 2, "big")
        proto = _L4_PROTO[fix.kind]
        pseudo = (
            bytes(addrs) + b"\x00" + bytes([proto]) + length
            if fix.ip_version == 4
            else bytes(addrs) + length + b"\x00\x00\x00" + bytes([proto])
        )
    csum = internet_checksum(pseudo + segment)
    if fix.kind is ChecksumKind.UDP and csum == 0:
        return 0xFFFF
    return csum


@dataclass(frozen=True)
class FieldProgram:
    """A template and the edits that make packet i; see the module docstring for the exact order."""

    description: str
    template: bytes
    flows: int
    schedule: tuple[int, ...]
    frame_sizes: tuple[int, ...]
    ops: tuple[FieldOp, ...] = ()
    length_fields: tuple[LengthField, ...] = ()
    checksums: tuple[ChecksumFix, ...] = ()
    count: int | None = None
    duration: float | None = None
    rate_pps: float | None = None
    seed: int = 0

    @property
    def period(self) -> int:
        """After this many packets the sequence repeats exactly."""
        return math.lcm(len(self.schedule), len(self.frame_sizes))

    def render(self, flow: int, frame_size: int) -> bytes:
        """The packet of ``flow`` trimmed to ``frame_size`` bytes, with its checksums fixed."""
        buf = bytearray(self.template[:frame_size])
        if len(self.frame_sizes) > 1:
            for lf in self.length_fields:
                buf[lf.offset : lf.offset + 2] = (frame_size - lf.base).to_bytes(2, "big")
        for op in self.ops:
            buf[op.offset : op.offset + op.size] = op.value_for(flow).to_bytes(op.size, "big")
        for fix in self.checksums:
            buf[fix.csum_offset : fix.csum_offset + 2] = checksum_of(buf, fix).to_bytes(2, "big")
        return bytes(buf)

    def flow_of(self, index: int) -> int:
        return self.schedule[index % len(self.schedule)]

    def frame_size_of(self, index: int) -> int:
        return self.frame_sizes[index % len(self.frame_sizes)]

    def packet(self, index: int) -> bytes:
        return self.render(self.flow_of(index), self.frame_size_of(index))

    def packet_count(self) -> int:
        """``count``, else ``duration * rate_pps``, else one period."""
        if self.count is not None:
            return self.count
        if self.duration is not None and self.rate_pps is not None:
            return max(1, round(self.duration * self.rate_pps))
        return self.period

    def packets(self, count: int | None = None) -> Iterator[bytes]:
        """The exact packets, in order; ``count`` defaults to ``packet_count()``."""
        n = self.packet_count() if count is None else count
        period = [self.packet(i) for i in range(min(n, self.period))]
        for i in range(n):
            yield period[i % len(period)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (the TRex worker reads it on stdin)."""
        return {
            "description": self.description,
            "template": self.template.hex(),
            "flows": self.flows,
            "schedule": list(self.schedule),
            "frame_sizes": list(self.frame_sizes),
            "ops": [
                {
                    "path": op.path,
                    "offset": op.offset,
                    "size": op.size,
                    "kind": op.kind.value,
                    "min": op.min,
                    "max": op.max,
                    "step": op.step,
                    "values": list(op.values),
                    "seed": op.seed,
                }
                for op in self.ops
            ],
            "length_fields": [
                {"path": lf.path, "offset": lf.offset, "base": lf.base} for lf in self.length_fields
            ],
            "checksums": [
                {
                    "kind": c.kind.value,
                    "ip_offset": c.ip_offset,
                    "l4_offset": c.l4_offset,
                    "ip_version": c.ip_version,
                }
                for c in self.checksums
            ],
            "count": self.count,
            "duration": self.duration,
            "rate_pps": self.rate_pps,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldProgram:
        return cls(
            description=data["description"],
            template=bytes.fromhex(data["template"]),
            flows=data["flows"],
            schedule=tuple(data["schedule"]),
            frame_sizes=tuple(data["frame_sizes"]),
            ops=tuple(
                FieldOp(
                    path=o["path"],
                    offset=o["offset"],
                    size=o["size"],
                    kind=OpKind(o["kind"]),
                    min=o["min"],
                    max=o["max"],
                    step=o["step"],
                    values=tuple(o["values"]),
                    seed=o["seed"],
                )
                for o in data["ops"]
            ),
            length_fields=tuple(LengthField(**lf) for lf in data["length_fields"]),
            checksums=tuple(
                ChecksumFix(
                    kind=ChecksumKind(c["kind"]),
                    ip_offset=c["ip_offset"],
                    l4_offset=c["l4_offset"],
                    ip_version=c["ip_version"],
                )
                for c in data["checksums"]
            ),
            count=data["count"],
            duration=data["duration"],
            rate_pps=data["rate_pps"],
            seed=data["seed"],
        )
