"""VXLAN pipeline cost per packet in the kernel (test_run), against bare XDP_PASS in the same run.

Forwarding: a mirrored TCP frame (outer IPv4/UDP/VXLAN, inner allowlisted, NAT rule hit, DF set)
decapsulated, NATed, MACs rewritten, redirected (XDP through the DEVMAP, or TC bpf_redirect). A
forwarding run edits the frame in place and test_run's ``repeat`` keeps edits (PLATFORM trap 5):
the second repetition would see the decapsulated frame, take the pass path and say nothing about
forwarding. So each figure is the kernel's own duration of single runs (``repeat=1``), averaged over
many calls; the baseline is measured the same way, so both carry the same timer overhead per run.

Host traffic: an SSH frame on ens5 pays the outer parse and passes; it edits nothing, so ``repeat``
measures it directly, against xdp_pass with the same ``repeat``.

Target: forwarding at most 4x xdp_pass (printed). The testbed's budget (``testbeds/veth.yaml``:
8x) catches a regression without hiding a miss of the target.

On the testbed's bench (``veth``: ``mirror_vxlan``, the mirror's eth0 -> the dut's ens5 -> ens6 ->
the collector's eth0, native XDP; ``--nic``/``--egress-nic``: the DUT's real NICs, the traffic and
the receiver on the peer host), with a real ``vxlan-pipeline run`` process per mode:

- zero-loss throughput of each mode against a bare XDP_REDIRECT program (``bpf/selftest/
  redirect.bpf.c``) on the same link in the same run, RFC 2544 style: flat out first, then, after a
  loss, the rate that was delivered less 10%, until a trial of ``packets`` frames loses none. Every
  frame is accounted for: sent = arrived + the drops the kernel and the pipeline counted. Aims:
  ``redirect`` at least 60% of the bare rate; ``ringbuf`` (Python re-injector) at least 3x the
  seed's 85 kpps.
- one-way latency of probes (``harness.latency``) through the pipeline against the bare redirect.
"""

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether

import bpf
from bpf import journal
from bpf import netns as bpf_netns
from bpf.attach import ifindex
from bpf.vxlan import Allowlist, Config, Mode, VxlanPipeline
from harness.bench import Bench, LocalSource, Port, settled
from harness.counters import interface_stats, silence_ipv6_everywhere
from harness.latency import ProbeReceiver, ProbeSender, ProbeTemplate, analyze
from harness.measure import Comparison, Summary, sample
from injector import templates

SELFTEST = Path(bpf.__file__).parent / "selftest"
TARGET_RATIO = 4.0
INNER = templates.tcp4(src="10.0.0.1", dst="10.0.0.2", dport=80, flags="PA", payload=bytes(64))
INNER["IP"].flags = "DF"
MIRRORED = bytes(templates.vxlan(INNER, vni=42))
SSH = bytes(templates.tcp4(src="10.1.0.1", dst="10.1.0.2", dport=22, flags="PA", payload=bytes(40)))


def pipeline(mode: Mode) -> VxlanPipeline:
    vx = VxlanPipeline(Config(mode=mode, vni=42))
    vx.set_egress("lo", "02:00:00:00:03:02", src_mac="02:00:00:00:03:01")
    vx.set_allowlist(Allowlist.of(["10.0.0.1", "192.168.0.0/16"]))
    vx.add_nat(80, "10.2.0.2", 8080)
    return vx


def single_runs_ns(program: bpf.Program, frame: bytes, calls: int) -> float:
    return statistics.fmean(program.test_run(frame).duration_ns for _ in range(calls))


def report(benchmark, results, name: str, subject, baseline) -> Comparison:
    result = Comparison(name, subject, baseline, "xdp_pass")
    benchmark.extra_info.update(result.as_dict(), target_ratio=TARGET_RATIO)
    results.record(result, target_ratio=TARGET_RATIO)
    print(f"{name}: {result.ratio:.2f}x xdp_pass, target {TARGET_RATIO}x")
    return result


@pytest.mark.parametrize("mode", [Mode.REDIRECT, Mode.TC], ids=lambda m: m.value)
def test_forward_ns_per_packet(benchmark, results, xdp_pass, quick, mode):
    calls = 2_000 if quick else 20_000
    repeats = 3 if quick else 7
    with pipeline(mode) as vx:
        program = vx.program
        expect = bpf.XdpAction.REDIRECT if mode is Mode.REDIRECT else bpf.TcAction.REDIRECT
        assert program.test_run(MIRRORED).verdict is expect
        baseline = sample(lambda: single_runs_ns(xdp_pass, MIRRORED, calls), "ns/packet", repeats)
        subject = benchmark.pedantic(
            lambda: sample(lambda: single_runs_ns(program, MIRRORED, calls), "ns/packet", repeats),
            rounds=1,
            iterations=1,
        )
        stats = vx.stats()
        assert stats.balanced and stats.forwarded == stats.total
    report(benchmark, results, f"vxlan {mode.value} forward", subject, baseline)


def test_host_traffic_ns_per_packet(benchmark, results, xdp_pass, quick):
    repeat = 10_000 if quick else 1_000_000
    repeats = 3 if quick else 7
    with pipeline(Mode.REDIRECT) as vx:
        program = vx.program
        baseline = sample(
            lambda: float(xdp_pass.test_run(SSH, repeat=repeat).duration_ns), "ns/packet", repeats
        )
        subject = benchmark.pedantic(
            lambda: sample(
                lambda: float(program.test_run(SSH, repeat=repeat).duration_ns),
                "ns/packet",
                repeats,
            ),
            rounds=1,
            iterations=1,
        )
        assert vx.stats().passed == vx.stats().total
    report(benchmark, results, "vxlan host traffic pass", subject, baseline)


# --- on mirror_vxlan, or the testbed's NICs ---------------------------------------------------------

VXLAN_PIPELINE = Path(sys.executable).with_name("vxlan-pipeline")
SEED_RINGBUF_KPPS = 85.0  # the seed's ring-buffer path, with an 8-thread C injector
RINGBUF_AIM = 3.0  # x the seed; on the way to 10x
REDIRECT_AIM = 0.6  # of the bare XDP_REDIRECT rate
INNER_MACS = {"eth_src": "02:00:00:00:2a:01", "eth_dst": "02:00:00:00:2a:02"}
OUTER = {"vni": 42, "outer_src": "10.1.0.1", "outer_dst": "10.1.0.2"}
MIRRORED_SPEC = {  # one allowlisted flow, mirrored: the spec's MACs are the bench's (addressed)
    "template": {
        "kind": "vxlan",
        "args": OUTER,
        "inner": {"kind": "udp4", "args": {"src": "10.0.0.1", "dst": "10.0.0.2", **INNER_MACS}},
    }
}


@dataclass
class Link:
    """mirror -> DUT ingress -> pipeline -> DUT egress -> collector, and the pipeline's allowlist."""

    bench: Bench
    allowlist: Path

    @property
    def dut_in(self) -> Port:
        return self.bench.ingress

    @property
    def dut_out(self) -> Port:
        return self.bench.egress

    def egress_dropped(self) -> int:
        return interface_stats(self.dut_out.ifname, self.dut_out.netns)["tx_dropped"]


@pytest.fixture
def link(bench, tmp_path: Path) -> Link:
    made = bench("mirror_vxlan")
    if not made.testbed.real:  # exact counts need no kernel chatter on the veths (harness.counters)
        silence_ipv6_everywhere(made.topology)
    allowlist = tmp_path / "allowlist.json"
    allowlist.write_text(json.dumps(Allowlist.of(["10.0.0.1"]).document()))
    return Link(made, allowlist)


def _local_only(link: Link, why: str) -> None:
    if not isinstance(link.bench.source, LocalSource):
        pytest.skip(f"{why}: this testbed's traffic comes from another host")


@contextlib.contextmanager
def bare_redirect(link: Link) -> Iterator[None]:
    with bpf.BpfObject.open(SELFTEST / "redirect.bpf.c") as obj:
        obj.load()
        with bpf_netns.entered(link.dut_out.netns):  # a DEVMAP resolves the ifindex there
            obj.maps["redirect_dev"][0] = ifindex(link.dut_out.ifname)
        obj.programs["xdp_redirect_devmap"].attach_xdp(
            link.dut_in.ifname, bpf.XdpMode.NATIVE, link.dut_in.netns
        )
        yield


@contextlib.contextmanager
def pipeline_run(link: Link, mode: str, final: list[dict]) -> Iterator[None]:
    """``vxlan-pipeline run`` in its own process (the re-injector gets a CPU of its own); its last
    JSON line (counters, re-injector) lands in ``final``."""
    netns = ["--netns", link.dut_in.netns] if link.dut_in.netns else []
    process = subprocess.Popen(
        [
            str(VXLAN_PIPELINE),
            "run",
            "-i",
            link.dut_in.ifname,
            "-t",
            link.dut_out.ifname,
            *netns,
            "--mode",
            mode,
            "--next-hop-mac",
            link.bench.receiver.port.mac,
            "--allowlist",
            str(link.allowlist),
            "--name",
            f"bl-{journal.current().run_id}-vxlan",  # this run's: never shared, leak-checked
            "--json",
            "-s",
            "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stderr.readline()
        assert "running" in banner, banner
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    final.append(json.loads(out.splitlines()[-1]))


def _throughput(link: Link, sender, counting, packets: int, repeats: int, totals: Counter):
    def kpps() -> float:
        return link.bench.zero_loss_pps(sender, packets, totals, counting) / 1e3

    return sample(kpps, "kpps", repeats)


@pytest.mark.parametrize("mode", [Mode.REDIRECT.value, Mode.TC.value])
def test_zero_loss_throughput_against_bare_redirect(benchmark, results, link, quick, mode):
    packets = 20_000 if quick else 1_000_000
    repeats = 1 if quick else 3
    spec = link.bench.addressed(MIRRORED_SPEC)
    with (
        link.bench.receiver.counting() as counting,
        link.bench.source.sender(spec) as sender,
    ):
        with bare_redirect(link):
            baseline = _throughput(link, sender, counting, packets, repeats, Counter())
        totals: Counter = Counter()
        final: list[dict] = []
        egress_before = link.egress_dropped()
        with pipeline_run(link, mode, final):
            subject = benchmark.pedantic(
                lambda: _throughput(link, sender, counting, packets, repeats, totals),
                rounds=1,
                iterations=1,
            )
        lost_egress = link.egress_dropped() - egress_before
    (last,) = final
    c, drops = last["counters"], last["dropped"]
    lost_source = totals["source_dropped"]
    assert last["balanced"], c
    # Every injected frame is VXLAN to us; the kernel's own frames on ens5 (ARP...) pass beside them.
    assert c["vxlan"] == totals["sent"] - lost_source, (c, totals)
    failed = last.get("reinjector", {}).get("failed", 0)
    if "reinjector" in last:
        assert c.get("queued", 0) == last["reinjector"]["forwarded"] + failed, last
    assert c["forwarded"] - failed == totals["arrived"] + lost_egress, (c, totals, lost_egress)
    assert totals["sent"] == totals["arrived"] + lost_source + drops + failed + lost_egress, (
        "frames lost uncounted"
    )
    _report_throughput(benchmark, results, mode, subject, baseline)


def _report_throughput(benchmark, results, mode: str, subject: Summary, baseline: Summary):
    result = Comparison(f"vxlan {mode} zero-loss", subject, baseline, "bare xdp_redirect_devmap")
    benchmark.extra_info.update(result.as_dict(), seed_kpps=SEED_RINGBUF_KPPS)
    results.record(result)
    print(
        f"vxlan {mode}: {subject.median:,.0f} kpps zero-loss against {baseline.median:,.0f} kpps "
        f"bare XDP_REDIRECT ({result.ratio:.0%}); {subject.median / SEED_RINGBUF_KPPS:.1f}x the "
        f"seed's {SEED_RINGBUF_KPPS:.0f} kpps"
    )
    if mode == Mode.REDIRECT.value:  # under half the aim is the budget: a regression anywhere
        print(f"vxlan redirect: aim {REDIRECT_AIM:.0%} of bare XDP_REDIRECT")


def test_ringbuf_against_the_seed(benchmark, results, link, quick):
    """The ring-buffer path measured as the seed stated its headline (85 kpps, 99.99% delivered) and
    as the issue sets its aim (3x that, "with 0 packets lost uncounted"): a steady stream at 3x the
    seed's rate, every frame accounted for (sent = arrived + the losses the kernel and the pipeline
    counted) with its delivery ratio; then a burst flat out, which fills the ring, for the rate at
    which the Python re-injector empties it. A zero-loss search does not fit this mode: the ring's
    backlog from one trial drains into the next, so trials are not independent."""
    _local_only(link, "the drain is timed from the burst's start, which a remote start blurs")
    packets = 20_000 if quick else 1_000_000
    steady_pps = RINGBUF_AIM * SEED_RINGBUF_KPPS * 1e3
    final: list[dict] = []
    spec = link.bench.addressed(MIRRORED_SPEC)
    with (
        link.bench.receiver.counting() as counting,
        link.bench.source.sender(spec) as sender,
    ):
        egress_before = link.egress_dropped()
        with pipeline_run(link, Mode.RINGBUF.value, final):
            start = counting.frames()
            steady = sender.send(packets, steady_pps)
            offered = [steady]
            steady_arrived = settled(counting) - start

            def drain_kpps() -> float:
                """Frames forwarded per second from the start of a burst to the last arrival,
                stalls included; done when the count has not moved for 0.3 s (5 s to start)."""
                first = counting.frames()
                began = time.perf_counter()
                offered.append(sender.send(packets))
                last, last_moved = first, began
                while time.perf_counter() - last_moved < (5.0 if last == first else 0.3):
                    time.sleep(0.01)
                    now = counting.frames()
                    if now != last:
                        last, last_moved = now, time.perf_counter()
                assert last > first, "the re-injector forwarded nothing for 5 s"
                return (last - first) / (last_moved - began) / 1e3

            drain = benchmark.pedantic(
                lambda: sample(drain_kpps, "kpps", 1 if quick else 3), rounds=1, iterations=1
            )
        lost_egress = link.egress_dropped() - egress_before
        arrived = counting.frames() - start
    (last,) = final
    c, drops = last["counters"], last["dropped"]
    failed = last["reinjector"]["failed"]
    lost_source = sum(o.dropped for o in offered)
    assert last["balanced"], c
    assert c["queued"] == last["reinjector"]["forwarded"] + failed, last
    assert sum(o.packets for o in offered) == (
        arrived + lost_source + drops + failed + lost_egress
    ), "frames lost uncounted"
    delivered = steady_arrived / steady.packets
    baseline = Summary("kpps", SEED_RINGBUF_KPPS, SEED_RINGBUF_KPPS, 0, 0, 0, 0, 1, 0)
    result = Comparison("vxlan ringbuf, re-injector emptying a full ring", drain, baseline, "seed")
    benchmark.extra_info.update(result.as_dict(), steady_delivered=delivered, steady_pps=steady.pps)
    results.record(result)
    print(
        f"vxlan ringbuf: at {steady.pps / 1e3:,.0f} kpps steady ({RINGBUF_AIM:.0f}x the seed) "
        f"{delivered:.4%} delivered, every loss counted; a full ring empties at "
        f"{drain.median:,.0f} kpps ({result.ratio:.1f}x the seed's {SEED_RINGBUF_KPPS:.0f})"
    )
    print(
        f"vxlan ringbuf: aims {RINGBUF_AIM:.0f}x the seed's {SEED_RINGBUF_KPPS:.0f} kpps for the "
        f"drain, 99.99% delivered steady (met on some machines of our kind, not all: the README)"
    )


def _probes(link: Link, vxlan: bool) -> ProbeTemplate:
    inner = ProbeTemplate.udp4(src="10.0.0.1", dst="10.0.0.2", **INNER_MACS)
    if not vxlan:
        return inner
    macs = {"eth_src": link.bench.source.port.mac, "eth_dst": link.dut_in.mac}
    outer = templates.vxlan(Ether(inner.frame), **macs, **OUTER)
    return ProbeTemplate(bytes(outer), inner.offset + len(outer) - len(inner.frame))


def _p50_us(link: Link, received_as: ProbeTemplate, count: int) -> float:
    sent_as = _probes(link, vxlan=True)
    source, collector = link.bench.source.port, link.bench.receiver.port
    with (
        ProbeReceiver(received_as, collector.ifname, collector.netns) as receiver,
        ProbeSender(sent_as, source.ifname, source.netns) as sender,
    ):
        receiver.wait_ready()
        arrivals = []
        for seq in range(count):
            sender.send(seq)
            arrivals += receiver.receive(wait=0.0005)
        arrivals += receiver.receive(wait=0.5, expected=count - len(arrivals))
    report = analyze(arrivals, count, sender.refused)
    assert report.lost == 0, f"probes lost on an otherwise idle link: {report}"
    return report.p50_us


@pytest.mark.parametrize("mode", [Mode.REDIRECT.value, Mode.RINGBUF.value])
def test_latency_against_bare_redirect(benchmark, results, link, quick, mode):
    """One-way probe latency, mirror to collector: through the pipeline (the collector reads the
    decapsulated probe) against the bare redirect (the probe still encapsulated), same link."""
    _local_only(link, "one-way latency needs the probes' sender and receiver on one clock")
    count, repeats = (100, 2) if quick else (1000, 5)
    with bare_redirect(link):
        baseline = sample(lambda: _p50_us(link, _probes(link, vxlan=True), count), "us", repeats)
    with pipeline_run(link, mode, []):
        subject = benchmark.pedantic(
            lambda: sample(lambda: _p50_us(link, _probes(link, vxlan=False), count), "us", repeats),
            rounds=1,
            iterations=1,
        )
    result = Comparison(f"vxlan {mode} probe latency p50", subject, baseline, "bare redirect")
    benchmark.extra_info.update(result.as_dict(), added_us=subject.median - baseline.median)
    results.record(result)
    print(
        f"vxlan {mode}: p50 {subject.median:.1f} us against {baseline.median:.1f} us bare "
        f"(the seed claimed 5 us)"
    )
