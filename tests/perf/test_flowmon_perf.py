"""Flow metrics cost per packet in the kernel (test_run), every storage x XDP, TC ingress and TC
egress x 1, 40, 10k and 1M flows, on one CPU and on two at once, against the bare program of the
hook in the same run: the seed's question ("which map?") asked of each.

test_run repeats one frame; the flow rotator (``harness.testrun.Rotated``, parked) turns it into
the next of N flows before each run and tail-calls the measured program: ``flowmon_xdp``,
``flowmon_tc_ingress`` or ``flowmon_tc_egress``, or, for the baseline, ``xdp_pass`` or ``tc_pass``
(``bpf/selftest/trivial.bpf.c``). Both pay the rotation and the tail call,
so the ratio is flowmon's cost over a bare program's. The flows are established (the warm-up run
creates them): this is the steady state of counting, not of inserting.

What one CPU cannot show is contention: the seed's one-flow hash figure comes from CPUs fighting
over one entry. The two-CPU column runs the same frames on both CPUs at once (a thread pinned to
each, started together; each CPU's figure is its own test_run's), so a shared entry's atomics and
an LRU's locks are paid as a link spread over two queues pays them.

The test fails only on what is wrong on any machine: a packet the benchmark ran that the table,
its misses or the ring do not account for. It prints each ratio; ``results`` records them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

import bpf
from bpf.flowmon import Config, FlowMon, Hook, Storage
from bpf.flowmon.model import DEFAULT_ENTRIES
from harness.bench import Port
from harness.counters import silence_ipv6_everywhere
from harness.measure import Comparison, Summary, paired
from harness.testrun import IPV4_SRC_LOW, Rotated
from injector import templates

FRAME = bytes(templates.udp4(payload=b"m" * 18))  # 60 bytes; UDP source port 1024 at offset 34
QUICK_FLOWS = 50_000  # a smoke run's most flows: past LAP, and its tables quick to read back
SMOKE_ENTRIES = 1024
RING_BYTES = 1 << 24  # 233k records: a sample of the ringbuf storage never fills it
RING_REPEAT = 200_000


BARE = {
    Hook.XDP: "xdp_pass",
    Hook.TC_INGRESS: "tc_pass",
    Hook.TC_EGRESS: "tc_pass",
}  # trivial.bpf.c
FIGURE_HOOK = {Hook.XDP: "", Hook.TC_INGRESS: "tc ", Hook.TC_EGRESS: "tc egress "}


def rotated(n_flows: int, measured: bpf.Program) -> Rotated:
    return Rotated(FRAME, n_flows, measured, laps=IPV4_SRC_LOW)


def bare(xdp_pass: bpf.Program, hook: Hook) -> bpf.Program:
    return xdp_pass.object.programs[BARE[hook]]


def config_for(storage: Storage, n_flows: int, quick: bool) -> Config:
    """Room for every flow twice over (an LRU may evict before it is full; an array's slots
    collide less), never less than the default; a smoke run's tables small, quick to read back."""
    least = SMOKE_ENTRIES if quick else DEFAULT_ENTRIES
    return Config(storage=storage, ring_bytes=RING_BYTES, entries=max(least, 2 * n_flows))


GRID = [(n, hook) for hook in Hook for n in (1, 40, 10_000, 1_000_000)]
# A smoke run's cells: every program, and XDP at every flow count (the rotator's paths: one flow,
# many, past the first address); the full grid takes another 75 s at smoke size.
SMOKE_GRID = [*((n, Hook.XDP) for n in (1, 40, 10_000, 1_000_000)), (40, Hook.TC_INGRESS),
              (40, Hook.TC_EGRESS)]  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The test_run tests' (n_flows, hook) cells: GRID, or SMOKE_GRID in a smoke run."""
    if {"n_flows", "hook"} <= set(metafunc.fixturenames):
        quick = metafunc.config.getoption("benchmark_disable")
        metafunc.parametrize(
            ("n_flows", "hook"),
            SMOKE_GRID if quick else GRID,
            ids=lambda p: p.value if isinstance(p, Hook) else str(p),
        )


def figure_name(storage: Storage, n_flows: int, hook: Hook) -> str:
    return f"flowmon {FIGURE_HOOK[hook]}{storage.value} {n_flows} flows"


def accounted(what: str, runs: int, counted: int, misses: dict[str, int]) -> None:
    """Every packet run is in a flow or a miss, and none is lost to a full table or ring."""
    assert counted + sum(misses.values()) == runs, (
        f"{what}: {runs} packets run, {counted} counted, misses {misses}"
    )
    assert misses["ring_full"] == 0 and misses["table_full"] == 0 and misses["entry_gone"] == 0


def recorded(
    benchmark, results, name: str, subject, baseline, hook: Hook, misses: dict, cpus: str = ""
) -> None:
    """The figure ``name`` + ``cpus`` against the rotated bare program of ``hook``, recorded and
    printed."""
    result = Comparison(f"{name}{cpus}", subject, baseline, f"{BARE[hook]} (rotated){cpus}")
    benchmark.extra_info.update(result.as_dict(), collisions=misses["collision"])
    results.record(result)
    print(
        f"{result.name}: {subject.median:.1f} ns/packet, {result.ratio:.2f}x {BARE[hook]} "
        f"({baseline.median:.1f} ns); {misses['collision']} packets in colliding slots"
    )


@pytest.mark.usefixtures("one_cpu")
@pytest.mark.parametrize("storage", list(Storage), ids=lambda s: s.value)
def test_ns_per_packet(benchmark, results, xdp_pass, quick, storage, n_flows, hook):
    ring = storage is Storage.RINGBUF
    repeat = 20_000 if quick else (RING_REPEAT if ring else 1_000_000)
    repeats = 3 if quick else 7
    n_flows = min(n_flows, QUICK_FLOWS) if quick else n_flows
    config = config_for(storage, n_flows, quick)
    with (
        FlowMon(config) as fm,
        rotated(n_flows, bare(xdp_pass, hook)) as baseline_run,
        rotated(n_flows, fm.program(hook)) as subject_run,
    ):

        def measure() -> float:
            ns = subject_run.ns_per_packet(repeat)
            fm.table.drain()  # untimed: the ring is empty again for the next sample
            return ns

        subject, baseline = benchmark.pedantic(
            lambda: paired(
                measure, lambda: baseline_run.ns_per_packet(repeat), "ns/packet", repeats
            ),
            rounds=1,
            iterations=1,
        )
        flows = fm.flows()
        misses, created = fm.misses(), fm.activity()["created"]
    runs = repeat * (repeats + 1)  # the warm-up sample counted too
    accounted(storage.value, runs, sum(f.packets for f in flows), misses)
    # Each run starts again from the frame's flow: a ring's run of RING_REPEAT meets that many.
    assert len(flows) == (min(n_flows, repeat) if ring else created)
    recorded(
        benchmark, results, figure_name(storage, n_flows, hook), subject, baseline, hook, misses
    )


def ns_per_packet_on_two_cpus(rotator: Rotated, repeat: int) -> float:
    """The mean of each CPU's ns/packet when the two run ``rotator`` at once: a thread pinned to
    each, let go together (test_run releases the GIL for its whole run)."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    together = threading.Barrier(len(cpus))
    figures = [0.0] * len(cpus)

    def run(index: int, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread's
        together.wait()
        figures[index] = rotator.ns_per_packet(repeat)

    threads = [threading.Thread(target=run, args=(i, cpu)) for i, cpu in enumerate(cpus)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(figures) / len(figures)


@pytest.mark.parametrize("storage", list(Storage), ids=lambda s: s.value)
def test_ns_per_packet_on_two_cpus(benchmark, results, xdp_pass, quick, storage, n_flows, hook):
    """The same grid with both CPUs running the same flows at once: what a shared entry costs when
    two CPUs update it (the seed's one-flow hash), against the bare program on both CPUs."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to run beside it")
    ring = storage is Storage.RINGBUF
    repeat = 10_000 if quick else (RING_REPEAT // 2 if ring else 1_000_000)  # a ring holds both
    repeats = 3 if quick else 7
    n_flows = min(n_flows, QUICK_FLOWS) if quick else n_flows
    with (
        FlowMon(config_for(storage, n_flows, quick)) as fm,
        rotated(n_flows, bare(xdp_pass, hook)) as baseline_run,
        rotated(n_flows, fm.program(hook)) as subject_run,
    ):

        def measure() -> float:
            ns = ns_per_packet_on_two_cpus(subject_run, repeat)
            fm.table.drain()
            return ns

        subject, baseline = benchmark.pedantic(
            lambda: paired(
                measure,
                lambda: ns_per_packet_on_two_cpus(baseline_run, repeat),
                "ns/packet",
                repeats,
            ),
            rounds=1,
            iterations=1,
        )
        counted = sum(f.packets for f in fm.flows())
        misses = fm.misses()
    runs = 2 * repeat * (repeats + 1)
    accounted(f"{storage.value} on two CPUs", runs, counted, misses)
    name = figure_name(storage, n_flows, hook)
    recorded(benchmark, results, name, subject, baseline, hook, misses, ", two CPUs")


# --- live, on the testbed's bench -------------------------------------------------------------------

UNROUTED = "198.18.0.1"  # RFC 2544's benchmark range: the DUT's stack drops it at its route lookup


def _flows_spec(n_flows: int) -> dict:
    spec: dict = {"template": {"kind": "udp4", "args": {"dst": UNROUTED}}, "sizes": 60}
    if n_flows > 1:
        last = 1024 + n_flows - 1
        spec |= {
            "vary": [{"field": "UDP.sport", "range": {"start": 1024, "end": last}}],
            "flows": n_flows,
        }
    return spec


ZERO_LOSS_CELLS = [
    (1, Hook.XDP, 1),
    (40, Hook.XDP, 1),
    (10_000, Hook.XDP, 1),
    (40, Hook.TC_INGRESS, 1),
    (1, Hook.XDP, 2),
    (40, Hook.XDP, 2),
]


@contextlib.contextmanager
def bare_on(dut: Port, hook: Hook, xdp_pass: bpf.Program) -> Iterator[None]:
    """The bare program of ``hook`` on the DUT: xdp_pass in native XDP, or tc_pass at TC ingress."""
    program = bare(xdp_pass, hook)
    if hook is Hook.XDP:
        with program.attach_xdp(dut.ifname, bpf.XdpMode.NATIVE, dut.netns):
            yield
    else:
        with program.attach_tc(dut.ifname, bpf.TcDirection.INGRESS, dut.netns):
            yield


def paired_zero_loss(
    link, sender, packets: int, repeats: int, fm: FlowMon, hook: Hook, xdp_pass, totals: Counter
) -> tuple[Summary, Summary]:
    """flowmon's and the bare program's zero-loss Mpps at ``hook`` of the DUT's port, searched
    alternately (``paired``); flowmon's searches add their frames to ``totals``."""
    dut = link.ingress

    def bare_pps() -> float:
        with bare_on(dut, hook, xdp_pass):
            return link.zero_loss_pps(sender, packets) / 1e6

    def flowmon_pps() -> float:
        fm.attach(dut.ifname, [hook], dut.netns)
        try:
            return link.zero_loss_pps(sender, packets, totals) / 1e6
        finally:
            fm.detach()

    return paired(flowmon_pps, bare_pps, "Mpps", repeats)


@pytest.mark.parametrize("storage", list(Storage), ids=lambda s: s.value)
def test_zero_loss_throughput(benchmark, results, bench, xdp_pass, quick, storage):
    """Zero-loss Mpps of flowmon at the DUT's XDP with 1, 40 and 10k flows and at its TC ingress
    with 40, and at XDP with 1 and 40 from two senders, each against the bare program of its hook
    on the same link (the seed's "Native"), the two searched alternately (``paired``): the bare
    program's rate moved 2x between the cells of one run, and a drift within a cell now reaches
    both alike. Both pass every frame to the stack, which drops it at its route lookup:
    the monitor's place, and the cost the seed's table compares. Every frame flowmon counted was
    sent, and every frame that arrived was counted."""
    link = bench("two_host")
    if not link.testbed.real:  # every frame the DUT sees is the benchmark's (harness.counters)
        silence_ipv6_everywhere(link.topology)
    packets = 50_000 if quick else 1_000_000
    repeats = 2 if quick else 5
    config = Config(storage=storage, ring_bytes=RING_BYTES)
    cpus = len(os.sched_getaffinity(0))
    for n_flows, hook, senders in ZERO_LOSS_CELLS:
        if senders > cpus:
            print(f"{senders} senders: {cpus} CPU(s), not measured")
            continue
        spec = link.addressed(_flows_spec(n_flows))
        with link.source.sender(spec, workers=senders) as sender:
            totals: Counter = Counter()
            with FlowMon(config) as fm, fm.table.reading():
                measure = functools.partial(
                    paired_zero_loss, link, sender, packets, repeats, fm, hook, xdp_pass, totals
                )
                if (n_flows, hook, senders) == (40, Hook.XDP, 1):  # the seed's: the benchmark's
                    subject, baseline = benchmark.pedantic(measure, rounds=1, iterations=1)
                else:
                    subject, baseline = measure()
                ours = [f for f in fm.flows() if str(f.key.dst) == UNROUTED]
                misses = fm.misses()
                counted = sum(f.packets for f in ours) + sum(misses.values())
                if senders == 2 and storage is Storage.PERCPU_HASH:
                    per_cpu = [[v.packets for v in vs] for _, vs in fm.obj.maps["flows4"].items()]
                    assert all(all(cpu) for cpu in per_cpu), f"not both CPUs counted: {per_cpu}"
        where = f"{storage.value} {hook.value} {n_flows} flows, {senders} sender(s)"
        assert totals["arrived"] <= counted <= totals["sent"], (
            f"{where}: sent {totals['sent']:,}, arrived {totals['arrived']:,}, flowmon counted "
            f"{counted:,} (with misses)"
        )
        two = " two senders" if senders == 2 else ""
        name = f"{figure_name(storage, n_flows, hook)}{two} zero-loss"
        bare_name = "xdp_pass native" if hook is Hook.XDP else "tc_pass at tc ingress"
        result = Comparison(name, subject, baseline, bare_name)
        results.record(result, sent=totals["sent"], arrived=totals["arrived"])
        print(
            f"{name}: {subject.median:.2f} Mpps against {baseline.median:.2f} Mpps {BARE[hook]} "
            f"({result.ratio:.2f}); {len(ours)} flows; not counted {sum(misses.values()):,} "
            f"of {totals['sent']:,} ({', '.join(f'{k} {v:,}' for k, v in misses.items() if v)})"
        )
