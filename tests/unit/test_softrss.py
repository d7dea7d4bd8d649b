"""Soft RSS (``bpf/softrss``) in the kernel through BPF_PROG_TEST_RUN, held to its Python model.

For every frame the kernel's flow entry (hash, bucket, key), its bucket counters and its count of
unparsable frames by reason must be what ``bpf.softrss.model`` predicts: on crafted corner cases, on
``injector.malformed`` variants and on hypothesis-generated frames. The Microsoft RSS verification
vectors must come out of the real program; symmetric mode must put both directions in one bucket; a
RETA change must apply to the next frame; an elephant must be announced exactly once, also when two
CPUs run the same flow at once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import json
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

import bpf
from bpf.libbpf import TestRunOpts, lib
from bpf.softrss import Action, Config, HashKind, SoftRss, equal_reta
from bpf.softrss.model import FlowKey, Model, bucket_of, cache_set, flow_hash, parse
from bpf.softrss.softrss import CLOCK_MONOTONIC_COARSE
from bpf.toeplitz import MICROSOFT_KEY, MICROSOFT_VECTORS, SYMMETRIC_KEY
from injector import malformed, templates

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:0:1::2"}

CONFIGS = {
    "toeplitz": Config(buckets=8),
    "toeplitz-symmetric": Config(buckets=5, symmetric=True),
    "jhash": Config(buckets=7, hash=HashKind.JHASH, jhash_initval=0x1234),
    "jhash-symmetric": Config(buckets=3, hash=HashKind.JHASH, symmetric=True),
}


@pytest.fixture(params=list(CONFIGS))
def pair(request):
    """The data plane and its model, loaded with the same configuration."""
    config = CONFIGS[request.param]
    with SoftRss(config) as rss:
        yield rss, Model(config)


def run(rss: SoftRss, frame: bytes, repeat: int = 1) -> bpf.TestRun:
    return rss.program.test_run(frame, repeat=repeat)


def check_frame(rss: SoftRss, model: Model, frame: bytes) -> None:
    """Feed ``frame`` to both; the kernel must agree with the model on everything it touched."""
    verdict = run(rss, frame).verdict
    want = model.feed(frame)
    where = f"{want.status}, frame {frame.hex()}"
    assert verdict is bpf.XdpAction.PASS, (
        f"count mode must pass every frame; got {verdict!r}; {where}"
    )
    assert rss.unparsed() == model.unparsed, f"unparsed by reason differ; {where}"
    if want.key is None:
        return
    flow = rss.flow(want.key)
    assert flow is not None, f"no flow entry for {want.key}; kernel has {rss.flows()}; {where}"
    assert (flow.hash, flow.bucket) == (model.flows[want.key].hash, model.flows[want.key].bucket), (
        f"flow {want.key}: kernel hash/bucket {flow.hash:#010x}/{flow.bucket}, model "
        f"{want.hash:#010x}/{want.bucket}; {where}"
    )
    assert flow.packets == model.flows[want.key].packets
    got = rss.obj.maps["buckets"].lookup_sum(want.bucket)
    expected = model.buckets[want.bucket]
    assert (got.packets, got.bytes, got.flows) == (
        expected.packets,
        expected.bytes,
        expected.flows,
    ), f"bucket {want.bucket}: kernel {got}, model {expected}; {where}"


# --- the Microsoft RSS verification vectors, through the real program -----------------------------


@pytest.fixture(scope="module")
def microsoft():
    with SoftRss(Config(buckets=16)) as rss:
        yield rss


def kernel_hash(rss: SoftRss, frame: bytes) -> int:
    rss.forget_flows()
    run(rss, frame)
    (flow,) = rss.flows()
    return flow.hash


@pytest.mark.parametrize("src,sport,dst,dport,l3,l4", MICROSOFT_VECTORS)
def test_microsoft_vectors(microsoft, src, sport, dst, dport, l3, l4):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    with_ports = bytes(Ether(**MACS) / ip / TCP(sport=sport, dport=dport))
    assert kernel_hash(microsoft, with_ports) == l4, "TCP: addresses and ports"
    # GRE (47) has no ports: the hash takes the addresses only
    gre = IPv6(src=src, dst=dst, nh=47) if ":" in src else IP(src=src, dst=dst, proto=47)
    no_ports = bytes(Ether(**MACS) / gre / Raw(bytes(8)))
    assert kernel_hash(microsoft, no_ports) == l3, "GRE: addresses only"
    assert microsoft.flows()[0].bucket == equal_reta(16)[l3 & 127]


# --- crafted corner cases ------------------------------------------------------------------------


def _pppoe(ip) -> bytes:
    return bytes(Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0x21) / ip)


CRAFTED = {
    "udp4": bytes(Ether(**MACS) / IP(**V4) / UDP(sport=1234, dport=53)),
    "tcp4": bytes(Ether(**MACS) / IP(**V4) / TCP(sport=40000, dport=443)),
    "udp6": bytes(Ether(**MACS) / IPv6(**V6) / UDP(sport=1234, dport=53)),
    "tcp6": bytes(Ether(**MACS) / IPv6(**V6) / TCP(sport=40000, dport=443)),
    "vlan": bytes(Ether(**MACS) / Dot1Q(vlan=100) / IP(**V4) / UDP(sport=1, dport=2)),
    "qinq": bytes(
        Ether(**MACS) / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IPv6(**V6) / TCP(sport=3, dport=4)
    ),
    "pppoe": _pppoe(IP(**V4) / UDP(sport=5, dport=6)),
    "icmp4: 2-tuple": bytes(Ether(**MACS) / IP(**V4) / ICMP()),
    "icmp6: 2-tuple": bytes(Ether(**MACS) / IPv6(**V6, nh=58) / Raw(bytes(8))),
    "first fragment: addresses only": bytes(
        Ether(**MACS) / IP(**V4, flags="MF") / UDP(sport=9, dport=10) / Raw(b"x" * 16)
    ),
    "later fragment: addresses only": bytes(
        Ether(**MACS) / IP(**V4, frag=3, proto=17) / Raw(b"x" * 16)
    ),
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
}


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted(pair, name):
    check_frame(*pair, CRAFTED[name])


def test_fragments_and_icmp_key_without_ports(pair):
    rss, model = pair
    for name in (
        "icmp4: 2-tuple",
        "first fragment: addresses only",
        "later fragment: addresses only",
    ):
        check_frame(rss, model, CRAFTED[name])
    keys = {(f.key.sport, f.key.dport, f.key.proto) for f in rss.flows()}
    assert keys == {(0, 0, 1), (0, 0, 17)}, "fragments and ICMP are keyed and hashed on addresses"
    (fragments,) = [f for f in rss.flows() if f.key.proto == 17]
    assert fragments.packets == 2, "both fragments of the datagram are one flow in one bucket"


def test_fields_at_the_ends_of_their_ranges(pair, extreme_frames):
    """Ports, addresses, protocol numbers, VLAN ids, PPPoE session ids and fragment offsets at
    both ends of their ranges: hash, bucket, key and counts as the model says."""
    for frame in extreme_frames.values():
        check_frame(*pair, frame)
    rss, model = pair
    assert len(rss.flows()) == len(model.flows)


def test_lengths_that_disagree_stop_at_the_ip_packets_end(pair, disagreeing_lengths):
    """Headers that claim more than their IP packet holds, the frame padded long enough: parse
    status, key and byte counts as the model says."""
    for frame in disagreeing_lengths.values():
        check_frame(*pair, frame)


TEMPLATES = {
    "udp4": templates.udp4(),
    "tcp4": templates.tcp4(),
    "udp6": templates.udp6(),
    "tcp6": templates.tcp6(),
    "icmp4": templates.icmp4(),
    "udp4 vlan": templates.udp4(vlan=7),
}


@pytest.mark.parametrize("template", TEMPLATES)
def test_malformed_variants_counted_by_reason_and_passed(pair, template):
    rss, model = pair
    variants = malformed.variants(TEMPLATES[template])
    for variant in variants:
        check_frame(rss, model, variant.packet)
    truncated = sum(v.name.startswith("truncated:") for v in variants)
    assert sum(rss.unparsed().values()) >= truncated, "every truncated header is a parse error"


# --- hypothesis ----------------------------------------------------------------------------------


@st.composite
def frames(draw) -> bytes:
    """Frames of every shape soft RSS sees: IPv4/IPv6, TCP/UDP/ICMP/other, tags, fragments, damage."""
    v6 = draw(st.booleans())
    addrs = st.binary(min_size=16 if v6 else 4, max_size=16 if v6 else 4)
    src, dst = draw(addrs), draw(addrs)
    ports = {"sport": draw(st.integers(0, 65535)), "dport": draw(st.integers(0, 65535))}
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    l4 = {
        "tcp": lambda: TCP(**ports),
        "udp": lambda: UDP(**ports),
        "icmp": lambda: Raw(bytes(8)),
        "other": lambda: Raw(draw(st.binary(max_size=12))),
    }[kind]()
    proto = {"tcp": 6, "udp": 17, "icmp": 58 if v6 else 1, "other": 47}[kind]
    frag = draw(st.sampled_from([None, "first", "later"]))
    if v6:
        ip = IPv6(src=_ip6(src), dst=_ip6(dst), nh=proto)
        if frag:
            ip = ip / IPv6ExtHdrFragment(nh=proto, m=1, offset=0 if frag == "first" else 9)
    else:
        ip = IP(src=".".join(map(str, src)), dst=".".join(map(str, dst)), proto=proto)
        if frag:
            ip.flags, ip.frag = "MF", 0 if frag == "first" else 9
    l2 = Ether(**MACS)
    for tag in draw(st.lists(st.sampled_from([Dot1Q, Dot1AD]), max_size=3)):
        l2 = l2 / tag(vlan=draw(st.integers(0, 4095)))
    frame = bytes(l2 / ip / l4 / Raw(draw(st.binary(max_size=8))))
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(14, len(frame)))]  # test_run refuses under 14 bytes
    if draw(st.booleans()):
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        frame = frame[:pos] + bytes([draw(st.integers(0, 255))]) + frame[pos + 1 :]
    return frame


def _ip6(b: bytes) -> str:
    return ":".join(b[i : i + 2].hex() for i in range(0, 16, 2))


@pytest.fixture(scope="module")
def hyp_pair():
    config = Config(buckets=6, symmetric=False)
    with SoftRss(config) as rss:
        yield rss, Model(config)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames())
def test_hypothesis_frames(hyp_pair, frame):
    check_frame(*hyp_pair, frame)


# --- symmetric mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(HashKind))
@pytest.mark.parametrize("key", [MICROSOFT_KEY, SYMMETRIC_KEY], ids=["microsoft", "0x6d5a"])
def test_symmetric_mode_puts_both_directions_in_one_bucket(kind, key):
    config = Config(buckets=16, hash=kind, key=key, symmetric=True)
    with SoftRss(config) as rss:
        for ip, ip_back in (
            (IP(**V4), IP(src=V4["dst"], dst=V4["src"])),
            (IPv6(**V6), IPv6(src=V6["dst"], dst=V6["src"])),
        ):
            for sport in range(1000, 1020):
                forward = bytes(Ether(**MACS) / ip / TCP(sport=sport, dport=443))
                back = bytes(Ether(**MACS) / ip_back / TCP(sport=443, dport=sport))
                run(rss, forward)
                run(rss, back)
        flows = {f.key: f for f in rss.flows()}
        assert len(flows) == 80
        for key_, flow in flows.items():
            reverse = type(key_)(key_.dst, key_.src, key_.dport, key_.sport, key_.proto)
            assert (flow.hash, flow.bucket) == (flows[reverse].hash, flows[reverse].bucket), (
                f"{key_} and its reverse hash apart in symmetric mode"
            )


def test_asymmetric_mode_separates_directions():
    with SoftRss(Config(buckets=16)) as rss:
        run(rss, bytes(Ether(**MACS) / IP(**V4) / TCP(sport=40000, dport=443)))
        run(
            rss,
            bytes(Ether(**MACS) / IP(src=V4["dst"], dst=V4["src"]) / TCP(sport=443, dport=40000)),
        )
        assert len({f.hash for f in rss.flows()}) == 2, "the Microsoft key is not symmetric"


# --- the RETA at run time ------------------------------------------------------------------------


def test_reta_change_takes_effect_on_the_next_frame():
    config = Config(buckets=4)
    frame = CRAFTED["tcp4"]
    with SoftRss(config) as rss:
        assert rss.reta == equal_reta(4)
        first = flow_hash(parse(frame).flow, config)
        run(rss, frame)
        before = bucket_of(first, equal_reta(4))
        rss.set_reta([(before + 1) % 4] * 128)
        run(rss, frame)
        rss.equal(2)
        run(rss, frame)
        counts = [b.packets for b in rss.bucket_stats().buckets]
        expected = [0] * 4
        for bucket in (before, (before + 1) % 4, bucket_of(first, equal_reta(2))):
            expected[bucket] += 1
        assert counts == expected
        with pytest.raises(ValueError, match=r"outside 0\.\.3"):
            rss.set_reta([4] * 128)


# --- counters and elephants ----------------------------------------------------------------------


def test_bucket_counters_equal_the_model_over_many_flows(pair):
    rss, model = pair
    frames_ = [
        bytes(
            templates.udp4(
                src=f"10.1.{i % 7}.{i % 200}", sport=1000 + i % 300, payload=bytes(i % 50)
            )
        )
        for i in range(900)
    ] + [bytes(templates.tcp6(sport=2000 + i)) for i in range(100)]
    for frame in frames_:
        run(rss, frame)
        model.feed(frame)
    report = rss.bucket_stats()
    got = [(b.packets, b.bytes, b.flows) for b in report.buckets]
    assert got == [(b.packets, b.bytes, b.flows) for b in model.buckets]
    assert report.total_packets == len(frames_)
    assert len(rss.flows()) == len(model.flows)
    assert abs(sum(b.share for b in report.buckets) - 1) < 1e-9


def _same_set_frames(count: int) -> list[bytes]:
    """``count`` UDP flows whose keys pick the same set of the per-CPU flow cache."""
    by_set: dict[int, list[bytes]] = {}
    for sport in range(1024, 65536):
        frame = bytes(templates.udp4(sport=sport))
        found = by_set.setdefault(cache_set(parse(frame).flow.key()), [])
        found.append(frame)
        if len(found) == count:
            return found
    raise AssertionError(f"no {count} flows share a cache set")


@pytest.fixture
def on_cpu0():
    """test_run runs the program on the caller's CPU: keep it on CPU 0's region of the cache."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    yield
    os.sched_setaffinity(0, before)


@pytest.mark.parametrize("threshold", [0, 7])
def test_flows_sharing_a_cache_set_are_counted_exactly(on_cpu0, threshold):
    """The per-CPU flow cache holds two flows a set: three flows taking a set in turn, runs of one
    flow counted in its slot, and a flush a few jiffies later must all add up to the model's counts,
    each flow new once and announced once."""
    config = Config(buckets=4, threshold_packets=threshold)
    model = Model(config)
    a, b, c = _same_set_frames(3)
    keys = [parse(f).flow.key() for f in (a, b, c)]
    with SoftRss(config) as rss:
        cache = rss.obj.maps["flow_cache"]
        for frame in [a, a, b, b]:
            run(rss, frame)
            model.feed(frame)
        first = cache_set(keys[0])
        held = {rss._slot_key(cache[first + i]) for i in (0, 1)}
        assert held == set(keys[:2]), "a and b should fill their set, one slot each"
        for frame in [c, a, c, b, c, c, a, *[a] * 10]:
            run(rss, frame)
            model.feed(frame)
        expected = {k: (n.packets, n.bytes) for k, n in model.flows.items()}
        assert {f.key: (f.packets, f.bytes) for f in rss.flows()} == expected
        time.sleep(0.05)  # jiffies pass: the next packet flushes its slot
        for frame in (a, b):
            run(rss, frame)
            model.feed(frame)
        expected = {k: (n.packets, n.bytes) for k, n in model.flows.items()}
        assert {f.key: (f.packets, f.bytes) for f in rss.flows()} == expected
        assert rss.flow(keys[0]).packets == expected[keys[0]][0]
        got = [(x.packets, x.flows) for x in rss.bucket_stats().buckets]
        assert got == [(x.packets, x.flows) for x in model.buckets]
        assert [e.key for e in rss.elephants()] == model.elephants


def _frame_of(key: FlowKey) -> bytes:
    """A frame of ``key``: TCP or UDP, else 8 bytes of the protocol's header."""
    v4 = key.src.version == 4
    ip = (IP if v4 else IPv6)(src=str(key.src), dst=str(key.dst))
    if key.proto in (6, 17):
        return bytes(
            Ether(**MACS) / ip / (TCP if key.proto == 6 else UDP)(sport=key.sport, dport=key.dport)
        )
    setattr(ip, "proto" if v4 else "nh", key.proto)
    return bytes(Ether(**MACS) / ip / Raw(bytes(8)))


# Protocols without ports, none of them an IPv6 extension header: the parser keys them as they are.
PORTLESS = [p for p in range(1, 256) if p not in (0, 6, 17, 43, 44, 51, 60)]


def _one_part_apart(version: int, part: str) -> tuple[FlowKey, FlowKey]:
    """Two flows in one cache set whose keys differ in ``part`` alone: an address word, a port or
    the protocol. The cache's index is linear in the key, so the second flow's value of the part is
    searched for (not a field both share: that would move both alike)."""
    src, dst = (ipaddress.ip_address(a) for a in (V4 if version == 4 else V6).values())
    a = FlowKey(src, dst, sport=40000, dport=443, proto=17)
    if part == "proto":  # both without ports: a pair of protocol numbers
        pairs = (
            (
                dataclasses.replace(a, sport=0, dport=0, proto=p),
                dataclasses.replace(a, sport=0, dport=0, proto=q),
            )
            for p in PORTLESS
            for q in PORTLESS
            if p < q
        )
    elif part in ("sport", "dport"):
        pairs = (
            (a, dataclasses.replace(a, **{part: v}))
            for v in range(1 << 16)
            if v != getattr(a, part)
        )
    else:  # "src[i]", "dst[i]": 32-bit word i of the address, its top bit set
        side, word = part[:3], int(part[4])
        packed = getattr(a, side).packed

        def with_word(v: int) -> FlowKey:
            new = packed[: 4 * word] + v.to_bytes(4, "big") + packed[4 * word + 4 :]
            return dataclasses.replace(a, **{side: ipaddress.ip_address(new)})

        pairs = ((a, with_word(0x80000000 | v)) for v in range(1 << 20))
    for pair in pairs:
        if cache_set(pair[0]) == cache_set(pair[1]):
            return pair
    raise AssertionError(f"no two flows one {part} apart share a cache set")


def test_ports_zero_and_a_fragment_of_the_same_addresses_bucket_alike(on_cpu0, pair):
    """A UDP datagram with ports 0 and 0 and a fragment between the same addresses have one flow
    key (a fragment's ports count as 0): the flow cache gives the second the first's hash, so
    both must hash alike, each packet in the bucket the model computes for it."""
    rss, model = pair
    for ip in (IP(**V4), IPv6(**V6)):
        fragment = ip / IPv6ExtHdrFragment(m=1) if IPv6 in ip else ip.copy()
        if IP in fragment:
            fragment.flags = "MF"
        first = bytes(Ether(**MACS) / fragment / UDP(sport=9, dport=10))
        zero_ports = bytes(Ether(**MACS) / ip / UDP(sport=0, dport=0))
        for frame in (first, zero_ports, first, zero_ports):
            check_frame(rss, model, frame)
        assert parse(first).flow.key() == parse(zero_ports).flow.key()


# Not the IPv4 protocol alone: in cache_index() it moves the index by a multiple of the fixed
# (q - p) << 32 * FLOW_CACHE_MUL1, and no two protocol numbers land in one set.
KEY_PARTS = {
    4: ["src[0]", "dst[0]", "sport", "dport"],
    6: [f"{side}[{i}]" for side in ("src", "dst") for i in range(4)] + ["sport", "dport", "proto"],
}


@pytest.mark.parametrize("version,part", [(v, p) for v, parts in KEY_PARTS.items() for p in parts])
def test_flows_one_key_part_apart_in_one_cache_set_stay_apart(on_cpu0, version, part):
    """Two flows that take the two slots of one cache set and differ in one part of the key: each
    packet is counted in its own flow, as the model says, whatever the cache compares."""
    config = Config(buckets=8, threshold_packets=0)
    model = Model(config)
    keys = _one_part_apart(version, part)
    frames = [_frame_of(k) for k in keys]
    assert [parse(f).flow.key() for f in frames] == list(keys), "the frames carry the keys"
    with SoftRss(config) as rss:
        for frame in [frames[0], frames[1], frames[0], frames[0], frames[1]]:
            check_frame(rss, model, frame)
        cache = rss.obj.maps["flow_cache"]
        first = cache_set(keys[0])
        held = {rss._slot_key(cache[first + i]) for i in (0, 1)}
        assert held == set(keys), f"both flows sit in set {first} of CPU 0's cache: {held}"
        got = {f.key: (f.packets, f.bytes) for f in rss.flows()}
        assert got == {k: (c.packets, c.bytes) for k, c in model.flows.items()}


@pytest.mark.parametrize("threshold", [1, 100, 1000])
def test_elephant_announced_exactly_once(threshold):
    config = Config(buckets=4, threshold_packets=threshold)
    frame = CRAFTED["udp6"]
    with SoftRss(config) as rss:
        run(rss, frame, repeat=threshold + 50)
        run(rss, CRAFTED["tcp4"], repeat=threshold - 1 or 1)
        events = rss.elephants()
        key = parse(frame).flow.key()
        assert [e.key for e in events] == [key] + (
            [parse(CRAFTED["tcp4"]).flow.key()] if threshold == 1 else []
        )
        assert events[0].packets == threshold and events[0].bytes == threshold * len(frame)
        run(rss, frame, repeat=10)
        assert rss.elephants() == [], "a flow is announced once"
        (flow,) = [f for f in rss.flows() if f.key == key]
        assert flow.packets == threshold + 60 and flow.elephant


def test_elephant_by_bytes():
    frame = CRAFTED["tcp4"]
    config = Config(buckets=2, threshold_packets=0, threshold_bytes=len(frame) * 10)
    with SoftRss(config) as rss:
        run(rss, frame, repeat=9)
        assert rss.elephants() == []
        run(rss, frame, repeat=5)
        (event,) = rss.elephants()
        assert (event.packets, event.bytes) == (10, len(frame) * 10)


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two CPUs")
@pytest.mark.parametrize("by", ["packets", "bytes"])
def test_elephant_crossing_on_another_cpu_is_announced_at_the_threshold(by):
    """9 packets on CPU 0, then 5 on CPU 1: CPU 0 flushes as it nears the threshold, so the 10th
    packet, on CPU 1, crosses it and is announced, though CPU 1 has seen one packet."""
    frame = CRAFTED["tcp4"]
    limit = {"threshold_packets": 10} if by == "packets" else {"threshold_bytes": len(frame) * 10}
    config = Config(buckets=2, **{"threshold_packets": 0, **limit})
    before = os.sched_getaffinity(0)
    with SoftRss(config) as rss:
        try:
            for cpu, repeat in ((0, 9), (1, 5)):
                os.sched_setaffinity(0, {cpu})
                run(rss, frame, repeat=repeat)
        finally:
            os.sched_setaffinity(0, before)
        (event,) = rss.elephants()
        assert (event.packets, event.bytes) == (10, len(frame) * 10)
        (flow,) = rss.flows()
        assert flow.packets == 14 and flow.elephant


def test_two_cpus_on_one_flow_count_it_once_and_announce_it_once():
    """Both CPUs run the same flow at once: the shared entry's atomic counters lose nothing, the
    BPF_NOEXIST insert counts one new flow, the compare-and-swap lets one event out."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    repeat, rounds = 200_000, 3
    with SoftRss(Config(buckets=4, threshold_packets=repeat // 2)) as rss:
        fd = rss.program.fd
        for r in range(rounds):
            frame = bytes(templates.udp4(sport=3000 + r))

            def worker(cpu: int, frame: bytes = frame) -> None:
                os.sched_setaffinity(0, {cpu})  # this thread only
                data = ctypes.create_string_buffer(frame, len(frame))
                opts = TestRunOpts(
                    data_in=ctypes.addressof(data), data_size_in=len(frame), repeat=repeat
                )
                assert lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts)) == 0

            threads = [threading.Thread(target=worker, args=(cpu,)) for cpu in cpus[:2]]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        flows = rss.flows()
        assert [f.packets for f in flows] == [2 * repeat] * rounds, "atomic adds lost packets"
        assert sum(b.flows for b in rss.bucket_stats().buckets) == rounds
        events = rss.elephants()
        assert sorted(e.key for e in events) == sorted(f.key for f in flows), "one event per flow"
        assert all(e.packets >= repeat // 2 for e in events)


@pytest.mark.parametrize("version", [4, 6])
def test_two_cpus_creating_the_same_new_flows_count_each_once(two_cpus, version):
    """Both CPUs meet 8,000 new flows together (conftest.py's two_cpus): the BPF_NOEXIST insert
    must count each flow new once, in the model's bucket, and the CPU that lost the race must add
    to the winner's entry, never replace it."""
    n_flows, laps = 2000, 2
    ip, sport_off = (IP(**V4), 34) if version == 4 else (IPv6(**V6), 54)
    batches = [bytes(Ether(**MACS) / ip / UDP(sport=1024, dport=5000 + b)) for b in range(4)]
    config = Config(buckets=8, threshold_packets=0)
    model = Model(config)
    for frame in (f for b in batches for f in two_cpus.rotated(b, sport_off, n_flows)):
        model.feed(frame)
    with SoftRss(config) as rss:
        two_cpus.run(rss.program, batches, sport_off, n_flows, laps)
        got = {f.key: (f.packets, f.bytes) for f in rss.flows()}
        buckets = [(b.packets, b.bytes, b.flows) for b in rss.bucket_stats().buckets]
        misses = rss.misses()
    per_flow = 2 * laps  # each CPU runs each flow once a lap
    want = {k: (per_flow, per_flow * n.bytes) for k, n in model.flows.items()}
    wrong = {str(k): (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    assert len(got) == len(want) and not wrong, (
        f"{len(want)} new flows, {per_flow} packets each from two CPUs: kernel has {len(got)} "
        f"flows; (kernel, expected) of some wrong ones: {dict(list(wrong.items())[:5])}"
    )
    assert buckets == [
        (b.packets * per_flow, b.bytes * per_flow, b.flows) for b in model.buckets
    ], "per bucket (packets, bytes, new flows): a flow counted new on both CPUs shows here"
    assert not any(misses.values()), misses


# --- the control plane ----------------------------------------------------------------------------


def test_balance_figures():
    from bpf.softrss import Balance

    assert Balance.of([10, 10, 10, 10]) == Balance(10.0, 0.0, 1.0)
    skewed = Balance.of([40, 0, 0, 0])
    assert skewed.max_over_mean == 4.0 and skewed.stddev == pytest.approx(17.3205, rel=1e-4)
    assert Balance.of([0, 0]) == Balance(0.0, 0.0, 0.0)


def test_save_and_restore(tmp_path):
    config = Config(buckets=3, hash=HashKind.JHASH, threshold_packets=5, action=Action.CPU)
    path = tmp_path / "state.json"
    with SoftRss(config) as rss:
        rss.set_reta([0, 0, 1, 2] * 32)
        rss.set_cpus([1, 0, 1])
        for i in range(30):
            run(rss, bytes(templates.udp4(sport=i % 4)))
            run(rss, bytes(templates.tcp6(sport=i % 3)))
        run(rss, CRAFTED["truncated tag"])
        rss.save(path)
        saved = (rss.bucket_stats(), rss.flows(), rss.unparsed())
        assert {f.key.src.version for f in saved[1]} == {4, 6} and len(saved[1]) == 7
    assert json.loads(path.read_text())["config"]["hash"] == "jhash"
    with SoftRss.restore(path) as again:
        assert again.config == config
        assert again.reta == [0, 0, 1, 2] * 32 and again.cpus == [1, 0, 1]
        assert (again.bucket_stats(), again.flows(), again.unparsed()) == saved
        run(again, bytes(templates.udp4(sport=0)))
        assert again.elephants() == [], "restored flows keep their announced flag"


def test_first_and_last_seen_follow_the_coarse_clock():
    """The clock is read once a jiffy per flow (the data plane compares jiffies first): a packet
    after a jiffy has passed must still move last_seen."""
    frame = bytes(templates.udp4())
    with SoftRss(Config(threshold_packets=0)) as rss:
        before = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        run(rss, frame, repeat=10)
        (first,) = rss.flows()
        time.sleep(0.05)  # a jiffy is 1-10 ms
        run(rss, frame)
        after = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        (later,) = rss.flows()
    assert before <= first.first_seen_ns <= first.last_seen_ns < later.last_seen_ns <= after
    assert later.first_seen_ns == first.first_seen_ns and later.packets == 11


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match=r"1\.\.128"):
        Config(buckets=129)
    with pytest.raises(ValueError, match="40 expected"):
        Config(key=b"short")
    with SoftRss(Config(buckets=2)) as rss, pytest.raises(ValueError, match="128 expected"):
        rss.set_reta([0])


def test_verifier_cost_is_reported():
    for kind in HashKind:
        with SoftRss(Config(hash=kind)) as rss:
            insns = rss.program.info().verified_insns
            print(f"softrss {kind.value}: {insns} verified insns")
            assert 0 < insns < 1_000_000
