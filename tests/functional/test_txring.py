"""The AF_PACKET TX ring sends frames intact, in order, and every one of them, past its own size."""

import pytest

from bpf.netns import silence_ipv6
from bpf.txring import TxRing
from harness.capture import Capture
from harness.compare import assert_same
from harness.counters import pin_neighbour
from harness.sink import FrameClass, Sink
from injector import templates
from injector.spec import Imix, Range, TrafficSpec, Vary

SPEC = TrafficSpec(
    templates.udp4(eth_src="02:00:00:00:01:01", eth_dst="02:00:00:00:01:02"),
    vary=(Vary("UDP.sport", Range(1, 500)),),
    sizes=Imix(((64, 7), (594, 4), (1514, 1))),
)


@pytest.fixture
def link(topology):
    topo = topology("two_host")
    injector, dut = topo.node("injector").netns, topo.node("dut").netns
    silence_ipv6("veth0", injector)
    pin_neighbour("ens5", "10.0.0.1", "02:00:00:00:01:01", dut)
    return injector, dut


def test_frames_arrive_intact(link):
    injector, dut = link
    frames = list(SPEC.resolve().packets(300))
    injected = bytes.fromhex("020000000101")  # source MAC: not the dut's own ICMP errors
    with Capture("ens5", netns=dut, match=lambda f: f[6:12] == injected) as capture:
        with TxRing("veth0", injector, frames=64) as ring:
            assert ring.send(frames) == len(frames)
        got = [f.data for f in capture.frames(len(frames), timeout=3.0) if not f.outgoing]
    assert_same(frames, got)


def test_every_frame_is_sent_when_the_ring_wraps_many_times(link):
    injector, dut = link
    frames = list(SPEC.resolve().packets(1000))
    with Sink("ens5", dut) as sink, TxRing("veth0", injector, frames=256) as ring:
        for _ in range(50):
            ring.send(frames)
        assert sink.settled(FrameClass.IPV4, 50_000) == 50_000
        assert (ring.sent, ring.rejected) == (50_000, 0)


def test_a_frame_too_large_for_a_slot_is_refused(link):
    injector, _ = link
    with (
        TxRing("veth0", injector, frame_size=2048) as ring,
        pytest.raises(ValueError, match="2048"),
    ):
        ring.send([bytes(2100)])
