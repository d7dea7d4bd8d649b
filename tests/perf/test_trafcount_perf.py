"""The traffic counter's costs: per packet in the kernel (test_run) and the zero-loss rate on the
two_host link, each against a bare program in the same run, and the time-series sampler's CPU at
1 kHz with 100, 1,000 and 10,000 active addresses.

Per packet: test_run repeats one frame; the flow rotator (``harness.testrun.Rotated``, parked, its
field the IPv4 source address's low half) turns it into the next of N source addresses before each run and
tail-calls ``trafcount_xdp`` or, for the baseline, ``xdp_pass`` (``bpf/selftest/trivial.bpf.c``):
both pay the rotation and the tail call, so the ratio is the counter's cost over a bare program's.
The addresses are established (the warm-up creates them): the steady state of counting.

Sampler: a thread on the other CPU sends the N addresses through the counter without pause (every
address changes between two reads), while the sampler (the C reader, its grid and its writer:
``Sampler.run``) runs on this CPU at 1 kHz and writes JSON lines or binary to /dev/null; the figure
is the sampler thread's CPU time over the wall time, in percent of one CPU, against the same
sampler in the same format over an empty table of the same size (its fixed cost: the walk of the
tables' buckets). The bins it managed a second are recorded beside it: a sampler that cannot keep
up makes fewer, longer bins. The aim is the paper's 4% of a CPU.

The tests fail only on what is wrong on any machine: a packet run and not counted, an eviction,
bins that do not add up to the table.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

import bpf
from bpf import XdpMode
from bpf.trafcount import Config, Hook, TrafCount
from bpf.trafcount.series import Format, Sampler
from harness.measure import Comparison, sample
from harness.testrun import IPV4_SRC_LOW, Rotated
from injector import templates

FRAME = bytes(templates.udp4(src="10.9.4.0", payload=b"m" * 18))  # 60 bytes
IP_BYTES = len(FRAME) - 14


def rotated(n_addresses: int, measured: bpf.Program) -> Rotated:
    return Rotated(FRAME, n_addresses, measured, field=IPV4_SRC_LOW)


@pytest.mark.parametrize("n_addresses", [1, 1000, 10_000])
def test_ns_per_packet(benchmark, results, xdp_pass, quick, one_cpu, n_addresses):
    repeat = 20_000 if quick else 1_000_000
    repeats = 3 if quick else 7
    with (
        TrafCount(Config(entries=2 * n_addresses)) as tc,
        rotated(n_addresses, xdp_pass) as bare,
        rotated(n_addresses, tc.program(Hook.XDP)) as subject_run,
    ):
        baseline = sample(lambda: bare.ns_per_packet(repeat), "ns/packet", repeats)
        subject = benchmark.pedantic(
            lambda: sample(lambda: subject_run.ns_per_packet(repeat), "ns/packet", repeats),
            rounds=1,
            iterations=1,
        )
        counts, totals = tc.counts(), tc.totals()
    runs = repeat * (repeats + 1)  # the warm-up sample counted too
    assert sum(p for p, _ in counts.values()) == runs, f"{runs} packets run, counted {counts}"
    assert sum(b for _, b in counts.values()) == runs * IP_BYTES
    assert len(counts) == n_addresses and totals.evicted == 0, totals
    result = Comparison(
        f"trafcount xdp {n_addresses} addresses", subject, baseline, "xdp_pass (rotated)"
    )
    benchmark.extra_info.update(result.as_dict())
    results.record(result)
    print(
        f"trafcount {n_addresses} addresses: {subject.median:.1f} ns/packet, "
        f"{result.ratio:.2f}x xdp_pass ({baseline.median:.1f} ns)"
    )


class Traffic:
    """test_run of the rotated counter on the other CPU, without pause, until stopped."""

    def __init__(self, tc: TrafCount, n_addresses: int, cpu: int) -> None:
        self.rotator = rotated(n_addresses, tc.program(Hook.XDP))
        self.n, self.cpu = n_addresses, cpu
        self.stop = threading.Event()
        self.rotator.ns_per_packet(n_addresses)  # every address is in the table
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        os.sched_setaffinity(0, {self.cpu})  # this thread only
        while not self.stop.is_set():
            self.rotator.ns_per_packet(self.n)

    def close(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.thread.join()
            self.rotator.close()


def sampler_cpu(tc: TrafCount, form: Format, seconds: float, rates: list[float]) -> float:
    """Percent of one CPU a new sampler used at 1 kHz for ``seconds``, writing ``form`` to
    /dev/null; its bins a second go to ``rates``."""
    with open(os.devnull, "wb") as out, Sampler(tc, 1000, out.fileno(), form) as sampler:
        timer = threading.Timer(seconds, sampler.stop)
        cpu, wall = time.thread_time(), time.monotonic()
        timer.start()
        sampler.run()  # in this thread, the GIL released: its CPU time is thread_time's
        cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
        rates.append(sampler.bins / wall)
    return 100 * cpu / wall


def run_across_the_end_of(traffic: Traffic, tc: TrafCount, form: Format) -> Sampler:
    """A sampler on the grid while the traffic runs and stops; stopped after it, so that its last
    bin holds what the traffic's end left."""
    with open(os.devnull, "wb") as out, Sampler(tc, 1000, out.fileno(), form) as sampler:
        running = threading.Thread(target=sampler.run)
        running.start()
        time.sleep(0.1)
        traffic.close()
        sampler.stop()
        running.join()
        assert sampler.summed() == tc.counts(), "the bins add up to the table"
    return sampler


@pytest.mark.parametrize("form", list(Format), ids=lambda f: f.name.lower())
@pytest.mark.parametrize("n_addresses", [100, 1000, 10_000])
def test_sampler_cpu_at_1khz(benchmark, results, quick, one_cpu, n_addresses, form):
    other = [c for c in range(os.cpu_count() or 1) if c != one_cpu]
    if not other:
        pytest.skip("one CPU: the traffic would run on the sampler's")
    seconds, repeats = (0.2, 3) if quick else (1.0, 5)
    with TrafCount(Config(entries=2 * n_addresses)) as empty:
        idle_rates: list[float] = []
        baseline = sample(lambda: sampler_cpu(empty, form, seconds, idle_rates), "% CPU", repeats)
    with TrafCount(Config(entries=2 * n_addresses)) as tc:
        traffic = Traffic(tc, n_addresses, other[0])
        rates: list[float] = []
        try:
            subject = benchmark.pedantic(
                lambda: sample(lambda: sampler_cpu(tc, form, seconds, rates), "% CPU", repeats),
                rounds=1,
                iterations=1,
            )
            run_across_the_end_of(traffic, tc, form)
        finally:
            traffic.close()
        assert len(tc.counts()) == n_addresses and tc.totals().evicted == 0
    result = Comparison(
        f"trafcount sampler 1kHz {n_addresses} addresses {form.name.lower()}",
        subject,
        baseline,
        f"sampler 1kHz {form.name.lower()}, empty table",
    )
    bins_a_second = sorted(rates)[len(rates) // 2]
    idle_bins = sorted(idle_rates)[len(idle_rates) // 2]
    benchmark.extra_info.update(
        result.as_dict(), bins_a_second=bins_a_second, idle_bins_a_second=idle_bins
    )
    results.record(result, bins_a_second=bins_a_second, idle_bins_a_second=idle_bins)
    print(
        f"trafcount sampler at 1 kHz, {n_addresses} active addresses, {form.name.lower()}: "
        f"{subject.median:.1f}% of a CPU ({bins_a_second:.0f} bins/s); empty table "
        f"{baseline.median:.1f}% ({idle_bins:.0f} bins/s); aim 4% of a CPU"
    )


def test_zero_loss_throughput(benchmark, results, bench, xdp_pass, quick):
    """Native XDP on the dut's ingress, frames from 1,000 source addresses: the highest rate with no
    loss, trafcount counting and passing every frame against xdp_pass passing them. Both hand every
    frame to the kernel stack behind them, so this asks whether counting costs a rate the stack
    could take, not what the counter alone could do."""
    link = bench("two_host")
    dut = link.ingress
    packets = 50_000 if quick else 1_000_000
    repeats = 2 if quick else 5
    spec = link.addressed(
        {
            "template": {"kind": "udp4"},
            "vary": [{"field": "IP.src", "range": {"start": "10.0.1.1", "end": "10.0.4.232"}}],
            "flows": 1000,
            "sizes": 60,
        }
    )

    def zero_loss(totals: Counter | None = None) -> float:
        return link.zero_loss_pps(sender, packets, totals) / 1e6

    with link.source.sender(spec) as sender:
        with xdp_pass.attach_xdp(dut.ifname, XdpMode.NATIVE, dut.netns):
            baseline = sample(zero_loss, "Mpps", repeats)
        with TrafCount(Config(entries=4096)) as tc:
            tc.attach(dut.ifname, Hook.XDP, dut.netns, XdpMode.NATIVE)
            totals: Counter = Counter()
            subject = benchmark.pedantic(
                lambda: sample(lambda: zero_loss(totals), "Mpps", repeats),
                rounds=1,
                iterations=1,
            )
            time.sleep(0.3)  # the last frames land
            counts, lost = tc.counts(), tc.totals()
    ours = sum(p for k, (p, _) in counts.items() if k.packed[:2] == bytes([10, 0]))
    sent, reached = totals["sent"], totals["sent"] - totals["source_dropped"]
    assert ours == reached, (
        f"{sent:,} frames sent, {reached:,} reached the dut's XDP, trafcount counted {ours:,}"
    )
    assert lost.evicted == lost.entry_gone == lost.no_room == 0, lost
    result = Comparison("trafcount xdp zero-loss", subject, baseline, "xdp_pass native")
    benchmark.extra_info.update(result.as_dict(), sent=sent, counted=ours)
    results.record(result, sent=sent, counted=ours)
    print(
        f"trafcount xdp zero-loss: {subject.median:.2f} Mpps against {baseline.median:.2f} Mpps "
        f"for xdp_pass ({result.ratio:.0%}, aim 90%)"
    )
