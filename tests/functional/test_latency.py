"""Latency probes on ``two_host``: a modest stream arrives whole and in order with sane latencies, and
a crafted stream with a duplicate, a reordering and a drop is counted as exactly that. The latency
bound is a correctness check (stamps from the same clock, in the right order), not a performance claim."""

from bpf import XdpAction
from harness.latency import ProbeReceiver, ProbeTemplate, analyze, measure_latency
from harness.sink import Sink
from injector import templates
from injector.scapy_backend import send_packets
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

DUT_MAC, INJECTOR_MAC = "02:00:00:00:01:02", "02:00:00:00:01:01"
PROBES = ProbeTemplate.udp4(eth_src=INJECTOR_MAC, eth_dst=DUT_MAC)
SANITY_BOUND_US = 50_000


def test_probe_stream_arrives_whole_in_order(two_host):
    injector, dut = two_host
    report = measure_latency(
        "veth0", injector, "ens5", dut, count=500, rate_pps=2_000, probes=PROBES
    )
    assert (report.received, report.lost, report.duplicated, report.reordered) == (500, 0, 0, 0), (
        f"a 2 kpps probe stream over an idle veth must arrive whole and in order: {report}"
    )
    assert 0 < report.min_us <= report.p50_us <= report.p99_us <= report.max_us < SANITY_BOUND_US, (
        f"latencies must be positive and ordered, and far below {SANITY_BOUND_US} us: {report} "
        "(negative: the stamps do not come from the same clock)"
    )


def test_crafted_duplicate_reordering_and_drop_are_counted(two_host):
    """Sequence numbers 0..4 are the stream; the wire carries 0, 1, 1, 3, 2: 4 is lost, one copy of 1
    is a duplicate, and 2 arrives after 3 (reordered)."""
    injector, dut = two_host
    with ProbeReceiver(PROBES, "ens5", dut) as receiver:
        receiver.wait_ready()
        frames = [PROBES.stamped(seq, 0) for seq in (0, 1, 1, 3, 2)]
        send_packets(frames, "veth0", injector)
        arrivals = receiver.receive(wait=2.0, expected=len(frames))
    assert [a.seq for a in arrivals] == [0, 1, 1, 3, 2], "the veth must deliver frames in order"
    report = analyze(arrivals, sent=5)
    assert (report.sent, report.received, report.lost) == (5, 4, 1), report
    assert (report.duplicated, report.reordered) == (1, 1), report


def test_probes_are_told_from_bulk_traffic(two_host):
    """Under a bulk load on the same link, only probes reach the receiver, each counted once."""
    injector, dut = two_host
    spec = TrafficSpec(
        templates.udp4(eth_src=INJECTOR_MAC, eth_dst=DUT_MAC),
        vary=(Vary("UDP.sport", Range(1, 100)),),
    )
    with (
        Sink("ens5", dut, verdict=XdpAction.PASS),
        XdpSender(spec.resolve(), "veth0", injector) as bulk,
        ProbeReceiver(PROBES, "ens5", dut) as receiver,
    ):
        receiver.wait_ready()
        bulk.send(count=5_000, rate_pps=50_000)
        send_packets([PROBES.stamped(seq, 0) for seq in range(20)], "veth0", injector)
        bulk.send(count=5_000, rate_pps=50_000)
        arrivals = receiver.receive(wait=2.0, expected=20)
        assert receiver.receive(wait=0.2) == [], "nothing but the 20 probes may reach the receiver"
    assert sorted(a.seq for a in arrivals) == list(range(20))
