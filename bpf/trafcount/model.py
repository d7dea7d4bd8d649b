"""The reference model of the traffic counter (``trafcount.bpf.c``), in plain Python, written from its
specification.

Given frames, the hook that sees them and the configuration, ``Model`` predicts the table (per IP
address and protocol: packets and bytes), the frames not parsed by status and the entries created.
The rules:

- a frame is parsed by ``bpf.parse`` (the reference of ``parse.h``); one that does not parse to IP
  is counted by its status and nothing else;
- the key is the source or the destination address (``Config.key``) and the IP protocol number
  (after IPv6 extension headers); IPv4 and IPv6 are separate tables of ``entries`` each;
- bytes are the IP bytes (``ByteCount.L3``, the seed's: the IPv4 total length, the IPv6 header plus
  payload length; Ethernet padding is not counted) or the wire bytes (``ByteCount.WIRE``: the frame
  at XDP, the skb at TC with a VLAN tag the stack took out); at TC a GSO/GRO packet of ``gso_segs``
  TCP or UDP segments counts as that many packets, each after the first with its own copy of the
  headers (``counter.h``);
- the tables are LRUs: a new address beyond ``entries`` evicts one, in an order the kernel does not
  promise; the model keeps every address, and tests of eviction check what the kernel must keep.

The model runs on one CPU.

``SeriesModel`` is the time series' specification (``series.c`` is held to it): given successive
reads of both tables, the bins they make, and each bin's bytes in the two formats
(``json_line``, ``binary_bin``; ``bpf.trafcount.series`` documents both). Its rules:

- a key is an address and a protocol (the map key's pad bytes are no part of it); a delta is a
  key's packets and bytes since the read before; a key that read did not see (new, or
  gone and back) is all new, and so is one whose packets or bytes went down (evicted and created
  again in between); an unchanged key makes no delta, a new one always does (even of zeros);
- the deltas come in the order of the read; what the bins add up to is kept per key, in the order
  keys were first seen;
- in the binary format a delta whose packets or bytes pass a u32 is written as several deltas of
  the same key, each of at most 2^32 - 1 packets and bytes, which add up to it (the bin's count
  counts them all).

Not for: talking to the kernel (``bpf.trafcount.trafcount``), or speed.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bpf.build import c_define
from bpf.flowmon.model import Hook
from bpf.parse import ETH_P_IPV6, FlowFlags, parse_flow

SOURCE = Path(__file__).with_name("trafcount.bpf.c")
DEFAULT_ENTRIES = c_define(SOURCE, "TRAF_ENTRIES")  # the seed's 2048
MAX_ENTRIES = 1 << 24
VLAN_TAG_LEN = 4
IPPROTO_TCP, IPPROTO_UDP = 6, 17

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "Bin",
    "ByteCount",
    "Config",
    "Hook",
    "Key",
    "Model",
    "SeriesModel",
    "TrafKey",
    "classify",
    "default_key",
]


class Key(enum.Enum):
    """Which address of a packet it is counted under."""

    SRC = "src"
    DST = "dst"


class ByteCount(enum.Enum):
    L3 = "l3"  # the IP packet, as the seed counts (the IPv4 total length)
    WIRE = "wire"  # the Ethernet frame as it is on the wire


def default_key(hook: Hook) -> Key:
    """The seed's: the source address at ingress (XDP, TC ingress), the destination at egress."""
    return Key.DST if hook is Hook.TC_EGRESS else Key.SRC


@dataclass(frozen=True)
class Config:
    key: Key = Key.SRC
    bytes: ByteCount = ByteCount.L3
    entries: int = DEFAULT_ENTRIES  # of each table (IPv4, IPv6)

    def __post_init__(self) -> None:
        if not 1 <= self.entries <= MAX_ENTRIES:
            raise ValueError(f"--entries {self.entries}: must be 1..{MAX_ENTRIES}")


@dataclass(frozen=True, order=True)
class TrafKey:
    """An address and a protocol as the data plane keys them; IPv4 sorts before IPv6."""

    version: int
    packed: bytes  # the address's bytes, as on the wire
    proto: int

    @property
    def address(self) -> Address:
        return ipaddress.ip_address(self.packed)

    def __str__(self) -> str:
        return f"{self.address} proto {self.proto}"


@dataclass(frozen=True)
class Packet:
    key: TrafKey
    packets: int
    bytes: int


def classify(
    frame: bytes,
    hook: Hook,
    config: Config,
    gso_segs: int = 0,
    vlan_present: bool = False,
) -> tuple[str, Packet | None]:
    """The parse status of ``frame`` and, if it is IP, what it counts."""
    parsed = parse_flow(frame)
    if parsed.status != "PARSE_OK":
        return parsed.status, None
    f = parsed.flow
    v6 = f.l3_proto == ETH_P_IPV6
    raw = f.daddr if config.key is Key.DST else f.saddr
    key = TrafKey(6 if v6 else 4, bytes(raw if v6 else raw[:4]), f.l4_proto)
    segmented = not hook.xdp and gso_segs > 1 and FlowFlags.FLOW_F_PORTS in f.flags
    packets = gso_segs if segmented else 1
    headers = parsed.payload_off  # the headers end where the payload starts
    if config.bytes is ByteCount.WIRE:
        octets = len(frame)
        if segmented:
            octets += (packets - 1) * headers
        if not hook.xdp and vlan_present:
            octets += packets * VLAN_TAG_LEN
    else:
        octets = f.ip_end - f.l3_off
        if segmented:
            octets += (packets - 1) * (headers - f.l3_off)
    return "PARSE_OK", Packet(key, packets, octets)


@dataclass
class Model:
    """The data plane's state after the frames fed so far."""

    config: Config
    counts: dict[TrafKey, list[int]] = field(default_factory=dict)  # key -> [packets, bytes]
    unparsed: Counter[str] = field(default_factory=Counter)  # parse status -> frames

    def feed(
        self,
        frame: bytes,
        hook: Hook = Hook.XDP,
        gso_segs: int = 0,
        vlan_present: bool = False,
    ) -> Packet | None:
        """Count one frame; the Packet it counted as, or None if it did not parse."""
        status, packet = classify(frame, hook, self.config, gso_segs, vlan_present)
        if packet is None:
            self.unparsed[status] += 1
            return None
        entry = self.counts.setdefault(packet.key, [0, 0])
        entry[0] += packet.packets
        entry[1] += packet.bytes
        return packet

    @property
    def created(self) -> int:
        """Entries created, if the tables never evicted."""
        return len(self.counts)

    def table(self) -> dict[TrafKey, tuple[int, int]]:
        return {k: (p, b) for k, (p, b) in self.counts.items()}


# --- the time series ---

FILE_HEADER = struct.Struct("<4sHH")  # b"TCTS", format version, hz
BIN_HEADER = struct.Struct("<QQI")  # bin, t_ns, count
DELTA = struct.Struct("<BB16sII")  # IP version, protocol, address, packets, bytes
MAGIC, FORMAT_VERSION = b"TCTS", 1
U32_MAX = (1 << 32) - 1


@dataclass(frozen=True)
class Bin:
    index: int
    t_ns: int  # CLOCK_MONOTONIC at the read
    deltas: list[tuple[TrafKey, int, int]]  # (key, packets, bytes) gained since the last read


def key_of(raw: bytes) -> TrafKey:
    """A raw struct traf_key4 (8 bytes) or traf_key6 (20 bytes) as a TrafKey."""
    size = 4 if len(raw) == 8 else 16
    return TrafKey(4 if size == 4 else 6, raw[:size], raw[size])


@dataclass
class SeriesModel:
    """Bins from successive reads of the tables (module docstring: the rules)."""

    bins: int = 0
    totals: dict[TrafKey, list[int]] = field(default_factory=dict)  # key -> [packets, bytes]
    _last: dict[TrafKey, tuple[int, int]] = field(default_factory=dict)

    def read(self, table: dict[bytes, tuple[int, int]], t_ns: int) -> Bin:
        """The bin of one read: {raw map key: (packets, bytes)} in the order read, at ``t_ns``."""
        deltas = []
        now = {key_of(raw): counts for raw, counts in table.items()}
        for key, (p, b) in now.items():
            before = self._last.get(key)
            if before is not None:
                if (p, b) == before:
                    continue
                if p >= before[0] and b >= before[1]:
                    p, b = p - before[0], b - before[1]
            total = self.totals.setdefault(key, [0, 0])
            total[0] += p
            total[1] += b
            deltas.append((key, p, b))
        self._last = now
        self.bins += 1
        return Bin(self.bins - 1, t_ns, deltas)

    def summed(self) -> dict[TrafKey, tuple[int, int]]:
        """What the bins so far add up to, per address and protocol."""
        return {key: (p, b) for key, (p, b) in self.totals.items()}


def json_line(bin_: Bin) -> str:
    """The bin as a JSON line, with its newline."""
    deltas = [[str(k.address), k.proto, p, b] for k, p, b in bin_.deltas]
    return json.dumps({"bin": bin_.index, "t_ns": bin_.t_ns, "deltas": deltas}) + "\n"


def binary_file_header(hz: int) -> bytes:
    return FILE_HEADER.pack(MAGIC, FORMAT_VERSION, hz)


def binary_pieces(packets: int, bytes_: int) -> list[tuple[int, int]]:
    """A delta as the binary format's deltas: one, or several of at most a u32 each."""
    pieces = [(min(packets, U32_MAX), min(bytes_, U32_MAX))]
    packets, bytes_ = packets - pieces[0][0], bytes_ - pieces[0][1]
    while packets or bytes_:
        pieces.append((min(packets, U32_MAX), min(bytes_, U32_MAX)))
        packets, bytes_ = packets - pieces[-1][0], bytes_ - pieces[-1][1]
    return pieces


def binary_bin(bin_: Bin) -> bytes:
    """The bin in the binary format."""
    deltas = [
        DELTA.pack(k.version, k.proto, k.packed, p, b)
        for k, packets, bytes_ in bin_.deltas
        for p, b in binary_pieces(packets, bytes_)
    ]
    return BIN_HEADER.pack(bin_.index, bin_.t_ns, len(deltas)) + b"".join(deltas)
