"""A peer host over OpenSSH, for real: Debian's sshd in a namespace behind host veths that stand in
for the DUT's NICs (``topologies/nic_standin.yaml``), reached with a generated key.

The peer is what ``pytest tests/perf --nic IF --peer ssh://...`` sends traffic from: one control
connection for the whole run, the peer's interface found from the DUT NIC's network, the project's
injector run there, and the same frames arriving as from a local namespace. The last test runs the
benchmarks themselves that way, in a child pytest, as a user would on two hosts.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from harness.bench import LocalSource, PeerSource, Port
from harness.counters import interface_stats
from harness.peer import PeerError
from harness.pytest_plugin import STANDIN_BIN, STANDIN_PEER
from harness.sink import FrameClass, Sink

FRAMES = 20_000


def _udp_spec(source: Port, dut: Port) -> dict:
    return {
        "template": {"kind": "udp4", "args": {"eth_src": source.mac, "eth_dst": dut.mac}},
        "vary": [{"field": "UDP.sport", "range": {"start": 1024, "end": 1123}}],
        "flows": 100,
        "sizes": 60,
    }


def test_one_connection_carries_every_command(nic_standin):
    with nic_standin.connect() as peer:
        outputs = [peer.run(["cat", "/proc/sys/kernel/hostname"]) for _ in range(5)]
    assert len(set(outputs)) == 1
    log = (nic_standin.sshd.client_config.parent / "sshd.log").read_text()
    accepted = log.count("Accepted publickey for root")
    assert accepted == 1, f"{accepted} ssh logins for 5 commands: the control master was not used"


def test_peer_interface_is_found_from_the_dut_network(nic_standin):
    dut = Port.of(nic_standin.nic("nic0"), None)
    with nic_standin.connect() as peer:
        (network,) = dut.networks
        found = peer.interface_toward(network)
        with pytest.raises(PeerError, match=r"10\.9\.9\.0/24"):
            peer.interface_toward(ipaddress.ip_network("10.9.9.0/24"))
    expected = Port.of("eth0", nic_standin.peer_netns)
    assert (found.ifname, found.mac) == (expected.ifname, expected.mac)
    assert found.address == ipaddress.ip_interface("10.0.5.1/24")


def test_peer_counters_are_of_its_own_interfaces(nic_standin):
    """Read in the peer's namespace, as its own kernel counts them: the same numbers as this
    host reads of the peer's eth1 through netlink, an interface this host has none of."""
    here = interface_stats("eth1", nic_standin.peer_netns)
    with nic_standin.connect() as peer:
        there = {name: peer.counter("eth1", name) for name in ("rx_packets", "tx_dropped")}
        with pytest.raises(PeerError, match="no counter 'rx_nonsense'"):
            peer.counter("eth1", "rx_nonsense")
    assert there["tx_dropped"] == here["tx_dropped"]
    assert (
        here["rx_packets"]
        <= there["rx_packets"]
        <= interface_stats("eth1", nic_standin.peer_netns)["rx_packets"]
    )


def test_a_failed_command_says_where_and_why(nic_standin):
    with nic_standin.connect() as peer, pytest.raises(PeerError, match="no-such-command"):
        peer.run(["no-such-command"])


def test_peer_and_local_namespace_deliver_the_same_frames(nic_standin):
    """The same spec from the peer over ssh and from the peer's namespace on this host: every frame
    arrives at the stand-in NIC, counted by an XDP sink, and neither source drops any."""
    dut = Port.of(nic_standin.nic("nic0"), None)
    local = LocalSource(Port.of("eth0", nic_standin.peer_netns))
    arrived = {}
    with nic_standin.connect() as peer:
        remote = PeerSource.toward(peer, dut)
        for name, source in (("local", local), ("peer", remote)):
            with Sink(dut.ifname) as sink, source.sender(_udp_spec(source.port, dut)) as sender:
                offered = sender.send(FRAMES, rate_pps=200_000)
                arrived[name] = (
                    offered.packets,
                    offered.dropped,
                    sink.settled(FrameClass.IPV4, FRAMES),
                )
    assert arrived == {"local": (FRAMES, 0, FRAMES), "peer": (FRAMES, 0, FRAMES)}


def _perf_run(nic_standin, results: Path) -> subprocess.CompletedProcess:
    """Soft RSS's live benchmarks, smoke-sized, with the stand-in's NICs and its peer."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            str(root / "tests/perf/test_softrss_perf.py"),
            "-k",
            "zero_loss_throughput and native or added_latency",
            "--benchmark-disable",
            "--nic",
            nic_standin.nic("nic0"),
            "--egress-nic",
            nic_standin.nic("nic1"),
            "--peer",
            STANDIN_PEER,
            "--peer-bin",
            STANDIN_BIN,
            "--ssh-config",
            str(nic_standin.sshd.client_config),
            "--results",
            str(results),
            "-rs",
        ],
        # Not the checkout: `python -m` would put it first on sys.path, ahead of the installed
        # package, and a fresh checkout holds no compiled BPF objects.
        cwd=results.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_benchmarks_run_against_the_peer(nic_standin, tmp_path: Path):
    """``pytest tests/perf --nic --egress-nic --peer`` as a user runs it: soft RSS's zero-loss
    benchmark on the stand-in NIC, fed by the peer's injector; the latency benchmark skips with its
    reason (the probes' ends would be on two clocks). The NIC's preflight is in the results."""
    results = tmp_path / "results.json"
    done = _perf_run(nic_standin, results)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed, 1 skipped" in done.stdout, done.stdout[-2000:]
    assert "one-way latency needs" in done.stdout
    recorded = json.loads(results.read_text())
    assert recorded["testbed"] == "nic"
    (figure,) = recorded["figures"]
    assert figure["name"] == "softrss ifaces native zero-loss"
    assert figure["extra"]["sent"] > 0
    (nic,) = recorded["fingerprint"]["preflight"]
    assert nic == nic_standin.nic("nic0")


def test_benchmarks_refuse_a_nic_that_fails_preflight(nic_standin, tmp_path: Path):
    """The peer's end of the link at MTU 9000: no single-buffer XDP program attaches to the
    stand-in NIC, so the benchmark fails before sending, with the reason and the fix."""
    with IPRoute(netns=nic_standin.peer_netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], mtu=9000)
    done = _perf_run(nic_standin, tmp_path / "results.json")
    assert done.returncode != 0
    assert "preflight refused testbed nic" in done.stdout, done.stdout[-3000:]
    assert re.search(r"fail  native-xdp .* -> ip link set eth0 mtu \d+", done.stdout)
