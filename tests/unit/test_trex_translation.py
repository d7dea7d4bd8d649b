"""The TRex streams built from a description match it field by field, and replay its exact packets.

Streams are built by the real TRex v3.04 client classes (lbr-trex-client) in the worker process and
read back as ``to_json()``. A small interpreter of that JSON (flow vars in lock-step, writes, trim,
checksum fixes) replays the field engine and must give ``FieldProgram.packet(i)`` for every i. No
TRex server can run on the development machine; the one live test needs ``--trex-server HOST``.
"""

from __future__ import annotations

import base64
import importlib.util

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.latency import trex_latency
from injector import templates
from injector.program import ChecksumFix, ChecksumKind, FieldProgram, checksum_of
from injector.spec import Fixed, Imix, Random, Range, TrafficSpec, Values, Vary, Zipf
from injector.trex_backend import Latency, TrexError, run_on_trex, trex_streams

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lbr_trex_client") is None,
    reason="needs the TRex client: pip install 'bpflab[trex]'",
)

L4_TYPES = {11: ChecksumKind.UDP, 13: ChecksumKind.TCP}


class FieldEngine:
    """Replays a stream's ``vm`` JSON the way TRex's field engine runs it on one core."""

    def __init__(self, stream: dict) -> None:
        self.base = base64.b64decode(stream["packet"]["binary"])
        self.instructions = stream["vm"]["instructions"]
        self.vars = {i["name"]: i for i in self.instructions if i["type"] == "flow_var"}
        self.step = 0

    def value(self, var: dict) -> int:
        if "value_list" in var:
            return var["value_list"][self.step % len(var["value_list"])]
        cycle = (var["max_value"] - var["min_value"]) // var["step"] + 1
        offset = (var["init_value"] - var["min_value"]) // var["step"]
        return var["min_value"] + var["step"] * ((offset + self.step) % cycle)

    def next_packet(self) -> bytes:
        buf = bytearray(self.base)
        for ins in self.instructions:
            kind = ins["type"]
            if kind == "trim_pkt_size":
                del buf[self.value(self.vars[ins["name"]]) :]
            elif kind == "write_flow_var":
                var = self.vars[ins["name"]]
                size = var["size"]
                value = (self.value(var) + ins["add_value"]) % (1 << (8 * size))
                buf[ins["pkt_offset"] : ins["pkt_offset"] + size] = value.to_bytes(size, "big")
            elif kind == "fix_checksum_ipv4":
                at = ins["pkt_offset"]
                self._fix(buf, ChecksumFix(ChecksumKind.IPV4_HEADER, at, at, 4))
            elif kind == "fix_checksum_hw":
                ip = ins["l2_len"]
                version = buf[ip] >> 4
                l4 = ip + ins["l3_len"]
                self._fix(buf, ChecksumFix(L4_TYPES[ins["l4_type"]], ip, l4, version))
            else:
                assert kind == "flow_var", f"instruction {kind} is not expected"
        self.step += 1
        return bytes(buf)

    @staticmethod
    def _fix(buf: bytearray, fix: ChecksumFix) -> None:
        buf[fix.csum_offset : fix.csum_offset + 2] = checksum_of(buf, fix).to_bytes(2, "big")


def by_type(stream: dict, kind: str) -> list[dict]:
    return [i for i in stream["vm"]["instructions"] if i["type"] == kind]


def test_udp4_stream_field_by_field():
    spec = TrafficSpec(
        templates.udp4(),
        vary=(Vary("IP.src", Range("16.0.0.1", "16.0.0.100")), Vary("UDP.dport", Values((80, 53)))),
        count=1000,
        rate_pps=5000,
    )
    program = spec.resolve()
    (stream,) = trex_streams(program)
    assert stream["mode"] == {
        "rate": {"type": "pps", "value": 5000.0},
        "type": "single_burst",
        "total_pkts": 1000,
    }
    assert base64.b64decode(stream["packet"]["binary"]) == program.packet(0)
    f0, f1 = by_type(stream, "flow_var")
    assert (f0["name"], f0["size"], f0["op"]) == ("f0", 4, "inc")
    assert (f0["min_value"], f0["max_value"], f0["step"], f0["init_value"]) == (
        0x10000001,
        0x10000064,
        1,
        0x10000001,
    )
    assert (f1["name"], f1["size"], f1["value_list"]) == ("f1_0", 2, [80, 53])
    writes = {w["name"]: w for w in by_type(stream, "write_flow_var")}
    assert writes["f0"]["pkt_offset"] == 26 and writes["f1_0"]["pkt_offset"] == 36
    assert by_type(stream, "fix_checksum_hw") == [
        {"type": "fix_checksum_hw", "l2_len": 14, "l3_len": 20, "l4_type": 11}
    ]
    assert by_type(stream, "fix_checksum_ipv4") == [{"type": "fix_checksum_ipv4", "pkt_offset": 14}]
    assert stream["flow_stats"] == {"enabled": False}
    engine = FieldEngine(stream)
    assert [engine.next_packet() for _ in range(program.period)] == list(
        program.packets(program.period)
    )


def test_imix_uses_trim_and_length_writes():
    program = TrafficSpec(templates.udp4(), sizes=Imix(), duration=5).resolve()
    (stream,) = trex_streams(program)
    assert stream["mode"] == {"rate": {"type": "percentage", "value": 100}, "type": "continuous"}
    (size_var,) = by_type(stream, "flow_var")
    assert size_var["name"] == "frame_size" and size_var["size"] == 2
    assert sorted(size_var["value_list"]) == sorted(program.frame_sizes)
    assert by_type(stream, "trim_pkt_size") == [{"type": "trim_pkt_size", "name": "frame_size"}]
    writes = [(w["pkt_offset"], w["add_value"]) for w in by_type(stream, "write_flow_var")]
    assert writes == [(16, -14), (38, -34)], "IP.len = frame - 14, UDP.len = frame - 34"
    assert len(base64.b64decode(stream["packet"]["binary"])) == 1514
    engine = FieldEngine(stream)
    assert [engine.next_packet() for _ in range(24)] == list(program.packets(24))


def test_wide_fields_use_their_low_bytes_or_chunks():
    spec = TrafficSpec(
        templates.vxlan(templates.udp6()),
        vary=(
            Vary("Ether:1.src", Range("02:00:00:00:00:01", "02:00:00:00:00:08")),
            Vary("VXLAN.vni", Range(0xFFF0, 0x10007)),
            Vary("IPv6.src", Random("fd00::", "fd00::ffff:ffff:ffff:ffff")),
        ),
        flows=24,
    )
    program = spec.resolve()
    (stream,) = trex_streams(program)
    variables = {v["name"]: v for v in by_type(stream, "flow_var")}
    writes = {w["name"]: w["pkt_offset"] for w in by_type(stream, "write_flow_var")}
    assert (variables["f0"]["size"], writes["f0"]) == (1, 50 + 6 + 5), "MAC: its last byte"
    assert (variables["f0"]["min_value"], variables["f0"]["max_value"]) == (1, 8)
    vni = {n: (variables[n]["size"], writes[n]) for n in variables if n.startswith("f1")}
    assert vni == {"f1_0": (2, 46), "f1_2": (1, 48)}, "the VNI carries into its middle byte"
    assert {n for n in variables if n.startswith("f2")} == {"f2_8"}, "only the low 8 bytes vary"
    assert len(variables["f2_8"]["value_list"]) == 24 and writes["f2_8"] == 64 + 8 + 8
    engine = FieldEngine(stream)
    assert [engine.next_packet() for _ in range(48)] == list(program.packets(48))


def test_icmp_checksum_is_precomputed():
    program = TrafficSpec(
        templates.icmp4(), vary=(Vary("ICMP.seq", Range(1, 5)),), sizes=Fixed(64)
    ).resolve()
    (stream,) = trex_streams(program)
    csum = [v for v in by_type(stream, "flow_var") if v["name"].startswith("csum")]
    assert len(csum) == 1 and len(csum[0]["value_list"]) == 5
    engine = FieldEngine(stream)
    assert [engine.next_packet() for _ in range(10)] == list(program.packets(10))


def test_latency_stream():
    program = TrafficSpec(templates.udp4(), count=10000, rate_pps=10000).resolve()
    traffic, latency = trex_streams(program, Latency(pg_id=12, rate_pps=100))
    assert traffic["flow_stats"] == {"enabled": False}
    assert latency["flow_stats"] == {
        "enabled": True,
        "stream_id": 12,
        "vxlan": False,
        "ieee_1588": False,
        "rule_type": "latency",
    }
    assert latency["mode"]["total_pkts"] == 100 and latency["mode"]["rate"]["value"] == 100
    assert base64.b64decode(latency["packet"]["binary"]) == program.packet(0)
    assert latency["vm"]["instructions"] == []


def test_untranslatable_program_names_the_field():
    program = TrafficSpec(
        templates.udp4(), vary=(Vary("UDP.sport", Random(1, 65535)),), flows=70000
    ).resolve()
    with pytest.raises(TrexError, match=r"UDP\.sport repeats only every 70000 packets"):
        trex_streams(program)


@settings(max_examples=8, deadline=None)
@given(
    flows=st.integers(1, 30),
    zipf=st.booleans(),
    seed=st.integers(0, 5),
    imix=st.booleans(),
)
def test_field_engine_replays_the_expansion(flows, zipf, seed, imix):
    extra = {"distribution": Zipf(1.5, cycle=4 * flows)} if zipf else {}
    spec = TrafficSpec(
        templates.vxlan(templates.tcp4()),
        vary=(
            Vary("IP:1.src", Range("10.0.0.1", "10.0.0.20", 3)),
            Vary("TCP.sport", Random(1024, 65535)),
            Vary("VXLAN.vni", Values((5, 6, 7))),
        ),
        flows=flows,
        sizes=Imix(((128, 2), (256, 1))) if imix else None,
        seed=seed,
        **extra,
    )
    program: FieldProgram = spec.resolve()
    (stream,) = trex_streams(program)
    engine = FieldEngine(stream)
    n = min(program.period * 2, 200)
    assert [engine.next_packet() for _ in range(n)] == list(program.packets(n))


@pytest.mark.trex
def test_run_on_trex_server(trex_server):
    program = TrafficSpec(
        templates.udp4(), vary=(Vary("UDP.sport", Range(1, 100)),), count=1000, rate_pps=1000
    ).resolve()
    result = run_on_trex(program, trex_server, ports=(0,), latency=Latency(pg_id=1, rate_pps=10))
    assert result["stats"]["0"]["opackets"] == 1000 + 10
    assert 0.9 < result["seconds"] < 5, "1000 frames at 1000 pps"
    assert trex_latency(result["latency"], pg_id=1).sent == 10
