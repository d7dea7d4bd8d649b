"""What a benchmark body is given: the DUT's ports, a traffic source, and the zero-loss search, the
same on every testbed (``harness.testbed``).

``Bench.build(topology, testbed, peer)`` brings the benchmark's topology up bound to the testbed: on
``veth`` the DUT's ports are the topology's veths in its namespaces and the source is the ``xdp``
injector at the far end of the ingress link (``LocalSource``); on a real NIC (``--nic``) the DUT's
ports are the NICs in the host's namespace and the source is the injector on a peer host over ssh
(``PeerSource``), sending from the peer's interface toward the DUT, which is found from the DUT
NIC's network. A body addresses its traffic with ``bench.addressed(spec)`` (the source's MAC to the
DUT's) and never knows which source it has, as the kernel's ``drivers/net`` tests run one body
over netns or ssh. TRex sources are driven through ``injector.trex_backend`` (``TrexSource``).

Traffic specs are given as data (the shape of a spec file, ``injector/README.md``) since a peer's
injector reads them from a file. Losses are counted at both ends, on every attempt: frames the
source's interface dropped (its queue toward the DUT was full, as a veth's is when the receiver's
XDP falls behind) and frames the DUT's ingress dropped (``rx_dropped``, ``rx_missed_errors``).
Not for: what to measure (the bodies in ``tests/perf``) or statistics (``harness.measure``).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import yaml
from pyroute2 import IPRoute

from bpf import netns as bpf_netns
from harness.counters import delta, interface_stats
from harness.peer import SshPeer
from harness.testbed import SourceKind, Testbed
from harness.topology import Topology
from harness.topology_schema import NicRole
from injector.spec import TrafficSpec
from injector.xdp import PACED_BATCH, XdpSender

SEARCH_STEPS = 10
BACKOFF = 0.9  # after a loss, offer this share of the rate the source achieved
_DUT_DROPS = ("rx_dropped", "rx_missed_errors")


@dataclass(frozen=True)
class Port:
    """One interface of the DUT (or of a source): where it is and how frames are addressed to it."""

    netns: str | None  # None: the host's namespace (a real NIC)
    ifname: str
    mac: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    @classmethod
    def of(cls, ifname: str, netns: str | None) -> Port:
        with bpf_netns.entered(netns), IPRoute() as ipr:
            (link,) = ipr.get_links(ifname=ifname)
            addresses = ipr.get_addr(index=link["index"])
        networks = [
            ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
            for a in addresses
            if a["scope"] == 0  # global: not a link-local fe80::
        ]
        return cls(netns, ifname, link.get_attr("IFLA_ADDRESS"), networks[0] if networks else None)

    def drops(self) -> int:
        stats = interface_stats(self.ifname, self.netns)
        return sum(stats[name] for name in _DUT_DROPS)


@dataclass(frozen=True)
class Offered:
    """One send: frames the source put out, in how long, and how many its own interface dropped."""

    packets: int
    seconds: float
    dropped: int

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


class Sender(Protocol):
    def send(self, count: int, rate_pps: float | None = None) -> Offered: ...


class _LocalSender:
    def __init__(self, xdp: XdpSender, port: Port) -> None:
        self.xdp, self.port = xdp, port

    def send(self, count: int, rate_pps: float | None = None) -> Offered:
        before = interface_stats(self.port.ifname, self.port.netns)
        report = self.xdp.send(count=count, rate_pps=rate_pps, batch=PACED_BATCH)
        after = interface_stats(self.port.ifname, self.port.netns)
        if report.aborted:
            raise RuntimeError(f"the injector's field engine aborted {report.aborted} frames")
        return Offered(report.packets, report.seconds, delta(before, after)["tx_dropped"])


class LocalSource:
    """The ``xdp`` injector on this host, in the namespace of the topology's far end."""

    kind = SourceKind.LOCAL

    def __init__(self, port: Port) -> None:
        self.port = port

    @contextlib.contextmanager
    def sender(self, spec: dict[str, Any]) -> Iterator[Sender]:
        program = TrafficSpec.from_dict(spec, "benchmark spec").resolve()
        with XdpSender(program, self.port.ifname, self.port.netns) as xdp:
            yield _LocalSender(xdp, self.port)


class _PeerSender:
    def __init__(self, peer: SshPeer, port: Port, spec_file: str) -> None:
        self.peer, self.port, self.spec_file = peer, port, spec_file

    def send(self, count: int, rate_pps: float | None = None) -> Offered:
        argv = [self.peer.command("injector"), "send", "-i", self.port.ifname]
        argv += ["--spec", self.spec_file, "-n", str(count), "--batch", str(PACED_BATCH), "--json"]
        if rate_pps is not None:
            argv += ["-r", f"{rate_pps:.0f}"]
        before = self.peer.counter(self.port.ifname, "tx_dropped")
        report = json.loads(self.peer.run(argv))
        dropped = self.peer.counter(self.port.ifname, "tx_dropped") - before
        if report["aborted"]:
            raise RuntimeError(f"the peer's field engine aborted {report['aborted']} frames")
        return Offered(report["packets"], report["seconds"], dropped)


class PeerSource:
    """The project's ``injector`` on a peer host, run over ssh from its interface toward the DUT."""

    kind = SourceKind.SSH

    def __init__(self, peer: SshPeer, port: Port) -> None:
        self.peer, self.port = peer, port

    @classmethod
    def toward(cls, peer: SshPeer, dut_port: Port) -> PeerSource:
        if dut_port.network is None:
            raise RuntimeError(
                f"{dut_port.ifname} has no address: the peer's interface toward it is found from "
                f"its network (give the NIC an address, or declare one in the topology)"
            )
        found = peer.interface_toward(dut_port.network)
        return cls(peer, Port(None, found.ifname, found.mac, found.address.network))

    @contextlib.contextmanager
    def sender(self, spec: dict[str, Any]) -> Iterator[Sender]:
        TrafficSpec.from_dict(spec, "benchmark spec").resolve()  # a bad spec fails here, not there
        spec_file = self.peer.run(["mktemp", "--suffix=.yaml"]).strip()
        try:
            self.peer.write_file(spec_file, yaml.safe_dump(spec))
            yield _PeerSender(self.peer, self.port, spec_file)
        finally:
            self.peer.run(["rm", "-f", spec_file])


Source = LocalSource | PeerSource


class Bench:
    """The DUT's ports and the traffic source of one benchmark, on one testbed."""

    def __init__(self, testbed: Testbed, topology: Topology, ingress: Port, source: Source) -> None:
        self.testbed, self.topology, self.ingress, self.source = testbed, topology, ingress, source

    @classmethod
    def build(cls, topology: str, testbed: Testbed, peer: SshPeer | None = None) -> Bench:
        """``topology`` up on ``testbed`` (the caller takes it down: ``bench.topology.down()``)."""
        topo = Topology.load(topology, nic=testbed.nic)
        # A testbed's egress NIC serves the topologies that forward (mirror_vxlan), not the others.
        if any(end.real_nic is NicRole.EGRESS_NIC for link in topo.spec.links for end in link.ends):
            topo.egress_nic = testbed.egress_nic
        topo.up()
        try:
            ends = [e for link in topo.spec.links for e in link.ends if e.real_nic is NicRole.NIC]
            if not ends:
                raise RuntimeError(f"topology {topology} marks no link end real_nic: nic")
            (ingress_end,) = ends
            node = topo.node(ingress_end.node)
            ingress = Port.of(node.ifname(ingress_end.ifname), node.netns)
            if testbed.source.kind is SourceKind.LOCAL:
                (link,) = [link for link in topo.spec.links if ingress_end in link.ends]
                far = link.peer_of(ingress_end)
                far_node = topo.node(far.node)
                source: Source = LocalSource(Port.of(far_node.ifname(far.ifname), far_node.netns))
            elif testbed.source.kind is SourceKind.SSH and peer is not None:
                source = PeerSource.toward(peer, ingress)
            else:
                raise RuntimeError(
                    f"testbed {testbed.name}: a {testbed.source.kind.value} source cannot feed "
                    f"benchmarks of this kind yet (the TRex server path is tested to its client)"
                )
        except BaseException:
            topo.down()
            raise
        return cls(testbed, topo, ingress, source)

    def addressed(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` with its frames addressed from the source's MAC to the DUT's ingress MAC."""
        spec = copy.deepcopy(spec)
        args = spec["template"].setdefault("args", {})
        args.update(eth_src=self.source.port.mac, eth_dst=self.ingress.mac)
        return spec

    def offer(
        self, sender: Sender, count: int, rate_pps: float | None = None
    ) -> tuple[Offered, int]:
        """One send, and the frames lost to it at either end."""
        before = self.ingress.drops()
        offered = sender.send(count, rate_pps)
        return offered, offered.dropped + self.ingress.drops() - before

    def zero_loss_mpps(self, sender: Sender, count: int, totals: Counter | None = None) -> float:
        """The highest rate found with no loss, RFC 2544 style: flat out first; after a loss, offer
        ``BACKOFF`` of the rate achieved, until an attempt loses nothing. ``totals`` accumulates
        what every attempt sent and lost, for the caller's exact accounting."""
        rate = None
        for _ in range(SEARCH_STEPS):
            offered, lost = self.offer(sender, count, rate)
            if totals is not None:
                totals.update(sent=offered.packets, lost=lost)
            if lost == 0:
                return offered.pps / 1e6
            rate = offered.pps * BACKOFF
        raise AssertionError(f"no zero-loss rate down to {rate:,.0f} pps: the DUT is stalled")
