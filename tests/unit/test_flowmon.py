"""Flow metrics (``bpf/flowmon``) in the kernel through BPF_PROG_TEST_RUN, held to its Python model.

For every storage and every hook the kernel's flow table (packets, bytes, TCP flags, SYN and FIN
seen), its misses by reason, its frames not parsed by status and its flows created must be what
``bpf.flowmon.model`` predicts: on crafted corner cases, ``injector.malformed`` variants and
hypothesis-generated frames. Full tables under each policy, array collisions, ring-buffer overflow,
GSO packets at TC, timestamps, two CPUs counting the same flow at once, pins reopened. The ring's C
reader (ringdrain.c): thousands of flows, a ring that wraps and overflows, budgets, a reader thread
beside a producer flat out, flows taken out of its table, a table that cannot grow.

The model runs on one CPU: the tests pin the process to CPU 0 (per-CPU storage would otherwise
split a flow over CPUs in a way no model predicts), except the one that runs two CPUs on purpose.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import ipaddress
import itertools
import json
import os
import random
import re
import resource
import threading
import time
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

import bpf
from bpf import journal
from bpf.build import c_define
from bpf.flowmon import Config, FlowMon, Full, Hook, Model, Storage
from bpf.flowmon.flowmon import now_coarse_ns
from bpf.flowmon.model import RING_RECORD_BYTES, Direction, FlowKey, slot_of
from harness.testrun import Rotated
from harness.topology import host_ifname
from injector import malformed, templates

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:0:1::2"}
LOOPBACK = 1  # test_run's device, when no ifindex is given: the namespace's loopback
PASS = {
    Hook.XDP: bpf.XdpAction.PASS,
    Hook.TC_INGRESS: bpf.TcAction.OK,
    Hook.TC_EGRESS: bpf.TcAction.OK,
}


pytestmark = pytest.mark.usefixtures("one_cpu")  # the models count one CPU (conftest.py)


def tcp4(sport: int, flags: str = "A", payload: bytes = b"") -> bytes:
    return bytes(Ether(**MACS) / IP(**V4) / TCP(sport=sport, dport=443, flags=flags) / payload)


def udp4(sport: int, payload: bytes = b"") -> bytes:
    return bytes(Ether(**MACS) / IP(**V4) / UDP(sport=sport, dport=53) / payload)


def udp6(sport: int, payload: bytes = b"") -> bytes:
    return bytes(Ether(**MACS) / IPv6(**V6) / UDP(sport=sport, dport=53) / payload)


CRAFTED = {
    "tcp4 syn": tcp4(40000, "S"),
    "tcp4 data": tcp4(40000, "PA", b"x" * 100),
    "tcp4 fin": tcp4(40000, "FA"),
    "tcp6 syn with options": bytes(
        Ether(**MACS) / IPv6(**V6) / TCP(sport=1, dport=2, flags="S", options=[("MSS", 1460)])
    ),
    "udp4": udp4(1234, b"q" * 30),
    "udp6": udp6(1234, b"q" * 3),
    "padded to 60 bytes": bytes(Ether(**MACS) / IP(**V4) / UDP(sport=7, dport=8)) + bytes(18),
    "vlan": bytes(Ether(**MACS) / Dot1Q(vlan=100) / IP(**V4) / UDP(sport=1, dport=2)),
    "qinq": bytes(
        Ether(**MACS) / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IPv6(**V6) / TCP(sport=3, dport=4)
    ),
    "pppoe": bytes(Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0x21) / IP(**V4) / UDP()),
    "icmp4: no ports": bytes(Ether(**MACS) / IP(**V4) / ICMP()),
    "icmp6: no ports": bytes(Ether(**MACS) / IPv6(**V6, nh=58) / Raw(bytes(8))),
    "gre: no ports": bytes(Ether(**MACS) / IP(**V4, proto=47) / Raw(bytes(8))),
    "first fragment": bytes(
        Ether(**MACS) / IP(**V4, flags="MF") / UDP(sport=9, dport=10) / Raw(b"x" * 16)
    ),
    "later fragment": bytes(Ether(**MACS) / IP(**V4, frag=3, proto=17) / Raw(b"x" * 16)),
    "ipv6 first fragment": bytes(
        Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrFragment(m=1) / UDP(sport=9, dport=10)
    ),
    "ipv6 later fragment": bytes(
        Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrFragment(offset=5, nh=17) / Raw(b"x" * 8)
    ),
    "arp: not IP": bytes(Ether(**MACS) / ARP()),
    "three tags": bytes(
        Ether(**MACS) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(**V4) / UDP()
    ),
    "truncated tag": bytes(Ether(**MACS) / Dot1Q(vlan=5) / IP(**V4))[:16],
    "truncated tcp": tcp4(5)[:40],
}


def kernel_table(fm: FlowMon) -> dict:
    return {
        f.key: (f.packets, f.bytes, f.tcp_flags, bool(f.syn_ns), bool(f.fin_ns)) for f in fm.flows()
    }


def model_table(model: Model) -> dict:
    model.drain()
    return {k: (c.packets, c.bytes, c.tcp_flags, c.syn, c.fin) for k, c in model.flows.items()}


def feed(fm: FlowMon, model: Model, frame: bytes, hook: Hook, ctx: bytes | None = None) -> bool:
    """Run ``frame`` through the kernel and the model; False if TC cannot be given it."""
    program = fm.program(hook)
    if not program.test_run_takes(frame):
        return False  # no skb reaches TC with less than the IP header its ethertype announces
    verdict = program.test_run(frame, ctx=ctx).verdict
    assert verdict == PASS[hook], (
        f"{hook.value} must pass every frame, got {verdict!r}: {frame.hex()}"
    )
    model.feed(frame, hook, LOOPBACK)
    return True


def check(fm: FlowMon, model: Model, what: str) -> None:
    """The kernel's table, misses, parse errors and flows created against the model's."""
    got, want = kernel_table(fm), model_table(model)
    missing = {k: want[k] for k in want.keys() - got.keys()}
    extra = {k: got[k] for k in got.keys() - want.keys()}
    differ = {k: (got[k], want[k]) for k in got.keys() & want.keys() if got[k] != want[k]}
    assert not (missing or extra or differ), (
        f"{what}: flow tables differ (packets, bytes, flags, syn, fin); only in the model: "
        f"{missing}; only in the kernel: {extra}; kernel vs model: {differ}"
    )
    misses = {k: v for k, v in fm.misses().items() if v}
    assert misses == dict(model.misses), f"{what}: misses: kernel {misses}, model {model.misses}"
    assert fm.unparsed() == dict(model.unparsed), f"{what}: unparsed by status"
    activity = fm.activity()
    assert (activity["created"], activity["spilled"]) == (model.created, model.spilled), (
        f"{what}: flows created, packets spilled: kernel {activity}, "
        f"model {(model.created, model.spilled)}"
    )


@pytest.fixture(params=list(Storage), ids=lambda s: s.value)
def storage(request) -> Storage:
    return request.param


@pytest.mark.parametrize("hook", list(Hook), ids=lambda h: h.value)
def test_crafted_frames_counted_as_the_model_says(storage, hook):
    config = Config(storage=storage)
    with FlowMon(config) as fm:
        model = Model(config)
        for _ in range(3):
            for frame in CRAFTED.values():
                feed(fm, model, frame, hook)
        check(fm, model, f"{storage.value} at {hook.value}")
        # The set holds four frames that do not parse (ARP, three tags and two truncated).
        assert sum(model.unparsed.values()) == 3 * 4, model.unparsed


@pytest.mark.parametrize("hook", list(Hook), ids=lambda h: h.value)
def test_fields_at_the_ends_of_their_ranges(storage, hook, extreme_frames):
    """Ports, addresses, protocol numbers, VLAN ids, PPPoE session ids and fragment offsets at
    both ends of their ranges, in every storage and at every hook: the table the model holds."""
    config = Config(storage=storage, entries=256)
    with FlowMon(config) as fm:
        model = Model(config)
        for frame in extreme_frames.values():
            feed(fm, model, frame, hook)
        check(fm, model, f"{storage.value} at {hook.value}, fields at their ends")


@pytest.mark.parametrize("hook", list(Hook), ids=lambda h: h.value)
def test_lengths_that_disagree_stop_at_the_ip_packets_end(hook, disagreeing_lengths):
    """Headers that claim more than their IP packet holds, the frame padded long enough, and IP
    packets shorter than their frames: parse status, keys and wire bytes as the model says."""
    config = Config()
    with FlowMon(config) as fm:
        model = Model(config)
        for frame in disagreeing_lengths.values():
            feed(fm, model, frame, hook)
        check(fm, model, f"lengths that disagree at {hook.value}")


def test_ports_zero_for_fragments_and_portless_protocols():
    config = Config()
    with FlowMon(config) as fm:
        model = Model(config)
        for name in ("icmp4: no ports", "first fragment", "later fragment", "gre: no ports"):
            feed(fm, model, CRAFTED[name], Hook.XDP)
        check(fm, model, "portless")
        keys = {(f.key.sport, f.key.dport, f.key.proto, f.packets) for f in fm.flows()}
        assert keys == {(0, 0, 1, 1), (0, 0, 17, 2), (0, 0, 47, 1)}, (
            "both fragments of a datagram are one flow without ports; ICMP and GRE have no ports"
        )


TEMPLATES = {
    "udp4": templates.udp4(),
    "tcp4": templates.tcp4(),
    "udp6": templates.udp6(),
    "tcp6": templates.tcp6(),
    "udp4 vlan": templates.udp4(vlan=7),
}


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("hook", [Hook.XDP, Hook.TC_EGRESS], ids=lambda h: h.value)
def test_malformed_variants_counted_by_reason(template, hook):
    config = Config(storage=Storage.PERCPU_HASH)
    variants = malformed.variants(TEMPLATES[template])
    with FlowMon(config) as fm:
        model = Model(config)
        fed = [v for v in variants if feed(fm, model, bytes(v.packet), hook)]
        check(fm, model, f"malformed {template}")
    truncated = sum(v.name.startswith("truncated:") for v in fed)
    assert sum(model.unparsed.values()) >= truncated, "every truncated header is a parse error"


# --- hypothesis ----------------------------------------------------------------------------------


@st.composite
def frames(draw) -> bytes:
    """IPv4/IPv6 frames: TCP (any flags)/UDP/ICMP/other, tags, fragments, truncation and damage."""
    v6 = draw(st.booleans())
    # Few addresses and ports: flows repeat, so counts add up in entries, slots collide.
    host = st.integers(1, 4)
    src, dst = draw(host), draw(host)
    ports = {"sport": draw(st.integers(1, 3)), "dport": draw(st.sampled_from([53, 80, 443]))}
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    l4 = {
        "tcp": lambda: TCP(**ports, flags=draw(st.integers(0, 255))),
        "udp": lambda: UDP(**ports),
        "icmp": lambda: Raw(bytes(8)),
        "other": lambda: Raw(draw(st.binary(max_size=12))),
    }[kind]()
    proto = {"tcp": 6, "udp": 17, "icmp": 58 if v6 else 1, "other": 47}[kind]
    frag = draw(st.sampled_from([None, None, "first", "later"]))
    if v6:
        ip = IPv6(src=f"2001:db8::{src}", dst=f"2001:db8::{dst}", nh=proto)
        if frag:
            ip = ip / IPv6ExtHdrFragment(nh=proto, m=1, offset=0 if frag == "first" else 9)
    else:
        ip = IP(src=f"10.0.0.{src}", dst=f"10.0.1.{dst}", proto=proto)
        if frag:
            ip.flags, ip.frag = "MF", 0 if frag == "first" else 9
    l2 = Ether(**MACS)
    for tag in draw(st.lists(st.sampled_from([Dot1Q, Dot1AD]), max_size=3)):
        l2 = l2 / tag(vlan=draw(st.integers(0, 4095)))
    frame = bytes(l2 / ip / l4 / Raw(draw(st.binary(max_size=64))))
    frame += bytes(draw(st.integers(0, 20)))  # Ethernet padding: on the wire, so counted
    if draw(st.integers(0, 9)) == 0:
        frame = frame[: draw(st.integers(14, len(frame)))]  # test_run refuses under 14 bytes
    if draw(st.integers(0, 9)) == 0:
        pos = draw(st.integers(0, len(frame) - 1))
        frame = frame[:pos] + bytes([draw(st.integers(0, 255))]) + frame[pos + 1 :]
    return frame


HYPOTHESIS_CONFIGS = {
    "hash": Config(storage=Storage.HASH, entries=24),
    "percpu_hash spill": Config(storage=Storage.PERCPU_HASH, entries=24, full=Full.SPILL),
    "array": Config(storage=Storage.ARRAY, entries=16),
    "percpu_array spill": Config(storage=Storage.PERCPU_ARRAY, entries=16, full=Full.SPILL),
    "ringbuf": Config(storage=Storage.RINGBUF, ring_bytes=8192),
}


@pytest.mark.parametrize("name", HYPOTHESIS_CONFIGS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(frames(), st.sampled_from(list(Hook))), min_size=1, max_size=60))
def test_hypothesis_batches(name, batch):
    """Small tables: the batches fill them, collide in them and overflow the ring."""
    config = HYPOTHESIS_CONFIGS[name]
    with FlowMon(config) as fm:
        model = Model(config)
        for frame, hook in batch:
            feed(fm, model, frame, hook)
        check(fm, model, name)


# --- wire length at TC ---------------------------------------------------------------------------


def skb_ctx(fm: FlowMon, gso_segs: int, gso_size: int) -> bytes:
    skb = fm.obj.struct("__sk_buff")()
    skb.gso_segs, skb.gso_size = gso_segs, gso_size
    return bytes(skb)


@pytest.mark.parametrize("hook", [Hook.TC_INGRESS, Hook.TC_EGRESS], ids=lambda h: h.value)
@pytest.mark.parametrize("segs", [1, 2, 3])  # test_run takes frames up to about a page
def test_gso_packet_counts_its_segments_with_their_headers(storage, hook, segs):
    config = Config(storage=storage)
    frames = {
        "tcp4": tcp4(1, "PA", b"x" * 1000 * segs),
        "tcp6 options": bytes(
            Ether(**MACS)
            / IPv6(**V6)
            / TCP(sport=2, dport=3, options=[("Timestamp", (1, 2))])
            / Raw(b"y" * 1000 * segs)
        ),
        "udp4 (UDP GSO)": udp4(5, b"z" * 1000 * segs),
    }
    with FlowMon(config) as fm:
        model = Model(config)
        for frame in frames.values():
            ctx = skb_ctx(fm, segs, 1000)
            fm.program(hook).test_run(frame, ctx=ctx)
            model.feed(frame, hook, LOOPBACK, gso_segs=segs)
        check(fm, model, f"GSO of {segs} segments")
    headers = {"tcp4": 14 + 20 + 20, "tcp6 options": 14 + 40 + 32, "udp4 (UDP GSO)": 14 + 20 + 8}
    for name, frame in frames.items():
        packet = model.feed(frame, hook, LOOPBACK, gso_segs=segs)
        assert (packet.packets, packet.bytes) == (segs, len(frame) + (segs - 1) * headers[name])


def test_xdp_ignores_gso_fields_the_frame_is_one_packet():
    config = Config()
    with FlowMon(config) as fm:
        frame = tcp4(1, "PA", b"x" * 3000)
        fm.program(Hook.XDP).test_run(frame)
        (flow,) = fm.flows()
        assert (flow.packets, flow.bytes) == (1, len(frame))


# --- full tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("full", [Full.DROP, Full.SPILL], ids=lambda f: f.value)
@pytest.mark.parametrize("kind", [Storage.HASH, Storage.PERCPU_HASH], ids=lambda s: s.value)
def test_full_hash_table(kind, full):
    entries = 32
    config = Config(storage=kind, entries=entries, full=full)
    with FlowMon(config) as fm:
        model = Model(config)
        for round_ in range(2):
            for sport in range(entries + 10):
                feed(fm, model, udp4(sport, bytes(round_)), Hook.XDP)
            feed(fm, model, udp6(1), Hook.XDP)  # the IPv6 table has room of its own
        check(fm, model, f"{kind.value} full, {full.value}")
        if full is Full.DROP:
            assert model.misses == {"table_full": 20}, "10 flows beyond the table, twice"
            assert len(fm.flows()) == entries + 1
        else:
            assert model.spilled == 20 and not model.misses
            assert len(fm.flows()) == entries + 11, "spilled flows are in the reader's table"


@pytest.mark.parametrize("kind", [Storage.LRU_HASH, Storage.LRU_PERCPU_HASH], ids=lambda s: s.value)
def test_full_lru_table_evicts(kind):
    """Which flows an LRU evicts is the kernel's choice; what it keeps must be exact and recent."""
    entries = 256
    config = Config(storage=kind, entries=entries)
    with FlowMon(config) as fm:
        model = Model(config)
        n_flows = 4 * entries
        for sport in range(n_flows):
            for _ in range(2):
                feed(fm, model, udp4(sport, b"p" * (sport % 50)), Hook.XDP)
        kept = kernel_table(fm)
        want = model_table(model)
        assert 0 < len(kept) <= entries, f"an LRU of {entries} holds {len(kept)} flows"
        assert all(kept[k] == want[k] for k in kept), "every kept flow has all its packets"
        last = max(want)  # the highest port: the flow sent last
        assert last in kept, "the most recently used flow is kept"
        assert fm.activity()["created"] == n_flows, "every flow entered the table once"
        assert not any(fm.misses().values()), "an LRU never refuses a packet"


@pytest.mark.parametrize("full", [Full.DROP, Full.SPILL], ids=lambda f: f.value)
@pytest.mark.parametrize("kind", [Storage.ARRAY, Storage.PERCPU_ARRAY], ids=lambda s: s.value)
def test_array_collisions_counted_never_merged(kind, full):
    slots = 8
    config = Config(storage=kind, entries=slots, full=full)
    with FlowMon(config) as fm:
        model = Model(config)
        for sport in range(40):
            feed(fm, model, udp4(sport), Hook.TC_INGRESS)
        check(fm, model, f"{kind.value} of {slots} slots, {full.value}")
        occupied = {slot_of(k, slots) for k in model._slots.values()}
        assert len(occupied) <= slots and model.created == len(occupied)
        collided = 40 - model.created
        assert collided > 0, "40 flows in 8 slots collide"
        if full is Full.DROP:
            assert fm.misses()["collision"] == collided
            assert len(fm.flows()) == model.created
        else:
            assert fm.activity()["spilled"] == collided and len(fm.flows()) == 40


def _frame_of(key: FlowKey) -> bytes:
    ip = (IP if key.version == 4 else IPv6)(src=str(key.src), dst=str(key.dst))
    l4 = (TCP if key.proto == 6 else UDP)(sport=key.sport, dport=key.dport)
    return bytes(Ether(**MACS) / ip / l4)


def _one_part_apart(version: int, part: str, slots: int) -> tuple[FlowKey, FlowKey]:
    """Two flows in one array slot whose keys differ in ``part`` alone (an address word, a port,
    the protocol, the direction); a field both share is stepped until they land together."""
    src, dst = (ipaddress.ip_address(a) for a in (V4 if version == 4 else V6).values())
    base = FlowKey(version, LOOPBACK, Direction.INGRESS, src, dst, 40000, 443, 17)
    if part == "proto":
        other = {"proto": 6}  # TCP and UDP, the same ports
    elif part == "direction":
        other = {"direction": Direction.EGRESS}
    elif part in ("sport", "dport"):
        other = {part: getattr(base, part) ^ 0x8001}
    else:  # "src[i]", "dst[i]": 32-bit word i of the address, its top bit flipped
        side, word = part[:3], int(part[4])
        packed = bytearray(getattr(base, side).packed)
        packed[4 * word] ^= 0x80
        other = {side: ipaddress.ip_address(bytes(packed))}
    stepped = "dport" if part == "sport" else "sport"
    for value in range(1, 1 << 16):
        a = dataclasses.replace(base, **{stepped: value})
        b = dataclasses.replace(a, **other)
        if slot_of(a, slots) == slot_of(b, slots):
            return a, b
    raise AssertionError(f"no two flows one {part} apart share a slot of {slots}")


ARRAY_KEY_PARTS = {
    4: ["src[0]", "dst[0]", "sport", "dport", "proto", "direction"],
    6: [f"{side}[{i}]" for side in ("src", "dst") for i in range(4)]
    + ["sport", "dport", "proto", "direction"],
}


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("kind", [Storage.ARRAY, Storage.PERCPU_ARRAY], ids=lambda s: s.value)
def test_array_flows_one_key_part_apart_in_one_slot_collide(kind, version):
    """For each part of the key, two flows that differ in it alone and hash to one slot: the
    second is a collision every time, counted as the model counts it, never merged into the
    first."""
    slots = 64
    config = Config(storage=kind, entries=slots)
    with FlowMon(config) as fm:
        for part in ARRAY_KEY_PARTS[version]:
            fm.table.forget()
            model = Model(config)
            keys = _one_part_apart(version, part, slots)
            for key in [keys[0], keys[1], keys[0], keys[1], keys[1]]:
                hook = Hook.TC_INGRESS if key.direction is Direction.INGRESS else Hook.TC_EGRESS
                feed(fm, model, _frame_of(key), hook)
            assert list(model.flows) == [keys[0]] and model.misses == {"collision": 3}, (
                f"{part}: the model counts the second flow as a collision"
            )
            check(fm, model, f"{kind.value}, IPv{version}, two flows one {part} apart")


def test_ring_overflow_counted_and_the_rest_aggregated():
    ring_bytes = 4096
    config = Config(storage=Storage.RINGBUF, ring_bytes=ring_bytes)
    with FlowMon(config) as fm:
        record = fm.obj.struct("flow_record")
        assert ctypes.sizeof(record) + 8 == RING_RECORD_BYTES, "the model's record size"
        model = Model(config)
        frame = udp4(1, b"r" * 10)
        fm.program(Hook.XDP).test_run(frame, repeat=100)
        for _ in range(100):
            model.feed(frame, Hook.XDP, LOOPBACK)
        check(fm, model, "a 4 KiB ring, 100 records")
        fits = ring_bytes // RING_RECORD_BYTES
        assert model.misses == {"ring_full": 100 - fits}
        # The reader drained the ring: it has room again.
        fm.program(Hook.XDP).test_run(frame, repeat=10)
        for _ in range(10):
            model.feed(frame, Hook.XDP, LOOPBACK)
        check(fm, model, "after the drain")


# --- timestamps ----------------------------------------------------------------------------------


def test_times_are_the_coarse_clock_and_syn_fin_their_packets():
    with FlowMon(Config()) as fm:
        before = now_coarse_ns()
        fm.program(Hook.XDP).test_run(tcp4(9, "S"))
        fm.program(Hook.XDP).test_run(tcp4(9, "A"))
        fm.program(Hook.XDP).test_run(udp4(9))
        after = now_coarse_ns()
        tcp, udp = sorted(fm.flows(), key=lambda f: f.key.proto)
        for flow in (tcp, udp):
            assert before <= flow.first_seen_ns <= flow.last_seen_ns <= after, flow
        assert before <= tcp.syn_ns <= after and tcp.fin_ns == 0
        assert udp.syn_ns == udp.fin_ns == 0 and udp.tcp_flags == 0
        assert tcp.tcp_flags == 0x12, "SYN | ACK"


# --- two CPUs at once ----------------------------------------------------------------------------


def test_two_cpus_count_the_same_flows_exactly(two_cpus, storage):
    """Both CPUs meet 3,000 new flows (IPv4 and IPv6) together, twice each (conftest.py's
    two_cpus), then one flow 50,000 times at once: a shared entry must be created once (BPF_NOEXIST;
    an array slot claimed under its lock) and lose no add, per-CPU ones sum, the ring carries every
    record. The model, fed each flow once, says which flows hold a slot and which collide."""
    n_flows, laps, busy = 1500, 2, 50_000
    batches = {34: udp4(1024, b"a" * 10), 54: udp6(1024, b"b" * 20)}  # the UDP source port
    config = Config(storage=storage, entries=4 * n_flows, ring_bytes=1 << 24)
    model = Model(config)
    for off, frame in batches.items():
        for f in two_cpus.rotated(frame, off, n_flows):
            model.feed(f, Hook.XDP, LOOPBACK)
    with FlowMon(config) as fm:
        program = fm.program(Hook.XDP)
        for off, frame in batches.items():
            two_cpus.run(program, [frame], off, n_flows, laps)
        per_flow = 2 * laps  # each CPU runs each flow once a lap
        got = {f.key: (f.packets, f.bytes) for f in fm.flows()}
        model.drain()
        want = {k: (c.packets * per_flow, c.bytes * per_flow) for k, c in model.flows.items()}
        wrong = {str(k): (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert len(got) == len(want) and not wrong, (
            f"{storage.value}: {len(want)} new flows counted, {per_flow} packets each from two "
            f"CPUs; kernel has {len(got)}; (kernel, expected): {dict(list(wrong.items())[:5])}"
        )
        misses = {k: v for k, v in fm.misses().items() if v}
        assert misses == {k: v * per_flow for k, v in model.misses.items()}, misses
        # A per-CPU array has a slot per CPU: each CPU claims its own.
        claims = 2 if storage is Storage.PERCPU_ARRAY else 1
        assert fm.activity()["created"] == model.created * claims, (
            f"{storage.value}: flows created on two CPUs; the model created {model.created}"
        )
        frame = bytes(Ether(**MACS) / IP(**V4) / UDP(sport=7, dport=1024) / b"c")
        two_cpus.run(program, [frame], 36, 1, busy)  # the rotator leaves one flow as it is
        (flow,) = [f for f in fm.flows() if f.key.sport == 7]
        assert (flow.packets, flow.bytes) == (2 * busy, 2 * busy * len(frame)), (
            f"{storage.value}: one flow, {busy} packets from each CPU at once"
        )


# --- pins ----------------------------------------------------------------------------------------


def test_pinned_maps_reopen_with_their_counts_and_configuration():
    name = host_ifname(journal.current().run_id, "fmunit")  # the run's own: xdist-safe
    config = Config(storage=Storage.LRU_PERCPU_HASH, entries=1000)
    with FlowMon(config) as fm:
        fm.program(Hook.XDP).test_run(udp4(1), repeat=5)
        fm.pin(name)
        try:
            with FlowMon.reopen(name) as again:
                assert again.config == config
                again.program(Hook.XDP).test_run(udp4(1), repeat=3)
                assert [f.packets for f in again.flows()] == [8]
            assert [f.packets for f in fm.flows()] == [8], "one table, two loaders"
        finally:
            removed = FlowMon.unpin(name)
    assert {p.name for p in removed} == set(FlowMon.PINNED)
    assert not FlowMon.pin_path(name).exists()


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,named",
    [
        ({"storage": Storage.LRU_HASH, "full": Full.DROP}, "--full drop"),
        ({"storage": Storage.HASH, "full": Full.EVICT}, "--full evict"),
        ({"storage": Storage.RINGBUF, "full": Full.SPILL}, "--full spill"),
        ({"entries": 0}, "--entries 0"),
        ({"ring_bytes": 5000}, "ring size 5000"),
    ],
)
def test_bad_configuration_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        Config(**kwargs)


# --- the ring's reader (ringdrain.c) ------------------------------------------------------------

RINGDRAIN_C = Path(bpf.__file__).parent / "flowmon" / "ringdrain.c"
READER_FIRST_FLOWS = c_define(RINGDRAIN_C, "FIRST_SLOTS") // 2  # its table's room before it grows
TCP_TURNS = ["S", "SA", "PA", "FA", "R", "A"]


def tcp6(sport: int, flags: str = "A", payload: bytes = b"") -> bytes:
    return bytes(Ether(**MACS) / IPv6(**V6) / TCP(sport=sport, dport=443, flags=flags) / payload)


@functools.cache
def _flow_frame(kind: int, flags: str, payload_len: int) -> bytes:
    """A frame of each kind, built once: ``many_flows`` sets its source port."""
    payload = b"p" * payload_len
    if kind < 2:
        return (udp4 if kind == 0 else udp6)(0, payload)
    return (tcp4 if kind == 2 else tcp6)(0, flags, payload)


def many_flows(n: int, seed: int = 1) -> list[bytes]:
    """Frames of ``n`` flows, UDP and TCP over IPv4 and IPv6 in turns, in a shuffled order: a UDP
    flow one to three frames, a TCP flow two or three of ``TCP_TURNS``' flags (SYNs, FINs, resets),
    so that flows interleave in the ring as a link's would."""
    frames = []
    for i in range(n):
        kind, port = i % 4, (1024 + i // 4).to_bytes(2, "big")
        off = 34 if kind in (0, 2) else 54  # the source port, after an IPv4 or IPv6 header
        if kind < 2:
            turns = [""] * (1 + i % 3)
        else:
            turns = [TCP_TURNS[(i + j) % len(TCP_TURNS)] for j in range(2 + i % 2)]
        for flags in turns:
            frame = _flow_frame(kind, flags, i % 7)
            frames.append(frame[:off] + port + frame[off + 2 :])
    random.Random(seed).shuffle(frames)
    return frames


@pytest.mark.parametrize(
    "config",
    [
        Config(storage=Storage.RINGBUF),
        Config(storage=Storage.HASH, entries=300, full=Full.SPILL),
        Config(storage=Storage.PERCPU_ARRAY, entries=256, full=Full.SPILL),
    ],
    ids=["ringbuf", "hash spill", "percpu_array spill"],
)
def test_reader_adds_many_flows_up_as_the_model_does(config):
    """Four times the reader's first table of flows, IPv4 and IPv6, UDP and TCP with SYNs, FINs and
    resets, interleaved: the table grows, and every flow holds exactly what the model says
    (spilled flows merged with the kernel's entries)."""
    n = 4 * READER_FIRST_FLOWS
    with FlowMon(config) as fm:
        model = Model(config)
        for frame in many_flows(n):
            feed(fm, model, frame, Hook.XDP)
        check(fm, model, f"{n} flows through the ring")
        assert len(fm.flows()) == n


@pytest.mark.parametrize("chunk", [50, 80], ids=["wraps", "wraps and overflows"])
def test_reader_across_a_ring_that_wraps_many_times(chunk):
    """A 4 KiB ring (56 records; 72-byte records straddle its end) drained after every ``chunk``
    frames: it wraps dozens of times; with 80 frames a chunk 24 of each find it full, counted as
    ``ring_full``, and every other record is in its flow."""
    ring_bytes = 4096
    config = Config(storage=Storage.RINGBUF, ring_bytes=ring_bytes)
    frames = many_flows(1000)
    with FlowMon(config) as fm:
        model = Model(config)
        for start in range(0, len(frames), chunk):
            for frame in frames[start : start + chunk]:
                feed(fm, model, frame, Hook.XDP)
            fm.table.drain()
            model.drain()
        check(fm, model, f"a {ring_bytes}-byte ring drained every {chunk} frames")
        kept = len(frames) - model.misses["ring_full"]
        assert kept * RING_RECORD_BYTES > 20 * ring_bytes, "the ring wrapped many times"
        fits = ring_bytes // RING_RECORD_BYTES
        assert model.misses["ring_full"] == sum(
            max(0, len(frames[s : s + chunk]) - fits) for s in range(0, len(frames), chunk)
        )


def test_reader_drain_takes_at_most_its_budget():
    config = Config(storage=Storage.RINGBUF, ring_bytes=1 << 17)
    with FlowMon(config) as fm:
        fm.program(Hook.XDP).test_run(udp4(5), repeat=1000)
        assert [fm.table.drain(100), fm.table.drain(100), fm.table.drain(), fm.table.drain()] == [
            100,
            100,
            800,
            0,
        ]
        assert [f.packets for f in fm.flows()] == [1000]


def test_reader_drains_while_the_program_fills_the_ring(two_cpus):
    """The program fills a small ring flat out on one CPU while a reader thread drains it on the
    other and this thread reads the table: no drain reads more than the ring held (a producer
    faster than the reader cannot keep a call from returning), and at the end every packet run is
    in its flow or counted ``ring_full``."""
    ring_bytes, n_flows, repeat, runs = 1 << 16, 40, 200_000, 5
    frame = udp4(1024, b"w" * 10)
    config = Config(storage=Storage.RINGBUF, ring_bytes=ring_bytes)
    with FlowMon(config) as fm, Rotated(frame, n_flows, fm.program(Hook.XDP)) as producer:
        stop, drained = threading.Event(), []

        def produce() -> None:
            os.sched_setaffinity(0, {two_cpus.cpus[1]})
            for _ in range(runs):
                producer.ns_per_packet(repeat)

        def read() -> None:
            os.sched_setaffinity(0, {two_cpus.cpus[0]})
            while not stop.is_set():
                drained.append(fm.table.drain())

        threads = [threading.Thread(target=produce), threading.Thread(target=read)]
        for t in threads:
            t.start()
        seen = 0
        while threads[0].is_alive():
            total = sum(f.packets for f in fm.flows())
            assert total >= seen, "a read of the table while the reader drains lost packets"
            seen = total
        threads[0].join()
        stop.set()
        threads[1].join()
        flows, misses = fm.flows(), fm.misses()
    assert max(drained) <= ring_bytes // RING_RECORD_BYTES, "a drain read more than the ring held"
    assert sum(drained) > 0 and misses["ring_full"] > 0, (sum(drained), misses)
    assert len(flows) == n_flows and all(f.bytes == f.packets * len(frame) for f in flows)
    counted = sum(f.packets for f in flows)
    assert counted + misses["ring_full"] == runs * repeat, (
        f"{runs * repeat} packets run: {counted} counted, {misses['ring_full']} found the ring full"
    )


def test_reader_takes_flows_out_of_the_middle_of_its_table():
    """Every third of 3,000 flows taken out (linear probing's deletion moves the flows after each
    back): the rest stay whole and findable, and a taken flow's next packets make a new flow."""
    n = 3000
    config = Config(storage=Storage.RINGBUF)
    frames = many_flows(n)
    with FlowMon(config) as fm:
        first = Model(config)
        for frame in frames:
            feed(fm, first, frame, Hook.XDP)
        before = model_table(first)
        gone = sorted(before)[::3]
        taken = fm.table.take(gone)
        assert {k: (f.packets, f.bytes, f.tcp_flags) for k, f in taken.items()} == {
            k: before[k][:3] for k in gone
        }
        second = Model(config)
        for frame in frames:
            feed(fm, second, frame, Hook.XDP)
        again = model_table(second)
        got = kernel_table(fm)
    want = {
        k: again[k]
        if k in taken
        else (
            before[k][0] + again[k][0],
            before[k][1] + again[k][1],
            before[k][2] | again[k][2],
            before[k][3] or again[k][3],
            before[k][4] or again[k][4],
        )
        for k in again
    }
    assert got == want, "flows after every third was taken out and all were sent again"


@pytest.mark.parametrize("storage", [Storage.HASH, Storage.RINGBUF], ids=lambda s: s.value)
def test_first_last_syn_and_fin_are_the_earliest_and_latest_packets(storage):
    """A SYN, data, a second SYN, a FIN and a second FIN, each in a clock tick of its own: first
    seen and the SYN are the first SYN's time, the FIN the first FIN's, last seen the last FIN's;
    the kernel's table and the ring's reader keep the same times."""
    with FlowMon(Config(storage=storage)) as fm:
        windows = []
        for flags in ("S", "A", "S", "FA", "FA"):
            before = now_coarse_ns()
            fm.program(Hook.XDP).test_run(tcp4(9, flags))
            windows.append((before, now_coarse_ns()))
            time.sleep(0.03)  # past the coarse clock's next tick
        assert all(a[1] < b[0] for a, b in itertools.pairwise(windows)), windows
        (flow,) = fm.flows()

    def inside(ts: int, window: tuple[int, int]) -> bool:
        return window[0] <= ts <= window[1]

    assert inside(flow.first_seen_ns, windows[0]) and inside(flow.syn_ns, windows[0]), flow
    assert inside(flow.fin_ns, windows[3]) and inside(flow.last_seen_ns, windows[4]), flow
    assert flow.tcp_flags == 0x13 and flow.packets == 5, flow


def test_reader_out_of_memory_refuses_new_flows_counted():
    """A reader whose table cannot grow (its process's address space capped, in a child so that
    the cap touches nothing else) takes the records of flows it holds and counts the packets of the
    new ones it had no room for as ``reader_full``: lost, never silently. Once memory is there
    again, the same flows are all counted."""
    n_flows = 20_000  # past what 1 MiB holds: 104 bytes a flow and 16 of its index
    config = Config(storage=Storage.RINGBUF, ring_bytes=1 << 21)
    frame = udp4(1024, b"m" * 18)
    with (
        FlowMon(config) as fm,
        Rotated(frame, n_flows, fm.program(Hook.XDP)) as rotator,
    ):
        rotator.ns_per_packet(n_flows)
        readable, writable = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(readable)
            os._exit(_drain_capped(fm, rotator, n_flows, writable))
        os.close(writable)
        with os.fdopen(readable) as pipe:
            report = pipe.read()
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    capped, lifted = json.loads(report)
    held, counted, refused = capped
    assert refused > 0 and held + refused == n_flows == counted + refused, capped
    assert held >= READER_FIRST_FLOWS and held & (held - 1) == 0, (
        f"the table stops at a size it had room for (a power of 2): {held}"
    )
    assert lifted == [n_flows, 2 * n_flows - refused, refused], (
        "once it can grow, every flow is counted; the refused packets stay counted lost"
    )


def _drain_capped(fm: FlowMon, rotator: Rotated, n_flows: int, out: int) -> int:
    """In a forked child: drain with the address space capped 1 MiB above what the process maps,
    then without the cap after another lap of the flows; write [flows, packets, reader_full] of
    each to ``out``. Its exit status."""
    try:
        before = resource.getrlimit(resource.RLIMIT_AS)
        status = Path("/proc/self/status").read_text()
        mapped = int(re.search(r"^VmSize:\s+(\d+) kB", status, re.M).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 20), before[1]))
        try:
            fm.table.drain()
        finally:
            resource.setrlimit(resource.RLIMIT_AS, before)
        report = []
        for lap in range(2):
            if lap:
                rotator.ns_per_packet(n_flows)
            flows = fm.flows()
            report.append([len(flows), sum(f.packets for f in flows), fm.misses()["reader_full"]])
        os.write(out, json.dumps(report).encode())
        return 0
    except BaseException:
        os.write(out, traceback.format_exc().encode())
        return 1
