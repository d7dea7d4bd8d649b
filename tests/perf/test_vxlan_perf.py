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

- zero-loss throughput of ``redirect`` and ``tc`` against a bare XDP_REDIRECT program
  (``bpf/selftest/redirect.bpf.c``) on the same link in the same run, RFC 2544 style: flat out
  first, then, after a loss, the rate that was delivered less 10%, until a trial of ``packets``
  frames loses none. Every frame is accounted for: sent = arrived + the drops the kernel and the
  pipeline counted. Aim: ``redirect`` at least 60% of the bare rate.
- the ring path (``ringbuf``, a ring and a re-injector worker per CPU): the rate at which full rings
  empty through the Python re-injector against the C reference (``bpf/vxlan/reinjector_ref.c``) on
  the same rings in the same run (aim: 850 kpps, 10x the seed's 85, or 0.8 of the C reference
  where C cannot do 850 here); 1M frames steady at 255 kpps (3x the seed) with at least 99.99%
  delivered and every loss counted by reason, and the highest zero-loss rate by the same search.
- one-way latency of probes (``harness.latency``): ``redirect`` against the bare redirect, and the
  ring path against ``redirect`` (aim: p50 within 3x).
"""

from __future__ import annotations

import contextlib
import json
import os
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
from bpf.build import require_native
from bpf.vxlan import Allowlist, Config, Mode, VxlanPipeline
from bpf.vxlan.reinjector import ring_cpus
from harness.bench import (
    Bench,
    Counting,
    LocalSource,
    PeerSource,
    Port,
    Sender,
    TrexSource,
)
from harness.counters import interface_stats, settled, silence_ipv6_everywhere
from harness.latency import ProbeReceiver, ProbeSender, ProbeTemplate, analyze
from harness.measure import Comparison, Summary, sample
from harness.testrun import parked
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
    with pipeline(Mode.REDIRECT) as vx, parked(xdp_pass, vx.program):
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
RINGBUF_AIM = 3.0  # x the seed: the steady stream's rate
DRAIN_AIM_KPPS = 850.0  # 10x the seed
DRAIN_AIM_OF_C = 0.8  # of the C reference, where C cannot do DRAIN_AIM_KPPS
RINGBUF_LATENCY_AIM = 3.0  # p50, x the redirect path's
REFERENCE = require_native("bpf/vxlan/vxlan_reinjector_ref")
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


def _run_name() -> str:
    return f"bl-{journal.current().run_id}-vxlan"  # this run's: never shared, leak-checked


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
            _run_name(),
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


@contextlib.contextmanager
def reference_run(link: Link, final: list[dict]) -> Iterator[None]:
    """The ring path with the C reference re-injector (``bpf/vxlan/reinjector_ref.c``) in place of
    the Python one: the pipeline loaded here with a ring per CPU, one reference process per ring
    on the ring's CPUs, as ``vxlan-pipeline run`` runs its workers. The pipeline's counters, its
    per-ring queued counts and each process's JSON counts land in ``final``."""
    allowed = os.sched_getaffinity(0)
    rings = len(allowed)
    out = link.dut_out
    with VxlanPipeline(Config(mode=Mode.RINGBUF, rings=rings)) as vx:
        vx.set_egress(out.ifname, link.bench.receiver.port.mac, out.netns)
        vx.set_allowlist(Allowlist.load(link.allowlist))
        pins = vx.pin(f"bl-{journal.current().run_id}-vxref")
        processes = []
        with bpf_netns.entered(out.netns):  # each looks the egress up in its own namespace
            for ring in range(rings):
                cpus = [str(cpu) for cpu in sorted(ring_cpus(ring, rings, allowed))]
                processes.append(
                    subprocess.Popen(
                        [str(REFERENCE), str(pins / "rings"), str(ring), out.ifname, *cpus],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
        try:
            for process in processes:
                ready = process.stderr.readline()
                assert ready == "ready\n", ready + process.stderr.read()
            vx.attach(link.dut_in.ifname, link.dut_in.netns)
            yield
        finally:
            vx.detach()
            for process in processes:
                process.send_signal(signal.SIGTERM)
            ends = [process.communicate(timeout=60) for process in processes]
        for process, (_, err) in zip(processes, ends, strict=True):
            assert process.returncode == 0, err
        final.append(
            {
                "stats": vx.stats(),
                "queued": vx.queued_per_ring(),
                "rings": [json.loads(stdout) for stdout, _ in ends],
            }
        )


def _full_ring_drain_kpps(sender, counting, packets: int, offered: list[int]) -> float:
    """Fill every ring, with a burst flat out from every CPU (each CPU's frames go to its own
    ring), then the rate at which the re-injectors empty them: frames arriving after the burst
    ended, over the time from its end to the last arrival (the count still for 0.3 s)."""
    workers = len(os.sched_getaffinity(0))
    offered.append(sender.xdp.send(count=packets, workers=workers).packets)
    ended, at_end = time.perf_counter(), counting.frames()
    last, last_moved = at_end, ended
    while time.perf_counter() - last_moved < 0.3:
        time.sleep(0.01)
        now = counting.frames()
        if now != last:
            last, last_moved = now, time.perf_counter()
    assert last > at_end, "the rings were empty when the burst ended: not a full-ring drain"
    return (last - at_end) / (last_moved - ended) / 1e3


@dataclass
class Ledger:
    """The link's counts since ``open``, to account for every frame sent: frames that reached the
    collector; that the source's interface (tx_dropped) or the collector's (rx_dropped) dropped;
    and what the DUT's egress did with the frames the re-injectors handed it. The egress's own
    tx_dropped overstates its losses: a veth that frees a dropped frame at once lets the kernel
    mark its TX ring slot for sending again (ENOBUFS), and that frame arrives later. So a frame
    lost at the egress is one handed to it (``forwarded``) that it never transmitted
    (tx_packets); its refusals, sent again or not, are reported beside."""

    link: Link
    counting: Counting
    sender: Sender
    before: Counter

    @classmethod
    def open(cls, link: Link, counting: Counting, sender: Sender) -> Ledger:
        return cls(link, counting, sender, _link_counts(link, counting, sender))

    def since(self) -> Counter:
        now = _link_counts(self.link, self.counting, self.sender)
        now.subtract(self.before)
        return now

    def check(self, sent: int, pipeline: dict, reinjected: dict) -> Counter:
        """Every frame sent accounted for, from the DUT's ingress on exactly: the pipeline saw
        (``vxlan``) what it forwarded to a ring or dropped by reason, a re-injector forwarded or
        failed each frame queued, the egress transmitted or lost each frame forwarded, and the
        collector got or dropped each frame transmitted. ``pipeline`` is the run's counters
        (``counters``, ``dropped``), ``reinjected`` its re-injectors' totals (``forwarded``,
        ``failed``). Returns the counts since ``open``, with the egress's losses (``egress
        lost``) and the frames sent that neither reached the DUT nor show in the source's
        tx_dropped (``unseen``: a few dozen a million when two injector workers send flat out
        into one veth, an injector matter, reported, not hidden). A real NIC's egress also sends
        its host's own frames (ARP, neighbour discovery), which the veths here are kept from: there
        they are what it sent beyond what reached the collector (``host's own``), and a frame lost
        at the egress is one forwarded that never reached it."""
        now = self.since()
        counters, forwarded = pipeline["counters"], reinjected["forwarded"]
        delivered = now["arrived"] + now["collector dropped"]
        if self.link.bench.testbed.real:
            now["host's own"] = now["egress sent"] - delivered
            now["egress lost"] = forwarded - delivered
            assert now["host's own"] >= 0, f"the collector got more than was sent: {dict(now)}"
        else:
            now["egress lost"] = forwarded - now["egress sent"]
            assert now["egress sent"] == delivered, dict(now)
        now["unseen"] = sent - now["source dropped"] - counters.get("vxlan", 0)
        assert counters.get("vxlan", 0) == counters.get("queued", 0) + pipeline["dropped"], pipeline
        assert counters.get("queued", 0) == forwarded + reinjected["failed"], (pipeline, reinjected)
        assert now["egress lost"] >= 0, f"the egress sent more than was forwarded: {dict(now)}"
        return now


def _link_counts(link: Link, counting: Counting, sender: Sender) -> Counter:
    # A send returns before the ring path has re-injected its last frames and before the collector
    # counted them: the arrivals are counted once they settle, and the egress read after that (in
    # the other order it was read mid-drain: 12,687 sent of 20,000 arrived).
    arrived = settled(counting.frames, still=0.3, timeout=10.0)
    egress = interface_stats(link.dut_out.ifname, link.dut_out.netns)
    return Counter(
        {
            "arrived": arrived,
            "source dropped": sender.dropped(),
            "collector dropped": counting.dropped(),
            "egress sent": egress["tx_packets"],
            "egress refused": egress["tx_dropped"],
        }
    )


def test_ringbuf_drain_against_the_c_reference(benchmark, results, link, quick):
    """The rate at which full rings empty, through the Python re-injector (``vxlan-pipeline run``:
    a worker per CPU, the loop in the compiled core) against the C reference on the same rings,
    same link, same run; every frame accounted for in both, and each ring's queued frames
    re-injected or failed. Aim: 850 kpps (10x the seed), or 0.8 of the C reference where even C
    cannot do 850 kpps here."""
    _local_only(link, "the drain is timed from the burst's end, which a remote source blurs")
    packets = (
        100_000 if quick else 1_000_000
    )  # smoke: still more than the workers drain during the burst
    repeats = 1 if quick else 3
    spec = link.bench.addressed(MIRRORED_SPEC)
    with (
        link.bench.receiver.counting() as counting,
        link.bench.source.sender(spec) as sender,
    ):

        def drain(offered: list[int]) -> Summary:
            return sample(
                lambda: _full_ring_drain_kpps(sender, counting, packets, offered), "kpps", repeats
            )

        final: list[dict] = []
        offered: list[int] = []
        ledger = Ledger.open(link, counting, sender)
        with reference_run(link, final):
            reference = drain(offered)
        (c_run,) = final
        stats = c_run["stats"]
        assert stats.balanced, c_run
        for queued, ring in zip(c_run["queued"], c_run["rings"], strict=True):
            assert queued == ring["forwarded"] + ring["failed"], c_run
        c_link = ledger.check(
            sum(offered),
            {"counters": stats.counts(), "dropped": stats.dropped},
            {key: sum(ring[key] for ring in c_run["rings"]) for key in ("forwarded", "failed")},
        )

        final, offered = [], []
        ledger = Ledger.open(link, counting, sender)
        with pipeline_run(link, Mode.RINGBUF.value, final):
            python = benchmark.pedantic(lambda: drain(offered), rounds=1, iterations=1)
        (last,) = final
        assert last["balanced"], last
        for ring in last["reinjector"]["rings"]:
            assert ring["queued"] == ring["forwarded"] + ring["failed"], last["reinjector"]
        python_link = ledger.check(sum(offered), last, last["reinjector"])
    result = Comparison("vxlan ringbuf drain, Python re-injector", python, reference, "C reference")
    seed = Comparison("vxlan ringbuf, re-injector emptying a full ring", python, _seed(), "seed")
    benchmark.extra_info.update(
        result.as_dict(), seed_ratio=seed.ratio, c_link=dict(c_link), python_link=dict(python_link)
    )
    results.record(result)
    results.record(seed)
    print(
        f"vxlan ringbuf: full rings empty at {python.median:,.0f} kpps through the Python "
        f"re-injector, {reference.median:,.0f} kpps through the C reference ({result.ratio:.2f}x); "
        f"{seed.ratio:.1f}x the seed's {SEED_RINGBUF_KPPS:.0f} kpps (unseen at the DUT: C run "
        f"{c_link['unseen']:,}, Python run {python_link['unseen']:,}). Aim: {DRAIN_AIM_KPPS:.0f} "
        f"kpps, or {DRAIN_AIM_OF_C:.1f}x the C reference where C cannot do {DRAIN_AIM_KPPS:.0f}"
    )


def _seed() -> Summary:
    return Summary("kpps", SEED_RINGBUF_KPPS, SEED_RINGBUF_KPPS, 0, 0, 0, 0, 1, 0)


def test_ringbuf_steady_against_the_seed(benchmark, results, link, quick):
    """The seed's headline (85 kpps, 99.99% delivered) at 3x its rate: a steady stream of 1M
    frames at 255 kpps, every frame accounted for and each loss counted by reason; then the
    highest rate that loses nothing (so at least 99.99% delivered), found by the bench's zero-loss
    search. The source sends from one CPU, so one ring and its worker carry the stream."""
    packets = 20_000 if quick else 1_000_000
    steady_pps = RINGBUF_AIM * SEED_RINGBUF_KPPS * 1e3
    spec = link.bench.addressed(MIRRORED_SPEC)
    final: list[dict] = []
    totals: Counter = Counter()
    with (
        link.bench.receiver.counting() as counting,
        link.bench.source.sender(spec) as sender,
    ):
        ledger = Ledger.open(link, counting, sender)
        with pipeline_run(link, Mode.RINGBUF.value, final):
            steady = sender.send(packets, steady_pps)
            steady_link = ledger.since()
            with VxlanPipeline.open_pinned(_run_name()) as running:
                steady_stats = running.stats()
            search = benchmark.pedantic(
                lambda: _throughput(link, sender, counting, packets, 1, totals),
                rounds=1,
                iterations=1,
            )
        (last,) = final
        assert last["balanced"], last
        for ring in last["reinjector"]["rings"]:
            assert ring["queued"] == ring["forwarded"] + ring["failed"], last["reinjector"]
        run_link = ledger.check(steady.packets + totals["sent"], last, last["reinjector"])
    # The steady stream's losses by reason; past the ring, a re-injector's failure and the egress's
    # loss are told apart only in the run's totals (checked above).
    losses = {"source dropped": steady_link["source dropped"]}
    losses["unseen"] = steady.packets - steady_link["source dropped"] - steady_stats.vxlan
    losses.update({f"pipeline {reason}": n for reason, n in steady_stats.drops.items()})
    losses["re-injector failed or egress lost"] = steady_stats.queued - steady_link["egress sent"]
    losses["collector dropped"] = steady_link["collector dropped"]
    assert steady.packets - steady_link["arrived"] == sum(losses.values()), (steady_link, losses)
    delivered = steady_link["arrived"] / steady.packets
    result = Comparison("vxlan ringbuf zero-loss", search, _seed(), "seed")
    benchmark.extra_info.update(
        result.as_dict(),
        steady_delivered=delivered,
        steady_pps=steady.pps,
        steady_losses=losses,
        run_link=dict(run_link),
    )
    results.record(result)
    lost = ", ".join(f"{why} {n:,}" for why, n in losses.items() if n) or "none"
    print(
        f"vxlan ringbuf: {steady.packets:,} frames at {steady.pps / 1e3:,.0f} kpps steady "
        f"({RINGBUF_AIM:.0f}x the seed): {delivered:.4%} delivered (aim 99.99%), lost: {lost} "
        f"(the egress refused {steady_link['egress refused']:,}, sent again or lost); highest "
        f"zero-loss rate {search.median:,.0f} kpps ({result.ratio:.1f}x the seed's "
        f"{SEED_RINGBUF_KPPS:.0f})"
    )


def _probes(link: Link, vxlan: bool) -> ProbeTemplate:
    inner = ProbeTemplate.udp4(src="10.0.0.1", dst="10.0.0.2", **INNER_MACS)
    if not vxlan:
        return inner
    macs = {"eth_src": link.bench.source.port.mac, "eth_dst": link.dut_in.mac}
    outer = templates.vxlan(Ether(inner.frame), **macs, **OUTER)
    return ProbeTemplate(bytes(outer), inner.offset + len(outer) - len(inner.frame))


def _timed(link: Link) -> None:
    """Latency needs both ends on one clock: the local injector's, or TRex's own."""
    if isinstance(link.bench.source, PeerSource):
        pytest.skip("one-way latency needs the probes' sender and receiver on one clock")


def _p50_us(link: Link, received_as: ProbeTemplate, count: int) -> float:
    """The median one-way latency of ``count`` probes, mirror to collector: the local injector's
    timestamped probes (``received_as`` finds them at the collector), or TRex's latency stream
    beside the mirrored flow (its p50 is a histogram bucket's upper edge: 10 us wide)."""
    if isinstance(link.bench.source, TrexSource):
        report = link.bench.source.latency(link.bench.addressed(MIRRORED_SPEC), count)
        assert report.lost == 0, f"latency packets lost on an otherwise idle link: {report}"
        return report.p50_us
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


def test_latency_against_bare_redirect(benchmark, results, link, quick):
    """One-way probe latency, mirror to collector: through the pipeline's redirect mode (the
    collector reads the decapsulated probe) against the bare redirect (the probe still
    encapsulated), same link."""
    _timed(link)
    count, repeats = (100, 2) if quick else (1000, 5)
    with bare_redirect(link):
        baseline = sample(lambda: _p50_us(link, _probes(link, vxlan=True), count), "us", repeats)
    with pipeline_run(link, Mode.REDIRECT.value, []):
        subject = benchmark.pedantic(
            lambda: sample(lambda: _p50_us(link, _probes(link, vxlan=False), count), "us", repeats),
            rounds=1,
            iterations=1,
        )
    result = Comparison("vxlan redirect probe latency p50", subject, baseline, "bare redirect")
    benchmark.extra_info.update(result.as_dict(), added_us=subject.median - baseline.median)
    results.record(result)
    print(
        f"vxlan redirect: p50 {subject.median:.1f} us against {baseline.median:.1f} us bare "
        f"(the seed claimed 5 us)"
    )


def test_ringbuf_latency_against_redirect(benchmark, results, link, quick):
    """The same probes through the ring path (a worker per CPU) against the pipeline's redirect
    path, same link, same run. Aim: p50 within 3x the redirect path's."""
    _timed(link)
    count, repeats = (100, 2) if quick else (1000, 5)
    probes = _probes(link, vxlan=False)
    with pipeline_run(link, Mode.REDIRECT.value, []):
        baseline = sample(lambda: _p50_us(link, probes, count), "us", repeats)
    with pipeline_run(link, Mode.RINGBUF.value, []):
        subject = benchmark.pedantic(
            lambda: sample(lambda: _p50_us(link, probes, count), "us", repeats),
            rounds=1,
            iterations=1,
        )
    result = Comparison("vxlan ringbuf probe latency p50", subject, baseline, "redirect")
    benchmark.extra_info.update(result.as_dict(), added_us=subject.median - baseline.median)
    results.record(result)
    print(
        f"vxlan ringbuf: p50 {subject.median:.1f} us against {baseline.median:.1f} us through "
        f"redirect ({result.ratio:.1f}x; aim {RINGBUF_LATENCY_AIM:.0f}x)"
    )
