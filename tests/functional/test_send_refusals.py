"""Every AF_PACKET sender counts a send the kernel refuses (a full queue, a down link) as a frame not
sent, by reason, and goes on: the scapy backend's socket, pcap replay, latency probes, the TX ring.

The refusals are made on purpose, the same way every run: a ``pfifo`` qdisc of limit 0 refuses every
frame with ENOBUFS, a link set down refuses with ENETDOWN. A last test reproduces how the refusal
first showed (probes on a link the xdp injector floods, here with a one-frame transmit queue) and
holds the accounting to it: every probe arrived or was counted lost, the refused ones by reason.
"""

import threading

import pytest
from scapy.utils import wrpcap

from bpf import XdpAction
from bpf.netns import silence_ipv6
from bpf.txring import TxRing
from harness.counters import pin_neighbour
from harness.latency import ProbeTemplate, measure_latency
from harness.sink import FrameClass, Sink
from harness.topology import set_link
from injector import templates
from injector.pcap_backend import replay_pcap
from injector.scapy_backend import send_packets
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

DUT_MAC, INJECTOR_MAC = "02:00:00:00:01:02", "02:00:00:00:01:01"
PROBES = ProbeTemplate.udp4(eth_src=INJECTOR_MAC, eth_dst=DUT_MAC)
SPEC = TrafficSpec(
    templates.udp4(eth_src=INJECTOR_MAC, eth_dst=DUT_MAC), vary=(Vary("UDP.sport", Range(1, 100)),)
)


@pytest.fixture
def link(topology):
    topo = topology("two_host")
    injector, dut = topo.node("injector").netns, topo.node("dut").netns
    silence_ipv6("veth0", injector)
    pin_neighbour("ens5", "10.0.0.1", INJECTOR_MAC, dut)
    return injector, dut


def test_a_full_qdisc_refuses_every_frame_and_each_is_counted(link, tmp_path):
    injector, dut = link
    frames = list(SPEC.resolve().packets(10))
    set_link("veth0", injector, qdisc_limit=0)
    with Sink("ens5", dut) as sink:
        result = send_packets(frames, "veth0", injector)
        assert (result.sent, result.refused) == (0, {"ENOBUFS": 10}), result
        wrpcap(str(tmp_path / "ten.pcap"), frames)
        replayed = replay_pcap(tmp_path / "ten.pcap", "veth0", injector, rate_pps=10_000)
        assert (replayed.sent, replayed.refused) == (0, {"ENOBUFS": 10}), replayed
        report = measure_latency("veth0", injector, "ens5", dut, 20, 2_000, PROBES, linger=0.1)
        assert (report.received, report.lost, report.refused) == (0, 20, {"ENOBUFS": 20}), report
        assert "20 lost (ENOBUFS 20 refused by the sending link)" in str(report)
        assert sink.frames(FrameClass.IPV4) == 0, "a refused frame must not have gone out"
    set_link("veth0", injector, qdisc_limit=1000)
    assert send_packets(frames, "veth0", injector).refused == {}, "the socket works on afterwards"


def test_a_down_link_refuses_every_sender_and_the_tx_ring_takes_its_frames_back(link):
    injector, dut = link
    frames = list(SPEC.resolve().packets(100))
    with Sink("ens5", dut) as sink, TxRing("veth0", injector, frames=64) as ring:
        set_link("veth0", injector, state="down")
        result = send_packets(frames[:5], "veth0", injector)
        assert (result.sent, result.refused) == (0, {"ENETDOWN": 5}), result
        assert ring.send(frames) == len(frames), "queued: the ring does not block on a down link"
        assert ring.refused == {"ENETDOWN": len(frames)}, ring.refused
        set_link("veth0", injector, state="up")
        assert ring.send(frames) == len(frames)
        assert sink.settled(FrameClass.IPV4, len(frames)) == len(frames)
        assert ring.refused == {"ENETDOWN": len(frames)}, "nothing more refused once up"


def test_probes_on_a_flooded_link_are_received_or_counted_lost(link):
    """The first sighting: ENOBUFS from a probe's send() while the xdp injector floods the link."""
    injector, dut = link
    set_link("veth0", injector, txqlen=1)
    with (
        Sink("ens5", dut, verdict=XdpAction.PASS),
        XdpSender(SPEC.resolve(), "veth0", injector) as flood,
    ):
        load = threading.Thread(target=flood.send, kwargs={"duration": 1.2})
        load.start()
        try:
            report = measure_latency("veth0", injector, "ens5", dut, 500, 500, PROBES, linger=0.2)
        finally:
            load.join()
    refused = sum(report.refused.values())
    assert report.received + report.lost == report.sent == 500, report
    assert refused <= report.lost, report
    assert set(report.refused) <= {"ENOBUFS", "EAGAIN"}, report
    print(f"probes under the flood: {report}")
