"""Traffic on ``two_host``: crafted packets arrive intact, variation makes exactly the flows asked for,
counts reconcile exactly, and every backend (scapy, pcap, xdp, the CLI) delivers what it says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.utils import wrpcap

from bpf.netns import silence_ipv6
from harness.capture import Capture, write_pcap
from harness.compare import assert_same
from harness.counters import delta, interface_stats, pin_neighbour
from harness.sink import FrameClass, Sink
from injector import templates
from injector.pcap_backend import replay_pcap
from injector.scapy_backend import send_packets
from injector.spec import Imix, Random, Range, TrafficSpec, Values, Vary, Zipf
from injector.xdp import XdpSender

INJECTOR_COMMAND = Path(sys.executable).with_name(
    "injector"
)  # the installed command, as users run it
DUT_MAC, INJECTOR_MAC = "02:00:00:00:01:02", "02:00:00:00:01:01"
ADDRESSED = {"eth_src": INJECTOR_MAC, "eth_dst": DUT_MAC}


KERNEL_CHATTER = (b"\x86\xdd", b"\x08\x06")  # IPv6 (ND, MLD) and ARP, sent by the injector's kernel


def ours(frame: bytes) -> bool:
    """Frames the test injected, not the injector kernel's own from the same MAC."""
    return (
        frame[6:12] == bytes.fromhex(INJECTOR_MAC.replace(":", ""))
        and frame[12:14] not in KERNEL_CHATTER
    )


def received(capture: Capture, count: int, timeout: float = 3.0) -> list[bytes]:
    return [f.data for f in capture.frames(count, timeout) if not f.outgoing]


TEMPLATES = {
    "udp4": templates.udp4(**ADDRESSED),
    "tcp4": templates.tcp4(**ADDRESSED),
    "icmp4": templates.icmp4(**ADDRESSED),
    "udp4 in 802.1Q": templates.udp4(vlan=100, **ADDRESSED),
    "pppoe session": templates.pppoe_session(**ADDRESSED),
    "pppoe discovery (PADI)": templates.padi(eth_src=INJECTOR_MAC),
    "vxlan": templates.vxlan(templates.tcp4(), **ADDRESSED),
}


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_arrives_intact(two_host, name):
    injector, dut = two_host
    frames = [bytes(TEMPLATES[name])] * 3
    with Capture("ens5", netns=dut, match=ours) as capture:
        send_packets(frames, "veth0", injector)
        assert_same(frames, received(capture, len(frames)))


def test_ipv6_templates_arrive_intact(two_host):
    injector, dut = two_host
    frames = [bytes(t) for t in (templates.udp6(**ADDRESSED), templates.tcp6(**ADDRESSED))]
    with Capture(
        "ens5", netns=dut, match=lambda f: f[12:14] == b"\x86\xdd" and f[20] in (6, 17)
    ) as capture:
        send_packets(frames, "veth0", injector)
        assert_same(frames, received(capture, len(frames)))


VARIED = TrafficSpec(
    templates.udp4(**ADDRESSED),
    vary=(
        Vary("IP.src", Range("10.0.1.1", "10.0.1.50")),
        Vary("UDP.sport", Random(1024, 65535)),
        Vary("UDP.dport", Values((53, 123, 443))),
    ),
    flows=50,
    distribution=Zipf(1.0, cycle=500),
    sizes=Imix(((64, 7), (570, 4), (1400, 1))),
    count=500,
)


@pytest.mark.parametrize("backend", ["scapy", "xdp"])
def test_variation_delivers_exactly_the_flows_asked(two_host, backend):
    injector, dut = two_host
    program = VARIED.resolve()
    expected = list(program.packets())
    with Capture("ens5", netns=dut, match=ours) as capture:
        if backend == "scapy":
            send_packets(expected, "veth0", injector)
        else:
            with XdpSender(program, "veth0", injector) as sender:
                assert sender.send(count=len(expected), rate_pps=20_000).packets == len(expected)
        got = received(capture, len(expected))
    assert_same(expected, got)
    flows = {(f[26:30], f[34:36], f[36:38]) for f in got}
    assert len(flows) == program.flows, (
        f"{len(flows)} distinct 5-tuples arrived, {program.flows} asked"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_counts_reconcile_exactly_at_mpps(two_host, workers):
    """Flat out, the receiving veth's XDP ring may overflow now and then: every such frame must show
    in the sender's tx_dropped, so that sent = arrived + dropped holds exactly."""
    injector, dut = two_host
    silence_ipv6("veth0", injector)
    pin_neighbour("ens5", "10.0.0.1", INJECTOR_MAC, dut)
    spec = TrafficSpec(templates.udp4(**ADDRESSED), vary=(Vary("UDP.sport", Range(1, 10_000)),))
    count = 1_000_000
    with Sink("ens5", dut) as sink, XdpSender(spec.resolve(), "veth0", injector) as sender:
        before = interface_stats("veth0", injector)
        report = sender.send(count=count, workers=workers)
        arrived = sink.settled(FrameClass.IPV4, count)
        dropped = delta(before, interface_stats("veth0", injector))["tx_dropped"]
    assert report.packets == count and report.aborted == 0
    assert arrived + dropped == count, (
        f"sent {count:,} IPv4 frames: {arrived:,} reached the dut's sink and {dropped:,} were "
        f"counted dropped, so {count - arrived - dropped:,} are unaccounted for"
    )
    assert report.pps > 1e6, f"{report.pps:,.0f} pps is not Mpps: is the engine attached?"


def test_paced_sending_loses_nothing(two_host):
    injector, dut = two_host
    spec = TrafficSpec(templates.udp4(**ADDRESSED), vary=(Vary("UDP.sport", Range(1, 100)),))
    with Sink("ens5", dut) as sink, XdpSender(spec.resolve(), "veth0", injector) as sender:
        report = sender.send(count=200_000, rate_pps=1_000_000)
        assert sink.settled(FrameClass.IPV4, 200_000) == 200_000
    assert report.seconds >= 0.19, "a paced send may not run ahead of its rate"


def test_pcap_replay_delivers_the_capture(two_host, tmp_path):
    injector, dut = two_host
    frames = list(VARIED.expand(count=40))
    pcap = tmp_path / "trace.pcap"
    wrpcap(str(pcap), frames)
    with Capture("ens5", netns=dut, match=ours) as capture:
        result = replay_pcap(pcap, "veth0", injector, rate_pps=5_000)
        got = received(capture, len(frames))
    assert result.sent == len(frames)
    assert_same(frames, got)


@pytest.mark.parametrize("inside", ["--netns", "ip netns exec"])
def test_cli_sends_a_spec_file(two_host, tmp_path, inside):
    injector, dut = two_host
    spec_file = tmp_path / "flows.yaml"
    spec_file.write_text(
        "template: {kind: udp4, args: {eth_dst: '02:00:00:00:01:02', eth_src: '02:00:00:00:01:01'}}\n"
        "vary:\n  - {field: UDP.sport, range: {start: 1000, end: 1099}}\n"
        "count: 20000\n"
    )
    command = [str(INJECTOR_COMMAND), "send", "-i", "veth0", "--spec", str(spec_file)]
    command += ["--rate", "200000", "--json"]
    if inside == "--netns":
        command += ["--netns", injector]
    else:
        command = ["ip", "netns", "exec", injector, *command]
    with Sink("ens5", dut) as sink:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["packets"] == 20_000
        assert sink.settled(FrameClass.IPV4, 20_000) == 20_000


def test_cli_rejects_a_bad_spec_naming_the_field(tmp_path):
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(
        "template: {kind: udp4}\nvary:\n  - {field: UDP.nosuch, range: {start: 1, end: 2}}\n"
    )
    done = subprocess.run(
        [str(INJECTOR_COMMAND), "send", "-i", "lo", "--spec", str(spec_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "UDP.nosuch" in done.stderr and str(spec_file) in done.stderr, done.stderr


def test_capture_saves_a_pcap_that_tcpdump_reads(two_host, tmp_path):
    injector, dut = two_host
    frames = [bytes(TEMPLATES[name]) for name in ("udp4", "udp4 in 802.1Q", "vxlan")]
    with Capture("ens5", netns=dut, match=ours) as capture:
        send_packets(frames, "veth0", injector)
        got = capture.frames(len(frames), timeout=3.0)
    pcap = tmp_path / "ens5.pcap"
    assert write_pcap(pcap, got) == len(frames)
    done = subprocess.run(["tcpdump", "-nn", "-e", "-r", str(pcap)], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == len(frames), done.stdout + done.stderr
    assert "vlan 100" in lines[1], f"tcpdump must see the 802.1Q tag: {lines[1]}"
    assert "VXLAN" in lines[2] or "4789" in lines[2], lines[2]
