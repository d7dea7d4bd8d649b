"""Packet templates built with scapy: the well-formed starting points of every traffic description.

Each function returns a scapy packet whose lengths and checksums scapy computes on build, so a
template can be padded to any frame size (``pad_to``) and stays consistent. Frame sizes in this
package never include the 4-byte Ethernet FCS (a "64-byte frame" is 60 bytes here).

Protocol details stated once, here:
- VXLAN (RFC 7348): outer Ethernet/IPv4/UDP to port 4789, VXLAN flags 0x08 (only the I bit: VNI
  valid). scapy's default ``VXLAN()`` sets flags 0x0c with next-protocol 3 (VXLAN-GPE), which the
  kernel and AWS do not send. The outer UDP checksum is 0 ("none", RFC 768), as the kernel sends.
- PPPoE (RFC 2516): session stage is Ethernet type 0x8864, PPPoE code 0, then PPP protocol 0x0021
  (IPv4) or 0x0057 (IPv6); discovery is type 0x8863, a PADI is code 0x09 to the broadcast address
  with a Service-Name tag.
- 802.1Q: every Ethernet-level template takes ``vlan=`` and inserts one tag (TPID 0x8100).

Malformed variants are in ``injector.malformed``; variation of fields is in ``injector.spec``.
"""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE, PPPoED, PPPoED_Tags, PPPoETag
from scapy.layers.vxlan import VXLAN
from scapy.packet import NoPayload, Packet, Padding, Raw, raw

SRC_MAC = "02:00:00:00:00:01"
DST_MAC = "02:00:00:00:00:02"
VXLAN_PORT = 4789
VXLAN_FLAG_I = 0x08
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057
PADI_CODE = 0x09
TAG_SERVICE_NAME = 0x0101
TAG_HOST_UNIQ = 0x0103


def ether(src: str = SRC_MAC, dst: str = DST_MAC, vlan: int | None = None) -> Packet:
    """The Ethernet header (with one 802.1Q tag when ``vlan`` is given) that other templates extend."""
    eth = Ether(src=src, dst=dst)
    return eth / Dot1Q(vlan=vlan) if vlan is not None else eth


def _payload(payload: bytes) -> Packet | bytes:
    return Raw(payload) if payload else b""


def udp4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 1024,
    dport: int = 5001,
    payload: bytes = b"",
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
    ttl: int = 64,
) -> Packet:
    return (
        ether(eth_src, eth_dst, vlan)
        / IP(src=src, dst=dst, ttl=ttl)
        / _l4_udp(sport, dport, payload)
    )


def tcp4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 1024,
    dport: int = 80,
    flags: str = "S",
    payload: bytes = b"",
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
    ttl: int = 64,
) -> Packet:
    ip = IP(src=src, dst=dst, ttl=ttl)
    return ether(eth_src, eth_dst, vlan) / ip / _l4_tcp(sport, dport, flags, payload)


def udp6(
    src: str = "fd00::1",
    dst: str = "fd00::2",
    sport: int = 1024,
    dport: int = 5001,
    payload: bytes = b"",
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
    hlim: int = 64,
) -> Packet:
    ip6 = IPv6(src=src, dst=dst, hlim=hlim)
    return ether(eth_src, eth_dst, vlan) / ip6 / _l4_udp(sport, dport, payload)


def tcp6(
    src: str = "fd00::1",
    dst: str = "fd00::2",
    sport: int = 1024,
    dport: int = 80,
    flags: str = "S",
    payload: bytes = b"",
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
    hlim: int = 64,
) -> Packet:
    ip6 = IPv6(src=src, dst=dst, hlim=hlim)
    return ether(eth_src, eth_dst, vlan) / ip6 / _l4_tcp(sport, dport, flags, payload)


def _l4_udp(sport: int, dport: int, payload: bytes) -> Packet:
    return UDP(sport=sport, dport=dport) / _payload(payload)


def _l4_tcp(sport: int, dport: int, flags: str, payload: bytes) -> Packet:
    return TCP(sport=sport, dport=dport, flags=flags, seq=1000) / _payload(payload)


def icmp4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    ident: int = 1,
    seq: int = 1,
    payload: bytes = b"",
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
) -> Packet:
    """An ICMP echo request."""
    icmp = ICMP(type=8, code=0, id=ident, seq=seq) / _payload(payload)
    return ether(eth_src, eth_dst, vlan) / IP(src=src, dst=dst) / icmp


def icmp6(
    src: str = "fd00::1",
    dst: str = "fd00::2",
    ident: int = 1,
    seq: int = 1,
    payload: bytes = b"",
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
) -> Packet:
    """An ICMPv6 echo request."""
    echo = ICMPv6EchoRequest(id=ident, seq=seq, data=payload)
    return ether(eth_src, eth_dst, vlan) / IPv6(src=src, dst=dst) / echo


def pppoe_session(
    l3: Packet | None = None,
    session_id: int = 1,
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
) -> Packet:
    """A PPPoE session frame carrying ``l3`` (an IPv4 or IPv6 packet; default IPv4/UDP) over PPP."""
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1024, dport=5001) if l3 is None else l3
    proto = PPP_IPV6 if isinstance(inner, IPv6) else PPP_IPV4
    session = PPPoE(version=1, type=1, code=0, sessionid=session_id) / PPP(proto=proto)
    return ether(eth_src, eth_dst, vlan) / session / inner


def padi(
    host_uniq: bytes | None = None,
    service_name: bytes = b"",
    eth_src: str = SRC_MAC,
    vlan: int | None = None,
) -> Packet:
    """A PPPoE Active Discovery Initiation to the broadcast address."""
    tags = [PPPoETag(tag_type=TAG_SERVICE_NAME, tag_value=service_name)]
    if host_uniq is not None:
        tags.append(PPPoETag(tag_type=TAG_HOST_UNIQ, tag_value=host_uniq))
    discovery = PPPoED(version=1, type=1, code=PADI_CODE, sessionid=0) / PPPoED_Tags(tag_list=tags)
    return ether(eth_src, "ff:ff:ff:ff:ff:ff", vlan) / discovery


def vxlan(
    inner: Packet,
    vni: int = 1,
    outer_src: str = "192.0.2.1",
    outer_dst: str = "192.0.2.2",
    sport: int = 49152,
    eth_src: str = SRC_MAC,
    eth_dst: str = DST_MAC,
    vlan: int | None = None,
    port: int = VXLAN_PORT,
) -> Packet:
    """``inner`` (an Ethernet frame) encapsulated in VXLAN to UDP ``port``: I flag only, outer UDP
    checksum 0."""
    outer_udp = UDP(sport=sport, dport=port, chksum=0)
    header = VXLAN(flags=VXLAN_FLAG_I, vni=vni)
    return (
        ether(eth_src, eth_dst, vlan)
        / IP(src=outer_src, dst=outer_dst)
        / outer_udp
        / header
        / inner
    )


def pad_to(pkt: Packet, frame_size: int) -> Packet:
    """A copy of ``pkt`` whose innermost payload is extended with zero bytes to ``frame_size``.

    Lengths and checksums are recomputed on build only where the template left them to scapy.
    """
    built = len(pkt)
    if frame_size < built:
        raise ValueError(
            f"frame size {frame_size} is smaller than the template ({built} bytes: {pkt.summary()})"
        )
    padded = pkt.copy()
    if frame_size == built:
        return padded
    last = padded.lastlayer()
    extra = b"\x00" * (frame_size - built)
    if isinstance(last, Raw):
        last.load = bytes(last.load) + extra
    else:
        last.add_payload(Raw(extra))
    if len(padded) != frame_size:
        raise ValueError(
            f"padding {pkt.summary()} to {frame_size} bytes gave {len(padded)}: "
            "a length field in the template is fixed; leave it unset so scapy computes it"
        )
    return padded


def layers_with_offsets(pkt: Packet) -> list[tuple[Packet, int]]:
    """Every header of ``pkt`` (payload and padding excluded) with its byte offset in ``raw(pkt)``."""
    frame = raw(pkt)
    dissected = pkt.__class__(frame)
    result = []
    layer: Packet = dissected
    while not isinstance(layer, NoPayload | Raw | Padding):
        result.append((layer, len(frame) - len(raw(layer))))
        layer = layer.payload
    return result


TEMPLATES = {
    "udp4": udp4,
    "tcp4": tcp4,
    "udp6": udp6,
    "tcp6": tcp6,
    "icmp4": icmp4,
    "icmp6": icmp6,
    "pppoe_session": pppoe_session,
    "padi": padi,
    "vxlan": vxlan,
}
"""The templates a spec file names by ``template.kind``."""
