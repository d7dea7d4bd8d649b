"""Build the network a topology file describes, over netlink, and tear it down completely.

``Topology.load(path_or_name)`` checks the file (``harness.topology_schema``); ``up()`` builds, in
dependency order: namespaces, veth pairs (created directly between the namespaces, never through the
host), offloads, VXLAN devices, bridges, sysctls, addresses, links up, routes, static neighbours.
``down()`` undoes in reverse. ``with Topology.load("two_host") as topo:`` does both.

Names: node ``dut`` of run ``3fa2c1`` lives in namespace ``bl-3fa2c1-dut``; inside it, interfaces
keep their declared names (``ens5``). The run id is the journal's (``bpf.journal``), so two processes
never collide; within one process, two topologies may be up at once if their node names differ.

Every resource is recorded in the journal before it is created and struck off once removed, so a
process killed with SIGKILL leaves a record that ``harness.cleanup.clean()`` undoes (and the first
``up()`` of the next run calls it). Inside a namespace only the namespace itself is recorded: deleting
it deletes everything in it.

Real NICs: a link end marked ``real_nic: nic`` (or ``egress-nic``) is replaced by the interface given
as ``nic=`` (``egress_nic=``); the node of that end then maps to the host namespace and the node at
the far end of the link is not built (the wire replaces it). The NIC is never created or deleted; its
MTU, addresses, offloads and up state are recorded before they change and restored by ``down()``
(or by ``clean()`` after a crash). A declared MAC or queue count is not applied to a real NIC. Other
interfaces of a host-mapped node are created with a run prefix (``bl3fa2c1-ens6``), as are its
host-side routes, neighbours and sysctls, each recorded and undone.

Offloads: absent means the kernel default (veth: GRO off). Trap: XDP_TX / XDP_REDIRECT into a veth
whose peer has neither an XDP program nor GRO drops every frame silently, so the shipped topologies
turn GRO on for every veth end; declare ``offloads: {gro: true}`` likewise in your own.

This module builds networks; it does not send traffic (``harness.capture``) or load BPF programs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

import topologies
from bpf import journal as bpf_journal
from bpf import netns as bpf_netns
from harness.ethtool import offload
from harness.topology_schema import (
    EndSpec,
    InterfaceSpec,
    NicRole,
    Offloads,
    TopologyError,
    TopologySpec,
    load_spec,
)

NETNS_PREFIX = "bl-"
_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_CARRIER_TIMEOUT = 5.0  # seconds for the kernel's linkwatch to see every veth end up
_IFA_F_NODAD = 0x02
_NUD_PERMANENT = 0x80
_libc = ctypes.CDLL(None, use_errno=True)


def netns_name(run_id: str, node: str) -> str:
    return f"{NETNS_PREFIX}{run_id}-{node}"


def host_ifname(run_id: str, ifname: str) -> str:
    """The name an interface of a host-mapped node gets in the host namespace."""
    return f"bl{run_id}-{ifname}"


def _libc_call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def create_netns(name: str) -> None:
    """Create /run/netns/NAME the way ``ip netns add`` does, without forking.

    pyroute2's ``netns.create`` forks a helper per namespace (~9 ms); unsharing the calling thread
    then bind-mounting its namespace file takes ~1 ms. setns(2) moves only this thread, and it is
    moved back before returning.
    """
    path = bpf_netns.NETNS_RUN_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc_call(_libc.unshare(_CLONE_NEWNET), f"unshare for namespace {name}")
        try:
            source = b"/proc/thread-self/ns/net"
            _libc_call(_libc.mount(source, bytes(path), b"none", _MS_BIND, None), f"mount {path}")
        finally:
            _libc_call(_libc.setns(home, _CLONE_NEWNET), "setns back to the original namespace")
    except OSError:
        path.unlink()
        raise
    finally:
        os.close(home)


@bpf_journal.undoes("netns")
def remove_netns(name: str) -> None:
    """Delete a named namespace; the kernel then deletes the virtual interfaces inside it."""
    path = bpf_netns.NETNS_RUN_DIR / name
    if not path.exists():
        return
    _libc.umount2(bytes(path), _MNT_DETACH)  # fails harmlessly if a crash came before the mount
    path.unlink()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r}")
    return found[0]


# Undo functions for what is changed in the host namespace (a namespace's contents go with it).


@bpf_journal.undoes("host_link")
def remove_host_link(ifname: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])


@bpf_journal.undoes("nic")
def restore_nic(
    ifname: str, mtu: int, added: list[str], offloads: dict[str, bool], up: bool
) -> None:
    """Put a real NIC back as it was: MTU, addresses, offloads, up/down. A NIC gone since (unplugged,
    or the veth standing in for one deleted) has nothing to put back."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return
        (index,) = found
        for address in added:
            addr, prefixlen = address.split("/")
            try:
                ipr.addr("del", index=index, address=addr, prefixlen=int(prefixlen))
            except NetlinkError as err:
                if err.code != errno.EADDRNOTAVAIL:
                    raise
        ipr.link("set", index=index, mtu=mtu, state="up" if up else "down")
    for name, on in offloads.items():
        offload(ifname, name, on)


@bpf_journal.undoes("sysctl")
def restore_sysctl(key: str, value: str) -> None:
    _sysctl_path(key).write_text(value)


@bpf_journal.undoes("host_route")
def remove_host_route(dst: str, family: int, gateway: str | None, oif: int | None) -> None:
    with IPRoute() as ipr:
        try:
            ipr.route("del", dst=dst, family=family, gateway=gateway, oif=oif)
        except NetlinkError as err:
            if err.code != errno.ESRCH:
                raise


@bpf_journal.undoes("host_neigh")
def remove_host_neigh(ifname: str, address: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            try:
                ipr.neigh("del", dst=address, ifindex=found[0])
            except NetlinkError as err:
                if err.code != errno.ENOENT:
                    raise


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys", *key.split("."))


def wait_until_up(pending: dict[IPRoute, set[str]], timeout: float = _CARRIER_TIMEOUT) -> None:
    """Wait until every interface named in ``pending`` (by the netlink handle of its namespace) has
    the operstate UP: its carrier came and the kernel's linkwatch activated its queue (until then it
    drops what is sent through it)."""
    pending = {ipr: set(ifnames) for ipr, ifnames in pending.items()}
    deadline = time.monotonic() + timeout
    while True:
        for ipr, ifnames in pending.items():
            if ifnames:
                links = ipr.link("dump")
                ifnames -= {k.get("ifname") for k in links if k.get("operstate") == "UP"}
        if not any(pending.values()):
            return
        if time.monotonic() > deadline:
            late = sorted(ifname for ifnames in pending.values() for ifname in ifnames)
            raise TimeoutError(f"interfaces still not up after {timeout} s: {late}")
        time.sleep(0.001)


def set_link(ifname: str, namespace: str | None, **changes: object) -> None:
    """``changes`` to a link through netlink (``state="down"``, ``txqlen=1``); ``qdisc_limit``
    replaces its root qdisc with a pfifo of that many frames. A link set up is waited for."""
    limit = changes.pop("qdisc_limit", None)
    with bpf_netns.entered(namespace), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        if changes:
            ipr.link("set", index=index, **changes)
        if limit is not None:
            ipr.tc("replace", "pfifo", index, 0x10000, limit=limit)
        if changes.get("state") == "up":
            wait_until_up({ipr: {ifname}})


@dataclass(frozen=True)
class Node:
    """A built node: its namespace (None: the host's) and its interfaces' actual names."""

    name: str
    netns: str | None
    interfaces: dict[str, str]  # declared name -> name in the namespace

    def ifname(self, declared: str) -> str:
        try:
            return self.interfaces[declared]
        except KeyError:
            known = ", ".join(self.interfaces)
            raise KeyError(f"node {self.name} has no interface {declared!r} ({known})") from None

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run a block inside this node's namespace (sockets opened there stay bound to it)."""
        with bpf_netns.entered(self.netns):
            yield

    def ipr(self) -> IPRoute:
        """A netlink handle bound to this node's namespace; close it when done.

        Opened inside the namespace: ``IPRoute(netns=...)`` forks a helper for each handle (~7 ms).
        """
        with bpf_netns.entered(self.netns):
            return IPRoute()


@dataclass
class _Plan:
    nodes: dict[str, Node]
    bound: dict[tuple[str, str], str]  # (node, declared ifname) -> real NIC


@dataclass
class Topology:
    """A validated topology file and, once ``up()``, the network built from it."""

    spec: TopologySpec
    nic: str | None = None
    egress_nic: str | None = None
    journal: bpf_journal.Journal = field(default_factory=bpf_journal.current)
    _nodes: dict[str, Node] = field(init=False, default_factory=dict)
    _entries: list[tuple[int, str, dict]] = field(init=False, default_factory=list)

    @classmethod
    def load(
        cls,
        file: str | Path,
        *,
        nic: str | None = None,
        egress_nic: str | None = None,
        journal: bpf_journal.Journal | None = None,
    ) -> Topology:
        """Check a topology file (a path, or the name of a shipped one) and bind real NICs to it."""
        path = Path(file)
        if path.suffix not in (".yaml", ".yml"):
            path = topologies.path(str(file))
        return cls(load_spec(path), nic, egress_nic, journal or bpf_journal.current())

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def run_id(self) -> str:
        return self.journal.run_id

    @property
    def nodes(self) -> dict[str, Node]:
        """The built nodes (a node at the far end of a bound real NIC is not built)."""
        return dict(self._nodes)

    def node(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError:
            state = "built: " + ", ".join(self._nodes) if self._nodes else "not up"
            raise KeyError(f"topology {self.name} has no node {name!r} ({state})") from None

    def describe(self) -> dict:
        """What was built, as plain data (printed by ``harness topo up``, kept in its state file)."""
        return {
            "name": self.name,
            "file": str(self.spec.path),
            "run_id": self.run_id,
            "nodes": {
                n.name: {"netns": n.netns, "interfaces": n.interfaces} for n in self._nodes.values()
            },
        }

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Topology:
        """Build the network; on any failure, undo what was built and raise."""
        if self._entries:
            raise RuntimeError(f"topology {self.name} is already up (run {self.run_id})")
        from harness import cleanup  # imported here: cleanup imports this module

        cleanup.clean_once()
        plan = self._plan()
        try:
            _Builder(self, plan).build()
        except BaseException:
            self.down()
            raise
        self._nodes = plan.nodes
        return self

    def down(self) -> None:
        """Undo everything ``up()`` did, newest first; entries that fail stay for ``clean()``."""
        failures = []
        while self._entries:
            entry_id, kind, fields = self._entries.pop()
            try:
                self.journal.undo(entry_id)
            except Exception as err:  # one stuck resource must not stop the others' removal
                failures.append(f"{kind} {fields}: {err}")
        self._nodes = {}
        if failures:
            raise RuntimeError(
                f"tearing down topology {self.name} left (run `harness clean` to retry): "
                + "; ".join(failures)
            )

    def _record(self, kind: str, **fields: object) -> None:
        self._entries.append((self.journal.record(kind, **fields), kind, fields))

    def _plan(self) -> _Plan:
        """Decide namespaces and interface names; checks real NIC bindings before creating anything."""
        spec = self.spec
        bindings = {
            role: ifname
            for role, ifname in ((NicRole.NIC, self.nic), (NicRole.EGRESS_NIC, self.egress_nic))
            if ifname is not None
        }
        if self.nic is not None and self.nic == self.egress_nic:
            raise TopologyError(
                spec.path, "--egress-nic", "a NIC other than --nic", self.egress_nic
            )
        marked = {end.real_nic: end for link in spec.links for end in link.ends if end.real_nic}
        bound: dict[tuple[str, str], str] = {}
        far_nodes = set()
        with IPRoute() as ipr:
            for role, ifname in bindings.items():
                if role not in marked:
                    raise TopologyError(
                        spec.path,
                        role.option,
                        f"a topology with an end marked real_nic: {role.value}",
                    )
                if not ipr.link_lookup(ifname=ifname):
                    raise TopologyError(
                        spec.path, role.option, "an interface of the host namespace", ifname
                    )
                end = marked[role]
                bound[end.node, end.ifname] = ifname
                far_nodes |= {link.peer_of(end).node for link in spec.links if end in link.ends}
        host_nodes = {node for node, _ in bound} | {n.name for n in spec.nodes.values() if n.host}
        nodes = {}
        for name in spec.nodes:
            if name in far_nodes:
                continue
            in_host = name in host_nodes
            interfaces = {}
            for declared in spec.ifnames_of(name):
                actual = bound.get((name, declared))
                if actual is None:
                    actual = host_ifname(self.run_id, declared) if in_host else declared
                if len(actual) > 15:
                    raise TopologyError(
                        spec.path,
                        f"nodes.{name}",
                        "interface names short enough for the host namespace prefix "
                        f"({host_ifname(self.run_id, '')}, 15 characters in all)",
                        declared,
                    )
                interfaces[declared] = actual
            namespace = None if in_host else netns_name(self.run_id, name)
            if namespace is not None and bpf_netns.exists(namespace):
                raise FileExistsError(
                    f"namespace {namespace} exists: a topology with a node {name!r} is already up "
                    f"in run {self.run_id}"
                )
            nodes[name] = Node(name, namespace, interfaces)
        return _Plan(nodes, bound)


class _Builder:
    """One ``up()``: creates in dependency order, recording each host-side change first."""

    def __init__(self, topo: Topology, plan: _Plan) -> None:
        self.topo, self.spec, self.plan = topo, topo.spec, plan
        self.iprs: dict[str, IPRoute] = {}
        self.nic_addresses: dict[str, set[str]] = {}  # real NIC -> addresses it already had

    def build(self) -> None:
        try:
            for node in self.plan.nodes.values():
                if node.netns is not None:
                    self.topo._record("netns", name=node.netns)
                    create_netns(node.netns)
                self.iprs[node.name] = ipr = node.ipr()
                if node.netns is not None:
                    ipr.link("set", index=1, state="up")
            self._interfaces()
            self._sysctls()
            self._addresses_and_up()
            self._wait_for_carrier()
            self._routes_and_neighbours()
        finally:
            for ipr in self.iprs.values():
                ipr.close()

    def _in_host(self, node: str) -> bool:
        return self.plan.nodes[node].netns is None

    def _actual(self, node: str, declared: str) -> str:
        return self.plan.nodes[node].ifname(declared)

    def _interfaces(self) -> None:
        for link in self.spec.links:
            a, b = link.ends
            if a.node not in self.plan.nodes or b.node not in self.plan.nodes:
                self._adopt_nic(a if a.node in self.plan.nodes else b)
            else:
                self._veth(a, b)
        for name, node in self.spec.nodes.items():
            if name not in self.plan.nodes:
                continue
            ipr = self.iprs[name]
            for vxlan in node.vxlans:
                remote, local, v6 = vxlan.remote, vxlan.local, vxlan.remote.version == 6
                attrs = {
                    "vxlan_id": vxlan.vni,
                    "vxlan_port": vxlan.port,
                    "vxlan_link": _index(ipr, self._actual(name, vxlan.underlay)),
                    "vxlan_group6" if v6 else "vxlan_group": str(remote),
                }
                if local is not None:
                    attrs["vxlan_local6" if v6 else "vxlan_local"] = str(local)
                self._create(name, vxlan, kind="vxlan", **attrs)
            for bridge in node.bridges:
                master = self._create(name, bridge, kind="bridge")
                for port in bridge.ports:
                    ipr.link("set", index=_index(ipr, self._actual(name, port)), master=master)

    def _host_link(self, node: str, spec: InterfaceSpec) -> None:
        if self._in_host(node):
            self.topo._record("host_link", ifname=self._actual(node, spec.ifname))

    def _veth(self, a: EndSpec, b: EndSpec) -> None:
        def attrs(end: EndSpec) -> dict:
            out: dict = {"ifname": self._actual(end.node, end.ifname)}
            if end.mac is not None:
                out["address"] = end.mac
            if end.mtu is not None:
                out["mtu"] = end.mtu
            if end.queues is not None:
                out["num_rx_queues"] = out["num_tx_queues"] = end.queues
            return out

        self._host_link(a.node, a)
        self._host_link(b.node, b)
        peer_ns = self.plan.nodes[b.node].netns
        peer_fd = os.open(
            bpf_netns.NETNS_RUN_DIR / peer_ns if peer_ns else "/proc/thread-self/ns/net",
            os.O_RDONLY | os.O_CLOEXEC,
        )
        try:
            self.iprs[a.node].link(
                "add", kind="veth", **attrs(a), peer={**attrs(b), "net_ns_fd": peer_fd}
            )
        finally:
            os.close(peer_fd)
        for end in (a, b):
            self._offloads(end.node, end.ifname, end.offloads)

    def _create(self, node: str, spec: InterfaceSpec, **attrs: object) -> int:
        self._host_link(node, spec)
        ipr, ifname = self.iprs[node], self._actual(node, spec.ifname)
        extra = {"address": spec.mac, "mtu": spec.mtu}
        ipr.link("add", ifname=ifname, **attrs, **{k: v for k, v in extra.items() if v is not None})
        self._offloads(node, spec.ifname, spec.offloads)
        return _index(ipr, ifname)

    def _offloads(self, node: str, declared: str, offloads: Offloads) -> None:
        for name, on in offloads.items():
            offload(self._actual(node, declared), name, on, self.plan.nodes[node].netns)

    def _adopt_nic(self, end: EndSpec) -> None:
        """Apply an end's MTU, addresses and offloads to the real NIC bound to it, recording the
        original state first."""
        ifname = self.plan.bound[end.node, end.ifname]
        ipr = self.iprs[end.node]
        (link,) = ipr.link("get", index=_index(ipr, ifname))
        present = {
            f"{a.get('address')}/{a['prefixlen']}" for a in ipr.addr("dump", index=link["index"])
        }
        self.nic_addresses[ifname] = present
        self.topo._record(
            "nic",
            ifname=ifname,
            mtu=link.get("mtu"),
            added=[str(a) for a in end.addresses if str(a) not in present],
            offloads={name: offload(ifname, name) for name, _ in end.offloads.items()},
            up=bool(link["flags"] & 1),
        )
        if end.mtu is not None:
            ipr.link("set", index=link["index"], mtu=end.mtu)
        self._offloads(end.node, end.ifname, end.offloads)

    def _sysctls(self) -> None:
        for name, node in self.spec.nodes.items():
            if name not in self.plan.nodes:
                continue
            declared = set(self.plan.nodes[name].interfaces)
            for key, value in node.sysctls:
                parts = key.split(".")
                if len(parts) > 4 and parts[3] in declared:
                    parts[3] = self._actual(name, parts[3])
                actual = ".".join(parts)
                with self.plan.nodes[name].entered():
                    path = _sysctl_path(actual)
                    if self._in_host(name):
                        self.topo._record("sysctl", key=actual, value=path.read_text().strip())
                    try:
                        path.write_text(value)
                    except FileNotFoundError:
                        raise TopologyError(
                            self.spec.path, f"nodes.{name}.sysctls.{key}", "a sysctl of this kernel"
                        ) from None

    def _addresses_and_up(self) -> None:
        for link in self.spec.links:
            for end in link.ends:
                if end.node in self.plan.nodes:
                    self._address_and_up(end.node, end)
        for name, node in self.spec.nodes.items():
            if name in self.plan.nodes:
                for spec in (*node.vxlans, *node.bridges):
                    self._address_and_up(name, spec)

    def _wait_for_carrier(self) -> None:
        """Wait until the kernel has activated the queues of interfaces that were up before their
        carrier: the first end up of each veth pair, and bridges with ports.

        Such an interface drops what is sent through it until the kernel's linkwatch work, soon after
        the carrier comes, activates its queue and sets its operstate UP. (The second end of a veth
        pair is activated at once, though its operstate may lag by up to a second: not waited for.)
        """
        pending = {name: set() for name in self.plan.nodes}
        for link in self.spec.links:
            first = link.ends[0]  # _addresses_and_up brings ends up in this order
            if all(end.node in self.plan.nodes for end in link.ends):
                pending[first.node].add(self._actual(first.node, first.ifname))
        for name, node in self.spec.nodes.items():
            if name in self.plan.nodes:
                pending[name] |= {self._actual(name, b.ifname) for b in node.bridges if b.ports}
        wait_until_up({self.iprs[name]: ifnames for name, ifnames in pending.items()})

    def _address_and_up(self, node: str, spec: InterfaceSpec) -> None:
        ipr, ifname = self.iprs[node], self._actual(node, spec.ifname)
        index = _index(ipr, ifname)
        present = self.nic_addresses.get(ifname, set())
        for address in (a for a in spec.addresses if str(a) not in present):
            # IPv6 duplicate address detection would leave the address unusable for ~1 s.
            ipr.addr(
                "add",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                flags=_IFA_F_NODAD if address.version == 6 else 0,
            )
        ipr.link("set", index=index, state="up")

    def _routes_and_neighbours(self) -> None:
        for name, node in self.spec.nodes.items():
            if name not in self.plan.nodes:
                continue
            ipr, in_host = self.iprs[name], self._in_host(name)
            for route in node.routes:
                v6 = any(ip is not None and ip.version == 6 for ip in (route.dst, route.via))
                family = socket.AF_INET6 if v6 else socket.AF_INET
                fields = {
                    "dst": "default" if route.dst is None else str(route.dst),
                    "family": family,
                    "gateway": None if route.via is None else str(route.via),
                    "oif": None
                    if route.dev is None
                    else _index(ipr, self._actual(name, route.dev)),
                }
                if in_host:
                    self.topo._record("host_route", **fields)
                ipr.route("add", **{k: v for k, v in fields.items() if v is not None})
            for neighbour in node.neighbours:
                ifname = self._actual(name, neighbour.dev)
                if in_host:
                    self.topo._record("host_neigh", ifname=ifname, address=str(neighbour.address))
                # "replace": the kernel may have begun resolving it already (an IPv6 router
                # solicitation sent through a VXLAN device needs the underlay neighbour).
                ipr.neigh(
                    "replace",
                    dst=str(neighbour.address),
                    lladdr=neighbour.mac,
                    ifindex=_index(ipr, ifname),
                    state=_NUD_PERMANENT,
                )
