"""The in-kernel field engine makes exactly the packets Python's expansion makes, byte for byte."""

import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether

from injector import templates
from injector.spec import Elephants, Fixed, Imix, Random, Range, TrafficSpec, Values, Vary, Zipf
from injector.xdp import EngineError, FieldEngine

SIZES = Imix(((128, 7), (576, 4), (1500, 1)))

CRAFTED = {
    "ipv4 udp, range and random": TrafficSpec(
        templates.udp4(),
        vary=(
            Vary("IP.src", Range("10.0.0.1", "10.0.0.200")),
            Vary("UDP.sport", Random(1000, 60000)),
        ),
        flows=50,
    ),
    "ipv6 tcp, 16-byte range, list, imix": TrafficSpec(
        templates.tcp6(),
        vary=(
            Vary("IPv6.src", Range("fd00::1", "fd00::ffff")),
            Vary("TCP.dport", Values((80, 443))),
        ),
        flows=30,
        sizes=SIZES,
    ),
    "ipv6 random across the 64-bit carry": TrafficSpec(
        templates.udp6(),
        vary=(Vary("IPv6.dst", Random("fd00::ffff:ffff:ffff:0", "fd00:0:0:1::ffff")),),
        flows=64,
        distribution=Zipf(1.0, 200),
    ),
    "vxlan inner fields and vni, imix": TrafficSpec(
        templates.vxlan(templates.udp4()),
        vary=(Vary("IP:1.src", Range("10.1.0.1", "10.1.0.50")), Vary("VXLAN.vni", Range(1, 5))),
        flows=20,
        sizes=SIZES,
    ),
    "pppoe session ids": TrafficSpec(
        templates.pppoe_session(),
        vary=(
            Vary("PPPoE.sessionid", Range(1, 1000)),
            Vary("IP.src", Range("100.64.0.1", "100.64.3.232")),
        ),
        flows=1000,
        distribution=Elephants(count=3, share=0.5),
    ),
    "macs and icmp": TrafficSpec(
        templates.icmp4(),
        vary=(Vary("Ether.src", Range("02:00:00:00:00:01", "02:00:00:00:00:ff")),),
        sizes=Fixed(200),
    ),
}


def first_difference(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"{len(a)} bytes instead of {len(b)}"
    at = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"byte {at} is {a[at]:#04x}, Python made {b[at]:#04x}"


def assert_engine_matches(spec: TrafficSpec, packets: int) -> None:
    program = spec.resolve()
    with FieldEngine(program) as engine:
        for index in range(packets):
            made, expected = engine.render(index), program.packet(index)
            assert made == expected, (
                f"{program.description}: packet {index} (flow {program.flow_of(index)}): "
                + first_difference(made, expected)
            )
        assert engine.aborted() == 0


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_programs_match_python(name):
    spec = CRAFTED[name]
    assert_engine_matches(spec, 2 * spec.resolve().period)


ports = st.integers(0, 65535)


@st.composite
def udp_specs(draw):
    src = draw(st.integers(1, 2**32 - 2))
    span = draw(st.integers(0, min(2**32 - 1 - src, 10_000)))
    low_port = draw(ports)
    high_port = draw(st.integers(low_port, 65535))
    ipv6 = draw(st.booleans())
    addr_field = "IPv6.src" if ipv6 else "IP.src"
    base = ipaddress.ip_address(src) if not ipv6 else ipaddress.ip_address(src << 64 | src)
    vary = (
        Vary(addr_field, Range(str(base), str(base + span), step=draw(st.integers(1, 7)))),
        Vary("UDP.dport", Random(low_port, high_port)),
    )
    template = templates.udp6() if ipv6 else templates.udp4()
    sizes = draw(st.sampled_from([None, Fixed(300), SIZES]))
    return TrafficSpec(
        template, vary=vary, flows=draw(st.integers(1, 40)), sizes=sizes, seed=draw(ports)
    )


@given(spec=udp_specs())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_programs_match_python(spec):
    assert_engine_matches(spec, 60)


def test_programs_beyond_the_engine_limits_are_refused_by_name():
    program = TrafficSpec(templates.udp4(), vary=(Vary("UDP.sport", Range(1, 9)),)).resolve()
    with pytest.raises(EngineError, match="9 varied fields, the xdp engine takes 8"):
        FieldEngine(dataclasses.replace(program, ops=program.ops * 9))
    with pytest.raises(EngineError, match=r"frames must be 14\.\.3408 bytes"):
        FieldEngine(dataclasses.replace(program, frame_sizes=(4000,), template=bytes(4000)))


@pytest.mark.parametrize("template", [templates.udp4, templates.udp6], ids=["ipv4", "ipv6"])
def test_udp_checksum_computing_to_zero_goes_out_as_ffff(udp_checksum, template):
    """The source port is solved for so that one flow's UDP checksum computes to exactly 0: the
    engine must send it as 0xffff (RFC 768), as a full recomputation says, and as Python does."""
    packet = TrafficSpec(template(), vary=(Vary("UDP.sport", Values((1000,))),)).resolve().packet(0)
    sport_off = len(packet) - len(Ether(packet)[UDP])
    solved = udp_checksum.solve_zero(packet, sport_off)
    sport = int.from_bytes(solved[sport_off : sport_off + 2], "big")
    spec = TrafficSpec(template(), vary=(Vary("UDP.sport", Values((sport, sport + 1))),), flows=2)
    program = spec.resolve()
    with FieldEngine(program) as engine:
        made = engine.render(0)
        assert made == solved, "the engine's packet with the solved port: " + first_difference(
            made, solved
        )
        assert program.packet(0) == solved, "Python's expansion agrees"
        assert engine.aborted() == 0
