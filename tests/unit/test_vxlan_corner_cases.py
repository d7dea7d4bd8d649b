"""VXLAN pipeline corner cases through BPF_PROG_TEST_RUN, held to its model: NAT on every kind of
inner packet, fields at the ends of their ranges, and lengths that disagree.

Inner TCP, UDP (with and without a checksum), first and later fragments of both (offsets up to the
largest, 0x1fff), ICMP, and protocols without ports whose payload looks like ports, under no NAT, a
port rule, a default target, and both; IPv6 fragments beside them (NAT targets are IPv4). Each must
leave byte-identical to the model's frame, with checksums that verify where one packet can show it,
the address each target says, and a later fragment's payload untouched. A UDP checksum that the NAT
makes compute to exactly 0 must leave as 0xffff. VNIs from 0 to 2^24 - 1 against VNI filters at
those values; inner frames with ports, addresses, VLAN ids, PPPoE session ids and fragment offsets at
their ends, NAT rules on ports 0 and 65535. The rest of the pipeline: tests/unit/test_vxlan.py.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import checksum

import bpf
from bpf.vxlan import Allowlist, Config, Mode, Model, NatTarget, Verdict, VxlanPipeline
from bpf.vxlan.model import Outcome
from injector import templates

MACS = {"src": "02:00:00:00:01:01", "dst": "02:00:00:00:01:02"}
EGRESS_SRC, NEXT_HOP = "02:00:00:00:03:01", "02:00:00:00:03:02"
V4 = {"src": "10.0.0.1", "dst": "10.0.0.2"}
V6 = {"src": "2001:db8:1::1", "dst": "2001:db8:1::2"}
RULE_PORT, RULE = 80, NatTarget(ipaddress.IPv4Address("10.2.0.2"), 8080)
DEFAULT = NatTarget(ipaddress.IPv4Address("10.2.0.9"), 9000)
# What a bug reading a later fragment's payload as a TCP/UDP header would take for ports 40000 -> 80.
PORT_LIKE = (40000).to_bytes(2, "big") + RULE_PORT.to_bytes(2, "big") + bytes(range(20))


def _later(proto: int, offset: int, more: bool = False) -> Ether:
    flags = "MF" if more else 0
    return Ether(**MACS) / IP(**V4, proto=proto, frag=offset, flags=flags) / Raw(PORT_LIKE)


INNER = {
    "tcp": Ether(**MACS) / IP(**V4) / TCP(sport=40000, dport=RULE_PORT) / Raw(b"data"),
    "udp": Ether(**MACS) / IP(**V4) / UDP(sport=40000, dport=RULE_PORT) / Raw(b"query"),
    "udp without checksum": Ether(**MACS)
    / IP(**V4)
    / UDP(sport=40000, dport=RULE_PORT, chksum=0)
    / Raw(b"query"),
    "tcp first fragment": Ether(**MACS)
    / IP(**V4, flags="MF")
    / TCP(sport=40000, dport=RULE_PORT)
    / Raw(bytes(16)),
    "udp first fragment": Ether(**MACS)
    / IP(**V4, flags="MF")
    / UDP(sport=40000, dport=RULE_PORT)
    / Raw(bytes(16)),
    "tcp later fragment": _later(6, 3, more=True),
    "udp last fragment": _later(17, 185),
    "udp fragment at offset 0x100": _later(17, 0x100, more=True),
    "udp fragment at offset 0x1fff": _later(17, 0x1FFF),
    "icmp echo": Ether(**MACS) / IP(**V4) / ICMP(id=RULE_PORT) / Raw(b"ping"),
    "icmp later fragment": _later(1, 2),
    "gre": Ether(**MACS) / IP(**V4, proto=47) / Raw(PORT_LIKE),
    "sctp": Ether(**MACS) / IP(**V4, proto=132) / Raw(PORT_LIKE),
    "ipv6 udp first fragment": Ether(**MACS)
    / IPv6(**V6)
    / IPv6ExtHdrFragment(m=1, nh=17)
    / UDP(sport=40000, dport=RULE_PORT)
    / Raw(bytes(8)),
    "ipv6 tcp later fragment": Ether(**MACS)
    / IPv6(**V6)
    / IPv6ExtHdrFragment(offset=9, nh=6)
    / Raw(PORT_LIKE),
}
NAT = {
    "no nat": (False, None),
    "port rule": (True, None),
    "default target": (False, DEFAULT),
    "port rule and default": (True, DEFAULT),
}
MODES = {"xdp": Mode.REDIRECT, "tc": Mode.TC}
VERDICTS = {
    Mode.REDIRECT: {
        Verdict.PASS: bpf.XdpAction.PASS,
        Verdict.DROP: bpf.XdpAction.DROP,
        Verdict.FORWARD: bpf.XdpAction.REDIRECT,
    },
    Mode.TC: {
        Verdict.PASS: bpf.TcAction.OK,
        Verdict.DROP: bpf.TcAction.SHOT,
        Verdict.FORWARD: bpf.TcAction.REDIRECT,
    },
}


def pipeline(
    mode: Mode,
    rule: bool,
    default: NatTarget | None,
    vni: int | None = None,
    allowed: tuple[str, ...] = (V4["src"], "2001:db8:1::/48"),
) -> tuple[VxlanPipeline, Model]:
    vx = VxlanPipeline(Config(mode=mode, default_nat=default, vni=vni))
    vx.set_egress("lo", NEXT_HOP, src_mac=EGRESS_SRC)
    model = Model(vx.config, egress=vx.egress())
    allowlist = Allowlist.of(list(allowed))
    vx.set_allowlist(allowlist)
    model.hosts, model.prefixes = set(allowlist.hosts), set(allowlist.prefixes)
    if rule:
        vx.add_nat(RULE_PORT, str(RULE.addr), RULE.port)
        model.nat[RULE_PORT] = RULE
    return vx, model


def encapsulated(inner: bytes, vni: int = 42) -> bytes:
    """``inner`` in VXLAN, every byte of it inside the outer packet: scapy would leave an inner
    Ether()'s padding after the outer IP packet's end."""
    return bytes(templates.vxlan(Raw(inner), vni=vni))


def run(vx: VxlanPipeline, model: Model, frame: bytes, what: str) -> Outcome:
    """``frame`` through the kernel: the model's verdict, and if forwarded its frame, byte for byte."""
    want = model.predict(frame)
    got = vx.program.test_run(frame)
    verdict = VERDICTS[vx.config.mode][want.verdict]
    assert got.verdict is verdict, f"{what}: kernel said {got.verdict!r}, model {want}"
    if want.verdict is Verdict.FORWARD:
        assert got.packet == want.frame, (
            f"{what}: kernel sent {got.packet.hex()}\nmodel sends  {want.frame.hex()}\n"
            f"input frame  {frame.hex()}"
        )
    return want, got.packet


def forward(vx: VxlanPipeline, model: Model, inner: bytes, what: str) -> bytes:
    """The inner frame as the kernel forwards it, which must be the model's, byte for byte."""
    want, out = run(vx, model, encapsulated(inner), what)
    assert want.verdict is Verdict.FORWARD, f"{what}: the model forwards it ({want})"
    return out


def ip_target(kind: str, rule: bool, default: NatTarget | None) -> str:
    """Where the inner IPv4 packet must go, stated apart from the model: a port rule takes a packet
    whose TCP/UDP ports it can read (not a fragment), else the default target, else nowhere new."""
    ports_read = kind in ("tcp", "udp", "udp without checksum")
    if rule and ports_read:
        return str(RULE.addr)
    return str(default.addr) if default else V4["dst"]


@pytest.mark.parametrize("nat", NAT)
@pytest.mark.parametrize("mode", MODES)
def test_every_inner_kind_byte_exact_with_the_model(mode, nat):
    rule, default = NAT[nat]
    vx, model = pipeline(MODES[mode], rule, default)
    with vx:
        for kind, packet in INNER.items():
            inner = bytes(packet)
            what = f"{mode}, {nat}, inner {kind}"
            out = Ether(forward(vx, model, inner, what))
            if IPv6 in out:
                assert bytes(out)[12:] == inner[12:], f"{what}: IPv6 leaves as it came, MACs aside"
                continue
            ip = out[IP]
            assert ip.dst == ip_target(kind, rule, default), f"{what}: sent to {ip.dst}"
            assert checksum(bytes(ip)[: ip.ihl * 4]) == 0, f"{what}: IPv4 header checksum"
            payload = bytes(ip)[ip.ihl * 4 :]
            if ip.frag or ip.proto not in (6, 17):
                assert payload == inner[14 + 20 :], f"{what}: nothing past the IP header changes"
            elif UDP in ip and ip[UDP].chksum == 0:
                assert kind == "udp without checksum", f"{what}: a UDP checksum became 0"
            elif not ip.flags.MF:  # a first fragment's checksum covers the fragments to come
                assert in4_chksum(ip.proto, ip, payload) == 0, f"{what}: L4 checksum"


@pytest.mark.parametrize("mode", MODES)
def test_nat_making_the_udp_checksum_zero_sends_ffff(mode, udp_checksum):
    """The payload is solved for so that the translated packet's UDP checksum computes to exactly
    0: it must leave as 0xffff (RFC 768), as a full recomputation of the sent packet says."""
    translated = bytes(
        Ether(**MACS)
        / IP(src=V4["src"], dst=str(RULE.addr))
        / UDP(sport=40000, dport=RULE.port)
        / Raw(b"zz")
    )
    solved = udp_checksum.solve_zero(translated, len(translated) - 2)  # the payload's word
    sent = Ether(**MACS) / IP(**V4) / UDP(sport=40000, dport=RULE_PORT) / Raw(solved[-2:])
    vx, model = pipeline(MODES[mode], True, None)
    with vx:
        out = forward(vx, model, bytes(sent), f"{mode}, checksum made 0")
    assert udp_checksum.computed(out) == 0, "the sent packet's checksum computes to 0"
    assert Ether(out)[UDP].chksum == 0xFFFF, (
        f"a computed 0 goes out as 0xffff, got {Ether(out)[UDP].chksum:#06x}"
    )


VNI_ENDS = [0, 1, 0xFF, 0x100, 0xFFFF, 0x10000, 0x800000, 0xFFFFFE, 0xFFFFFF]


@pytest.mark.parametrize("vni", [None, *VNI_ENDS], ids=lambda v: "any" if v is None else hex(v))
@pytest.mark.parametrize("mode", MODES)
def test_vnis_at_the_ends_of_their_range(mode, vni):
    """Frames of every VNI end against a filter on each: only the filter's VNI (all, with none)
    is forwarded, the rest dropped for their VNI, as the model says."""
    vx, model = pipeline(MODES[mode], False, None, vni=vni)
    with vx:
        for frame_vni in VNI_ENDS:
            frame = encapsulated(bytes(INNER["udp"]), frame_vni)
            want, _ = run(vx, model, frame, f"{mode}, filter {vni}, frame VNI {frame_vni:#x}")
            forwarded = want.verdict is Verdict.FORWARD
            assert forwarded == (vni is None or vni == frame_vni), f"model: {want}"


@pytest.mark.parametrize("mode", MODES)
def test_inner_fields_at_the_ends_of_their_ranges(mode, extreme_frames):
    """Every inner frame of the shared catalogue, every address allowed, NAT rules on ports 0 and
    65535 and a default target: the model's verdict and frame."""
    vx, model = pipeline(MODES[mode], False, DEFAULT, allowed=("0.0.0.0/0", "::/0"))
    with vx:
        for port, target in (
            (0, RULE),
            (0xFFFF, NatTarget(ipaddress.IPv4Address("255.255.255.255"), 0xFFFF)),
        ):
            vx.add_nat(port, str(target.addr), target.port)
            model.nat[port] = target
        for name, inner in extreme_frames.items():
            run(vx, model, encapsulated(inner, 0xFFFFFF), f"{mode}, inner {name}")


@pytest.mark.parametrize("mode", MODES)
def test_inner_lengths_that_disagree(mode, disagreeing_lengths):
    """Inner headers that claim more than their IP packet holds, padded long enough; and inner
    packets claiming more than the outer packet holds, the outer frame padded: the inner frame
    ends with the outer IP packet."""
    vx, model = pipeline(MODES[mode], True, DEFAULT, allowed=("0.0.0.0/0", "::/0"))
    with vx:
        for name, inner in disagreeing_lengths.items():
            run(vx, model, encapsulated(inner), f"{mode}, inner {name}")
            claimed = encapsulated(inner[: 14 + 20]) + inner[14 + 20 :]
            run(vx, model, claimed, f"{mode}, outer packet ends inside inner {name}")
