"""Soak: each data plane's command counting steady traffic for ``--soak-seconds`` (tox -e soak: ten
minutes; the default tox run: a few seconds, so that these cannot rot).

The injector sends one UDP flow at ``--soak-rate`` in one-second chunks, from a source address
nothing else uses (the dut's own chatter never mixes in); the command runs as a user runs it, in
the dut's namespace, and prints its last counts on SIGINT. At the end every frame the link took
must be counted exactly once (frames the injector's veth dropped are counted apart, by the
interface), and the command's resident memory must have stayed flat (``harness.soak``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bpf import journal
from bpf.vxlan import Allowlist
from harness.counters import delta, interface_stats, silence_ipv6_everywhere
from harness.soak import memory_flat, soak
from injector import templates
from injector.spec import TrafficSpec
from injector.xdp import XdpSender

BIN = Path(sys.executable).parent
SOURCE, SPORT = "10.0.9.1", 4001  # the soak's flow: no one else sends from it
TWO_HOST_MACS = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
BNG_MAC = "02:00:00:00:04:02"


@pytest.fixture
def budget(request) -> tuple[float, float]:
    seconds, rate = request.config.getoption("soak_seconds"), request.config.getoption("soak_rate")
    return max(seconds, 4.0), rate


def run_soak(argv, ready, spec, sender_at, budget, tmp_path):
    """Soak ``argv`` under ``spec`` sent from ``sender_at`` (interface, namespace)."""
    seconds, rate = budget
    ifname, namespace = sender_at
    before = interface_stats(ifname, namespace)
    with XdpSender(spec.resolve(), ifname, namespace) as sender:
        result = soak(
            argv,
            ready,
            lambda: sender.send(count=int(rate), rate_pps=rate).packets,
            seconds,
            tmp_path,
        )
    dropped = delta(before, interface_stats(ifname, namespace))["tx_dropped"]
    flat, detail = memory_flat(result.rss)
    assert flat, f"{argv[0]}: memory grew: {detail}"
    print(f"{Path(argv[0]).name}: {result.sent:,} frames in {seconds:g} s, {detail}")
    return result, result.sent - dropped


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def udp_flow() -> TrafficSpec:
    return TrafficSpec(templates.udp4(src=SOURCE, dst="10.0.0.2", sport=SPORT, **TWO_HOST_MACS))


@pytest.fixture
def quiet_two_host(topology) -> tuple[str, str]:
    topo = topology("two_host")
    silence_ipv6_everywhere(topo)
    return topo.node("injector").netns, topo.node("dut").netns


def test_trafcount(quiet_two_host, budget, tmp_path):
    injector, dut = quiet_two_host
    argv = [str(BIN / "trafcount"), "-i", "ens5", "--netns", dut, "-a", "xdp", "-s", "1", "--json"]
    result, delivered = run_soak(
        argv, "counting on", udp_flow(), ("veth0", injector), budget, tmp_path
    )
    (row,) = [r for r in last_json(result.stdout)["addresses"] if r["ip"] == SOURCE]
    assert row["udp_packets"] == delivered, (row, delivered)


def test_flowmon(quiet_two_host, budget, tmp_path):
    injector, dut = quiet_two_host
    argv = [str(BIN / "flowmon"), "-i", "ens5", "--netns", dut, "-a", "xdp", "-s", "1", "--json"]
    try:
        result, delivered = run_soak(
            argv, "counting on", udp_flow(), ("veth0", injector), budget, tmp_path
        )
    finally:
        done = subprocess.run(  # flowmon keeps its table pinned for the next run: not here
            [str(BIN / "flowmon"), "-i", "ens5", "--netns", dut, "-u"], capture_output=True
        )
        assert done.returncode == 0, done.stderr
    flows = [f for f in last_json(result.stdout)["flows"] if f["src"] == SOURCE]
    assert [(f["sport"], f["packets"]) for f in flows] == [(SPORT, delivered)], flows


def test_softrss(quiet_two_host, budget, tmp_path):
    injector, dut = quiet_two_host
    argv = [str(BIN / "softrss"), "-i", "ens5", "--netns", dut, "-s", "1", "--json"]
    result, delivered = run_soak(
        argv, "softrss:", udp_flow(), ("veth0", injector), budget, tmp_path
    )
    assert last_json(result.stdout)["total_packets"] == delivered


def test_pfrps(topology, budget, tmp_path):
    topo = topology("bng_l2")
    injector, bng = topo.node("injector").netns, topo.node("bng").netns
    argv = [str(BIN / "pfrps"), "-i", "ens5", "--netns", bng, "-w", "2", "--proto", "session"]
    argv += ["-s", "1", "--json"]
    spec = TrafficSpec(templates.pppoe_session(eth_src="02:00:00:00:04:01", eth_dst=BNG_MAC))
    result, delivered = run_soak(argv, "workers on", spec, ("eth0", injector), budget, tmp_path)
    assert last_json(result.stdout)["total"] == delivered


@pytest.mark.parametrize("mode", ["redirect", "ringbuf"])
def test_vxlan_pipeline(mirror_vxlan, budget, tmp_path, mode):
    """Redirect mode, and the ring path with its re-injector workers (children of the command,
    whose memory counts too): every frame forwarded, and in ringbuf mode re-injected."""
    m = mirror_vxlan
    m.allowlist.write_text(json.dumps(Allowlist.of([SOURCE]).document()))
    name = f"bl-{journal.current().run_id}-soak"  # the run's own pins
    argv = m.pipeline_argv(mode, name, interval=1)
    inner = templates.udp4(src=SOURCE, dst="10.0.0.2", sport=SPORT, eth_src="02:00:00:00:2a:01")
    spec = TrafficSpec(m.mirrored(inner))
    result, delivered = run_soak(argv, "running as", spec, ("eth0", m.mirror), budget, tmp_path)
    last = last_json(result.stdout)
    assert last["balanced"] and last["counters"]["forwarded"] == delivered, last
    if mode == "ringbuf":
        reinjected = last["reinjector"]
        assert reinjected["forwarded"] + reinjected["failed"] == delivered, reinjected
        assert reinjected["failed"] == 0, reinjected
