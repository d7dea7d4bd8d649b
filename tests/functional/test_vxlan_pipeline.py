"""The VXLAN pipeline on ``mirror_vxlan``, end to end: the mirror's kernel VXLAN device (and crafted
frames) into the dut's ens5, the pipeline, the dut's ens6, the collector.

Most tests drive a real ``vxlan-pipeline run`` process (the console script beside
``sys.executable``) and change it with the other ``vxlan-pipeline`` commands; the TC-over-IPv6 test
uses the Python API. The oracle of what reaches the collector is ``bpf.vxlan.model`` fed the frames
the mirror actually sent (captured leaving its eth0: the kernel picks the outer source port), and
tshark, an independent implementation, verifies the IP/TCP/UDP checksums of what arrived.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

import bpf
from bpf import journal
from bpf.attach import ifindex
from bpf.vxlan import Allowlist, Config, Egress, Mode, Model, NatTarget, Verdict, VxlanPipeline
from harness.capture import Capture, write_pcap
from harness.compare import assert_same
from harness.counters import delta, interface_stats
from harness.ethtool import offload
from harness.pytest_plugin import MirrorVxlan
from harness.sink import FrameClass, Sink
from harness.stack import ping_pong, udp_socket
from injector import templates
from injector.scapy_backend import send_packets
from injector.spec import TrafficSpec
from injector.xdp import XdpSender

VXLAN_PIPELINE = Path(sys.executable).with_name("vxlan-pipeline")
HARNESS = Path(sys.executable).with_name("harness")
MIRROR_MAC, DUT_MAC = "02:00:00:00:02:01", "02:00:00:00:02:02"
EGRESS_MAC, COLLECTOR_MAC = "02:00:00:00:03:01", "02:00:00:00:03:02"
VNI = 42
ALLOWED = ["10.0.0.1", "172.16.0.0/24", "2001:db8:9::/48"]
INNER = {"eth_src": "02:00:00:00:2a:01", "eth_dst": "02:00:00:00:2a:02"}
OUTER = {
    "vni": VNI,
    "outer_src": "10.1.0.1",
    "outer_dst": "10.1.0.2",
    "eth_src": MIRROR_MAC,
    "eth_dst": DUT_MAC,
}
MODES = [m.value for m in Mode]


@pytest.fixture
def mirror(mirror_vxlan: MirrorVxlan) -> MirrorVxlan:
    assert not offload("vxlan0", "tx_checksum", namespace=mirror_vxlan.mirror), (
        "the topology turns it off"
    )
    mirror_vxlan.allowlist.write_text(json.dumps(Allowlist.of(ALLOWED).document()))
    return mirror_vxlan


# Named after this run (bl-<run id>-...): concurrent runs never share pins, and each run's leak
# check knows these pins are its own.
NAME = f"bl-{journal.current().run_id}-vxlan"


def in_netns(namespace: str | None) -> list[str]:
    """The command line that runs a command under ``ip netns exec NAMESPACE`` (None: as it is)."""
    return ["ip", "netns", "exec", namespace] if namespace else []


def vxlan_pipeline(*args: str, inside: str | None = None) -> subprocess.CompletedProcess:
    """The command on this run's pipeline (``--name NAME`` unless the call names another), under
    ``ip netns exec INSIDE`` if given."""
    named = args if "--name" in args else (*args, "--name", NAME)
    return subprocess.run(
        [*in_netns(inside), str(VXLAN_PIPELINE), *named], capture_output=True, text=True, timeout=30
    )


@dataclass
class Running:
    process: subprocess.Popen
    lines: list[dict]  # the JSON lines printed, complete once the process ended

    def stats(self) -> dict:
        done = vxlan_pipeline("stats", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def start(
    m: MirrorVxlan, mode: str = "redirect", *extra: str, ip_netns_exec: bool = False
) -> subprocess.Popen:
    """``vxlan-pipeline run`` on the dut (with ``extra`` options), once it says it is running; in
    the dut's namespace by ``--netns``, or run by ``ip netns exec``."""
    args = ["run", "-i", "ens5", "-t", "ens6", "--mode", mode, "--name", NAME]
    args += ["--next-hop-mac", COLLECTOR_MAC, "--vni", str(VNI), "--allowlist", str(m.allowlist)]
    args += [*extra, "--json", "-s", "60"] + ([] if ip_netns_exec else ["--netns", m.dut])
    process = subprocess.Popen(
        [*in_netns(m.dut if ip_netns_exec else None), str(VXLAN_PIPELINE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    banner = process.stderr.readline()
    if f"running as '{NAME}'" not in banner:
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"vxlan-pipeline run did not start: {banner}{err}")
    return process


@contextlib.contextmanager
def running(
    m: MirrorVxlan, mode: str = "redirect", *extra: str, ip_netns_exec: bool = False
) -> Iterator[Running]:
    """A pipeline run for the block, stopped with SIGTERM; its pins must be gone after."""
    run = Running(start(m, mode, *extra, ip_netns_exec=ip_netns_exec), [])
    try:
        yield run
    finally:
        run.process.send_signal(signal.SIGTERM)
        out, err = run.process.communicate(timeout=30)
    assert run.process.returncode == 0, err
    run.lines += [json.loads(line) for line in out.splitlines()]
    assert not bpf.pin_dir(f"vxlan-{NAME}").exists(), "run left its pins behind"


def model_for(
    m: MirrorVxlan, mode: str, nat: dict[int, NatTarget] | None = None, port: int = 4789
) -> Model:
    allowlist = Allowlist.of(ALLOWED)
    return Model(
        Config(mode=Mode(mode), vni=VNI, port=port),
        set(allowlist.hosts),
        set(allowlist.prefixes),
        dict(nat or {}),
        Egress(
            bytes.fromhex(EGRESS_MAC.replace(":", "")),
            bytes.fromhex(COLLECTOR_MAC.replace(":", "")),
            ifindex("ens6", m.dut),
        ),
    )


def crafted() -> list[bytes]:
    """Mirrored frames of every outcome: forwarded (UDP, TCP with DF, ICMP, a NAT rule's port,
    IPv6), dropped (address not allowed, IPv4 or IPv6; another VNI), and a large one near the
    MTU."""
    frames = [
        templates.vxlan(
            templates.udp4(src="10.0.0.1", dst="192.0.2.7", dport=53, **INNER), **OUTER
        ),
        templates.vxlan(templates.icmp4(src="203.0.113.5", dst="10.0.0.1", **INNER), **OUTER),
        templates.vxlan(templates.udp4(src="203.0.113.5", dst="198.51.100.1", **INNER), **OUTER),
        templates.vxlan(templates.udp4(src="10.0.0.1", **INNER), **{**OUTER, "vni": VNI + 1}),
        templates.vxlan(templates.udp6(**INNER), **OUTER),
        templates.vxlan(
            templates.tcp6(src="fd00::7", dst="2001:db8:9::80", payload=b"six", **INNER), **OUTER
        ),
        templates.vxlan(
            templates.udp4(src="172.16.0.9", dst="10.9.9.9", payload=bytes(3000), **INNER), **OUTER
        ),
    ]
    tcp = templates.tcp4(src="10.0.0.1", dst="10.0.0.2", dport=80, flags="PA", payload=b"x" * 99)
    tcp["IP"].flags = "DF"
    tcp["Ether"].src, tcp["Ether"].dst = INNER["eth_src"], INNER["eth_dst"]
    frames.append(templates.vxlan(tcp, **OUTER))
    return [bytes(f) for f in frames]


def kernel_mirrored(m: MirrorVxlan) -> None:
    """Inner UDP datagrams into the mirror's vxlan0: its kernel encapsulates them (DF set, as Linux
    does for UDP)."""
    with bpf.netns.entered(m.mirror):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        for size in (1, 200, 3000):
            sender.sendto(bytes(size), ("172.16.0.2", 6000))
        sender.sendto(b"nat me", ("172.16.0.2", 80))


def is_vxlan(frame: bytes) -> bool:
    """IPv4/UDP (no options) to 4789, or to 8472 (test_port_and_ring_size_options)."""
    return frame[12:14] == b"\x08\x00" and frame[36:38] in (b"\x12\xb5", b"\x21\x18")


def from_egress(frame: bytes) -> bool:
    return frame[6:12] == bytes.fromhex(EGRESS_MAC.replace(":", ""))


def through(m: MirrorVxlan, send) -> tuple[list[bytes], list[bytes], list]:
    """Run ``send``; return what left the mirror towards ens5, what reached the collector, and what
    left the dut's ens5 (which must be nothing)."""
    with (
        Capture("eth0", netns=m.mirror, match=is_vxlan) as sent,
        Capture("eth0", netns=m.collector, match=from_egress) as arrived,
        Capture("ens5", netns=m.dut) as back,
    ):
        send()
        inputs = [f.data for f in sent.frames(count=100, timeout=1.0) if f.outgoing]
        received = [f.data for f in arrived.frames(count=100, timeout=1.0) if not f.outgoing]
        returned = [f for f in back.frames(count=100, timeout=0.2) if f.outgoing]
    return inputs, received, returned


def checksum_verdicts(frames: list[bytes], pcap: Path) -> list[list[str]]:
    """tshark's verdict on each frame's IP, UDP and TCP checksums (1 good, 0 bad; "" absent)."""
    write_pcap(pcap, frames)
    done = subprocess.run(
        [
            *("tshark", "-n", "-r", str(pcap)),
            *("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"),
            *("-o", "tcp.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status"),
            *("-e", "udp.checksum.status", "-e", "tcp.checksum.status"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [line.split("\t") for line in done.stdout.splitlines()]


def test_mirrored_traffic_arrives_as_the_model_predicts(mirror, tmp_path):
    """Kernel-encapsulated and crafted frames through a running pipeline (NAT rule added by the
    CLI): the collector gets exactly the model's frames, tshark finds every checksum good, nothing
    goes back out of ens5, and the counters equal the model's."""
    nat = {80: NatTarget("10.2.0.2", 8080)}
    with running(mirror) as run:
        added = vxlan_pipeline("nat", "add", "80", "10.2.0.2:8080")
        assert added.returncode == 0, added.stderr
        ens5_before = interface_stats("ens5", mirror.dut)

        def send() -> None:
            kernel_mirrored(mirror)
            send_packets(crafted(), "eth0", mirror.mirror)

        inputs, received, returned = through(mirror, send)
        ens5_sent = delta(ens5_before, interface_stats("ens5", mirror.dut))["tx_packets"]
        stats = run.stats()
    model = model_for(mirror, "redirect", nat)
    expected = [out.frame for out in map(model.feed, inputs) if out.verdict is Verdict.FORWARD]
    assert len(inputs) == 4 + len(crafted()), f"{len(inputs)} frames left the mirror"
    assert len(expected) == 9, "the inputs should give 4 kernel and 5 crafted forwarded frames"
    assert_same(expected, received)
    assert stats["counters"] == model.stats and stats["balanced"], (stats, model.stats)
    assert (returned, ens5_sent) == ([], 0), "a frame went back out of the mirror target"
    verdicts = checksum_verdicts(received, tmp_path / "collector.pcap")
    assert len(verdicts) == len(received)
    for number, ((ip, udp, tcp), frame) in enumerate(zip(verdicts, received, strict=True), 1):
        ipv4 = Ether(frame).haslayer(IP)  # IPv6 has no header checksum: tshark says nothing
        assert ip == ("1" if ipv4 else "") and udp in ("", "1") and tcp in ("", "1"), (
            f"frame {number}: tshark's checksum verdicts ip={ip} udp={udp} tcp={tcp} (1 good)"
        )
    assert any(Ether(f)[IP].dst == "10.2.0.2" for f in received), "no frame was NATed"


def test_host_traffic_on_ens5_still_works(mirror):
    """With the pipeline attached, the dut's kernel still answers on ens5: a UDP datagram to its
    address is delivered, and its reply (after an ARP exchange over ens5) reaches the mirror."""
    with bpf.netns.entered(mirror.dut), IPRoute() as ipr:  # the dut must ARP, through the pipeline
        ens5 = ipr.link_lookup(ifname="ens5")[0]
        for neighbour in ipr.get_neighbours(ifindex=ens5):
            ipr.neigh("del", dst=neighbour.get_attr("NDA_DST"), ifindex=ens5)
    with (
        udp_socket(mirror.dut, "10.1.0.2", 7000) as server,
        udp_socket(mirror.mirror, "10.1.0.1", 7001) as client,
        running(mirror) as run,
    ):
        ping_pong(client, server)
        counters = run.stats()["counters"]
    assert counters["passed"] >= 2, f"the datagram and the ARP reply should pass: {counters}"
    assert "forwarded" not in counters


def test_three_modes_deliver_identical_frames(mirror):
    delivered = {}
    for mode in MODES:
        with running(mirror, mode):
            inputs, received, _ = through(
                mirror, lambda: send_packets(crafted(), "eth0", mirror.mirror)
            )
        model = model_for(mirror, mode)
        expected = [out.frame for out in map(model.feed, inputs) if out.verdict is Verdict.FORWARD]
        assert_same(expected, received)
        delivered[mode] = sorted(received)
    assert delivered["tc"] == delivered["redirect"] == delivered["ringbuf"]


def test_port_and_ring_size_options(mirror):
    """``--port 8472 --ring-size 64K``: VXLAN to 8472 reaches the collector through a 64 KiB ring;
    VXLAN to 4789 is no longer ours and passes to the stack."""
    inner = templates.udp4(src="10.0.0.1", dst="10.0.0.2", **INNER)
    frames = [bytes(templates.vxlan(inner, **OUTER, port=p)) for p in (8472, 4789)]
    with running(mirror, "ringbuf", "--port", "8472", "--ring-size", "64K") as run:
        inputs, received, returned = through(
            mirror, lambda: send_packets(frames, "eth0", mirror.mirror)
        )
        counters = run.stats()["counters"]
    model = model_for(mirror, "ringbuf", port=8472)
    outcomes = [model.feed(f) for f in inputs]
    assert [o.verdict for o in outcomes] == [Verdict.FORWARD, Verdict.PASS]
    # The stack answers the passed frame itself (ARP, ICMP port unreachable): host traffic.
    assert received == [outcomes[0].frame]
    assert not any(is_vxlan(f.data) for f in returned), returned
    assert (counters["vxlan"], counters["queued"]) == (1, 1) and counters["passed"] >= 1, counters
    bad = vxlan_pipeline(
        "run", "-i", "ens5", "-t", "ens6", "--netns", mirror.dut, "--ring-size", "3M"
    )
    assert bad.returncode == 2 and "--ring-size: '3M': ring size 3145728" in bad.stderr, bad.stderr


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to run on")
def test_ringbuf_workers_forward_each_cpus_ring(mirror):
    """``--workers 2``: frames sent from each CPU reach ens5's XDP on that CPU, so its ring and its
    worker; each ring's queued frames are all re-injected and reach the collector."""
    allowed = os.sched_getaffinity(0)
    cpus = sorted(allowed)[:2]
    frame = bytes(templates.vxlan(templates.udp4(src="10.0.0.1", dst="10.0.0.2", **INNER), **OUTER))
    sends = {cpus[0]: 3, cpus[1]: 5}

    def send() -> None:
        try:
            for cpu, count in sends.items():
                os.sched_setaffinity(0, {cpu})
                send_packets([frame] * count, "eth0", mirror.mirror)
                time.sleep(0.2)  # ens5's NAPI done on this CPU before the next one sends
        finally:
            os.sched_setaffinity(0, allowed)

    with running(mirror, "ringbuf", "--workers", "2") as run:
        _, received, _ = through(mirror, send)
    expected = [0, 0]
    for cpu, count in sends.items():
        expected[cpu % 2] += count
    rings = run.lines[-1]["reinjector"]["rings"]
    assert rings == [{"queued": n, "forwarded": n, "failed": 0, "restarts": 0} for n in expected], (
        rings
    )
    assert len(received) == sum(expected)
    for workers in ("0", str(len(allowed) + 1)):
        bad = vxlan_pipeline("run", "-i", "ens5", "-t", "ens6", "--workers", workers)
        assert bad.returncode == 2 and f"--workers: {workers}: must be 1.." in bad.stderr, (
            bad.stderr
        )


def test_ringbuf_counts_a_frame_past_the_egress_mtu_as_failed(mirror):
    """With ens6's MTU lowered to 1500 before ``run`` starts, a 3000-byte inner frame is queued to
    a ring but cannot leave: its worker counts it failed (ens6 would drop it, and the kernel retry
    it for ever), sends the small frame behind it, and the ring's queued frames are re-injected +
    failed."""
    inner = {"src": "10.0.0.1", "dst": "10.0.0.2", **INNER}
    frames = [
        bytes(templates.vxlan(templates.udp4(payload=bytes(3000), **inner), **OUTER)),
        bytes(templates.vxlan(templates.udp4(**inner), **OUTER)),
    ]
    with IPRoute(netns=mirror.dut) as ipr:
        ens6 = ipr.link_lookup(ifname="ens6")[0]
        ipr.link("set", index=ens6, mtu=1500)
        try:
            with running(mirror, "ringbuf", "--workers", "1") as run:
                _, received, _ = through(
                    mirror, lambda: send_packets(frames, "eth0", mirror.mirror)
                )
        finally:
            ipr.link("set", index=ens6, mtu=3498)
    (ring,) = run.lines[-1]["reinjector"]["rings"]
    assert ring == {"queued": 2, "forwarded": 1, "failed": 1, "restarts": 0}, ring
    assert [len(f) for f in received] == [len(frames[1]) - 50], "the small frame, decapsulated"


def test_ringbuf_counts_a_frame_the_egress_never_takes_as_failed_and_sends_the_rest(mirror):
    """With the collector's end of the egress link at MTU 1500 and ens6 at 3498, a 3000-byte inner
    frame fits ens6 but its veth peer drops it, and the kernel keeps it for sending again, in front
    of every later frame. After a second of refusals the worker counts it failed and sends the
    frames behind it."""
    inner = {"src": "10.0.0.1", "dst": "10.0.0.2", **INNER}
    frames = [bytes(templates.vxlan(templates.udp4(payload=bytes(3000), **inner), **OUTER))]
    frames += [
        bytes(templates.vxlan(templates.udp4(sport=1000 + i, **inner), **OUTER)) for i in range(3)
    ]
    with IPRoute(netns=mirror.collector) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=eth0, mtu=1500)
        try:
            with running(mirror, "ringbuf", "--workers", "1") as run:
                _, received, _ = through(
                    mirror, lambda: (send_packets(frames, "eth0", mirror.mirror), time.sleep(1.5))
                )
        finally:
            ipr.link("set", index=eth0, mtu=3498)
    (ring,) = run.lines[-1]["reinjector"]["rings"]
    assert ring == {"queued": 4, "forwarded": 3, "failed": 1, "restarts": 0}, ring
    assert sorted(len(f) for f in received) == [len(frames[1]) - 50] * 3, "the small frames"


def test_tc_decapsulating_ipv6_sets_the_inner_protocol(mirror):
    """An IPv4 frame mirrored over IPv6, decapsulated at TC, leaves ens6 with skb->protocol IPv4
    (what AF_PACKET reports as the frame's protocol), not the outer IPv6."""
    inner = templates.udp4(src="10.0.0.1", dst="10.0.0.2", payload=bytes(64), **INNER)
    frame = bytes(
        Ether(src=MIRROR_MAC, dst=DUT_MAC)
        / IPv6(src="fd01::1", dst="fd01::2")
        / UDP(sport=49152, dport=4789, chksum=0)
        / VXLAN(flags=0x08, vni=VNI)
        / inner
    )
    with bpf.netns.entered(mirror.dut):
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with tap, VxlanPipeline(Config(mode=Mode.TC, vni=VNI)) as vx:
        tap.bind(("ens6", 0))
        tap.settimeout(2.0)
        vx.set_allowlist(Allowlist.of(ALLOWED))
        vx.set_egress("ens6", COLLECTOR_MAC, mirror.dut)
        vx.attach("ens5", mirror.dut)
        send_packets([frame], "eth0", mirror.mirror)
        data, address = tap.recvfrom(4096)
        assert vx.stats().forwarded == 1
    expected = model_for(mirror, "tc").predict(frame)
    assert data == expected.frame
    assert address[1] == 0x0800, f"skb->protocol {address[1]:#06x} leaving ens6, 0x0800 expected"


def test_allowlist_and_nat_change_while_traffic_flows(mirror, tmp_path):
    """A paced stream runs while the CLI loads the allowlist, adds a NAT rule and deletes it: each
    change shows in the counters and the frames, and every frame is accounted for throughout."""
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(Allowlist().document()))
    mirror.allowlist, full = empty, mirror.allowlist
    inner = templates.udp4(src="10.0.0.1", dst="10.0.0.2", dport=80, **INNER)
    spec = TrafficSpec(templates.vxlan(inner, **OUTER))
    chunk, rate = 10_000, 20_000.0  # half-second chunks until the last change, then one more

    def counters(run: Running) -> dict:
        time.sleep(0.5)
        return run.stats()["counters"]

    with (
        running(mirror) as run,
        Sink("eth0", mirror.collector, verdict=bpf.XdpAction.PASS) as sink,
        Capture("eth0", netns=mirror.collector, match=from_egress) as arrived,
        XdpSender(spec.resolve(), "eth0", mirror.mirror) as sender,
    ):
        before = interface_stats("eth0", mirror.mirror), interface_stats("ens6", mirror.dut)
        reports, changed = [], threading.Event()

        def stream() -> None:
            # However long the commands take on a loaded machine, frames flow after the last one.
            while not changed.is_set():
                reports.append(sender.send(chunk, rate))
            reports.append(sender.send(chunk, rate))

        streaming = threading.Thread(target=stream)
        streaming.start()
        steps = [counters(run)]
        for command in (
            ("allowlist", "load", str(full)),
            ("nat", "add", "80", "10.2.0.2:8080"),
            ("nat", "del", "80"),
        ):
            done = vxlan_pipeline(*command)
            assert done.returncode == 0, done.stderr
            steps.append(counters(run))
        changed.set()
        streaming.join()
        sent = sum(r.packets for r in reports)
        final = run.stats()
        # Python reads a capture at ~100k frames/s: give it time for every forwarded frame.
        forwarded = final["counters"].get("forwarded", 0)
        forwarded_nat = [
            f.data for f in arrived.frames(count=forwarded, timeout=5.0) if not f.outgoing
        ]
        arrived_count = sink.settled(FrameClass.IPV4, forwarded)
        lost_mirror = delta(before[0], interface_stats("eth0", mirror.mirror))["tx_dropped"]
        lost_ens6 = delta(before[1], interface_stats("ens6", mirror.dut))["tx_dropped"]
    c = final["counters"]
    assert final["balanced"], c
    # Every injected frame is VXLAN to us; the kernel's own frames on ens5 (ARP...) pass beside them.
    assert sent - lost_mirror == c["vxlan"], (sent, lost_mirror, c)
    assert c["total"] == c.get("passed", 0) + c["forwarded"] + final["dropped"]
    assert c["forwarded"] == arrived_count + lost_ens6
    empty_phase, allowed, natted, unnatted = steps[:4]
    assert "forwarded" not in empty_phase and empty_phase.get("drop:not_allowed", 0) > 0
    assert allowed.get("forwarded", 0) > 0 and "nat" not in allowed, allowed
    assert natted.get("nat", 0) > 0, natted
    assert c["nat"] == unnatted["nat"] < unnatted["forwarded"] < c["forwarded"], (unnatted, c)
    to = {(Ether(f)[IP].dst, Ether(f)[UDP].dport) for f in forwarded_nat}
    assert to == {("10.0.0.2", 80), ("10.2.0.2", 8080)}, to


@pytest.mark.parametrize("inside", ["--netns", "ip netns exec"])
def test_a_workflow_of_commands_reaches_the_running_pipeline(mirror, tmp_path, inside):
    """``run`` in one process; ``allowlist load`` (the seed's file, its total_ips off by one),
    ``allowlist show``, ``nat add``, ``nat list``, ``stats`` each in its own: all reach the one
    pinned pipeline, whether each runs under ``ip netns exec`` (a mount namespace of its own, with
    a /sys without the host's bpffs) or is told ``--netns``."""
    netns = mirror.dut if inside == "ip netns exec" else None
    entries = ["10.0.0.1", "104.218.88.5", "198.51.100.0/24"]
    seed = tmp_path / "ip_allowlist.json"
    seed.write_text(
        json.dumps(
            {
                "version": "1.0",
                "total_ips": 4,
                "organizations": [{"name": "Example", "ips": entries}],
                "flat_ip_list": entries,
            },
            indent=2,
        )
    )
    mirror.allowlist.write_text(json.dumps(Allowlist.of(["192.0.2.1"]).document()))
    with running(mirror, ip_netns_exec=netns is not None):
        loaded = vxlan_pipeline("allowlist", "load", str(seed), inside=netns)
        assert loaded.returncode == 0, loaded.stderr
        assert "warning: " in loaded.stderr and "total_ips is 4 but flat_ip_list has 3" in (
            loaded.stderr
        )
        shown = vxlan_pipeline("allowlist", "show", inside=netns)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == {
            "version": "1.0",
            "total_ips": 3,
            "organizations": [],
            "flat_ip_list": entries,
        }
        added = vxlan_pipeline("nat", "add", "80", "10.2.0.2:8080", inside=netns)
        listed = vxlan_pipeline("nat", "list", inside=netns)
        assert added.returncode == listed.returncode == 0, added.stderr + listed.stderr
        assert listed.stdout == "80 10.2.0.2:8080\n"
        frame = templates.vxlan(templates.udp4(src="10.0.0.1", dport=80, **INNER), **OUTER)
        with Capture("eth0", netns=mirror.collector, match=from_egress) as arrived:
            send_packets([bytes(frame)], "eth0", mirror.mirror)
            got = [f.data for f in arrived.frames(count=1, timeout=2.0) if not f.outgoing]
        stats = vxlan_pipeline("stats", "--json", inside=netns)
    assert len(got) == 1 and (Ether(got[0])[IP].dst, Ether(got[0])[UDP].dport) == (
        "10.2.0.2",
        8080,
    ), "the frame must be forwarded by the loaded allowlist, through the added rule"
    assert stats.returncode == 0, stats.stderr
    counters = json.loads(stats.stdout)["counters"]
    assert counters["forwarded"] == counters["nat"] == 1, counters


def test_invalid_allowlist_is_refused_and_nothing_changes(mirror, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{\n "version": 1,\n "total_ips": 2,\n "organizations": {},\n'
        ' "flat_ip_list": ["10.0.0.7",\n   "10.0.0.300"]\n}\n'
    )
    with running(mirror):
        before = vxlan_pipeline("allowlist", "show")
        done = vxlan_pipeline("allowlist", "load", str(bad))
        after = vxlan_pipeline("allowlist", "show")
    assert done.returncode == 2
    assert f"{bad}:6:4: flat_ip_list[1]: '10.0.0.300' is not an IPv4 address" in done.stderr
    assert before.returncode == 0 and after.stdout == before.stdout
    assert json.loads(after.stdout)["flat_ip_list"] == Allowlist.of(ALLOWED).entries


def test_commands_without_a_running_pipeline_say_so():
    done = vxlan_pipeline("nat", "list", "--name", "absent")
    assert done.returncode == 2 and "no VXLAN pipeline pinned as 'absent'" in done.stderr


@pytest.mark.dead_run
def test_killed_run_leaves_pins_that_clean_removes(mirror):
    process = start(mirror)
    process.kill()
    process.communicate(timeout=30)
    assert bpf.pin_dir(f"vxlan-{NAME}").exists(), "a killed run should leave its pins"
    done = subprocess.run([str(HARNESS), "clean"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not bpf.pin_dir(f"vxlan-{NAME}").exists(), done.stdout
