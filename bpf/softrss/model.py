"""The reference model of the soft RSS data plane (``softrss.bpf.c``), in plain Python.

Frame in, prediction out: ``parse`` applies the rules of ``bpf/include/parse.h`` (the parse status and
the flow), ``hash_input`` lays out the fields a NIC hashes, ``flow_hash`` runs Toeplitz
(``bpf.toeplitz``) or jhash (``bpf.jhash``) over them, ``bucket_of`` reads the RETA at the hash's low
7 bits. ``Model`` adds the counters: per bucket (packets, bytes, new flows), per flow, by parse status,
and the elephant events, each flow's once. Tests hold the kernel to it; the control plane uses its
configuration types and ``equal_reta``.

Not for: talking to the kernel (``bpf.softrss.softrss``), or speed.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from bpf.jhash import jhash
from bpf.toeplitz import MICROSOFT_KEY, toeplitz_hash

RETA_SIZE = 128  # RETA_SIZE of softrss.bpf.c
MAX_BUCKETS = RETA_SIZE

_PARSE_H = Path(__file__).resolve().parent.parent / "include" / "parse.h"
IPV6_MAX_EXT_HDRS = int(
    re.search(r"#define IPV6_MAX_EXT_HDRS\s+(\d+)", _PARSE_H.read_text()).group(1)
)

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_P_8021Q, ETH_P_8021AD, ETH_P_PPP_DISC, ETH_P_PPP_SES = 0x8100, 0x88A8, 0x8863, 0x8864
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6 = 6, 17, 1, 58
FRAGMENT, AH = 44, 51
IPV6_EXT = {0, 43, FRAGMENT, 60, AH}  # hop-by-hop, routing, fragment, destination options, AH


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
    version: int  # 4 or 6
    saddr: bytes  # 4 or 16 bytes, network order
    daddr: bytes
    l4_proto: int
    sport: int
    dport: int
    has_ports: bool  # TCP or UDP header read
    fragment: bool  # any fragment, the first included

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


@dataclass(frozen=True)
class Parsed:
    status: str  # a member name of parse.h's enum parse_status
    flow: ParsedFlow | None  # set when status is PARSE_OK


class _Stop(Exception):
    def __init__(self, status: str) -> None:
        self.status = status


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


def parse(frame: bytes) -> Parsed:
    """The status parse_flow() gives ``frame``, and the flow when it is PARSE_OK."""
    try:
        proto, pos = _l2(frame)
        if proto == ETH_P_IP:
            return Parsed("PARSE_OK", _ipv4(frame, pos))
        if proto == ETH_P_IPV6:
            return Parsed("PARSE_OK", _ipv6(frame, pos))
        return Parsed("PARSE_NOT_IP", None)
    except _Stop as stop:
        return Parsed(stop.status, None)


def _l2(b: bytes) -> tuple[int, int]:
    if len(b) < 14:
        raise _Stop("PARSE_TRUNC_ETH")
    proto, pos = _u16(b, 12), 14
    for _ in range(2):
        if proto not in VLAN_TPIDS:
            break
        if pos + 4 > len(b):
            raise _Stop("PARSE_TRUNC_VLAN")
        proto, pos = _u16(b, pos + 2), pos + 4
    if proto in VLAN_TPIDS:
        raise _Stop("PARSE_TOO_MANY_VLANS")
    if proto not in (ETH_P_PPP_SES, ETH_P_PPP_DISC):
        return proto, pos
    if pos + 6 > len(b):
        raise _Stop("PARSE_TRUNC_PPPOE")
    if b[pos] != 0x11:
        raise _Stop("PARSE_BAD_PPPOE")
    if proto == ETH_P_PPP_DISC:
        raise _Stop("PARSE_NOT_IP")
    if b[pos + 1] != 0:
        raise _Stop("PARSE_BAD_PPPOE")
    if pos + 8 > len(b):
        raise _Stop("PARSE_TRUNC_PPPOE")
    ppp = {0x21: ETH_P_IP, 0x57: ETH_P_IPV6}.get(_u16(b, pos + 6))
    if ppp is None:
        raise _Stop("PARSE_NOT_IP")
    return ppp, pos + 8


def _ipv4(b: bytes, pos: int) -> ParsedFlow:
    if pos + 20 > len(b):
        raise _Stop("PARSE_TRUNC_IPV4")
    if b[pos] >> 4 != 4:
        raise _Stop("PARSE_BAD_IPV4_VERSION")
    hlen = (b[pos] & 0xF) * 4
    if hlen < 20:
        raise _Stop("PARSE_BAD_IPV4_IHL")
    if pos + hlen > len(b):
        raise _Stop("PARSE_TRUNC_IPV4")
    tot_len = _u16(b, pos + 2)
    if tot_len < hlen:
        raise _Stop("PARSE_BAD_IPV4_TOTLEN")
    ip_end = pos + tot_len
    if ip_end > len(b):
        raise _Stop("PARSE_TRUNC_IPV4_PAYLOAD")
    frag = _u16(b, pos + 6)
    proto = b[pos + 9]
    flow = ParsedFlow(4, b[pos + 12 : pos + 16], b[pos + 16 : pos + 20], proto, 0, 0, False, False)
    if frag & 0x1FFF:
        return _with(flow, fragment=True)  # a later fragment: no L4 header
    return _l4(b, pos + hlen, ip_end, _with(flow, fragment=bool(frag & 0x2000)))


def _ipv6(b: bytes, pos: int) -> ParsedFlow:
    if pos + 40 > len(b):
        raise _Stop("PARSE_TRUNC_IPV6")
    if b[pos] >> 4 != 6:
        raise _Stop("PARSE_BAD_IPV6_VERSION")
    ip_end = pos + 40 + _u16(b, pos + 4)
    if ip_end > len(b):
        raise _Stop("PARSE_TRUNC_IPV6_PAYLOAD")
    flow = ParsedFlow(6, b[pos + 8 : pos + 24], b[pos + 24 : pos + 40], 0, 0, 0, False, False)
    nexthdr, pos = b[pos + 6], pos + 40
    for _ in range(IPV6_MAX_EXT_HDRS):
        if nexthdr not in IPV6_EXT:
            break
        if pos + 8 > ip_end:
            raise _Stop("PARSE_TRUNC_IPV6_EXT")
        if nexthdr == FRAGMENT:
            length = 8
        elif nexthdr == AH:
            length = (b[pos + 1] + 2) * 4
        else:
            length = (b[pos + 1] + 1) * 8
        if pos + length > ip_end:
            raise _Stop("PARSE_TRUNC_IPV6_EXT")
        if nexthdr == FRAGMENT:
            frag = _u16(b, pos + 2)
            if frag & 0xFFF9:
                flow = _with(flow, fragment=True)
            if frag & 0xFFF8:  # a later fragment: the L4 header is in the first
                return _with(flow, l4_proto=b[pos])
        nexthdr, pos = b[pos], pos + length
    if nexthdr in IPV6_EXT:
        raise _Stop("PARSE_TOO_MANY_IPV6_EXT")
    return _l4(b, pos, ip_end, _with(flow, l4_proto=nexthdr))


def _l4(b: bytes, off: int, ip_end: int, flow: ParsedFlow) -> ParsedFlow:
    if flow.l4_proto == IPPROTO_TCP:
        if off + 20 > ip_end:
            raise _Stop("PARSE_TRUNC_TCP")
        hlen = (b[off + 12] >> 4) * 4
        if hlen < 20:
            raise _Stop("PARSE_BAD_TCP_DOFF")
        if off + hlen > ip_end:
            raise _Stop("PARSE_TRUNC_TCP")
    elif flow.l4_proto == IPPROTO_UDP:
        if off + 8 > ip_end:
            raise _Stop("PARSE_TRUNC_UDP")
    else:
        if flow.l4_proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and off + 8 > ip_end:
            raise _Stop("PARSE_TRUNC_ICMP")
        return flow
    return _with(flow, sport=_u16(b, off), dport=_u16(b, off + 2), has_ports=True)


def _with(flow: ParsedFlow, **changes: object) -> ParsedFlow:
    return ParsedFlow(**{**flow.__dict__, **changes})


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
    return jhash(data, config.jhash_initval)


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
