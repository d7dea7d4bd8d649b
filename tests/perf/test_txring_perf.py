"""Frames per second out of an AF_PACKET TX ring, against one ``send()`` per frame on the same link
in the same run (the scapy backend's socket): what batching through shared memory buys Python."""

import time

import pytest

from bpf.netns import silence_ipv6
from bpf.txring import TxRing
from harness.counters import pin_neighbour
from harness.measure import Comparison, sample
from harness.sink import FrameClass, Sink
from injector import templates
from injector.scapy_backend import send_packets
from injector.spec import Range, TrafficSpec, Vary

SPEC = TrafficSpec(
    templates.udp4(eth_src="02:00:00:00:01:01", eth_dst="02:00:00:00:01:02"),
    vary=(Vary("UDP.sport", Range(1, 1000)),),
)


@pytest.fixture
def link(topology):
    topo = topology("two_host")
    injector, dut = topo.node("injector").netns, topo.node("dut").netns
    silence_ipv6("veth0", injector)
    pin_neighbour("ens5", "10.0.0.1", "02:00:00:00:01:01", dut)
    with Sink("ens5", dut) as sink:
        yield injector, sink


def test_tx_ring_against_a_send_per_frame(benchmark, results, quick, link):
    injector, sink = link
    frames = list(SPEC.resolve().packets(2_000 if quick else 100_000))

    def rate(send) -> float:
        before = sink.frames(FrameClass.IPV4)
        start = time.perf_counter()
        send(frames)
        seconds = time.perf_counter() - start
        arrived = sink.settled(FrameClass.IPV4, before + len(frames)) - before
        assert arrived == len(frames), f"{len(frames) - arrived} of {len(frames)} frames lost"
        return len(frames) / seconds / 1e3

    repeats = 3 if quick else 5
    with TxRing("veth0", injector) as ring:
        baseline = sample(
            lambda: rate(lambda f: send_packets(f, "veth0", injector)), "kpps", repeats
        )
        subject = benchmark.pedantic(
            lambda: sample(lambda: rate(ring.send), "kpps", repeats), rounds=1, iterations=1
        )
    result = Comparison("tx ring, 60-byte frames", subject, baseline, "send() per frame")
    benchmark.extra_info.update(result.as_dict())
    results.record(result)
    print(f"tx ring: {result.ratio:.2f}x a send() per frame (aim: more than 1x)")
