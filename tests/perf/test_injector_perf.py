"""The xdp injector's rate and the latency probes' view of it, each against a baseline from the same run.

- Python's cost (the headline): ``XdpSender`` flat out (1 flow and 10k flows; 1 and 2 workers)
  against ``live_frames_bare.c``, a C driver of the very same loaded engine with the same chunks and
  batches, compiled here with ``cc -lbpf`` and run in the injector's namespace with ``nsenter``.
- The xdp backend against the scapy backend sending the same prebuilt frames (its AF_PACKET socket).
- Latency probes (``harness.latency``) on the idle link against the same link loaded flat out by the
  xdp injector.

Throughput runs into the dut's ens5 with the harness Sink in native XDP_DROP, which keeps up where the
stack would not (``../shared/PLATFORM.md``), and every repeat reconciles exactly: frames sent = frames
counted by the sink + frames counted dropped by veth0 (``tx_dropped``). Latency probes must reach a
socket, so that test's sink passes frames on to the stack instead. Only accounting and sanity are
asserted, never absolute timings.
"""

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from bpf import XdpAction
from bpf import netns as bpf_netns
from bpf.netns import silence_ipv6
from harness.counters import interface_stats, pin_neighbour
from harness.latency import LatencyReport, ProbeTemplate, measure_latency
from harness.measure import Comparison, paired, summarize
from harness.sink import FrameClass, Sink
from injector import templates
from injector.program import FieldProgram
from injector.scapy_backend import send_packets
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import FLAT_OUT_CHUNK, MAX_BATCH, XdpSender

BARE_SOURCE = Path(__file__).with_name("live_frames_bare.c")
DUT_MAC, INJECTOR_MAC = "02:00:00:00:01:02", "02:00:00:00:01:01"
INJECTOR_IP = "10.0.0.1"
ADDRESSED = {"eth_src": INJECTOR_MAC, "eth_dst": DUT_MAC}
FLOWS = {"1 flow": (), "10k flows": (Vary("UDP.sport", Range(1, 10_000)),)}
PROBES = ProbeTemplate.udp4(**ADDRESSED)
PROBE_RATE = 1_000
REPEATS = 5


def program_of(flows: str) -> FieldProgram:
    return TrafficSpec(templates.udp4(**ADDRESSED), vary=FLOWS[flows]).resolve()


def tx_dropped(netns: str, ifname: str) -> int:
    return interface_stats(ifname, netns)["tx_dropped"]


@dataclass
class Link:
    """two_host's veth0 (injector) -> ens5 (dut), with a Sink counting what arrives on ens5, and the
    frames sent and dropped (veth0 ``tx_dropped``: the receiving ring was full) over all sends."""

    injector: str
    dut: str
    sink: Sink
    frames: int = 0
    dropped: int = 0

    def delivered(self, send: Callable[[], tuple[int, float]]) -> float:
        """Run ``send`` (-> frames, seconds), check every frame is accounted for; its rate in Mpps."""
        arrived_before = self.sink.frames(FrameClass.IPV4)
        dropped_before = tx_dropped(self.injector, "veth0")
        frames, seconds = send()
        dropped = tx_dropped(self.injector, "veth0") - dropped_before  # counted before send returns
        arrived = self.sink.settled(FrameClass.IPV4, arrived_before + frames - dropped)
        arrived -= arrived_before
        assert arrived + dropped == frames, (
            f"sent {frames:,} IPv4 frames: {arrived:,} reached the dut's sink and {dropped:,} were "
            f"counted dropped by veth0, so {frames - arrived - dropped:,} are unaccounted for"
        )
        self.frames += frames
        self.dropped += dropped
        return frames / seconds / 1e6


@contextmanager
def link_of(topology, verdict: XdpAction) -> Iterator[Link]:
    topo = topology("two_host")
    injector, dut = topo.node("injector").netns, topo.node("dut").netns
    silence_ipv6("veth0", injector)
    pin_neighbour("ens5", INJECTOR_IP, INJECTOR_MAC, dut)
    with Sink("ens5", dut, verdict=verdict) as sink:
        yield Link(injector, dut, sink)


@pytest.fixture
def link(topology) -> Iterator[Link]:
    with link_of(topology, XdpAction.DROP) as dropping:
        yield dropping


@pytest.fixture
def passing_link(topology) -> Iterator[Link]:
    with link_of(topology, XdpAction.PASS) as passing:
        yield passing


@pytest.fixture(scope="module")
def bare_driver(tmp_path_factory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("the bare-C baseline needs a C compiler (`cc`: Debian's gcc or clang)")
    binary = tmp_path_factory.mktemp("bare") / "live_frames_bare"
    done = subprocess.run(
        [cc, "-O2", "-Wall", "-Werror", "-o", str(binary), str(BARE_SOURCE), "-lbpf"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"cannot compile {BARE_SOURCE} against libbpf:\n{done.stderr}"
    return binary


def frames_per_repeat(quick: bool) -> int:
    """Tiny in the CI smoke run; otherwise ~0.3 s of sending at 6 Mpps."""
    return 20_000 if quick else 2_000_000


def python_send(sender: XdpSender, frames: int, workers: int) -> tuple[int, float]:
    report = sender.send(count=frames, workers=workers)
    assert report.aborted == 0, f"the engine aborted {report.aborted} frames"
    return report.packets, report.seconds


def bare_send(binary: Path, sender: XdpSender, frames: int, workers: int) -> tuple[int, float]:
    fd = sender.engine.prog.fd
    command = [
        "nsenter", f"--net={bpf_netns.NETNS_RUN_DIR / sender.netns}", "--",
        str(binary), str(fd), sender.ifname, sender.program.template.hex(),
        str(frames), str(workers), str(FLAT_OUT_CHUNK), str(MAX_BATCH),
    ]  # fmt: skip
    done = subprocess.run(command, pass_fds=(fd,), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"{BARE_SOURCE.name} failed (exit {done.returncode}): {done.stderr}"
    )
    packets, seconds = done.stdout.split()
    return int(packets), float(seconds)


def repeats_of(quick: bool) -> tuple[int, int]:
    """Recorded repeats and warm-ups: one and none in the CI smoke run."""
    return (1, 0) if quick else (REPEATS, 1)


def report(benchmark, results, result: Comparison, link: Link, **extra) -> None:
    """Record the figure, with the share of frames the receiving ring dropped."""
    dropped_share = link.dropped / link.frames if link.frames else 0.0
    benchmark.extra_info.update(result.as_dict(), dropped_share=dropped_share, **extra)
    results.record(result, dropped_share=dropped_share, **extra)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("flows", list(FLOWS))
def test_xdp_backend_vs_bare_c(benchmark, results, link, bare_driver, quick, flows, workers):
    """Python's cost: the xdp backend's Mpps as a share of the bare-C driver's on the same engine."""
    frames = frames_per_repeat(quick)
    with XdpSender(program_of(flows), "veth0", link.injector) as sender:
        subject, baseline = benchmark.pedantic(
            lambda: paired(
                lambda: link.delivered(lambda: python_send(sender, frames, workers)),
                lambda: link.delivered(lambda: bare_send(bare_driver, sender, frames, workers)),
                "Mpps",
                *repeats_of(quick),
            ),
            rounds=1,
            iterations=1,
        )
    result = Comparison(
        f"xdp backend, {flows}, {workers} worker(s)", subject, baseline, "bare C live frames"
    )
    report(benchmark, results, result, link, frames_per_repeat=frames)
    assert subject.median > 0 and baseline.median > 0


def test_xdp_backend_vs_scapy_backend(benchmark, results, link, quick):
    """The same 10k-flow frames: the xdp engine (1 worker) against the scapy backend's socket."""
    frames = frames_per_repeat(quick)
    program = program_of("10k flows")
    socket_frames = 2_000 if quick else 100_000  # ~0.3 s at the socket's ~300 kpps
    prebuilt = list(program.packets(socket_frames))

    def scapy_send() -> tuple[int, float]:
        result = send_packets(prebuilt, "veth0", link.injector)
        return result.sent, result.seconds

    with XdpSender(program, "veth0", link.injector) as sender:
        subject, baseline = benchmark.pedantic(
            lambda: paired(
                lambda: link.delivered(lambda: python_send(sender, frames, 1)),
                lambda: link.delivered(scapy_send),
                "Mpps",
                *repeats_of(quick),
            ),
            rounds=1,
            iterations=1,
        )
    result = Comparison("xdp backend, 10k flows, 1 worker", subject, baseline, "scapy backend")
    report(
        benchmark,
        results,
        result,
        link,
        frames_per_repeat=frames,
        socket_frames_per_repeat=socket_frames,
    )


def test_latency_probe_overhead(benchmark, results, passing_link, quick):
    """Probe latency at 1 kpps on the idle link, and with the xdp injector loading it flat out.

    The dut's sink passes frames to the stack so that probes reach the probe socket. The dut's
    softirq work then runs on the sending CPU (XDP_TX schedules the peer's NAPI where it runs), which
    holds the load to what the stack takes (~0.5 Mpps). Every repeat reconciles bulk and probe frames.
    """
    link = passing_link
    probes = 50 if quick else 1_000
    reports: dict[str, list[LatencyReport]] = {"idle": [], "loaded": []}
    load_mpps: list[float] = []

    def probed(load: XdpSender | None) -> tuple[int, float]:
        """Probe the link (under ``load`` if given); the frames it sent and the seconds it took."""
        bulk: dict = {}
        if load is not None:
            duration = probes / PROBE_RATE + 0.2  # on before the first probe, until after the last
            thread = threading.Thread(
                target=lambda: bulk.update(report=load.send(duration=duration))
            )
            thread.start()
            time.sleep(0.1)
        start = time.monotonic()
        probe_report = measure_latency(
            "veth0", link.injector, "ens5", link.dut, probes, PROBE_RATE, PROBES, linger=0.2
        )
        seconds = time.monotonic() - start
        if load is None:
            reports["idle"].append(probe_report)
            assert probe_report.lost == 0, f"probes lost on the idle link: {probe_report}"
            return probes, seconds
        thread.join()
        reports["loaded"].append(probe_report)
        load_mpps.append(bulk["report"].pps / 1e6)
        assert probe_report.received > 0, f"no probe got through the load: {probe_report}"
        # A probe the flooded veth refused (ENOBUFS: it has no qdisc, the refusal is its own) is
        # lost in the report, and dropped in veth0's tx_dropped like the bulk frames it drops.
        return bulk["report"].packets + probes, seconds

    def p50_of(load: XdpSender | None) -> float:
        link.delivered(lambda: probed(load))
        return reports["loaded" if load else "idle"][-1].p50_us

    with XdpSender(program_of("10k flows"), "veth0", link.injector) as load:
        subject, baseline = benchmark.pedantic(
            lambda: paired(lambda: p50_of(load), lambda: p50_of(None), "us", *repeats_of(quick)),
            rounds=1,
            iterations=1,
        )
    kept, _ = repeats_of(quick)  # the last reports are the recorded repeats, after the warm-up
    p99 = {kind: summarize([r.p99_us for r in rs[-kept:]], "us") for kind, rs in reports.items()}
    figures = [
        Comparison("probe latency p50, xdp load flat out", subject, baseline, "idle link"),
        Comparison("probe latency p99, xdp load flat out", p99["loaded"], p99["idle"], "idle link"),
    ]
    benchmark.extra_info.update(
        {r.name: r.as_dict() for r in figures},
        reports={kind: [asdict(r) for r in rs[-kept:]] for kind, rs in reports.items()},
        probes_per_repeat=probes,
        probe_rate_pps=PROBE_RATE,
        load_mpps=load_mpps[-kept:],
        dropped_share=link.dropped / link.frames,
    )
    for result in figures:
        results.record(result)
