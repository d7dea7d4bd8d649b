"""The Python reference of ``bpf/include/parse.h``, against which the kernel is tested and on which
the data planes' models are built.

``parse_flow(frame)`` applies the rules of parse_flow() byte for byte: Ethernet, up to
``VLAN_MAX_DEPTH`` 802.1Q/802.1ad tags, PPPoE (session and discovery), IPv4 (options, fragments) or
IPv6 (at most ``IPV6_MAX_EXT_HDRS`` extension headers), then TCP/UDP/ICMP. It gives the status, the
``struct flow`` as far as it got and where the cursor stopped. ``parse_vxlan(frame, outer)`` is
parse_vxlan(): the VXLAN header after an outer UDP flow, and the inner frame to run parse_flow() on.

A status is the member name of ``enum parse_status`` (``"PARSE_OK"``, ``"PARSE_TRUNC_UDP"``...) and
``FlowFlags`` names the members of ``enum flow_flags``: the kernel's values for them come from BTF
(``BpfObject.enum``), never from here. The limits (``VLAN_MAX_DEPTH``, ``IPV6_MAX_EXT_HDRS``) and
``VXLAN_PORT`` are read from parse.h; protocol numbers are the RFCs', as in the kernel's UAPI
headers. ``Flow`` holds ports, protocols and offsets as plain integers (the C struct keeps some in
network order) and addresses as the 16 bytes of ``union flow_addr``.

``unparsed(obj)`` reads what a data plane built on parse.h counted of the frames it could not
parse (its ``unparsed`` map, indexed by ``enum parse_status``).

Not for: speed, or building packets (scapy does that).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf.build import c_define

PARSE_H = Path(__file__).resolve().parent / "include" / "parse.h"


VLAN_MAX_DEPTH = c_define(PARSE_H, "VLAN_MAX_DEPTH")
IPV6_MAX_EXT_HDRS = c_define(PARSE_H, "IPV6_MAX_EXT_HDRS")
VXLAN_PORT = c_define(PARSE_H, "VXLAN_PORT")

ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_P_8021Q, ETH_P_8021AD = 0x8100, 0x88A8
ETH_P_PPP_DISC, ETH_P_PPP_SES = 0x8863, 0x8864
PPPOE_VER_TYPE = 0x11  # RFC 2516: version 1, type 1
PPP_PROTO_IPV4, PPP_PROTO_IPV6 = 0x0021, 0x0057
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT = 0, 43, 44
IPPROTO_AH, IPPROTO_DSTOPTS = 51, 60
IPV6_EXT_HDR_PROTOS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS, IPPROTO_AH}
)
IPV4_MF, IPV4_OFFSET = 0x2000, 0x1FFF  # frag_off: more fragments, offset in 8-byte units
IPV6_FRAG_OFFSET, IPV6_FRAG_MF = 0xFFF8, 0x0001
VXLAN_FLAGS_VNI = 0x08  # RFC 7348: the I flag, the only one VXLAN (not GPE/GBP) sets
VXLAN_HLEN = 8


class FlowFlags(enum.Flag):
    """``enum flow_flags`` by member name."""

    FLOW_F_PPPOE = enum.auto()  # PPPoE session or discovery; pppoe_sid is set
    FLOW_F_FRAGMENT = enum.auto()  # IPv4 MF/offset or IPv6 fragment header MF/offset
    FLOW_F_LATER_FRAGMENT = enum.auto()  # offset != 0: no L4 header in this packet
    FLOW_F_PORTS = enum.auto()  # sport/dport hold TCP or UDP ports


@dataclass
class Flow:
    """``struct flow``: what parse_flow() fills in, as far as it gets."""

    saddr: bytes = bytes(16)  # IPv4: the address, then 12 zero bytes
    daddr: bytes = bytes(16)
    sport: int = 0
    dport: int = 0
    l3_proto: int = 0  # ETH_P_IP or ETH_P_IPV6 (also under PPPoE), else the ethertype
    l4_proto: int = 0  # after IPv6 extension headers
    vlan_depth: int = 0
    vlan_tci: list[int] = field(default_factory=lambda: [0] * VLAN_MAX_DEPTH)  # outer first
    pppoe_sid: int = 0
    l3_off: int = 0  # offsets from the start of the frame
    l4_off: int = 0  # upper-layer header; 0 if none (not IP, later fragment)
    flags: FlowFlags = field(default=FlowFlags(0))
    ip_end: int = 0  # end of the IP packet: the frame may carry padding after it

    @property
    def src(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._address(self.saddr)

    @property
    def dst(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._address(self.daddr)

    def _address(self, addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if self.l3_proto == ETH_P_IP:
            return ipaddress.IPv4Address(addr[:4])
        if self.l3_proto == ETH_P_IPV6:
            return ipaddress.IPv6Address(addr)
        raise ValueError(f"a flow of ethertype {self.l3_proto:#06x} has no IP addresses")


@dataclass
class Parsed:
    """What parse_flow() returns and leaves behind."""

    status: str  # a member name of enum parse_status
    flow: Flow
    # The cursor on PARSE_OK (the L4 payload, or the upper-layer header of a protocol not parsed)
    # and on PARSE_NOT_IP (the end of L2); 0 on errors.
    payload_off: int


@dataclass(frozen=True)
class Vxlan:
    """What parse_vxlan() finds after an outer UDP flow."""

    status: str  # PARSE_OK, PARSE_TRUNC_VXLAN or PARSE_BAD_VXLAN_FLAGS
    vni: int = 0
    inner_off: int = 0  # where the inner Ethernet frame starts
    inner: bytes = b""  # the inner frame: it ends with the outer IP packet


class _Stop(Exception):
    def __init__(self, status: str, pos: int = 0) -> None:
        self.status, self.pos = status, pos


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


def parse_flow(frame: bytes) -> Parsed:
    """What parse_flow() finds in ``frame``: the status, the flow and where the cursor stops."""
    f = Flow()
    try:
        pos = _l2(frame, f)
        if f.l3_proto == ETH_P_IP:
            pos = _ipv4(frame, pos, f)
        elif f.l3_proto == ETH_P_IPV6:
            pos = _ipv6(frame, pos, f)
        else:
            raise _Stop("PARSE_NOT_IP", pos)
    except _Stop as stop:
        return Parsed(stop.status, f, stop.pos)
    return Parsed("PARSE_OK", f, pos)


def parse_vxlan(frame: bytes, outer: Parsed) -> Vxlan:
    """The VXLAN header at ``outer``'s payload: ``outer`` is a PARSE_OK UDP flow (to VXLAN_PORT, or
    another port the caller configured)."""
    pos, ip_end = outer.payload_off, outer.flow.ip_end
    if pos + VXLAN_HLEN > ip_end:
        return Vxlan("PARSE_TRUNC_VXLAN")
    if frame[pos] != VXLAN_FLAGS_VNI:
        return Vxlan("PARSE_BAD_VXLAN_FLAGS")
    vni = int.from_bytes(frame[pos + 4 : pos + 7], "big")
    inner_off = pos + VXLAN_HLEN
    return Vxlan("PARSE_OK", vni, inner_off, frame[inner_off:ip_end])


def _l2(b: bytes, f: Flow) -> int:
    if len(b) < ETH_HLEN:
        raise _Stop("PARSE_TRUNC_ETH")
    proto, pos = _u16(b, 12), ETH_HLEN
    for i in range(VLAN_MAX_DEPTH):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if pos + 4 > len(b):
            raise _Stop("PARSE_TRUNC_VLAN")
        f.vlan_tci[i], f.vlan_depth, proto = _u16(b, pos), i + 1, _u16(b, pos + 2)
        pos += 4
    if proto in (ETH_P_8021Q, ETH_P_8021AD):
        raise _Stop("PARSE_TOO_MANY_VLANS")
    f.l3_proto = proto
    if proto not in (ETH_P_PPP_SES, ETH_P_PPP_DISC):
        return pos
    if pos + 6 > len(b):
        raise _Stop("PARSE_TRUNC_PPPOE")
    if b[pos] != PPPOE_VER_TYPE:
        raise _Stop("PARSE_BAD_PPPOE")
    f.flags |= FlowFlags.FLOW_F_PPPOE
    f.pppoe_sid = _u16(b, pos + 2)
    if proto == ETH_P_PPP_DISC:
        raise _Stop("PARSE_NOT_IP", pos + 6)
    if b[pos + 1] != 0:
        raise _Stop("PARSE_BAD_PPPOE")
    if pos + 8 > len(b):
        raise _Stop("PARSE_TRUNC_PPPOE")
    ppp = _u16(b, pos + 6)
    if ppp not in (PPP_PROTO_IPV4, PPP_PROTO_IPV6):
        raise _Stop("PARSE_NOT_IP", pos + 8)
    f.l3_proto = ETH_P_IP if ppp == PPP_PROTO_IPV4 else ETH_P_IPV6
    return pos + 8


def _ipv4(b: bytes, pos: int, f: Flow) -> int:
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
    f.saddr, f.daddr = b[pos + 12 : pos + 16] + bytes(12), b[pos + 16 : pos + 20] + bytes(12)
    f.l4_proto = b[pos + 9]
    frag = _u16(b, pos + 6)
    if frag & IPV4_OFFSET:
        f.flags |= FlowFlags.FLOW_F_FRAGMENT | FlowFlags.FLOW_F_LATER_FRAGMENT
        return pos + hlen  # no L4 header
    if frag & IPV4_MF:
        f.flags |= FlowFlags.FLOW_F_FRAGMENT
    return _l4(b, pos + hlen, f)


def _ipv6(b: bytes, pos: int, f: Flow) -> int:
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
        if nexthdr not in IPV6_EXT_HDR_PROTOS:
            break
        # Every extension header is at least 8 bytes; its length field says how many more.
        if pos + 8 > f.ip_end:
            raise _Stop("PARSE_TRUNC_IPV6_EXT")
        if nexthdr == IPPROTO_FRAGMENT:
            length = 8
        elif nexthdr == IPPROTO_AH:
            length = (b[pos + 1] + 2) * 4  # RFC 4302: in 4-byte units
        else:
            length = (b[pos + 1] + 1) * 8
        if pos + length > f.ip_end:
            raise _Stop("PARSE_TRUNC_IPV6_EXT")
        if nexthdr == IPPROTO_FRAGMENT:
            frag = _u16(b, pos + 2)
            if frag & (IPV6_FRAG_OFFSET | IPV6_FRAG_MF):
                f.flags |= FlowFlags.FLOW_F_FRAGMENT
            if frag & IPV6_FRAG_OFFSET:
                # The rest of the chain, L4 included, is in the first fragment.
                f.flags |= FlowFlags.FLOW_F_LATER_FRAGMENT
                f.l4_proto = b[pos]
                return pos + length
        nexthdr, pos = b[pos], pos + length
    if nexthdr in IPV6_EXT_HDR_PROTOS:
        raise _Stop("PARSE_TOO_MANY_IPV6_EXT")
    f.l4_proto = nexthdr
    return _l4(b, pos, f)


def _l4(b: bytes, off: int, f: Flow) -> int:
    """The upper-layer header, checked against the IP packet's end (within the frame's)."""
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
        hlen = 8
    elif f.l4_proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        # type, code, checksum and the 4 bytes every message type has
        if off + 8 > f.ip_end:
            raise _Stop("PARSE_TRUNC_ICMP")
        return off + 8
    else:
        return off
    f.sport, f.dport = _u16(b, off), _u16(b, off + 2)
    f.flags |= FlowFlags.FLOW_F_PORTS
    return off + hlen


def unparsed(obj: Any) -> dict[str, int]:
    """Frames the data plane loaded in ``obj`` (a ``BpfObject``) did not parse to a flow, by parse
    status (``PARSE_NOT_IP``, ``PARSE_TRUNC_UDP``...), summed over CPUs; statuses never met are
    left out."""
    table = obj.maps["unparsed"]
    counts = {}
    for name, status in obj.enum("parse_status").items():
        if name not in ("PARSE_OK", "PARSE_STATUS_MAX"):
            n = table.lookup_sum(status)
            if n:
                counts[name] = n
    return counts
