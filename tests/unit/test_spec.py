"""Traffic descriptions resolve to the right byte offsets, and expand to exactly the described packets."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from injector import templates
from injector.malformed import variant
from injector.program import FieldProgram, OpKind
from injector.spec import (
    Elephants,
    Fixed,
    Imix,
    Random,
    Range,
    SpecError,
    TrafficSpec,
    Values,
    Vary,
    Zipf,
    load_spec,
)


def op_at(template, path):
    (op,) = TrafficSpec(template, vary=(Vary(path, Values((0,))),)).resolve().ops
    return op.offset, op.size


@pytest.mark.parametrize(
    ("template", "path", "offset", "size"),
    [
        (templates.udp4(), "Ether.src", 6, 6),
        (templates.udp4(), "IP.src", 26, 4),
        (templates.udp4(), "UDP.sport", 34, 2),
        (templates.udp4(vlan=5), "IP.dst", 34, 4),
        (templates.udp6(), "IPv6.src", 22, 16),
        (templates.tcp4(), "TCP.dport", 36, 2),
        (templates.pppoe_session(), "PPPoE.sessionid", 16, 2),
        (templates.vxlan(templates.udp4()), "VXLAN.vni", 46, 3),
        (templates.vxlan(templates.udp4()), "IP:1.src", 76, 4),
        (templates.vxlan(templates.udp4()), "Ether:1.dst", 50, 6),
        (templates.vxlan(templates.udp4()), "UDP:1.sport", 84, 2),
    ],
)
def test_paths_resolve_to_offsets(template, path, offset, size):
    assert op_at(template, path) == (offset, size)


@pytest.mark.parametrize(
    ("path", "values", "message"),
    [
        ("IP:1.src", Values((1,)), "has 1 IP layer"),
        ("UDP.nope", Values((1,)), "UDP has no field 'nope'"),
        ("Dot1Q.vlan", Values((1,)), "not byte-aligned"),
        ("UDP.sport", Values((70000,)), "does not fit the 2-byte field"),
        ("IP.src", Range("10.0.0.9", "10.0.0.1"), "end 167772161 is below start"),
        ("IP.src", Values(("not-an-ip",)), "not a valid src"),
        ("IP.chksum", Values((1,)), "overlaps the ipv4_header checksum"),
        ("bad path", Values((1,)), "Layer.field"),
    ],
)
def test_errors_name_path_and_template(path, values, message):
    with pytest.raises(SpecError, match=message) as err:
        TrafficSpec(templates.udp4(vlan=3), vary=(Vary(path, values),)).resolve()
    assert path in str(err.value) and "template Ether / Dot1Q / IP / UDP" in str(err.value)


def test_random_needs_flows_and_overlaps_are_refused():
    with pytest.raises(SpecError, match="flows: required"):
        TrafficSpec(templates.udp4(), vary=(Vary("UDP.sport", Random(1, 9)),)).resolve()
    both = (Vary("IP.src", Values((1,))), Vary("IP.src", Values((2,))))
    with pytest.raises(SpecError, match=r"overlaps 'IP\.src'"):
        TrafficSpec(templates.udp4(), vary=both).resolve()


def test_length_field_cannot_vary_with_imix():
    spec = TrafficSpec(
        templates.udp4(),
        vary=(
            Vary(
                "UDP.len",
                Values((9,)),
            ),
        ),
        sizes=Imix(),
    )
    with pytest.raises(SpecError, match="set from the frame size"):
        spec.resolve()


def rebuilt_by_scapy(frame: bytes) -> bytes:
    """``frame`` dissected and rebuilt with scapy computing every length and non-zero checksum."""
    pkt = Ether(frame)
    for cls in (IP, UDP, TCP, ICMP):
        n = 1
        while (layer := pkt.getlayer(cls, nb=n)) is not None:
            if not (cls is UDP and layer.chksum == 0 and layer.underlayer.version == 4):
                del layer.chksum
            if cls in (IP, UDP):
                del layer.len
            n += 1
    return raw(pkt)


def field_value(frame: bytes, path: str) -> int:
    """The value of ``path`` in ``frame`` read by scapy's dissector, as an unsigned integer."""
    layer_name, _, field = path.partition(".")
    name, _, index = layer_name.partition(":")
    layer = Ether(frame).getlayer(name, nb=int(index or 0) + 1)
    fld = layer.get_field(field)
    return int.from_bytes(fld.addfield(layer, b"", layer.getfieldval(field)), "big")


TEMPLATE_PATHS = {
    "udp4": (templates.udp4, ["Ether.src", "IP.src", "IP.dst", "UDP.sport", "UDP.dport"]),
    "tcp4": (templates.tcp4, ["Ether.dst", "IP.src", "TCP.sport", "TCP.dport"]),
    "udp6": (templates.udp6, ["IPv6.src", "IPv6.dst", "UDP.sport"]),
    "icmp4": (templates.icmp4, ["IP.src", "ICMP.id", "ICMP.seq"]),
    "pppoe": (templates.pppoe_session, ["PPPoE.sessionid", "IP.src", "UDP.dport"]),
    "vxlan": (
        lambda: templates.vxlan(templates.udp4()),
        ["VXLAN.vni", "IP.src", "Ether:1.src", "IP:1.src", "UDP:1.sport"],
    ),
}
SIZES = {"Ether": 6, "IP": 4, "IPv6": 16, "UDP": 2, "TCP": 2, "ICMP": 2, "PPPoE": 2, "VXLAN": 3}


@st.composite
def variation(draw, path):
    bits = 8 * SIZES[path.split(".")[0].split(":")[0]]
    top = (1 << bits) - 1
    kind = draw(st.sampled_from(["range", "random", "list"]))
    if kind == "list":
        return Vary(
            path, Values(tuple(draw(st.lists(st.integers(0, top), min_size=1, max_size=5))))
        )
    low = draw(st.integers(0, top))
    high = draw(st.integers(low, min(top, low + (1 << 64) - 1)))
    if kind == "random":
        return Vary(path, Random(low, high))
    return Vary(path, Range(low, high, draw(st.integers(1, 5))))


@st.composite
def specs(draw):
    build, paths = TEMPLATE_PATHS[draw(st.sampled_from(sorted(TEMPLATE_PATHS)))]
    chosen = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
    vary = tuple(draw(variation(p)) for p in chosen)
    distribution = draw(st.sampled_from([None, Zipf(1.2), Elephants(count=1, share=0.8)]))
    sizes = draw(st.sampled_from([None, Fixed(128), Imix(((128, 3), (200, 1)))]))
    flows = draw(st.integers(2, 12))
    extra = {} if distribution is None else {"distribution": distribution}
    return TrafficSpec(
        build(), vary=vary, flows=flows, sizes=sizes, seed=draw(st.integers(0, 9)), **extra
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_expansion_matches_description(spec):
    program = spec.resolve()
    packets = list(spec.expand(min(program.period, 40)))
    for i, frame in enumerate(packets):
        assert len(frame) == program.frame_size_of(i)
        flow = program.flow_of(i)
        for op in program.ops:
            got = field_value(frame, op.path)
            assert got == op.value_for(flow), f"packet {i} flow {flow}: {op.path} = {got}"
        assert rebuilt_by_scapy(frame) == frame, (
            f"packet {i}: lengths/checksums differ from scapy's"
        )
    assert packets == list(spec.expand(len(packets))), "expansion must be deterministic"


@settings(max_examples=30, deadline=None)
@given(
    flows=st.integers(1, 50),
    distribution=st.sampled_from([None, Zipf(1.0), Zipf(2.0), Elephants(count=1, share=0.95)]),
)
def test_expansion_produces_exactly_the_requested_flows(flows, distribution):
    if isinstance(distribution, Elephants) and flows < 2:
        return
    extra = {} if distribution is None else {"distribution": distribution}
    spec = TrafficSpec(
        templates.udp4(), vary=(Vary("UDP.sport", Range(1000, 65535)),), flows=flows, **extra
    )
    program = spec.resolve()
    ports = Counter(Ether(f)[UDP].sport for f in spec.expand(len(program.schedule)))
    assert set(ports) == {1000 + f for f in range(flows)}
    if distribution is not None and flows > 1:
        assert ports[1000] > ports[1000 + flows - 1], "flow 0 is the heaviest"


def test_elephants_share():
    spec = TrafficSpec(
        templates.udp4(),
        vary=(Vary("IP.src", Range("10.0.0.1", "10.0.0.100")),),
        distribution=Elephants(count=10, share=0.9, cycle=10000),
    )
    program = spec.resolve()
    per_flow = Counter(program.schedule)
    assert len(program.schedule) == 10000 and len(per_flow) == 100
    assert sum(per_flow[f] for f in range(10)) == 9000
    assert program.schedule != TrafficSpec(**{**spec.__dict__, "seed": 1}).resolve().schedule


def test_imix_cycle_and_counts():
    program = TrafficSpec(templates.udp4(), sizes=Imix(), count=24).resolve()
    assert Counter(program.frame_sizes) == {60: 7, 590: 4, 1514: 1}
    frames = list(FieldProgram.packets(program))
    assert len(frames) == 24 and Counter(map(len, frames)) == {60: 14, 590: 8, 1514: 2}
    assert frames[0] == raw(templates.pad_to(templates.udp4(), len(frames[0])))


def test_checksums_listed_inner_first_and_only_when_needed():
    vx = templates.vxlan(templates.tcp4())
    inner = TrafficSpec(vx, vary=(Vary("IP:1.dst", Values((1, 2))),)).resolve()
    assert [(c.kind.value, c.ip_offset) for c in inner.checksums] == [
        ("tcp", 64),
        ("ipv4_header", 64),
    ], "outer UDP checksum 0 stays 0; the outer IPv4 header does not change"
    vni = TrafficSpec(vx, vary=(Vary("VXLAN.vni", Values((1, 2))),)).resolve()
    assert vni.checksums == ()
    icmp = TrafficSpec(templates.icmp4(), vary=(Vary("IP.src", Values((1, 2))),)).resolve()
    assert [c.kind.value for c in icmp.checksums] == ["ipv4_header"], "ICMPv4 has no pseudo-header"


def test_deliberately_bad_checksum_is_kept():
    bad = variant(templates.udp4(), "udp:bad_checksum").packet
    program = TrafficSpec(bad, vary=(Vary("IP.src", Values((1, 2))),)).resolve()
    assert [c.kind.value for c in program.checksums] == ["ipv4_header"]


def test_count_duration_and_rate():
    spec = TrafficSpec(templates.udp4(), vary=(Vary("UDP.sport", Range(1, 3)),))
    assert len(list(spec.expand())) == 3
    timed = TrafficSpec(templates.udp4(), duration=2, rate_pps=5)
    assert len(list(timed.expand())) == 10
    with pytest.raises(SpecError, match="rate_pps: must be positive"):
        TrafficSpec(templates.udp4(), rate_pps=0).resolve()


def test_field_program_round_trips_through_json():
    spec = TrafficSpec(
        templates.vxlan(templates.udp6()),
        vary=(Vary("UDP:1.sport", Random(1, 60000)), Vary("VXLAN.vni", Range(1, 9, 2))),
        flows=7,
        sizes=Imix(((200, 1), (300, 2))),
        count=9,
    )
    program = spec.resolve()
    assert FieldProgram.from_dict(program.to_dict()) == program
    assert program.ops[0].kind is OpKind.RANDOM


SPEC_YAML = """
template:
  kind: vxlan
  args: {vni: 7}
  inner:
    kind: udp4
    args: {src: 10.1.0.1, payload: hello}
vary:
  - field: IP:1.src
    range: {start: 10.1.0.1, end: 10.1.0.200}
  - field: UDP:1.sport
    random: {min: 1024, max: 65535}
  - field: Ether:1.src
    list: ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]
flows: 100
distribution: {zipf: {s: 1.1}}
sizes: {imix: [[128, 2], [256, 1]]}
count: 50
rate_pps: 1000
seed: 3
"""


def test_load_spec_from_yaml(tmp_path):
    path = tmp_path / "vx.yaml"
    path.write_text(SPEC_YAML)
    spec = load_spec(path)
    assert spec.name == "vxlan(udp4)"
    program = spec.resolve()
    assert [op.kind for op in program.ops] == [OpKind.RANGE, OpKind.RANDOM, OpKind.LIST]
    assert program.ops[2].values == (0x02000000000A, 0x02000000000B)
    frames = list(spec.expand())
    assert len(frames) == 50 and b"hello" in frames[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flows": "many"}, "flows: expected int"),
        ({"bogus": 1}, r"spec: unknown key\(s\) \['bogus'\]"),
        ({"sizes": {"imix": [[1]]}}, "sizes.imix: expected a list of"),
        ({"distribution": {"zipf": {"t": 1}}}, "distribution.zipf: unknown key"),
        ({"template": {"kind": "udp5"}}, "template.kind: 'udp5' is not one of"),
        ({"vary": [{"field": "UDP:1.dport", "list": [1, 2]}]}, r"vary\[0\] 'UDP:1.dport'"),
        ({"vary": [{"field": "IP.src", "range": {"start": 1}}]}, r"vary\[0\].range: needs start"),
        ({"template": {"kind": "udp4", "malformed": "nope"}}, "template.malformed: no malformed"),
    ],
)
def test_spec_file_errors_name_file_and_key(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    data = {"template": {"kind": "udp4"}, **change}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=message) as err:
        load_spec(path)
    assert str(path) in str(err.value)


def test_malformed_template_from_spec_file():
    spec = TrafficSpec.from_dict(
        {"template": {"kind": "tcp4", "malformed": "truncated:TCP:10"}, "count": 2}
    )
    assert [len(f) for f in spec.expand()] == [44, 44]
