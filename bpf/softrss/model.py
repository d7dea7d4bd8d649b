"""The reference model of the soft RSS data plane (``softrss.bpf.c``), in plain Python.

Frame in, prediction out: ``parse`` runs ``bpf.parse`` (the reference of ``bpf/include/parse.h``)
and keeps the status and what the hash needs of the flow (``ParsedFlow``), ``hash_input`` lays out
the fields a NIC hashes, ``flow_hash`` runs Toeplitz (``bpf.toeplitz``) or jhash (``bpf.jhash``)
over them, ``bucket_of`` reads the RETA at the hash's low 7 bits. ``Model`` adds the counters: per bucket
(packets, bytes, new flows), per flow, by parse status, and the elephant events, each flow's once.
Tests hold the kernel to it; the control plane uses its configuration types and ``equal_reta``.

Not for: talking to the kernel (``bpf.softrss.softrss``), or speed.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from bpf.build import c_define
from bpf.jhash import jhash
from bpf.parse import Flow, FlowFlags, parse_flow
from bpf.toeplitz import MICROSOFT_KEY, toeplitz_hash

_SOURCE = Path(__file__).with_name("softrss.bpf.c")
RETA_SIZE = c_define(_SOURCE, "RETA_SIZE")
MAX_BUCKETS = RETA_SIZE
FLOW_CACHE_BITS = c_define(_SOURCE, "FLOW_CACHE_BITS")
_CACHE_MULTIPLIERS = [c_define(_SOURCE, f"FLOW_CACHE_MUL{i}") for i in range(5)]


class HashKind(enum.Enum):
    TOEPLITZ = "toeplitz"
    JHASH = "jhash"


class Action(enum.Enum):
    COUNT = "count"  # count and pass: a passive monitor
    CPU = "cpu"  # redirect each bucket to a CPU (CPUMAP): software RSS
    IFACES = "ifaces"  # redirect each bucket to its own interface (DEVMAP): a monitor fan-out


@dataclass(frozen=True)
class Config:
    """What the data plane is loaded with. ``threshold_*`` 0 turns that criterion off."""

    buckets: int = 8
    hash: HashKind = HashKind.TOEPLITZ
    key: bytes = MICROSOFT_KEY  # Toeplitz key, 40 bytes
    symmetric: bool = False  # XOR source and destination first (ethtool's symmetric-xor)
    jhash_initval: int = 0
    action: Action = Action.COUNT
    threshold_packets: int = 100
    threshold_bytes: int = 0
    max_flows: int = 65536

    def __post_init__(self) -> None:
        if not 1 <= self.buckets <= MAX_BUCKETS:
            raise ValueError(f"buckets: {self.buckets}, must be 1..{MAX_BUCKETS}")
        if len(self.key) != 40:
            raise ValueError(f"Toeplitz key: {len(self.key)} bytes given, 40 expected")
        if not 0 <= self.jhash_initval <= 0xFFFFFFFF:
            raise ValueError(f"jhash_initval {self.jhash_initval:#x} is not a u32")
        if self.threshold_packets < 0 or self.threshold_bytes < 0:
            raise ValueError("elephant thresholds cannot be negative (0 turns one off)")


def equal_reta(buckets: int) -> list[int]:
    """The RETA of ``ethtool -X DEV equal N``: entry i goes to bucket i % N."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"equal split over {buckets} buckets: must be 1..{MAX_BUCKETS}")
    return [i % buckets for i in range(RETA_SIZE)]


@dataclass(frozen=True)
class FlowKey:
    """A flow as the data plane keys it; ports are 0 when the hash does not use them.

    Keys sort IPv4 before IPv6, then by address bytes, ports and protocol.
    """

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int
    proto: int

    def __lt__(self, other: FlowKey) -> bool:
        return self._order() < other._order()

    def _order(self) -> tuple[int, bytes, bytes, int, int, int]:
        return (
            self.src.version,
            self.src.packed,
            self.dst.packed,
            self.sport,
            self.dport,
            self.proto,
        )

    def __str__(self) -> str:
        if self.sport or self.dport:
            return f"{self.proto}:[{self.src}]:{self.sport}->[{self.dst}]:{self.dport}"
        return f"{self.proto}:{self.src}->{self.dst}"


@dataclass(frozen=True)
class ParsedFlow:
    """A flow as the hash sees it: addresses, protocol, ports and whether they may be hashed."""

    version: int  # 4 or 6
    saddr: bytes  # 4 or 16 bytes, network order
    daddr: bytes
    l4_proto: int
    sport: int
    dport: int
    has_ports: bool  # TCP or UDP header read
    fragment: bool  # any fragment, the first included

    @classmethod
    def of(cls, flow: Flow) -> ParsedFlow:
        """The hash's view of an IP flow that parse_flow() filled in."""
        src, dst = flow.src, flow.dst
        return cls(
            src.version,
            src.packed,
            dst.packed,
            flow.l4_proto,
            flow.sport,
            flow.dport,
            FlowFlags.FLOW_F_PORTS in flow.flags,
            FlowFlags.FLOW_F_FRAGMENT in flow.flags,
        )

    @property
    def hashes_ports(self) -> bool:
        """NICs hash ports for TCP and UDP, never for fragments (the later ones have none)."""
        return self.has_ports and not self.fragment

    def key(self) -> FlowKey:
        ports = self.hashes_ports
        return FlowKey(
            ipaddress.ip_address(self.saddr),
            ipaddress.ip_address(self.daddr),
            self.sport if ports else 0,
            self.dport if ports else 0,
            self.l4_proto,
        )


def cache_set(key: FlowKey) -> int:
    """The first of the two slots ``key`` may take in a CPU's region of the flow cache: the data
    plane's cache_index(). The cache is invisible in the counts; tests use this to make flows
    share a set."""
    tail = key.sport.to_bytes(2, "big") + key.dport.to_bytes(2, "big") + bytes([key.proto, 0, 0, 0])
    raw = key.src.packed + key.dst.packed + tail
    words = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
    h = sum(w * k for w, k in zip(words, _CACHE_MULTIPLIERS, strict=False)) % (1 << 64)
    return h >> (64 - FLOW_CACHE_BITS) & ~1


@dataclass(frozen=True)
class Classified:
    """A frame as the data plane sorts it."""

    status: str  # parse_flow()'s: a member name of parse.h's enum parse_status
    flow: ParsedFlow | None  # set when status is PARSE_OK


def parse(frame: bytes) -> Classified:
    """The status parse_flow() gives ``frame``, and the flow to hash when it is PARSE_OK."""
    parsed = parse_flow(frame)
    if parsed.status != "PARSE_OK":
        return Classified(parsed.status, None)
    return Classified(parsed.status, ParsedFlow.of(parsed.flow))


def hash_input(flow: ParsedFlow, symmetric: bool = False) -> bytes:
    """Source, destination address, then ports (TCP/UDP, not fragments), as NICs hash them.

    Symmetric: each field XORed with its counterpart first, so the reverse direction is the same.
    """
    saddr, daddr = flow.saddr, flow.daddr
    sport, dport = flow.sport.to_bytes(2, "big"), flow.dport.to_bytes(2, "big")
    if symmetric:
        saddr = daddr = bytes(x ^ y for x, y in zip(saddr, daddr, strict=True))
        sport = dport = (flow.sport ^ flow.dport).to_bytes(2, "big")
    return saddr + daddr + (sport + dport if flow.hashes_ports else b"")


def flow_hash(flow: ParsedFlow, config: Config) -> int:
    data = hash_input(flow, config.symmetric)
    if config.hash is HashKind.TOEPLITZ:
        return toeplitz_hash(config.key, data)
    # jhash always takes the port word, zero when the ports are not hashed: the flow's key (its
    # ports zero then) decides its hash. Toeplitz is linear: zero bytes would add nothing.
    return jhash(data if flow.hashes_ports else data + bytes(4), config.jhash_initval)


def bucket_of(hash_value: int, reta: list[int]) -> int:
    """The RETA entry at the hash's low bits, as a NIC picks a queue."""
    return reta[hash_value & (RETA_SIZE - 1)]


@dataclass
class BucketCounts:
    packets: int = 0
    bytes: int = 0
    flows: int = 0


@dataclass
class FlowCounts:
    hash: int
    bucket: int
    packets: int = 0
    bytes: int = 0
    announced: bool = False


@dataclass(frozen=True)
class Outcome:
    """What the data plane does with one frame."""

    status: str
    key: FlowKey | None = None
    hash: int | None = None
    bucket: int | None = None
    elephant: bool = False  # this frame made its flow an elephant


@dataclass
class Model:
    """The data plane's counters, predicted frame by frame (no LRU eviction: size it to fit)."""

    config: Config = field(default_factory=Config)
    reta: list[int] = field(default_factory=list)
    buckets: list[BucketCounts] = field(default_factory=list)
    flows: dict[FlowKey, FlowCounts] = field(default_factory=dict)
    unparsed: dict[str, int] = field(default_factory=dict)
    elephants: list[FlowKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reta = self.reta or equal_reta(self.config.buckets)
        self.buckets = self.buckets or [BucketCounts() for _ in range(self.config.buckets)]

    def _elephant(self, packets: int, size: int) -> bool:
        c = self.config
        return bool(
            (c.threshold_packets and packets >= c.threshold_packets)
            or (c.threshold_bytes and size >= c.threshold_bytes)
        )

    def feed(self, frame: bytes) -> Outcome:
        parsed = parse(frame)
        if parsed.flow is None:
            self.unparsed[parsed.status] = self.unparsed.get(parsed.status, 0) + 1
            return Outcome(parsed.status)
        h = flow_hash(parsed.flow, self.config)
        bucket = bucket_of(h, self.reta)
        key = parsed.flow.key()
        counts = self.buckets[bucket]
        counts.packets += 1
        counts.bytes += len(frame)
        flow = self.flows.get(key)
        if flow is None:
            flow = self.flows[key] = FlowCounts(h, bucket)
            counts.flows += 1
        flow.packets += 1
        flow.bytes += len(frame)
        crossed = not flow.announced and self._elephant(flow.packets, flow.bytes)
        if crossed:
            flow.announced = True
            self.elephants.append(key)
        return Outcome(parsed.status, key, h, bucket, crossed)
