"""What a benchmark body is given: the DUT's ports, a traffic source, and the zero-loss search, the
same on every testbed (``harness.testbed``).

``Bench.build(topology, testbed, peer)`` brings the benchmark's topology up bound to the testbed: on
``veth`` the DUT's ports are the topology's veths in its namespaces and the source is the ``xdp``
injector at the far end of the ingress link (``LocalSource``); on a real NIC (``--nic``) the DUT's
ports are the NICs in the host's namespace and the source is the injector on a peer host over ssh
(``PeerSource``), sending from the peer's interface toward the DUT, which is found from the DUT
NIC's network. A body addresses its traffic with ``bench.addressed(spec)`` (the source's MAC to the
DUT's) and never knows which source it has, as the kernel's ``drivers/net`` tests run one body
over netns or ssh. A topology that forwards (an end marked ``real_nic: egress-nic``) also gives
the DUT's egress port and a receiver counting what comes out of it: an XDP sink at the far end
(``LocalReceiver``), or ``harness sink`` on the peer's interface toward it (``PeerReceiver``).

On a TRex testbed (``source: {kind: trex, server: HOST, ports: [TX, RX]}``) the source is the
server's first port (``TrexSource``): each send is one burst of the spec's STL streams through the
TRex client API (``injector.trex_backend``), counted by TRex's own port counters; a topology that
forwards is received on the second port (``TrexReceiver``, its ``ipackets``). A TRex port is no
interface of this host (``TrexPort``): its MAC, as TRex reports it, is what its frames carry as
their source and what the DUT forwards to. Tested here to the client's boundary (no server can run
here: tests/unit/test_trex_bench.py); against a server only with ``--trex-server``.

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
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import yaml
from pyroute2 import IPRoute

from bpf import netns as bpf_netns
from harness.counters import interface_stats, settled
from harness.latency import TrexLatencyReport, trex_latency
from harness.peer import PeerError, SshPeer
from harness.sink import FrameClass, Sink
from harness.testbed import SourceKind, Testbed
from harness.topology import Topology
from harness.topology_schema import NicRole
from injector.program import FieldProgram
from injector.spec import TrafficSpec
from injector.trex_backend import Latency, TrexSession, burst
from injector.xdp import PACED_BATCH, XdpSender

SEARCH_STEPS = 10
LATENCY_PG_ID = 7  # the one latency stream a TRex source runs at a time
BACKOFF = 0.9  # after a loss, offer this share of the rate the source achieved
_DUT_DROPS = ("rx_dropped", "rx_missed_errors")


@dataclass(frozen=True)
class Port:
    """One interface of the DUT (or of a source): where it is and how frames are addressed to it."""

    netns: str | None  # None: the host's namespace (a real NIC)
    ifname: str
    mac: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # of its global addresses

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
        return cls(netns, ifname, link.get_attr("IFLA_ADDRESS"), tuple(networks))

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

    def dropped(self) -> int:
        """Frames the source's interface has dropped so far (a counter: read it before and
        after)."""
        ...


class _LocalSender:
    def __init__(self, xdp: XdpSender, port: Port, workers: int) -> None:
        self.xdp, self.port, self.workers = xdp, port, workers

    def dropped(self) -> int:
        return interface_stats(self.port.ifname, self.port.netns)["tx_dropped"]

    def send(self, count: int, rate_pps: float | None = None) -> Offered:
        before = self.dropped()
        report = self.xdp.send(
            count=count, rate_pps=rate_pps, batch=PACED_BATCH, workers=self.workers
        )
        dropped = self.dropped() - before
        if report.aborted:
            raise RuntimeError(f"the injector's field engine aborted {report.aborted} frames")
        return Offered(report.packets, report.seconds, dropped)


class LocalSource:
    """The ``xdp`` injector on this host, in the namespace of the topology's far end."""

    kind = SourceKind.LOCAL

    def __init__(self, port: Port) -> None:
        self.port = port

    @contextlib.contextmanager
    def sender(self, spec: dict[str, Any], workers: int = 1) -> Iterator[Sender]:
        """``workers``: senders on that many CPUs, the rate and the count shared between them.
        Into a veth each sends to the receiving end's queue of its own CPU, whose NAPI then runs
        the DUT's program on that CPU: two senders make two CPUs count at once."""
        program = TrafficSpec.from_dict(spec, "benchmark spec").resolve()
        with XdpSender(program, self.port.ifname, self.port.netns) as xdp:
            yield _LocalSender(xdp, self.port, workers)


class _PeerSender:
    def __init__(self, peer: SshPeer, port: Port, spec_file: str, workers: int) -> None:
        self.peer, self.port, self.spec_file, self.workers = peer, port, spec_file, workers

    def send(self, count: int, rate_pps: float | None = None) -> Offered:
        argv = [self.peer.command("injector"), "send", "-i", self.port.ifname]
        argv += ["--spec", self.spec_file, "-n", str(count), "--batch", str(PACED_BATCH), "--json"]
        argv += ["-w", str(self.workers)]
        if rate_pps is not None:
            argv += ["-r", f"{rate_pps:.0f}"]
        before = self.dropped()
        report = json.loads(self.peer.run(argv))
        dropped = self.dropped() - before
        if report["aborted"]:
            raise RuntimeError(f"the peer's field engine aborted {report['aborted']} frames")
        return Offered(report["packets"], report["seconds"], dropped)

    def dropped(self) -> int:
        return self.peer.counter(self.port.ifname, "tx_dropped")


class PeerSource:
    """The project's ``injector`` on a peer host, run over ssh from its interface toward the DUT."""

    kind = SourceKind.SSH

    def __init__(self, peer: SshPeer, port: Port) -> None:
        self.peer, self.port = peer, port

    @classmethod
    def toward(cls, peer: SshPeer, dut_port: Port) -> PeerSource:
        return cls(peer, _peer_port(peer, dut_port))

    @contextlib.contextmanager
    def sender(self, spec: dict[str, Any], workers: int = 1) -> Iterator[Sender]:
        """``workers``: the peer's injector sends from that many of its CPUs."""
        TrafficSpec.from_dict(spec, "benchmark spec").resolve()  # a bad spec fails here, not there
        spec_file = self.peer.run(["mktemp", "--suffix=.yaml"]).strip()
        try:
            self.peer.write_file(spec_file, yaml.safe_dump(spec))
            yield _PeerSender(self.peer, self.port, spec_file, workers)
        finally:
            self.peer.run(["rm", "-f", spec_file])


@dataclass(frozen=True)
class TrexPort:
    """A port of a TRex server: no interface of this host, so no namespace and no counters here.
    ``mac`` is its NIC's (``hw_mac``): the source MAC of the frames it sends (the streams carry
    the spec's MACs, ``injector.trex_worker``) and the one its NIC accepts."""

    server: str
    index: int
    mac: str

    @classmethod
    def of(cls, server: str, ports: tuple[int, ...]) -> tuple[TrexPort, ...]:
        with TrexSession(server) as session:
            infos = session.port_info(ports)
        return tuple(cls(server, port, infos[port]["hw_mac"]) for port in ports)

    def counters(self, session: TrexSession) -> dict[str, int]:
        """The port's counters since ``session`` connected (DPDK's: ``opackets``, ``ipackets``,
        ``oerrors``, ``ierrors``...), read without taking the port."""
        return session.stats((self.index,))[str(self.index)]


class _TrexSender:
    def __init__(self, session: TrexSession, program: FieldProgram, port: TrexPort) -> None:
        self.session, self.program, self.port = session, program, port

    def send(self, count: int, rate_pps: float | None = None) -> Offered:
        reply = self.session.run(burst(self.program, count, rate_pps), (self.port.index,))
        counters = reply["stats"][str(self.port.index)]
        # DPDK's counters: opackets are the frames the NIC sent, oerrors those it failed to.
        failed = counters["oerrors"]
        return Offered(counters["opackets"] + failed, reply["seconds"], failed)

    def dropped(self) -> int:
        return self.port.counters(self.session)["oerrors"]


class TrexSource:
    """A TRex server's port, sending a burst of the spec's STL streams per send over one client
    connection (taken for the sender's life)."""

    kind = SourceKind.TREX

    def __init__(self, port: TrexPort) -> None:
        self.port = port

    @contextlib.contextmanager
    def sender(self, spec: dict[str, Any], workers: int = 1) -> Iterator[Sender]:
        """``workers`` is the local injectors' notion: TRex spreads a stream over the cores its
        server was configured with, whatever this says."""
        program = TrafficSpec.from_dict(spec, "benchmark spec").resolve()
        with TrexSession(self.port.server) as session:
            yield _TrexSender(session, program, self.port)

    def latency(
        self, spec: dict[str, Any], count: int, rate_pps: float = 1000.0
    ) -> TrexLatencyReport:
        """``count`` frames of ``spec`` at ``rate_pps`` with as many TRex latency packets beside
        them (the spec's first frame, stamped by TRex: ``STLFlowLatencyStats``), through a DUT that
        forwards them to the receiving port, where TRex times them on its own clock. TRex's
        stamp is at the frame's end, so it survives a decapsulation (the VXLAN pipeline's)."""
        program = burst(TrafficSpec.from_dict(spec, "benchmark spec").resolve(), count, rate_pps)
        with TrexSession(self.port.server) as session:
            reply = session.run(program, (self.port.index,), Latency(LATENCY_PG_ID, rate_pps))
        return trex_latency(reply["latency"], LATENCY_PG_ID)


Source = LocalSource | PeerSource | TrexSource


class Counting(Protocol):
    def frames(self) -> int: ...

    def dropped(self) -> int:
        """Frames the receiving interface has dropped so far (a counter)."""
        ...


class _SinkCounting:
    def __init__(self, sink: Sink, port: Port) -> None:
        self.sink, self.port = sink, port

    def frames(self) -> int:
        return self.sink.frames(FrameClass.IPV4)

    def dropped(self) -> int:
        return self.port.drops()


class LocalReceiver:
    """An XDP sink at the far end of the DUT's egress link, in its namespace on this host."""

    def __init__(self, port: Port) -> None:
        self.port = port

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counting]:
        with Sink(self.port.ifname, self.port.netns) as sink:
            yield _SinkCounting(sink, self.port)


class _PeerCounting:
    def __init__(self, process: subprocess.Popen, where: str, peer: SshPeer, port: Port) -> None:
        self.process, self.where, self.peer, self.port = process, where, peer, port

    def dropped(self) -> int:
        stats = self.peer.interface_stats(self.port.ifname)  # one read for both counters
        return sum(stats[name] for name in _DUT_DROPS)

    def frames(self) -> int:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.where}: the sink ended: {self.process.stderr.read()}")
        return json.loads(line)["ipv4"]


class PeerReceiver:
    """``harness sink`` on the peer's interface toward the DUT's egress, over ssh: the project's
    XDP sink there, its IPv4 count read a line at a time (the test's frames only)."""

    def __init__(self, peer: SshPeer, port: Port) -> None:
        self.peer, self.port = peer, port

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counting]:
        where = f"{self.peer.address} {self.port.ifname}"
        process = self.peer.start([self.peer.command("harness"), "sink", self.port.ifname])
        try:
            ready = process.stdout.readline()
            if "ready" not in ready:
                raise RuntimeError(f"{where}: harness sink did not start: {process.stderr.read()}")
            yield _PeerCounting(process, where, self.peer, self.port)
        finally:
            process.stdin.close()
            process.wait(timeout=30)


class _TrexCounting:
    def __init__(self, session: TrexSession, port: TrexPort) -> None:
        self.session, self.port = session, port

    def frames(self) -> int:
        return self.port.counters(self.session)["ipackets"]

    def dropped(self) -> int:
        """DPDK's ierrors: frames the port's NIC received and could not keep."""
        return self.port.counters(self.session)["ierrors"]


class TrexReceiver:
    """A TRex server's port at the far end of the DUT's egress, its ``ipackets`` read over a client
    connection of its own that does not take the port. Every frame the port receives counts, the
    DUT's own (LLDP, ARP) as well as those it forwarded: its stack must stay quiet on that link, or
    the search sees more arrive than was sent."""

    def __init__(self, port: TrexPort) -> None:
        self.port = port

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counting]:
        with TrexSession(self.port.server) as session:
            yield _TrexCounting(session, self.port)


Receiver = LocalReceiver | PeerReceiver | TrexReceiver


def _ends(topo: Topology, role: NicRole) -> tuple[Port, Port | None]:
    """The DUT's port marked ``role`` and the port at the far end of its link (None when a real
    NIC took its place: the wire leads to another host)."""
    (link,) = [link for link in topo.spec.links if any(e.real_nic is role for e in link.ends)]
    (end,) = [e for e in link.ends if e.real_nic is role]
    node = topo.node(end.node)
    far = link.peer_of(end)
    far_node = topo.nodes.get(far.node)
    far_port = Port.of(far_node.ifname(far.ifname), far_node.netns) if far_node else None
    return Port.of(node.ifname(end.ifname), node.netns), far_port


def _peer_port(peer: SshPeer, dut_port: Port) -> Port:
    """The peer's interface toward ``dut_port``, found from the networks of the DUT's port."""
    if not dut_port.networks:
        raise RuntimeError(
            f"{dut_port.ifname} has no address: the peer's interface toward it is found from "
            f"its network (give the NIC an address, or declare one in the topology)"
        )
    errors = []
    for network in dut_port.networks:
        try:
            found = peer.interface_toward(network)
        except PeerError as err:
            errors.append(str(err))
            continue
        return Port(None, found.ifname, found.mac, (found.address.network,))
    raise PeerError("; ".join(errors))


def _trex_ends(testbed: Testbed, receiving: bool) -> tuple[TrexSource, TrexReceiver | None]:
    """The testbed's first TRex port as the source and, for a DUT that forwards, its second as the
    receiver."""
    if receiving and len(testbed.source.ports) < 2:
        raise RuntimeError(
            f"testbed {testbed.name}: this topology forwards, and source.ports gives TRex no "
            f"second port to receive on (ports: [0, 1]: send on 0, receive on 1)"
        )
    found = TrexPort.of(testbed.source.server, testbed.source.ports[: 2 if receiving else 1])
    return TrexSource(found[0]), TrexReceiver(found[1]) if receiving else None


class Bench:
    """The DUT's ports and the traffic source of one benchmark, on one testbed."""

    def __init__(
        self,
        testbed: Testbed,
        topology: Topology,
        ingress: Port,
        source: Source,
        egress: Port | None = None,
        receiver: Receiver | None = None,
    ) -> None:
        self.testbed, self.topology, self.ingress, self.source = testbed, topology, ingress, source
        self.egress, self.receiver = egress, receiver

    @classmethod
    def build(cls, topology: str, testbed: Testbed, peer: SshPeer | None = None) -> Bench:
        """``topology`` up on ``testbed`` (the caller takes it down: ``bench.topology.down()``)."""
        topo = Topology.load(topology, nic=testbed.nic)
        # A testbed's egress NIC serves the topologies that forward (mirror_vxlan), not the others.
        ends = [end for link in topo.spec.links for end in link.ends]
        egress_marked = any(end.real_nic is NicRole.EGRESS_NIC for end in ends)
        if egress_marked:
            topo.egress_nic = testbed.egress_nic
        topo.up()
        try:
            ingress, far_in = _ends(topo, NicRole.NIC)
            egress, far_out = _ends(topo, NicRole.EGRESS_NIC) if egress_marked else (None, None)
            if testbed.source.kind is SourceKind.LOCAL:
                source: Source = LocalSource(far_in)
                receiver: Receiver | None = LocalReceiver(far_out) if far_out else None
            elif testbed.source.kind is SourceKind.SSH and peer is not None:
                source = PeerSource.toward(peer, ingress)
                receiver = PeerReceiver(peer, _peer_port(peer, egress)) if egress else None
            elif testbed.source.kind is SourceKind.TREX:
                source, receiver = _trex_ends(testbed, receiving=egress is not None)
            else:
                raise RuntimeError(f"testbed {testbed.name}: an ssh source needs the peer (peer=)")
        except BaseException:
            topo.down()
            raise
        return cls(testbed, topo, ingress, source, egress, receiver)

    def addressed(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` with its frames addressed from the source's MAC to the DUT's ingress MAC."""
        spec = copy.deepcopy(spec)
        args = spec["template"].setdefault("args", {})
        args.update(eth_src=self.source.port.mac, eth_dst=self.ingress.mac)
        return spec

    def zero_loss_pps(
        self,
        sender: Sender,
        count: int,
        totals: Counter | None = None,
        arrivals: Counting | None = None,
    ) -> float:
        """The highest rate found with no loss, RFC 2544 style: flat out first; after a loss,
        ``BACKOFF`` of the rate that was delivered, until a trial of ``count`` frames loses none.

        A loss is a frame the source's interface or the DUT's ingress dropped; with ``arrivals``
        (a receiver's count, for a DUT that forwards) a frame sent that did not arrive. ``totals``
        accumulates every trial's ``sent``, ``arrived`` and ``source_dropped``, for the caller's
        exact accounting."""
        rate = None
        for _ in range(SEARCH_STEPS):
            drops_before = self.ingress.drops()
            arrived_before = arrivals.frames() if arrivals else 0
            offered = sender.send(count, rate)
            if arrivals is None:
                lost = offered.dropped + self.ingress.drops() - drops_before
                arrived = offered.packets - lost
            else:
                arrived = settled(arrivals.frames, still=0.3, timeout=10.0) - arrived_before
                lost = offered.packets - arrived
            if totals is not None:
                totals.update(sent=offered.packets, arrived=arrived, source_dropped=offered.dropped)
            if lost == 0:
                return offered.pps
            rate = offered.pps * arrived / offered.packets * BACKOFF
        raise AssertionError(f"no zero-loss rate down to {rate:,.0f} pps: the DUT is stalled")
