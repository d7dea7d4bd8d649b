"""The shared BPF parsers (bpf/include/parse.h) against a pure-Python reference, in the kernel.

``bpf/selftest/parse.bpf.c`` runs ``parse_flow()`` (and, for VXLAN, ``parse_vxlan()`` and the inner
``parse_flow()``) on a packet through ``BPF_PROG_TEST_RUN`` and leaves what it found in a map.
``bpf.parse`` is an independent byte-level model of the same rules; crafted corner cases
and hypothesis-generated packets must agree with it on the status and, for well-formed frames, on
every flow field. The ctx.h datapaths (``bpf/selftest/ctx.bpf.c``) run the same VXLAN decapsulation
and VLAN push for XDP and TC, and must agree with each other and with scapy.

Packets are built with scapy; VXLAN always with ``flags=0x08`` (the I bit: scapy's default, 0x0c, is
VXLAN-GPE). IPv6 extension headers are built by hand so that their lengths are exactly what is meant.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE, PPPoED
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

import bpf
from bpf.btf import plain
from bpf.parse import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_P_PPP_DISC,
    ETH_P_PPP_SES,
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_UDP,
    IPV6_EXT_HDR_PROTOS,
    IPV6_MAX_EXT_HDRS,
    VXLAN_FLAGS_VNI,
    VXLAN_PORT,
    Flow,
    FlowFlags,
    Parsed,
    parse_flow,
    parse_vxlan,
)

SELFTEST = Path(bpf.__file__).parent / "selftest"

ETH_P_ARP = 0x0806


def c_enum(name: str) -> dict[str, int]:
    """The members of ``enum name`` of parse.h, as clang compiled them (the selftest's BTF)."""
    with bpf.BpfObject.open(SELFTEST / "parse.bpf.c") as obj:
        return obj.enum(name)


STATUS = c_enum("parse_status")
STATUS_NAME = {v: k for k, v in STATUS.items()}
FLAG = c_enum("flow_flags")


@dataclass
class Result:
    """The part of parse.bpf.c's ``struct parse_result`` that the reference predicts."""

    outer: Parsed
    # UDP to VXLAN_PORT: parse_vxlan()'s error, or parse_flow() on the inner frame
    inner: Parsed | None = None
    vni: int = 0


def reference_result(frame: bytes) -> Result:
    """What parse.bpf.c must find in ``frame``, by the Python reference (``bpf.parse``)."""
    result = Result(parse_flow(frame))
    flow = result.outer.flow
    if (
        result.outer.status == "PARSE_OK"
        and flow.l4_proto == IPPROTO_UDP
        and flow.dport == VXLAN_PORT
    ):
        vxlan = parse_vxlan(frame, result.outer)
        if vxlan.status == "PARSE_OK":
            result.inner, result.vni = parse_flow(vxlan.inner), vxlan.vni
        else:
            result.inner = Parsed(vxlan.status, Flow(), 0)
    return result


# --- the kernel side ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parser():
    with bpf.BpfObject.open(SELFTEST / "parse.bpf.c") as obj:
        obj.load()
        rss = obj.maps["rss_table"]
        rss[0] = rss.value_type()  # an all-zero table: the hashes are tested in test_toeplitz.py
        yield obj


def _swap16(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "little"), "big")


def kernel_flags(value: int) -> FlowFlags:
    """A struct flow's flags by name, through the values BTF gives enum flow_flags' members."""
    assert not value & ~sum(FLAG.values()), f"flags {value:#x}: bits outside enum flow_flags"
    flags = FlowFlags(0)
    for name, bit in FLAG.items():
        if value & bit:
            flags |= FlowFlags[name]
    return flags


def kernel_flow(f) -> Flow:
    """A struct flow from the map, wire-order fields turned into plain integers."""
    return Flow(
        saddr=bytes(f.saddr.bytes),
        daddr=bytes(f.daddr.bytes),
        sport=_swap16(f.sport),
        dport=_swap16(f.dport),
        l3_proto=_swap16(f.l3_proto),
        l4_proto=f.l4_proto,
        vlan_depth=f.vlan_depth,
        vlan_tci=plain(f.vlan_tci),
        pppoe_sid=f.pppoe_sid,
        l3_off=f.l3_off,
        l4_off=f.l4_off,
        flags=kernel_flags(f.flags),
        ip_end=f.ip_end,
    )


def kernel_result(obj, frame: bytes) -> Result:
    run = obj.programs["parse_xdp"].test_run(frame)
    assert run.verdict is bpf.XdpAction.PASS, f"parse_xdp gave {run.verdict!r}"
    r = obj.maps["results"][0]
    result = Result(Parsed(STATUS_NAME[r.status], kernel_flow(r.flow), r.payload_off))
    if r.is_vxlan:
        result.inner = Parsed(STATUS_NAME[r.vxlan_status], kernel_flow(r.inner), 0)
        result.vni = r.vni
    return result


def assert_same(obj, frame: bytes, expect_status: str | None = None) -> Result:
    """The kernel agrees with the reference on ``frame``; returns the kernel's result."""
    want, got = reference_result(frame), kernel_result(obj, frame)
    where = f"frame {frame.hex()}"
    if expect_status is not None:
        assert want.outer.status == expect_status, (
            f"test bug: reference says {want.outer.status}; {where}"
        )
    assert got.outer.status == want.outer.status, (
        f"status: expected {want.outer.status}, got {got.outer.status}; {where}"
    )
    if want.outer.status in ("PARSE_OK", "PARSE_NOT_IP"):
        assert got.outer.flow == want.outer.flow, (
            f"flow: expected {want.outer.flow}, got {got.outer.flow}; {where}"
        )
    if want.outer.status == "PARSE_OK":
        assert got.outer.payload_off == want.outer.payload_off, (
            f"cursor stopped at {got.outer.payload_off}; {where}"
        )
    assert (got.inner is None) == (want.inner is None), f"VXLAN seen by one side only; {where}"
    if want.inner is not None:
        assert got.inner.status == want.inner.status, (
            f"VXLAN/inner status: expected {want.inner.status}, got {got.inner.status}; {where}"
        )
        if want.inner.status in ("PARSE_OK", "PARSE_NOT_IP"):
            assert got.vni == want.vni
            assert got.inner.flow == want.inner.flow, f"inner flow differs; {where}"
    return got


# --- packets ---------------------------------------------------------------------------------------

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:0:1::2"}


def ext_hdr(kind: int, nexthdr: int, units: int = 0, frag_off: int = 0) -> bytes:
    """An IPv6 extension header: ``units`` is its length field (8-byte units; AH: 4-byte units)."""
    if kind == IPPROTO_FRAGMENT:
        return struct.pack("!BBHI", nexthdr, 0, frag_off, 0x1234)
    size = (units + 2) * 4 if kind == IPPROTO_AH else (units + 1) * 8
    return bytes([nexthdr, units]) + bytes(size - 2)


def ipv6_chain(kinds: list[int], l4_proto: int, l4: bytes, frag_off: int = 0) -> IPv6:
    """IPv6 with extension headers ``kinds`` in order, then ``l4`` as protocol ``l4_proto``."""
    chain = b""
    for kind, nxt in zip(kinds, [*kinds[1:], l4_proto], strict=False):
        chain += ext_hdr(kind, nxt, units=1, frag_off=frag_off)
    return IPv6(nh=kinds[0] if kinds else l4_proto, **V6) / Raw(chain + l4)


def tcp_udp_ipv4() -> list[bytes]:
    return [
        bytes(Ether(**MACS) / IP(**V4) / TCP(sport=1234, dport=80) / b"payload"),
        bytes(Ether(**MACS) / IP(**V4) / UDP(sport=5353, dport=53) / b"q"),
    ]


CRAFTED = {
    "ipv4 tcp": (Ether(**MACS) / IP(**V4) / TCP(sport=1234, dport=80), "PARSE_OK"),
    "ipv4 options": (
        Ether(**MACS) / IP(options=[IPOption_NOP()] * 12, **V4) / UDP(sport=1, dport=2),
        "PARSE_OK",
    ),
    "ipv4 max options": (
        Ether(**MACS) / IP(options=[IPOption_NOP()] * 40, **V4) / TCP(options=[("MSS", 1460)]),
        "PARSE_OK",
    ),
    "ipv4 first fragment": (Ether(**MACS) / IP(flags="MF", **V4) / UDP(dport=9), "PARSE_OK"),
    "ipv4 later fragment": (Ether(**MACS) / IP(frag=185, **V4) / Raw(b"x" * 8), "PARSE_OK"),
    "ipv4 later fragment, tiny": (Ether(**MACS) / IP(frag=1, proto=6, **V4), "PARSE_OK"),
    "ipv4 icmp": (Ether(**MACS) / IP(**V4) / ICMP(), "PARSE_OK"),
    "ipv4 gre (not parsed)": (Ether(**MACS) / IP(proto=47, **V4) / Raw(b"\0" * 4), "PARSE_OK"),
    "ipv4 bad version": (Ether(**MACS) / IP(version=5, **V4) / UDP(), "PARSE_BAD_IPV4_VERSION"),
    "ipv4 ihl 4": (Ether(**MACS) / IP(ihl=4, **V4) / UDP(), "PARSE_BAD_IPV4_IHL"),
    "ipv4 tot_len < header": (Ether(**MACS) / IP(len=19, **V4) / UDP(), "PARSE_BAD_IPV4_TOTLEN"),
    "ipv4 tot_len > frame": (Ether(**MACS) / IP(len=100, **V4) / UDP(), "PARSE_TRUNC_IPV4_PAYLOAD"),
    "ipv4 tcp doff 4": (Ether(**MACS) / IP(**V4) / TCP(dataofs=4), "PARSE_BAD_TCP_DOFF"),
    "ipv4 tcp options past ip": (
        Ether(**MACS) / IP(**V4, proto=6) / Raw(bytes(TCP(dataofs=8))[:28]),
        "PARSE_TRUNC_TCP",
    ),
    "ipv4 padding after ip": (
        bytes(Ether(**MACS) / IP(**V4) / UDP(dport=7)) + bytes(30),
        "PARSE_OK",
    ),
    "ipv6 udp": (Ether(**MACS) / IPv6(**V6) / UDP(sport=1, dport=2), "PARSE_OK"),
    "ipv6 icmpv6": (Ether(**MACS) / ipv6_chain([], 58, bytes(8)), "PARSE_OK"),
    "ipv6 ext chain": (
        Ether(**MACS)
        / ipv6_chain(
            [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_AH], 6, bytes(TCP(dport=22))
        ),
        "PARSE_OK",
    ),
    "ipv6 first fragment": (
        Ether(**MACS) / ipv6_chain([IPPROTO_FRAGMENT], 17, bytes(UDP(dport=9)), frag_off=1),
        "PARSE_OK",
    ),
    "ipv6 later fragment": (
        Ether(**MACS)
        / ipv6_chain([IPPROTO_HOPOPTS, IPPROTO_FRAGMENT], 17, bytes(4), frag_off=8 | 1),
        "PARSE_OK",
    ),
    "ipv6 atomic fragment": (
        Ether(**MACS) / ipv6_chain([IPPROTO_FRAGMENT], 17, bytes(UDP(dport=9))),
        "PARSE_OK",
    ),
    "ipv6 max ext headers": (
        Ether(**MACS) / ipv6_chain([IPPROTO_DSTOPTS] * IPV6_MAX_EXT_HDRS, 17, bytes(UDP())),
        "PARSE_OK",
    ),
    "ipv6 too many ext headers": (
        Ether(**MACS) / ipv6_chain([IPPROTO_DSTOPTS] * (IPV6_MAX_EXT_HDRS + 1), 17, bytes(UDP())),
        "PARSE_TOO_MANY_IPV6_EXT",
    ),
    "ipv6 ext header past payload": (
        Ether(**MACS) / IPv6(nh=IPPROTO_HOPOPTS, **V6) / Raw(bytes([17, 2]) + bytes(14)),
        "PARSE_TRUNC_IPV6_EXT",
    ),
    "ipv6 no next header": (Ether(**MACS) / ipv6_chain([IPPROTO_DSTOPTS], 59, b""), "PARSE_OK"),
    "ipv6 bad version": (Ether(**MACS) / IPv6(version=4, **V6), "PARSE_BAD_IPV6_VERSION"),
    "ipv6 payload_len > frame": (Ether(**MACS) / IPv6(plen=60, **V6), "PARSE_TRUNC_IPV6_PAYLOAD"),
    "ipv6 truncated udp": (Ether(**MACS) / IPv6(nh=17, **V6) / Raw(bytes(7)), "PARSE_TRUNC_UDP"),
    "ipv6 truncated icmpv6": (Ether(**MACS) / ipv6_chain([], 58, bytes(4)), "PARSE_TRUNC_ICMP"),
    "vlan": (Ether(**MACS) / Dot1Q(vlan=100, prio=5) / IP(**V4) / UDP(), "PARSE_OK"),
    "qinq": (
        Ether(**MACS) / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IPv6(**V6) / TCP(),
        "PARSE_OK",
    ),
    "three tags": (
        Ether(**MACS) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(**V4),
        "PARSE_TOO_MANY_VLANS",
    ),
    "arp": (Ether(**MACS) / ARP(), "PARSE_NOT_IP"),
    "pppoe ipv4": (
        Ether(**MACS) / PPPoE(sessionid=0x1234) / PPP(proto=0x21) / IP(**V4) / UDP(dport=53),
        "PARSE_OK",
    ),
    "pppoe ipv6 under qinq": (
        Ether(**MACS)
        / Dot1AD(vlan=7)
        / Dot1Q(vlan=8)
        / PPPoE(sessionid=9)
        / PPP(proto=0x57)
        / IPv6(**V6)
        / TCP(),
        "PARSE_OK",
    ),
    "pppoe lcp": (
        Ether(**MACS) / PPPoE(sessionid=3) / PPP(proto=0xC021) / Raw(bytes(4)),
        "PARSE_NOT_IP",
    ),
    "pppoe discovery": (Ether(**MACS) / PPPoED(code=0x09), "PARSE_NOT_IP"),
    "pppoe bad version": (
        Ether(**MACS) / PPPoE(version=2) / PPP(proto=0x21) / IP(**V4),
        "PARSE_BAD_PPPOE",
    ),
    "pppoe session with a code": (
        Ether(**MACS) / PPPoE(code=0x07) / PPP(proto=0x21) / IP(**V4),
        "PARSE_BAD_PPPOE",
    ),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted(parser, name):
    packet, status = CRAFTED[name]
    assert_same(parser, bytes(packet), status)


def test_crafted_fields_spot_check(parser):
    """Independent of the reference: a few fields read straight off a QinQ PPPoE packet."""
    packet = CRAFTED["pppoe ipv6 under qinq"][0]
    got = kernel_result(parser, bytes(packet)).outer
    assert got.flow.vlan_depth == 2 and got.flow.vlan_tci == [7, 8]
    assert (
        got.flow.pppoe_sid == 9
        and got.flow.flags == FlowFlags.FLOW_F_PPPOE | FlowFlags.FLOW_F_PORTS
    )
    assert got.flow.l3_proto == ETH_P_IPV6 and got.flow.l3_off == 14 + 8 + 8
    assert got.flow.l4_off == got.flow.l3_off + 40 and got.flow.l4_proto == 6


def _every_cut(packet) -> list[bytes]:
    data = bytes(packet)
    return [data[:n] for n in range(14, len(data) + 1)]  # test_run refuses less than ETH_HLEN


@pytest.mark.parametrize(
    "name", ["qinq", "pppoe ipv6 under qinq", "ipv4 max options", "ipv6 ext chain"]
)
def test_truncated_at_every_byte(parser, name):
    for frame in _every_cut(CRAFTED[name][0]):
        assert_same(parser, frame)


@pytest.mark.parametrize("name", ["ipv4 tcp", "ipv6 ext chain", "pppoe ipv4"])
def test_l4_truncated_inside_a_consistent_ip_packet(parser, name):
    """Cut L4 short and fix up the IP length: TRUNC_TCP/UDP, not a payload length error."""
    packet = CRAFTED[name][0]
    ip = packet.getlayer(IP) or packet.getlayer(IPv6)
    l2 = bytes(packet)[: len(bytes(packet)) - len(bytes(ip))]
    whole = bytes(ip.payload)
    for n in range(len(whole)):
        header = ip.copy()
        header.remove_payload()  # and let scapy recompute tot_len / payload_len
        assert_same(parser, l2 + bytes(header / Raw(whole[:n])))


def vxlan(inner, flags: int = VXLAN_FLAGS_VNI, outer6: bool = False, vni: int = 0xABCDE) -> bytes:
    outer = IPv6(**V6) if outer6 else IP(**V4)
    return bytes(
        Ether(**MACS)
        / outer
        / UDP(sport=49152, dport=VXLAN_PORT)
        / VXLAN(flags=flags, vni=vni)
        / inner
    )


INNER = (
    Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
    / IP(src="10.0.0.1", dst="10.0.0.2")
    / TCP()
)


def test_vxlan(parser):
    got = assert_same(parser, vxlan(INNER))
    assert got.inner.status == "PARSE_OK" and got.vni == 0xABCDE
    assert got.inner.flow.l3_off == 14 and got.inner.flow.saddr[:4] == bytes([10, 0, 0, 1])
    tagged = Ether(**MACS) / Dot1Q(vlan=5) / IPv6(**V6) / UDP(sport=3, dport=4)
    got = assert_same(parser, vxlan(tagged, outer6=True))
    assert got.inner.flow.vlan_tci == [5, 0] and got.inner.flow.dport == 4


@pytest.mark.parametrize("flags", [0x00, 0x0C, 0x88, 0x09])
def test_vxlan_wrong_flags(parser, flags):
    got = assert_same(parser, vxlan(INNER, flags=flags))
    assert got.inner.status == "PARSE_BAD_VXLAN_FLAGS", f"flags {flags:#x} must be refused"


def test_vxlan_inner_truncated_at_every_byte(parser):
    """The inner frame ends with the outer IP packet, whatever the cut: TRUNC_ETH included."""
    whole = bytes(INNER)
    statuses = set()
    for n in range(len(whole) + 1):
        got = assert_same(parser, vxlan(Raw(whole[:n])))
        statuses.add(got.inner.status)
    assert {
        "PARSE_TRUNC_ETH",
        "PARSE_TRUNC_IPV4",
        "PARSE_TRUNC_IPV4_PAYLOAD",
        "PARSE_OK",
    } <= statuses


def test_vxlan_header_truncated(parser):
    frame = bytes(
        Ether(**MACS) / IP(**V4) / UDP(dport=VXLAN_PORT) / Raw(bytes([VXLAN_FLAGS_VNI, 0, 0]))
    )
    assert assert_same(parser, frame).inner.status == "PARSE_TRUNC_VXLAN"


# --- hypothesis ----------------------------------------------------------------------------------


@st.composite
def l4_layer(draw, allow_vxlan: bool = True):
    kind = draw(
        st.sampled_from(
            ["tcp", "udp", "icmp", "other", "vxlan"]
            if allow_vxlan
            else ["tcp", "udp", "icmp", "other"]
        )
    )
    ports = {"sport": draw(st.integers(0, 65535)), "dport": draw(st.integers(0, 65535))}
    if kind == "tcp":
        opts = draw(st.integers(0, 10))
        return 6, bytes(TCP(**ports, options=[("NOP", None)] * opts))
    if kind == "udp":
        return 17, bytes(UDP(**ports))
    if kind == "icmp":
        return 1, bytes(ICMP())
    if kind == "vxlan":
        flags = draw(st.sampled_from([VXLAN_FLAGS_VNI, VXLAN_FLAGS_VNI, 0x0C, 0]))
        inner = draw(packets(allow_vxlan=False))
        return 17, bytes(
            UDP(sport=ports["sport"], dport=VXLAN_PORT)
            / VXLAN(flags=flags, vni=ports["dport"])
            / Raw(inner)
        )
    return draw(st.sampled_from([47, 50, 132, 59])), draw(st.binary(max_size=12))


@st.composite
def packets(draw, allow_vxlan: bool = True) -> bytes:
    """Ethernet frames of every shape the parser knows, often cut short or with a byte changed."""
    l4_proto, l4 = draw(l4_layer(allow_vxlan))
    l4 += draw(st.binary(max_size=16))
    if draw(st.booleans()):
        frag = draw(st.sampled_from([0, 0x2000, 0x2000 | 3, 185]))
        ihl_options = [IPOption_NOP()] * draw(st.integers(0, 40))
        l3 = bytes(
            IP(proto=l4_proto, flags=frag >> 13, frag=frag & 0x1FFF, options=ihl_options, **V4)
            / Raw(l4)
        )
        ethertype, ppp = ETH_P_IP, 0x21
    else:
        kinds = draw(
            st.lists(st.sampled_from(sorted(IPV6_EXT_HDR_PROTOS)), max_size=IPV6_MAX_EXT_HDRS + 1)
        )
        frag_off = draw(st.sampled_from([0, 1, 8, 9]))
        l3 = bytes(ipv6_chain(kinds, l4_proto, l4, frag_off=frag_off))
        ethertype, ppp = ETH_P_IPV6, 0x57
    l2 = bytes(Ether(**MACS))[:12]
    ntags = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    for tag in draw(
        st.lists(st.sampled_from([ETH_P_8021Q, ETH_P_8021AD]), min_size=ntags, max_size=ntags)
    ):
        l2 += struct.pack("!HH", tag, draw(st.integers(0, 0xFFFF)))
    encap = draw(st.sampled_from(["none"] * 4 + ["pppoe"] * 2 + ["pppoe-lcp", "pppoe-disc", "arp"]))
    if encap == "none":
        frame = l2 + struct.pack("!H", ethertype) + l3
    elif encap == "arp":
        frame = l2 + struct.pack("!H", ETH_P_ARP) + bytes(ARP())
    elif encap == "pppoe-disc":
        frame = l2 + struct.pack("!H", ETH_P_PPP_DISC) + bytes(PPPoED())
    else:
        proto = ppp if encap == "pppoe" else 0xC021
        session = struct.pack("!BBHH", 0x11, 0, draw(st.integers(0, 0xFFFF)), len(l3) + 2)
        frame = l2 + struct.pack("!H", ETH_P_PPP_SES) + session + struct.pack("!H", proto) + l3
    if draw(st.booleans()):  # cut short: near the end (small cuts) as often as anywhere
        cut = draw(st.integers(0, len(frame) - 14))
        frame = frame[: len(frame) - cut] if draw(st.booleans()) else frame[: 14 + cut]
    if draw(st.booleans()):
        pos = draw(st.integers(12, len(frame) - 1))
        frame = frame[:pos] + bytes([draw(st.integers(0, 255))]) + frame[pos + 1 :]
    return frame


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=packets())
def test_hypothesis_packets(parser, frame):
    assert_same(parser, frame)


# --- ctx.h: one datapath, XDP and TC ----------------------------------------------------------


@pytest.fixture(scope="module")
def ctx_programs():
    with bpf.BpfObject.open(SELFTEST / "ctx.bpf.c") as obj:
        yield obj.load()


@pytest.mark.parametrize("outer6", [False, True])
def test_decap_xdp_and_tc(ctx_programs, outer6):
    frame = vxlan(INNER, outer6=outer6)
    xdp = ctx_programs.programs["decap_xdp"].test_run(frame)
    tc = ctx_programs.programs["decap_tc"].test_run(frame)
    assert xdp.verdict is bpf.XdpAction.PASS and tc.verdict is bpf.TcAction.OK
    assert xdp.packet == bytes(INNER), (
        f"XDP decap: expected {bytes(INNER).hex()}, got {xdp.packet.hex()}"
    )
    assert tc.packet == bytes(INNER), (
        f"TC decap: expected {bytes(INNER).hex()}, got {tc.packet.hex()}"
    )


def test_decap_drops_malformed_and_passes_other(ctx_programs):
    bad = vxlan(INNER, flags=0x0C)
    plain_udp = tcp_udp_ipv4()[1]
    for hook, drop, ok in (
        ("xdp", bpf.XdpAction.DROP, bpf.XdpAction.PASS),
        ("tc", bpf.TcAction.SHOT, bpf.TcAction.OK),
    ):
        prog = ctx_programs.programs[f"decap_{hook}"]
        assert prog.test_run(bad).verdict is drop, f"{hook}: VXLAN-GPE flags must be dropped"
        run = prog.test_run(plain_udp)
        assert run.verdict is ok and run.packet == plain_udp, (
            f"{hook}: non-VXLAN must pass untouched"
        )


def test_vlan_push_xdp_and_tc(ctx_programs):
    frame = tcp_udp_ipv4()[0]
    expect = bytes(Ether(**MACS) / Dot1Q(vlan=100) / Ether(frame).payload)
    for hook in ("xdp", "tc"):
        run = ctx_programs.programs[f"vlan_push_{hook}"].test_run(frame)
        assert run.packet == expect, f"{hook}: expected {expect.hex()}, got {run.packet.hex()}"
