"""The traffic counter (``bpf/trafcount``) in the kernel through BPF_PROG_TEST_RUN, held to its model.

For every hook, key side and byte count, the kernel's table (per address and protocol: packets,
bytes), its frames not parsed by status and its entries created must be what
``bpf.trafcount.model`` predicts: on crafted corner cases and hypothesis-generated frames. GSO
packets at TC, an LRU holding more addresses than entries (evictions counted, what is kept exact),
two CPUs inserting the same new addresses at once (the seed's BPF_ANY race), pins for bpftool, a
Prometheus scrape. The time series has its own file (``test_trafcount_series.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

import bpf
from bpf import journal
from bpf.trafcount import ByteCount, Config, Hook, Key, Model, TrafCount, TrafKey
from bpf.trafcount.metrics import TrafCollector, serve
from bpf.trafcount.model import DEFAULT_ENTRIES
from harness.topology import host_ifname

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:0:1::2"}
PASS = {
    Hook.XDP: bpf.XdpAction.PASS,
    Hook.TC_INGRESS: bpf.TcAction.OK,
    Hook.TC_EGRESS: bpf.TcAction.OK,
}


pytestmark = pytest.mark.usefixtures("one_cpu")  # the models count one CPU (conftest.py)


def udp4(src: str = V4["src"], payload: bytes = b"") -> bytes:
    return bytes(Ether(**MACS) / IP(src=src, dst=V4["dst"]) / UDP(sport=1, dport=53) / payload)


CRAFTED = {
    "tcp4": bytes(Ether(**MACS) / IP(**V4) / TCP(sport=1, dport=443, flags="S")),
    "tcp4 data": bytes(Ether(**MACS) / IP(**V4) / TCP(sport=1, dport=443) / Raw(b"x" * 100)),
    "udp4": udp4(payload=b"q" * 30),
    "udp4 padded to 60 bytes": udp4() + bytes(18),
    "tcp6": bytes(Ether(**MACS) / IPv6(**V6) / TCP(sport=1, dport=2, options=[("MSS", 1460)])),
    "udp6": bytes(Ether(**MACS) / IPv6(**V6) / UDP(sport=1, dport=2) / Raw(b"6" * 7)),
    "udp6 after hop-by-hop": bytes(
        Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2)
    ),
    "icmp4: other": bytes(Ether(**MACS) / IP(**V4) / ICMP()),
    "icmp6: other": bytes(Ether(**MACS) / IPv6(**V6, nh=58) / Raw(bytes(8))),
    "gre: other": bytes(Ether(**MACS) / IP(**V4, proto=47) / Raw(bytes(8))),
    "vlan": bytes(Ether(**MACS) / Dot1Q(vlan=9) / IP(**V4) / UDP(sport=1, dport=2)),
    "pppoe": bytes(Ether(**MACS) / PPPoE(sessionid=7) / PPP(proto=0x21) / IP(**V4) / UDP()),
    "later fragment": bytes(Ether(**MACS) / IP(**V4, frag=3, proto=17) / Raw(b"x" * 16)),
    "ipv6 later fragment": bytes(
        Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrFragment(offset=5, nh=17) / Raw(b"x" * 8)
    ),
    "arp: not IP": bytes(Ether(**MACS) / ARP()),
    "truncated udp": udp4()[:38],
}
NOT_PARSED = ("arp: not IP", "truncated udp")
CONFIGS = {
    f"{key.value} {count.value}": Config(key=key, bytes=count) for key in Key for count in ByteCount
}


def feed(tc: TrafCount, model: Model, frame: bytes, hook: Hook, ctx: bytes | None = None) -> bool:
    program = tc.program(hook)
    if not program.test_run_takes(frame):
        return False
    verdict = program.test_run(frame, ctx=ctx).verdict
    assert verdict == PASS[hook], f"{hook.value} must pass every frame, got {verdict!r}"
    return True


def check(tc: TrafCount, model: Model, what: str) -> None:
    got, want = tc.counts(), model.table()
    assert got == want, (
        f"{what}: (packets, bytes) per address and protocol; only in the kernel: "
        f"{ {str(k): got[k] for k in got.keys() - want.keys()} }, only in the model: "
        f"{ {str(k): want[k] for k in want.keys() - got.keys()} }, differing (kernel, model): "
        f"{ {str(k): (got[k], want[k]) for k in got.keys() & want.keys() if got[k] != want[k]} }"
    )
    assert tc.unparsed() == dict(model.unparsed), f"{what}: frames not parsed, by status"
    totals = tc.totals()
    assert (totals.created, totals.evicted) == (model.created, 0), f"{what}: {totals}"
    assert totals.entry_gone == totals.no_room == 0, f"{what}: {totals}"


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("hook", list(Hook), ids=lambda h: h.value)
def test_crafted_frames_counted_as_the_model_says(name, hook):
    config = CONFIGS[name]
    with TrafCount(config) as tc:
        model = Model(config)
        for _ in range(3):
            for frame in CRAFTED.values():
                if feed(tc, model, frame, hook):
                    model.feed(frame, hook)
        check(tc, model, f"{name} at {hook.value}")
    assert sum(model.unparsed.values()) == 3 * len(NOT_PARSED), model.unparsed


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("hook", list(Hook), ids=lambda h: h.value)
def test_fields_at_the_ends_of_their_ranges(name, hook, extreme_frames):
    """Addresses, protocol numbers, ports, VLAN ids, PPPoE session ids and fragment offsets at
    both ends of their ranges, by either address and either byte count: the model's table."""
    config = CONFIGS[name]
    with TrafCount(config) as tc:
        model = Model(config)
        for frame in extreme_frames.values():
            if feed(tc, model, frame, hook):
                model.feed(frame, hook)
        check(tc, model, f"{name} at {hook.value}, fields at their ends")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("hook", list(Hook), ids=lambda h: h.value)
def test_lengths_that_disagree_stop_at_the_ip_packets_end(name, hook, disagreeing_lengths):
    """Headers that claim more than their IP packet holds, the frame padded long enough, and IP
    packets shorter than their frames: parse status and IP or wire bytes as the model says."""
    config = CONFIGS[name]
    with TrafCount(config) as tc:
        model = Model(config)
        for frame in disagreeing_lengths.values():
            if feed(tc, model, frame, hook):
                model.feed(frame, hook)
        check(tc, model, f"{name} at {hook.value}, lengths that disagree")


def test_seed_line_counts_l3_bytes_by_source():
    """The seed's example: 12 TCP packets of 60 IP bytes (720) and 3 UDP ones of 40 (120)."""
    tcp = bytes(Ether(**MACS) / IP(src="129.57.178.31", dst=V4["dst"]) / TCP() / Raw(bytes(20)))
    udp = bytes(Ether(**MACS) / IP(src="129.57.178.31", dst=V4["dst"]) / UDP() / Raw(bytes(12)))
    with TrafCount() as tc:
        assert tc.config == Config(key=Key.SRC, bytes=ByteCount.L3, entries=DEFAULT_ENTRIES)
        tc.program(Hook.XDP).test_run(tcp, repeat=12)
        tc.program(Hook.XDP).test_run(udp, repeat=3)
        addr = bytes([129, 57, 178, 31])
        assert tc.counts() == {TrafKey(4, addr, 6): (12, 720), TrafKey(4, addr, 17): (3, 120)}


# --- hypothesis ----------------------------------------------------------------------------------


@st.composite
def frames(draw) -> bytes:
    """IPv4/IPv6 frames from and to a few hosts: TCP/UDP/ICMP/other, tags, fragments, padding,
    truncation and damage."""
    v6 = draw(st.booleans())
    src, dst = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    l4 = {
        "tcp": lambda: TCP(sport=1, dport=2, flags=draw(st.integers(0, 255))),
        "udp": lambda: UDP(sport=1, dport=2),
        "icmp": lambda: Raw(bytes(8)),
        "other": lambda: Raw(draw(st.binary(max_size=12))),
    }[kind]()
    proto = {"tcp": 6, "udp": 17, "icmp": 58 if v6 else 1, "other": 47}[kind]
    later_fragment = draw(st.integers(0, 4)) == 0
    if v6:
        ip = IPv6(src=f"2001:db8::{src}", dst=f"2001:db8::{dst}", nh=proto)
        if later_fragment:
            ip = ip / IPv6ExtHdrFragment(nh=proto, offset=9)
    else:
        ip = IP(src=f"10.0.0.{src}", dst=f"10.0.1.{dst}", proto=proto)
        if later_fragment:
            ip.frag = 9
    l2 = Ether(**MACS)
    for _ in range(draw(st.integers(0, 2))):
        l2 = l2 / Dot1Q(vlan=draw(st.integers(0, 4095)))
    frame = bytes(l2 / ip / l4 / Raw(draw(st.binary(max_size=64))))
    frame += bytes(draw(st.integers(0, 20)))  # Ethernet padding: wire bytes, not IP bytes
    if draw(st.integers(0, 9)) == 0:
        frame = frame[: draw(st.integers(14, len(frame)))]
    if draw(st.integers(0, 9)) == 0:
        pos = draw(st.integers(0, len(frame) - 1))
        frame = frame[:pos] + bytes([draw(st.integers(0, 255))]) + frame[pos + 1 :]
    return frame


@pytest.mark.parametrize("name", CONFIGS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(frames(), st.sampled_from(list(Hook))), min_size=1, max_size=60))
def test_hypothesis_batches(name, batch):
    config = CONFIGS[name]
    with TrafCount(config) as tc:
        model = Model(config)
        for frame, hook in batch:
            if feed(tc, model, frame, hook):
                model.feed(frame, hook)
        check(tc, model, name)


# --- GSO at TC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", list(ByteCount), ids=lambda c: c.value)
@pytest.mark.parametrize("segs", [1, 2, 3])
def test_gso_packet_counts_its_segments(count, segs):
    config = Config(bytes=count)
    frames = {
        "tcp4": bytes(Ether(**MACS) / IP(**V4) / TCP() / Raw(b"x" * 1000 * segs)),
        "tcp6 options": bytes(
            Ether(**MACS)
            / IPv6(**V6)
            / TCP(options=[("Timestamp", (1, 2))])
            / Raw(b"y" * 1000 * segs)
        ),
        "udp4 (UDP GSO)": udp4(payload=b"z" * 1000 * segs),
    }
    with TrafCount(config) as tc:
        model = Model(config)
        skb = tc.obj.struct("__sk_buff")()
        skb.gso_segs, skb.gso_size = segs, 1000
        for frame in frames.values():
            tc.program(Hook.TC_EGRESS).test_run(frame, ctx=bytes(skb))
            model.feed(frame, Hook.TC_EGRESS, gso_segs=segs)
        check(tc, model, f"GSO of {segs} segments, {count.value} bytes")
    l3_headers = {"tcp4": 20 + 20, "tcp6 options": 40 + 32, "udp4 (UDP GSO)": 20 + 8}
    for name, frame in frames.items():
        packet = model.feed(frame, Hook.TC_EGRESS, gso_segs=segs)
        per_segment = l3_headers[name] + (14 if count is ByteCount.WIRE else 0)
        first = len(frame) - (0 if count is ByteCount.WIRE else 14)
        assert (packet.packets, packet.bytes) == (segs, first + (segs - 1) * per_segment)


def test_xdp_frame_is_one_packet_whatever_its_size():
    with TrafCount(Config(bytes=ByteCount.WIRE)) as tc:
        frame = udp4(payload=b"x" * 3000)
        tc.program(Hook.XDP).test_run(frame)
        assert list(tc.counts().values()) == [(1, len(frame))]


# --- the LRU -------------------------------------------------------------------------------------


def test_lru_with_more_addresses_than_entries_counts_evictions():
    """Which addresses an LRU evicts is the kernel's choice; what it keeps must be exact."""
    entries, n_addresses = 128, 1024
    config = Config(entries=entries)
    with TrafCount(config) as tc:
        model = Model(config)
        for i in range(n_addresses):
            frame = udp4(f"10.1.{i >> 8}.{i & 0xFF}", b"p" * (i % 50))
            for _ in range(2):
                feed(tc, model, frame, Hook.XDP)
                model.feed(frame, Hook.XDP)
        kept, want = tc.counts(), model.table()
        totals = tc.totals()
    assert 0 < len(kept) <= entries, f"an LRU of {entries} holds {len(kept)} addresses"
    assert all(kept[k] == want[k] for k in kept), "every kept address has all its packets"
    assert max(want) in kept, "the address sent last is kept"
    assert totals.created == n_addresses, "every address entered the table once"
    assert totals.evicted == n_addresses - len(kept) > 0, totals
    assert totals.entry_gone == totals.no_room == 0, "an LRU never refuses a packet"


# --- two CPUs at once ----------------------------------------------------------------------------


def test_two_cpus_inserting_the_same_new_addresses_lose_nothing(two_cpus):
    """Both CPUs meet the same 6,000 new source addresses together, IPv4 and IPv6, five times each
    (conftest.py's two_cpus): with the seed's BPF_ANY insert the second CPU to miss an address would
    replace the first's entry; BPF_NOEXIST loses no packet and creates each entry once."""
    n_addresses, laps = 2000, 5
    v6 = bytes(Ether(**MACS) / IPv6(src="2001:db8::400", dst=V6["dst"]) / UDP() / (b"r" * 6))
    batches = {  # the stepped field: the source address's low 16 bits, 1024 (0x400) in each frame
        28: [udp4(f"10.{9 + b}.4.0", b"r" * 6) for b in range(2)],
        36: [v6],
    }
    config = Config(entries=4 * n_addresses)
    model = Model(config)
    for off, frames in batches.items():
        for frame in (f for b in frames for f in two_cpus.rotated(b, off, n_addresses)):
            model.feed(frame)
    with TrafCount(config) as tc:
        for off, frames in batches.items():
            two_cpus.run(tc.program(Hook.XDP), frames, off, n_addresses, laps)
        counts = tc.counts()
        totals = tc.totals()
    per_address = 2 * laps  # each CPU runs each address once a lap
    want = {k: (p * per_address, b * per_address) for k, (p, b) in model.table().items()}
    wrong = {str(k): (counts.get(k), v) for k, v in want.items() if counts.get(k) != v}
    assert len(counts) == len(want) and not wrong, (
        f"{len(want)} addresses, {per_address} packets each from two CPUs: kernel has "
        f"{len(counts)}; (kernel, expected) of some wrong ones: {dict(list(wrong.items())[:5])}"
    )
    assert totals.created == model.created and totals.entry_gone == 0, totals


# --- pins ----------------------------------------------------------------------------------------


def test_pins_show_the_seeds_fields_in_bpftool_until_close():
    name = host_ifname(journal.current().run_id, "tcunit")  # the run's own: xdist-safe
    config = Config(key=Key.DST, bytes=ByteCount.WIRE, entries=300)
    with TrafCount(config) as tc:
        tc.program(Hook.TC_EGRESS).test_run(udp4(), repeat=5)
        tc.pin(name)
        assert TrafCount.pinned_config(name) == (config, os.getpid())
        dump = subprocess.run(
            ["bpftool", "-j", "map", "dump", "pinned", str(TrafCount.pin_path(name) / "addrs4")],
            capture_output=True,
            text=True,
            check=True,
        )
        (entry,) = json.loads(dump.stdout)
        fields = entry["formatted"]
        assert fields["key"]["proto"] == 17 and "addr" in fields["key"]
        assert fields["value"] == {"packets": 5, "bytes": 5 * len(udp4())}
    assert TrafCount.pinned_config(name) is None and not TrafCount.pin_path(name).exists(), (
        "closed: the pins are gone"
    )


@pytest.mark.parametrize("entries", [0, (1 << 24) + 1])
def test_bad_entries_named(entries):
    with pytest.raises(ValueError, match=f"--entries {entries}"):
        Config(entries=entries)


# --- Prometheus ----------------------------------------------------------------------------------


def test_prometheus_scrape_parses_to_the_counts():
    frame = udp4("10.5.0.1", b"p" * 10)
    with TrafCount(Config(bytes=ByteCount.WIRE)) as tc:
        tc.program(Hook.XDP).test_run(frame, repeat=7)
        tc.program(Hook.XDP).test_run(CRAFTED["icmp4: other"], repeat=2)
        tc.program(Hook.XDP).test_run(CRAFTED["arp: not IP"])
        server = serve(TrafCollector(tc, "veth9", "xdp"), "127.0.0.1", 0)
        try:
            port = server.server_address[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        finally:
            server.shutdown()
    values = {
        (s.name, s.labels.get("address"), s.labels.get("protocol")): s.value
        for f in families.values()
        for s in f.samples
    }
    assert values[("trafcount_packets_total", "10.5.0.1", "udp")] == 7
    assert values[("trafcount_bytes_total", "10.5.0.1", "udp")] == 7 * len(frame)
    assert values[("trafcount_packets_total", V4["src"], "1")] == 2
    assert values[("trafcount_entries_created_total", None, None)] == 2
    assert values[("trafcount_entries_evicted_total", None, None)] == 0
    unparsed = families["trafcount_frames_unparsed"].samples
    assert [(s.labels["status"], s.value) for s in unparsed] == [("PARSE_NOT_IP", 1)]
