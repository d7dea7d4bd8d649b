"""csum.h in the kernel: RFC 1624 incremental updates and the full IPv4 header checksum.

``bpf/selftest/csum.bpf.c`` rewrites addresses and ports like a NAT, updating the IPv4 header and
TCP/UDP/ICMPv6 checksums incrementally; every result must equal scapy's full recomputation of the
rewritten packet. UDP keeps its rules: a zero checksum (none) stays zero, and a checksum that
computes to zero is sent as 0xffff. ``ipv4_csum()`` (run by ``parse.bpf.c``) must agree with
scapy's checksum over headers with options.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.utils import checksum

import bpf

SELFTEST = Path(bpf.__file__).parent / "selftest"
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:0:1::2"}


@pytest.fixture(scope="module")
def nat():
    with bpf.BpfObject.open(SELFTEST / "csum.bpf.c") as obj:
        yield obj.load()


def _wire16(port: int) -> int:
    """A port as the little-endian CPU holds the network-order __be16."""
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def rewrite(obj, packet, saddr=None, daddr=None, sport=0, dport=0) -> Ether:
    rules = obj.maps["nat"]
    rule = rules.value_type()
    for name, addr in (("saddr", saddr), ("daddr", daddr)):
        if addr is not None:
            getattr(rule, name).bytes[:] = list(ipaddress.ip_address(addr).packed.ljust(16, b"\0"))
    rule.sport, rule.dport = _wire16(sport), _wire16(dport)
    rules[0] = rule
    run = obj.programs["nat_xdp"].test_run(packet)
    assert run.verdict is bpf.XdpAction.TX, f"nat_xdp gave {run.verdict!r} for {packet!r}"
    return Ether(run.packet)


CHECKSUM_FIELD = {IP: "chksum", TCP: "chksum", UDP: "chksum", ICMPv6EchoRequest: "cksum"}


def recomputed(packet: Ether) -> Ether:
    """The packet with every checksum recomputed from scratch by scapy."""
    fresh = packet.copy()
    for layer, name in CHECKSUM_FIELD.items():
        if layer in fresh:
            delattr(fresh[layer], name)
    if UDP in packet and packet[UDP].chksum == 0 and IP in packet:
        fresh[UDP].chksum = 0  # none stays none
    return Ether(bytes(fresh))


def assert_checksums_right(got: Ether) -> None:
    want = recomputed(got)
    for layer, name in CHECKSUM_FIELD.items():
        if layer in got:
            g, w = getattr(got[layer], name), getattr(want[layer], name)
            assert g == w, (
                f"{layer.__name__} checksum {g:#06x}, full recomputation {w:#06x}: {got!r}"
            )


CASES = {
    "ipv4 tcp": Ether(**MACS) / IP(**V4) / TCP(sport=1000, dport=80) / b"data",
    "ipv4 udp": Ether(**MACS) / IP(**V4) / UDP(sport=1000, dport=53) / b"q",
    "ipv4 options udp": Ether(**MACS)
    / IP(options=[IPOption_RR(), IPOption_NOP()], **V4)
    / UDP()
    / b"x",
    "ipv6 tcp": Ether(**MACS) / IPv6(**V6) / TCP(sport=1, dport=2),
    "ipv6 udp": Ether(**MACS) / IPv6(**V6) / UDP(sport=1, dport=2) / b"abc",
    "ipv6 icmpv6": Ether(**MACS) / IPv6(**V6) / ICMPv6EchoRequest(id=7, data=b"ping"),
}
NEW = {4: ("203.0.113.9", "10.1.2.3"), 6: ("2001:db8:ffff::99", "fd00::1:2")}


@pytest.mark.parametrize("name", list(CASES))
def test_rewrite_addresses_and_ports(nat, name):
    packet = CASES[name]
    new_src, new_dst = NEW[6 if IPv6 in packet else 4]
    got = rewrite(nat, packet, saddr=new_src, daddr=new_dst, sport=40000, dport=8080)
    assert got.payload.src == new_src and got.payload.dst == new_dst
    assert_checksums_right(got)


@settings(max_examples=150, deadline=None)
@given(
    v6=st.booleans(),
    tcp=st.booleans(),
    src=st.binary(min_size=16, max_size=16),
    dst=st.binary(min_size=16, max_size=16),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    payload=st.binary(max_size=40),
)
def test_rewrite_random(nat, v6, tcp, src, dst, sport, dport, payload):
    l4 = TCP(sport=11, dport=22) if tcp else UDP(sport=11, dport=22)
    ip = IPv6(**V6) if v6 else IP(**V4)
    size = 16 if v6 else 4
    new_src, new_dst = (ipaddress.ip_address(a[:size]) for a in (src, dst))
    if not int(new_src) or not int(new_dst):
        return  # a zero field means "leave as is" to nat_xdp
    got = rewrite(nat, Ether(**MACS) / ip / l4 / payload, str(new_src), str(new_dst), sport, dport)
    assert_checksums_right(got)


def test_udp_zero_checksum_stays_zero(nat):
    packet = Ether(**MACS) / IP(**V4) / UDP(sport=1, dport=2, chksum=0) / b"no checksum"
    got = rewrite(nat, packet, saddr="203.0.113.9", sport=999)
    assert got[UDP].chksum == 0, "a UDP/IPv4 checksum of 0 means none: it must stay 0"
    assert got[IP].chksum == recomputed(got)[IP].chksum


def test_udp_computed_zero_is_sent_as_ffff(nat, udp_checksum):
    """Pick the new source address so that the true checksum is 0: UDP must send 0xffff."""
    packet = Ether(**MACS) / IP(**V4) / UDP(sport=1, dport=2) / b"zero"
    src_low = 14 + 14  # the source address's low half
    new_src = Ether(udp_checksum.solve_zero(bytes(packet), src_low))[IP].src
    got = rewrite(nat, packet, saddr=new_src)
    assert got[UDP].chksum == 0xFFFF, (
        f"computed 0 must go out as 0xffff, got {got[UDP].chksum:#06x}"
    )
    assert udp_checksum.computed(bytes(got)) == 0, "a full recomputation gives 0"


# --- every helper at its corner values, swept in the kernel (bpf/selftest/csum_sweep.bpf.c) ----

CORNERS16 = (0x0000, 0x0001, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
CORNERS32 = (0, 1, 0xFFFF, 0x10000, 0x8000_8000, 0x0001_FFFF, 0xFFFF_0000, 0xFFFF_FFFF)
BPF_LOOP_MAX = 1 << 23


@pytest.fixture(scope="module")
def sweep():
    """Run one case of csum_sweep.bpf.c; the kernel's count of results that differ from a full
    recomputation, and the first of them."""
    with bpf.BpfObject.open(SELFTEST / "csum_sweep.bpf.c") as obj:
        obj.load()
        helpers = obj.enum("csum_helper")
        sweeps = obj.enum("csum_sweep")
        program = obj.programs["csum_sweep"]

        def run(
            helper: str,
            how: str,
            first: int,
            count: int,
            from_: int | list[int] = 0,
            to: int | list[int] = 0,
            rest: int = 0,
            none: int = 0,
        ) -> None:
            case = obj.maps["sweep_case"].value_type()
            case.helper = helpers[f"HELPER_{helper.upper()}"]
            case.sweep = sweeps[f"SWEEP_{how.upper()}"]
            case.first, case.count, case.rest, case.none = first, count, rest, none
            for name, words in (("from", from_), ("to", to)):
                words = words if isinstance(words, list) else [words]
                getattr(case, name)[:] = words + [0] * (4 - len(words))
            obj.maps["sweep_case"][0] = case
            fields = {"from": from_, "to": to, "rest": rest, "none": none}
            assert program.test_run(bytes(14)).verdict is bpf.XdpAction.PASS
            r = obj.maps["sweep_result"][0]
            assert r.checked == count, f"{helper}: {r.checked} of {count} values swept"
            assert r.wrong == 0, (
                f"{helper} {how} from {first:#x} ({fields}): {r.wrong} of {count} differ from a "
                f"full recomputation; the first at {r.value:#x}: old checksum {r.old_csum:#06x}, "
                f"got {r.got:#06x}, want {r.want:#06x}"
            )

        yield run


def test_fold_every_sum_the_helpers_reach_and_the_top_of_the_range(sweep):
    """Every 32-bit sum below 2^24 (the replace helpers reach 17 * 0xffff, ipv4_csum 15 * 0x1fffe)
    and the 2^23 below 2^32, where the first fold carries again."""
    for first in (0, BPF_LOOP_MAX, 2**32 - BPF_LOOP_MAX):
        sweep("csum_fold", "sum", first, BPF_LOOP_MAX)


def _rests_making_old_zero(field_sum: int) -> int:
    """The rest whose sum with the field's makes the old checksum 0x0000 (a UDP sender: 0xffff)."""
    return 0xFFFF - field_sum % 0xFFFF or 0xFFFF


REST_CORNERS = (1, 2, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)


@pytest.mark.parametrize("udp", [False, True], ids=["csum", "udp_csum"])
def test_replace2_every_old_checksum_and_every_new_word(sweep, udp):
    """Each pair of corner words, every old checksum (every rest 1..0xffff); then each corner old
    word against every new word, from corner rests and the rest that makes the old checksum 0."""
    helper = "udp_csum_replace2" if udp else "csum_replace2"
    for old in CORNERS16:
        for new in CORNERS16:
            sweep(helper, "rest", 1, 0xFFFF, from_=old, to=new)
        for rest in (*REST_CORNERS, _rests_making_old_zero(old)):
            sweep(helper, "to", 0, 0x10000, rest=rest, from_=old)
    if udp:
        sweep(helper, "rest", 1, 0xFFFF, none=1, from_=0x1234, to=0xFFFF)


def _halves(words) -> int:
    return sum((w >> 16) + (w & 0xFFFF) for w in words)


@pytest.mark.parametrize("udp", [False, True], ids=["csum", "udp_csum"])
@pytest.mark.parametrize("width", [4, 16])
def test_replace4_and_16_every_old_checksum(sweep, udp, width):
    """Each pair of corner 32-bit words (an IPv4 address; an IPv6 address of four, the corner in
    every word or shifted one word along) over every old checksum; then each corner old value
    against every low half of the new one."""
    helper = f"{'udp_' if udp else ''}csum_replace{width}"
    n = 1 if width == 4 else 4
    values = [[c] * n for c in CORNERS32]
    if width == 16:
        values += [[c, 0xFFFF_FFFF, 0, c ^ 0xFFFF] for c in CORNERS32[::2]]
    for old in values:
        for new in values:
            sweep(helper, "rest", 1, 0xFFFF, from_=old, to=new)
        for rest in (1, 0xFFFF, _rests_making_old_zero(_halves(old))):
            sweep(helper, "to", 0, 0x10000, rest=rest, from_=old, to=[0xFFFF_0000] * n)
    if udp:
        sweep(helper, "rest", 1, 0xFFFF, none=1, from_=values[1], to=values[-1])


@pytest.fixture(scope="module")
def parser():
    with bpf.BpfObject.open(SELFTEST / "parse.bpf.c") as obj:
        obj.load()
        obj.maps["rss_table"][0] = obj.maps["rss_table"].value_type()
        yield obj


@pytest.mark.parametrize("options", [0, 1, 9, 40])
@pytest.mark.parametrize("corrupt", [False, True])
def test_full_ipv4_header_checksum(parser, options, corrupt):
    ip = IP(options=[IPOption_NOP()] * options, **V4)
    if corrupt:
        ip.chksum = 0x1234
    frame = bytes(Ether(**MACS) / ip / UDP())
    header = frame[14 : 14 + (frame[14] & 0xF) * 4]
    parser.programs["parse_xdp"].test_run(frame)
    result = parser.maps["results"][0]
    assert result.status == 0
    expected = _wire16(checksum(header))  # in network order, as the header field holds it
    assert result.ipv4_csum == expected, "checksum over the header as it is"
    assert (result.ipv4_csum == 0) != corrupt, "0 exactly when the header checksum is valid"


def _ipv4_header(ident: int) -> bytes:
    """An IPv4 header with 40 bytes of options, 0xff wherever the parser allows: a later fragment
    (all flags, offset 0x1fff), so nothing after it is parsed; checksum 0."""
    head = b"\x4f\xff" + (60 + 8).to_bytes(2, "big") + ident.to_bytes(2, "big")
    return head + b"\xff" * 4 + b"\0\0" + b"\xff" * 48


def _word_sum(header: bytes) -> int:
    """The 32-bit sum ipv4_csum() folds: of the 16-bit words as the little-endian CPU loads them."""
    return sum(int.from_bytes(header[i : i + 2], "little") for i in range(0, len(header), 2))


def _ident(case: str) -> int:
    if case == "ones":
        return 0xFFFF
    if case == "checksum 0x0000":  # the identification that makes the header's sum 0xffff
        return checksum(_ipv4_header(0))  # ~sum without it, which the identification makes 0xffff
    # "carries twice": the first fold of the 32-bit sum carries into bit 16 again
    sums = ((i, _word_sum(_ipv4_header(i))) for i in range(0x10000))
    return next(i for i, total in sums if (total & 0xFFFF) + (total >> 16) > 0xFFFF)


@pytest.mark.parametrize("case", ["ones", "carries twice", "checksum 0x0000"])
def test_full_ipv4_header_checksum_at_corner_values(parser, case):
    """Headers of 0xffff words, one whose sum carries twice while folding, one whose valid
    checksum is 0x0000: ipv4_csum() gives 0 over the valid header, the checksum with the field 0."""
    header = _ipv4_header(_ident(case))
    want = checksum(header)
    assert (want == 0) == (case == "checksum 0x0000")
    valid = header[:10] + want.to_bytes(2, "big") + header[12:]
    for name, ip in (("checksum 0", header), ("valid", valid)):
        frame = bytes(Ether(**MACS, type=0x0800)) + ip + bytes(8)
        parser.programs["parse_xdp"].test_run(frame)
        result = parser.maps["results"][0]
        assert result.status == 0, f"{name}: the header parses"
        expected = _wire16(want) if name == "checksum 0" else 0
        assert result.ipv4_csum == expected, (
            f"{case}, {name}: ipv4_csum {result.ipv4_csum:#06x}, full recomputation {expected:#06x}"
        )
