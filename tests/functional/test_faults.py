"""Faults in the middle of traffic: a process killed with SIGKILL while frames flow.

- The test process itself (a child that built ``two_host``, loaded flow metrics at XDP and the
  traffic counter at TC with their pins, and is sending): ``harness clean`` removes every
  namespace, attachment and pin it left, and its journal.
- The flow metrics command: its pinned table keeps the counts it had; a new run reopens it and
  counts every later frame exactly; the frames sent while no one counted are the interface's.
- The VXLAN pipeline's egress link, down then up, and its MTU, down below the frames' size then
  up, in each mode: every frame arrives or is counted where it was lost, and traffic flows again
  once the link is mended.
- The VXLAN ring path's re-injector workers, killed again and again mid-batch: each is restarted
  from its last commit, and every frame given to a ring arrives once or is counted failed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bpf import XdpAction, journal
from bpf.attach import PIN_ROOT, pin_name
from bpf.flowmon import FlowMon
from bpf.netns import NETNS_RUN_DIR
from bpf.vxlan import Allowlist
from harness.counters import delta, interface_stats, silence_ipv6_everywhere
from harness.sink import FrameClass, Sink
from harness.topology import set_link
from injector import templates
from injector.spec import TrafficSpec
from injector.xdp import XdpSender

BIN = Path(sys.executable).parent
MACS = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
SOURCE, SPORT = "10.0.9.7", 4077
EGRESS_MTU = 3498  # mirror_vxlan's egress link

KILLED_MID_TRAFFIC = """
import json, sys
from bpf.attach import pin_name
from bpf.flowmon import FlowMon, Hook
from bpf.trafcount import Hook as TrafHook, TrafCount
from harness.topology import Topology
from injector import templates
from injector.spec import TrafficSpec
from injector.xdp import XdpSender

topo = Topology.load("two_host").up()
injector, dut = topo.node("injector").netns, topo.node("dut").netns
fm, tc = FlowMon(), TrafCount()
fm.attach("ens5", [Hook.XDP], dut)
tc.attach("ens5", TrafHook.TC_INGRESS, dut)
pins = [str(fm.pin(pin_name("ens5", dut))), str(tc.pin(pin_name("ens5", dut)))]
print(json.dumps({"run_id": topo.run_id, "pins": pins}), flush=True)
spec = TrafficSpec(templates.udp4(dst="10.0.0.2", eth_src="02:00:00:00:01:01", eth_dst="02:00:00:00:01:02"))
with XdpSender(spec.resolve(), "veth0", injector) as sender:
    while True:
        sender.send(count=20_000, rate_pps=20_000)
"""


@pytest.mark.dead_run
def test_a_test_process_killed_mid_traffic_is_cleaned_up(tmp_path):
    # Run outside the checkout: `python -c` imports from its working directory first, and a
    # checkout's bpf/ has no compiled objects (the installed package has).
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_TRAFFIC], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        built = json.loads(child.stdout.readline())
        time.sleep(1.0)  # sending
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    namespaces = list(NETNS_RUN_DIR.glob(f"bl-{built['run_id']}-*"))
    assert namespaces and all(Path(p).exists() for p in built["pins"]), "it left nothing to clean"
    done = subprocess.run(
        [str(BIN / "harness"), "clean"], capture_output=True, text=True, check=True
    )
    assert not list(NETNS_RUN_DIR.glob(f"bl-{built['run_id']}-*")), done.stdout
    assert not any(Path(p).exists() for p in built["pins"]), done.stdout
    assert not [p for p in PIN_ROOT.rglob("*") if built["run_id"] in p.name], done.stdout
    assert not (journal.JOURNAL_DIR / f"{built['run_id']}.jsonl").exists()


def _started(argv: list[str], ready: str, directory: Path) -> subprocess.Popen:
    """``argv`` run with its output in ``directory`` (out, err), once its stderr says ``ready``."""
    err = directory / "err"
    process = subprocess.Popen(argv, stdout=(directory / "out").open("w"), stderr=err.open("w"))
    deadline = time.monotonic() + 20
    try:
        while ready not in err.read_text():
            assert process.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
    except BaseException:  # never leave it running
        process.kill()
        process.wait()
        raise
    return process


@contextlib.contextmanager
def _reaped(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``process`` for the block, killed if it still runs at the block's end: a test that fails
    leaves no command running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _flowmon(dut: str, directory: Path) -> subprocess.Popen:
    argv = [str(BIN / "flowmon"), "-i", "ens5", "--netns", dut, "-a", "xdp", "-s", "0.5", "--json"]
    return _started(argv, "counting on", directory)


def _ours(fm: FlowMon) -> int:
    return sum(f.packets for f in fm.flows() if str(f.key.src) == SOURCE)


@pytest.mark.dead_run
def test_flowmon_killed_mid_traffic_keeps_its_counts_and_a_new_run_goes_on(topology, tmp_path):
    topo = topology("two_host")
    silence_ipv6_everywhere(topo)
    injector, dut = topo.node("injector").netns, topo.node("dut").netns
    pins = pin_name("ens5", dut)
    spec = TrafficSpec(templates.udp4(src=SOURCE, dst="10.0.0.2", sport=SPORT, **MACS))
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    before = interface_stats("ens5", dut)
    try:
        with (
            _reaped(_flowmon(dut, first_dir)) as first,
            XdpSender(spec.resolve(), "veth0", injector) as sender,
        ):
            sent = []
            stream = threading.Thread(target=lambda: sent.append(sender.send(40_000, 20_000.0)))
            stream.start()
            time.sleep(1.0)  # halfway through the stream
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            stream.join()
            with FlowMon.reopen(pins) as kept:
                survived = _ours(kept)
            assert 0 < survived < sent[0].packets, (survived, sent[0].packets)
            with _reaped(_flowmon(dut, second_dir)) as second:
                assert "reopened" in (second_dir / "err").read_text()
                later = sender.send(10_000, 20_000.0).packets
                time.sleep(0.5)
                with FlowMon.reopen(pins) as table:
                    counted = _ours(table)
                second.send_signal(signal.SIGINT)
                assert second.wait(timeout=15) == 0, (second_dir / "err").read_text()
    finally:
        FlowMon.unpin(pins)
    arrived = delta(before, interface_stats("ens5", dut))["rx_packets"]
    assert counted == survived + later, (counted, survived, later)
    # Every frame arrived; those sent between the kill and the new run were counted by no one.
    assert arrived >= sent[0].packets + later, (arrived, sent[0].packets, later)


@contextlib.contextmanager
def _pipeline(m, mode: str, name: str, directory: Path) -> Iterator[subprocess.Popen]:
    """``vxlan-pipeline run`` in ``mode`` for the block (output in ``directory``), then stopped with
    SIGINT, which it must survive with exit 0; never left running."""
    with _reaped(
        _started(m.pipeline_argv(mode, name, interval=60), "running as", directory)
    ) as run:
        yield run
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=20) == 0, (directory / "err").read_text()


def _last_report(directory: Path) -> dict:
    """The last JSON line a pipeline run printed."""
    out = (directory / "out").read_text()
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


@dataclass(frozen=True)
class Faulted:
    """A stream through the VXLAN pipeline with a fault in its middle third: frames sent before,
    during and after it, what arrived, and where frames were lost, by counter."""

    before: int
    during: int
    after: int
    arrived: int
    lost: dict[str, int]
    counters: dict[str, int]


def _through_a_fault(m, tmp_path: Path, mode: str, payload: int, fault, mend) -> Faulted:
    """30,000 frames at 20 kpps through ``vxlan-pipeline run`` in ``mode``, ``fault()`` called after
    the first third and ``mend()`` after the second. The losses a counter shows: a failed XDP
    redirect in the ingress veth's rx_dropped, TC's in the egress's tx_dropped, the ring path's in
    its re-injectors' failures (a retried TX ring slot shows in tx_dropped, and arrives later)."""
    m.allowlist.write_text(json.dumps(Allowlist.of([SOURCE]).document()))
    name = f"bl-{journal.current().run_id}-fault"  # the run's own pins
    inner = templates.udp4(
        src=SOURCE, dst="10.0.0.2", sport=SPORT, eth_src="02:00:00:00:2a:01", payload=bytes(payload)
    )
    spec = TrafficSpec(m.mirrored(inner))
    with _pipeline(m, mode, name, tmp_path):
        ingress, egress = interface_stats("ens5", m.dut), interface_stats("ens6", m.dut)
        with (
            Sink("eth0", m.collector, verdict=XdpAction.PASS) as sink,
            XdpSender(spec.resolve(), "eth0", m.mirror) as sender,
        ):
            # Each phase's frames through the pipeline (a ring's backlog drained) before the next:
            before = sender.send(10_000, 20_000.0).packets
            sink.settled(FrameClass.IPV4, before, still=0.1)
            fault()
            during = sender.send(10_000, 20_000.0).packets
            sink.settled(FrameClass.IPV4, before, still=0.1)
            mend()
            after = sender.send(10_000, 20_000.0).packets
            arrived = sink.settled(FrameClass.IPV4, before + during + after)
    last = _last_report(tmp_path)
    assert last["balanced"], last
    lost = {
        "failed redirects (ingress rx_dropped)": delta(ingress, interface_stats("ens5", m.dut))[
            "rx_dropped"
        ],
        "egress tx_dropped": delta(egress, interface_stats("ens6", m.dut))["tx_dropped"],
        "re-injector failed": last.get("reinjector", {}).get("failed", 0),
    }
    if mode == "ringbuf":
        lost["egress tx_dropped"] = 0
    return Faulted(before, during, after, arrived, lost, last["counters"])


def _accounted(run: Faulted) -> None:
    """Every frame sent was forwarded; each arrived or was counted lost; some were lost during the
    fault; every frame sent outside it arrived."""
    sent, c = run.before + run.during + run.after, run.counters
    assert c["total"] == c["forwarded"] == sent, c
    assert c["forwarded"] == run.arrived + sum(run.lost.values()), run
    assert sum(run.lost.values()) > 0, f"no loss while {run.during:,} frames met the fault: {run}"
    assert run.arrived >= run.before + run.after, run


@pytest.mark.parametrize("mode", ["redirect", "tc", "ringbuf"])
def test_vxlan_egress_down_and_up_under_traffic_every_frame_accounted(mirror_vxlan, tmp_path, mode):
    """The pipeline's egress goes down for a third of the stream, then up. Every frame forwarded
    either arrives or is counted where it was lost, and frames flow again once it is up."""
    m = mirror_vxlan
    _accounted(
        _through_a_fault(
            m,
            tmp_path,
            mode,
            payload=0,
            fault=lambda: set_link("ens6", m.dut, state="down"),
            mend=lambda: set_link("ens6", m.dut, state="up"),
        )
    )


@pytest.mark.parametrize("mode", ["redirect", "tc", "ringbuf"])
def test_vxlan_egress_mtu_falls_and_rises_under_traffic_every_frame_accounted(
    mirror_vxlan, tmp_path, mode
):
    """The egress link's MTU (both ends) falls below the frames' size for a third of the stream,
    then rises again: every frame arrives or is counted where it was lost, as with a link down."""
    m = mirror_vxlan
    ends = [("ens6", m.dut), ("eth0", m.collector)]

    def mtu(value: int) -> None:
        for ifname, netns in ends if value < EGRESS_MTU else reversed(ends):
            set_link(ifname, netns, mtu=value)

    run = _through_a_fault(
        m, tmp_path, mode, payload=1000, fault=lambda: mtu(800), mend=lambda: mtu(EGRESS_MTU)
    )
    _accounted(run)
    assert sum(run.lost.values()) == run.during, run  # each of the long frames, no other


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (a pipeline's re-injector workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


SENDTO = {"x86_64": 44, "aarch64": 206}[os.uname().machine]


def _in_phase(pid: int, phase: str, within: float) -> None:
    """Wait up to ``within`` seconds for worker ``pid`` to be in ``phase``: copying records into
    its TX ring (running in user space, before its commit) or having the kernel send them
    (``sendto``, after it)."""
    wanted = "running" if phase == "copying" else str(SENDTO)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/syscall").read_text().split()[0] == wanted:
                return
        except (OSError, IndexError):
            return


def _kill_workers(run: subprocess.Popen, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL each re-injector worker of ``run`` soon after it starts, caught in turn copying
    records (before its commit) and sending them (after), until ``stop``; the pids killed go to
    ``killed``. A restarted worker has a backlog to drain, so it is mid-batch when caught."""
    phases = itertools.cycle(["copying", "sending"])
    while not stop.is_set():
        for pid in _children(run.pid) - set(killed):
            _in_phase(pid, next(phases), within=0.05)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
        stop.wait(0.005)


def test_vxlan_reinjector_killed_again_and_again_loses_and_repeats_nothing(mirror_vxlan, tmp_path):
    """The ring path's re-injector workers are killed with SIGKILL again and again while frames
    flow; the pipeline restarts each from its ring's last commit. Every frame given to a ring is
    re-injected or counted failed exactly once: the collector receives exactly what the
    re-injectors say they forwarded (a frame sent twice or lost would show), each ring's queued
    frames are its forwarded + failed, and there is one restart for each kill."""
    m = mirror_vxlan
    m.allowlist.write_text(json.dumps(Allowlist.of([SOURCE]).document()))
    name = f"bl-{journal.current().run_id}-kill"
    inner = templates.udp4(src=SOURCE, dst="10.0.0.2", sport=SPORT, eth_src="02:00:00:00:2a:01")
    spec = TrafficSpec(m.mirrored(inner))
    killed: list[int] = []
    with (
        _pipeline(m, "ringbuf", name, tmp_path) as run,
        Sink("eth0", m.collector, verdict=XdpAction.PASS) as sink,
        XdpSender(spec.resolve(), "eth0", m.mirror) as sender,
    ):
        done = threading.Event()
        killer = threading.Thread(target=_kill_workers, args=(run, done, killed))
        killer.start()
        try:
            sent = sender.send(300_000, 120_000.0).packets
        finally:
            done.set()
            killer.join()
        arrived = sink.settled(FrameClass.IPV4, sent, timeout=5.0, still=0.3)
    last = _last_report(tmp_path)
    counters, reinjected = last["counters"], last["reinjector"]
    assert last["balanced"] and counters["vxlan"] == sent, counters  # and the link's own chatter
    assert len(killed) >= 10, f"only {len(killed)} kills: the test did not test"
    assert reinjected["restarts"] == len(killed), (reinjected, len(killed))
    for ring in reinjected["rings"]:
        assert ring["queued"] == ring["forwarded"] + ring["failed"], reinjected
    assert sum(r["queued"] for r in reinjected["rings"]) == counters["queued"], last
    assert arrived == reinjected["forwarded"], (arrived, reinjected)
    assert reinjected["failed"] == 0, reinjected
