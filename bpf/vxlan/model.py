"""The reference model of the VXLAN pipeline (``vxlan.bpf.c``), in plain Python.

Frame in, ``Outcome`` out: the verdict (pass, forward, drop and why) and, for a forwarded frame, its
exact bytes: decapsulated, NATed with the same RFC 1624 incremental checksum steps as
``bpf/include/csum.h`` (so even a checksum's 0x0000/0xffff spelling matches the kernel's), DF cleared,
MACs rewritten. ``Model`` also keeps the counters the kernel keeps. Parsing follows
``bpf/include/parse.h`` rule for rule (status, offsets, ports, fragment flags).

The configuration types (``Config``, ``Mode``, ``Match``, ``NatTarget``, ``Egress``) are the control
plane's too (``bpf.vxlan.pipeline``). Not for: talking to the kernel, or speed.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

_PARSE_H = Path(__file__).resolve().parent.parent / "include" / "parse.h"
IPV6_MAX_EXT_HDRS = int(
    re.search(r"#define IPV6_MAX_EXT_HDRS\s+(\d+)", _PARSE_H.read_text()).group(1)
)
_SOURCE = Path(__file__).with_name("vxlan.bpf.c").read_text()
FRAME_MAX = int(re.search(r"#define VXLAN_FRAME_MAX\s+(\d+)", _SOURCE).group(1))

VXLAN_PORT = 4789
VXLAN_FLAGS_VNI = 0x08  # RFC 7348: the I flag only
ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_P_8021Q, ETH_P_8021AD, ETH_P_PPP_DISC, ETH_P_PPP_SES = 0x8100, 0x88A8, 0x8863, 0x8864
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6 = 6, 17, 1, 58
FRAGMENT, AH = 44, 51
IPV6_EXT = {0, 43, FRAGMENT, 60, AH}
IPV4_DF = 0x4000


class Mode(enum.Enum):
    """How forwarded frames leave: the value names the C enum member (``VXLAN_MODE_*``)."""

    REDIRECT = "redirect"  # XDP on ens5, XDP_REDIRECT through a DEVMAP
    TC = "tc"  # TC ingress on ens5, bpf_redirect(): any driver
    RINGBUF = "ringbuf"  # XDP on ens5, copied to a ring buffer and dropped; userspace re-injects


class Match(enum.Enum):
    """Which inner address must be allowlisted."""

    SRC = "src"
    DST = "dst"
    EITHER = "either"


class Verdict(enum.Enum):
    PASS = "pass"  # not VXLAN to us: to the stack, untouched
    FORWARD = "forward"  # redirected (redirect, tc) or queued to the ring (ringbuf)
    DROP = "drop"


# enum vxlan_drop, as ``DropReason.value`` names: VXLAN_DROP_<VALUE.upper()>
class DropReason(enum.Enum):
    MALFORMED = "malformed"
    VNI = "vni"
    NOT_ALLOWED = "not_allowed"
    RING_FULL = "ring_full"
    TOO_BIG = "too_big"
    REDIRECT_FAILED = "redirect_failed"


@dataclass(frozen=True)
class NatTarget:
    """Where a NAT rule sends a packet: ``port`` 0 keeps the destination port."""

    addr: ipaddress.IPv4Address
    port: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.addr, ipaddress.IPv4Address):
            object.__setattr__(self, "addr", ipaddress.IPv4Address(self.addr))
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"NAT target port {self.port} is not 0..65535")

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}" if self.port else str(self.addr)


@dataclass(frozen=True)
class Config:
    """What the data plane is loaded with. ``vni`` None turns the VNI filter off."""

    mode: Mode = Mode.REDIRECT
    vni: int | None = None
    match: Match = Match.EITHER
    default_nat: NatTarget | None = None

    def __post_init__(self) -> None:
        if self.vni is not None and not 0 <= self.vni < 1 << 24:
            raise ValueError(f"VNI {self.vni} is not a 24-bit value")


@dataclass(frozen=True)
class Egress:
    """The egress side: its own MAC and the next hop's; ``ifindex`` 0 means not configured."""

    src_mac: bytes = bytes(6)
    dst_mac: bytes = bytes(6)
    ifindex: int = 0


# --- parse.h ---------------------------------------------------------------------------------------


@dataclass
class Flow:
    l3_proto: int = 0
    l3_off: int = 0
    l4_off: int = 0
    l4_proto: int = 0
    ip_end: int = 0
    saddr: bytes = b""
    daddr: bytes = b""
    sport: int = 0
    dport: int = 0
    ports: bool = False  # FLOW_F_PORTS
    fragment: bool = False  # FLOW_F_FRAGMENT
    later_fragment: bool = False  # FLOW_F_LATER_FRAGMENT


class _Stop(Exception):
    def __init__(self, status: str) -> None:
        self.status = status


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


def parse(frame: bytes) -> tuple[str, Flow]:
    """The status parse_flow() gives ``frame`` and the flow as far as it got."""
    f = Flow()
    try:
        pos = _l2(frame, f)
        if f.l3_proto == ETH_P_IP:
            _ipv4(frame, pos, f)
        elif f.l3_proto == ETH_P_IPV6:
            _ipv6(frame, pos, f)
        else:
            return "PARSE_NOT_IP", f
    except _Stop as stop:
        return stop.status, f
    return "PARSE_OK", f


def _l2(b: bytes, f: Flow) -> int:
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
    f.l3_proto = proto
    if proto not in (ETH_P_PPP_SES, ETH_P_PPP_DISC):
        return pos
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
    f.l3_proto = ppp
    return pos + 8


def _ipv4(b: bytes, pos: int, f: Flow) -> None:
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
    f.l3_off, f.ip_end = pos, pos + tot_len
    if f.ip_end > len(b):
        raise _Stop("PARSE_TRUNC_IPV4_PAYLOAD")
    f.saddr, f.daddr, f.l4_proto = b[pos + 12 : pos + 16], b[pos + 16 : pos + 20], b[pos + 9]
    frag = _u16(b, pos + 6)
    if frag & 0x1FFF:
        f.fragment = f.later_fragment = True
        return
    f.fragment = bool(frag & 0x2000)
    _l4(b, pos + hlen, f)


def _ipv6(b: bytes, pos: int, f: Flow) -> None:
    if pos + 40 > len(b):
        raise _Stop("PARSE_TRUNC_IPV6")
    if b[pos] >> 4 != 6:
        raise _Stop("PARSE_BAD_IPV6_VERSION")
    f.l3_off, f.ip_end = pos, pos + 40 + _u16(b, pos + 4)
    if f.ip_end > len(b):
        raise _Stop("PARSE_TRUNC_IPV6_PAYLOAD")
    f.saddr, f.daddr = b[pos + 8 : pos + 24], b[pos + 24 : pos + 40]
    nexthdr, pos = b[pos + 6], pos + 40
    for _ in range(IPV6_MAX_EXT_HDRS):
        if nexthdr not in IPV6_EXT:
            break
        if pos + 8 > f.ip_end:
            raise _Stop("PARSE_TRUNC_IPV6_EXT")
        if nexthdr == FRAGMENT:
            length = 8
        elif nexthdr == AH:
            length = (b[pos + 1] + 2) * 4
        else:
            length = (b[pos + 1] + 1) * 8
        if pos + length > f.ip_end:
            raise _Stop("PARSE_TRUNC_IPV6_EXT")
        if nexthdr == FRAGMENT:
            frag = _u16(b, pos + 2)
            f.fragment = f.fragment or bool(frag & 0xFFF9)
            if frag & 0xFFF8:
                f.later_fragment, f.l4_proto = True, b[pos]
                return
        nexthdr, pos = b[pos], pos + length
    if nexthdr in IPV6_EXT:
        raise _Stop("PARSE_TOO_MANY_IPV6_EXT")
    f.l4_proto = nexthdr
    _l4(b, pos, f)


def _l4(b: bytes, off: int, f: Flow) -> None:
    f.l4_off = off
    if f.l4_proto == IPPROTO_TCP:
        if off + 20 > f.ip_end:
            raise _Stop("PARSE_TRUNC_TCP")
        hlen = (b[off + 12] >> 4) * 4
        if hlen < 20:
            raise _Stop("PARSE_BAD_TCP_DOFF")
        if off + hlen > f.ip_end:
            raise _Stop("PARSE_TRUNC_TCP")
    elif f.l4_proto == IPPROTO_UDP:
        if off + 8 > f.ip_end:
            raise _Stop("PARSE_TRUNC_UDP")
    else:
        if f.l4_proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and off + 8 > f.ip_end:
            raise _Stop("PARSE_TRUNC_ICMP")
        return
    f.sport, f.dport, f.ports = _u16(b, off), _u16(b, off + 2), True


# --- csum.h ----------------------------------------------------------------------------------------
# Computed on network-order words: a one's complement sum does not depend on byte order, so these
# give the bytes the kernel's little-endian arithmetic stores.


def csum_fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_replace2(check: int, old: int, new: int) -> int:
    return csum_fold((~check & 0xFFFF) + (~old & 0xFFFF) + new)


def csum_replace4(check: int, old: int, new: int) -> int:
    s = (~check & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
    return csum_fold(s + (new >> 16) + (new & 0xFFFF))


def udp_csum_replace(check: int, replace, old: int, new: int) -> int:
    """RFC 768: 0 means no checksum and stays 0; a computed 0 is sent as 0xffff."""
    if check == 0:
        return 0
    return replace(check, old, new) or 0xFFFF


# --- the pipeline ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: DropReason | None = None
    frame: bytes | None = None  # the forwarded frame
    vxlan: bool = False  # UDP to the VXLAN port
    inner: bool = False  # decapsulated, inner frame parsed
    nat: bool = False
    df_cleared: bool = False

    def __str__(self) -> str:
        return self.verdict.value + (f" ({self.reason.value})" if self.reason else "")


def _drop(reason: DropReason, **done: bool) -> Outcome:
    return Outcome(Verdict.DROP, reason, **done)


@dataclass
class Model:
    """The data plane with its maps, frame by frame; ``stats`` are the kernel's counters, summed."""

    config: Config = field(default_factory=Config)
    hosts: set[ipaddress.IPv4Address] = field(default_factory=set)
    prefixes: set[ipaddress.IPv4Network] = field(default_factory=set)
    nat: dict[int, NatTarget] = field(default_factory=dict)
    egress: Egress = field(default_factory=Egress)
    stats: dict[str, int] = field(default_factory=dict)  # non-zero counters, ``Stats.counts()``

    def allowed(self, addr: bytes) -> bool:
        ip = ipaddress.IPv4Address(addr)
        return ip in self.hosts or any(ip in net for net in self.prefixes)

    def _flow_allowed(self, f: Flow) -> bool:
        if self.config.match is Match.SRC:
            return self.allowed(f.saddr)
        if self.config.match is Match.DST:
            return self.allowed(f.daddr)
        return self.allowed(f.saddr) or self.allowed(f.daddr)

    def feed(self, frame: bytes) -> Outcome:
        """What the data plane does with ``frame``; the counters move as the kernel's do."""
        out = self.predict(frame)
        forwarded = out.verdict is Verdict.FORWARD
        for name, amount in (
            ("total", 1),
            ("bytes", len(frame)),
            ("passed", out.verdict is Verdict.PASS),
            ("vxlan", out.vxlan),
            ("inner", out.inner),
            ("nat", out.nat),
            ("df_cleared", out.df_cleared),
            ("forwarded", forwarded),
            ("forwarded_bytes", len(out.frame) if forwarded else 0),
            ("queued" if self.config.mode is Mode.RINGBUF else "redirected", forwarded),
            (f"drop:{out.reason.value}" if out.reason else "", out.reason is not None),
        ):
            if amount:
                self.stats[name] = self.stats.get(name, 0) + amount
        return out

    def predict(self, frame: bytes) -> Outcome:
        """``feed`` without counting."""
        status, outer = parse(frame)
        if (
            status != "PARSE_OK"
            or outer.l4_proto != IPPROTO_UDP
            or not outer.ports
            or outer.fragment
            or outer.dport != VXLAN_PORT
        ):
            return Outcome(Verdict.PASS)
        pos = outer.l4_off + 8
        if pos + 8 > outer.ip_end or frame[pos] != VXLAN_FLAGS_VNI:
            return _drop(DropReason.MALFORMED, vxlan=True)
        vni = int.from_bytes(frame[pos + 4 : pos + 7], "big")
        if self.config.vni is not None and vni != self.config.vni:
            return _drop(DropReason.VNI, vxlan=True)
        inner_off = pos + 8
        if len(frame) - inner_off < self._decap_minimum(frame):
            return _drop(DropReason.MALFORMED, vxlan=True)
        # The inner frame ends with the outer IP packet; what follows it is carried along.
        buf = bytearray(frame[inner_off:])
        status, f = parse(bytes(buf[: outer.ip_end - inner_off]))
        if status not in ("PARSE_OK", "PARSE_NOT_IP"):
            return _drop(DropReason.MALFORMED, vxlan=True)
        if status != "PARSE_OK" or f.l3_proto != ETH_P_IP or not self._flow_allowed(f):
            return _drop(DropReason.NOT_ALLOWED, vxlan=True, inner=True)
        nat, df = self._rewrite_ipv4(buf, f)
        buf[0:6], buf[6:12] = self.egress.dst_mac, self.egress.src_mac
        done = {"vxlan": True, "inner": True, "nat": nat, "df_cleared": df}
        mode = self.config.mode
        if mode is Mode.RINGBUF and len(buf) > FRAME_MAX:
            return _drop(DropReason.TOO_BIG, **done)
        if mode is not Mode.RINGBUF and not self.egress.ifindex:
            return _drop(DropReason.REDIRECT_FAILED, **done)
        return Outcome(Verdict.FORWARD, None, bytes(buf), **done)

    def _decap_minimum(self, frame: bytes) -> int:
        """The shortest inner frame the head adjustment takes (shorter ones are malformed).

        XDP: an Ethernet header. TC (bpf_skb_adjust_room()): also an L3 header of the skb's protocol,
        the outer ethertype (VLAN tags are out of the data at real TC ingress); any other protocol
        is refused outright.
        """
        if self.config.mode is not Mode.TC:
            return ETH_HLEN
        l3 = {ETH_P_IP: 20, ETH_P_IPV6: 40}.get(_u16(frame, 12))
        return len(frame) + 1 if l3 is None else ETH_HLEN + l3

    def _rewrite_ipv4(self, buf: bytearray, f: Flow) -> tuple[bool, bool]:
        """NAT and DF in place, checksum step by checksum step as the kernel does them."""
        ip = f.l3_off

        def word(off: int) -> int:
            return _u16(buf, off)

        def put(off: int, value: int, size: int = 2) -> None:
            buf[off : off + size] = value.to_bytes(size, "big")

        ports = f.ports and not f.fragment
        target = self.nat.get(f.dport) if ports else None
        if target is None:
            target = self.config.default_nat
        if target is not None:
            old_addr = int.from_bytes(buf[ip + 16 : ip + 20], "big")
            new_addr = int(target.addr)
            new_port = target.port if ports and target.port else f.dport
            put(ip + 10, csum_replace4(word(ip + 10), old_addr, new_addr))
            put(ip + 16, new_addr, 4)
            l4 = not f.later_fragment
            if l4 and f.l4_proto == IPPROTO_TCP:
                check = csum_replace4(word(f.l4_off + 16), old_addr, new_addr)
                put(f.l4_off + 16, csum_replace2(check, f.dport, new_port))
                put(f.l4_off + 2, new_port)
            elif l4 and f.l4_proto == IPPROTO_UDP:
                check = udp_csum_replace(word(f.l4_off + 6), csum_replace4, old_addr, new_addr)
                put(f.l4_off + 6, udp_csum_replace(check, csum_replace2, f.dport, new_port))
                put(f.l4_off + 2, new_port)
        frag = word(ip + 6)
        if frag & IPV4_DF:
            put(ip + 6, frag & ~IPV4_DF)
            put(ip + 10, csum_replace2(word(ip + 10), frag, frag & ~IPV4_DF))
        return target is not None, bool(frag & IPV4_DF)
