"""The topology file format: YAML read into frozen dataclasses, every field checked by hand.

A topology file names the nodes (each a network namespace), the veth links between them and, per
node, VXLAN devices, bridges, sysctls, routes and static neighbours::

    description: injector <-> dut over one veth pair
    nodes:
      injector:
      dut:
        sysctls: {net.ipv4.conf.all.rp_filter: 0}
    links:
      - ends:
          - {node: injector, ifname: veth0, addresses: [10.0.0.1/24], offloads: {gro: true}}
          - {node: dut, ifname: ens5, mtu: 1500, queues: 2, real_nic: nic}

Link end (and VXLAN, bridge) fields: ``ifname``, ``mac``, ``mtu``, ``addresses`` (IPv4 or IPv6 with a
prefix length), ``offloads`` (``gro``/``gso``/``tso``/``tx_checksum``: true or false; absent means the kernel's
default, which for veth is GRO off). Link ends also take ``queues`` (rx and tx queues of that veth
end) and ``real_nic: nic | egress-nic``: at run time ``--nic IF`` (or ``--egress-nic IF``) puts the
real NIC in place of this end (see ``harness.topology``).
Node fields: ``host: true`` (the node is the host's own namespace, not a new one: its interfaces
are created there with the run's prefix, ``bl3fa2c1-nic0``, to stand in for real NICs), ``vxlans`` (``ifname``, ``vni``, ``port`` = 4789, ``local``, ``remote``, ``underlay``),
``bridges`` (``ifname``, ``ports``), ``routes`` (``dst`` = prefix or ``default``, ``via``, ``dev``),
``neighbours`` (``dev``, ``address``, ``mac``), ``sysctls`` (``net.*`` keys, per namespace).

``load_spec(path)`` rejects a malformed file with a ``TopologyError`` naming the file, the field path
(``links[1].ends[0].mtu``) and what was expected: unknown keys, wrong types, out-of-range values and
dangling references (nodes, underlay devices, bridge ports, route devices) all fail here, before
anything is created. This module builds nothing; ``harness.topology`` does.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import schema
from harness.schema import Expected, IPAddress, Reader, SchemaError, load_yaml

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NODE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SYSCTL = re.compile(r"net(\.[A-Za-z0-9_-]+)+")


class TopologyError(SchemaError):
    """A topology file (or its binding to real NICs) is wrong; says where and what was expected."""


class _Reader(Reader):
    error = TopologyError


class NicRole(enum.Enum):
    """Which command-line option binds a real NIC to a link end."""

    NIC = "nic"
    EGRESS_NIC = "egress-nic"

    @property
    def option(self) -> str:
        return f"--{self.value}"


@dataclass(frozen=True)
class Offloads:
    """Offload switches; None leaves the kernel's default."""

    gro: bool | None = None
    gso: bool | None = None
    tso: bool | None = None
    tx_checksum: bool | None = None

    def items(self) -> list[tuple[str, bool]]:
        return [(name, on) for name, on in vars(self).items() if on is not None]


@dataclass(frozen=True)
class InterfaceSpec:
    ifname: str
    mac: str | None
    mtu: int | None
    addresses: tuple[IPInterface, ...]
    offloads: Offloads


@dataclass(frozen=True)
class EndSpec(InterfaceSpec):
    node: str
    queues: int | None
    real_nic: NicRole | None


@dataclass(frozen=True)
class LinkSpec:
    ends: tuple[EndSpec, EndSpec]

    def peer_of(self, end: EndSpec) -> EndSpec:
        return self.ends[1] if end is self.ends[0] else self.ends[0]


@dataclass(frozen=True)
class VxlanSpec(InterfaceSpec):
    vni: int
    port: int
    local: IPAddress | None
    remote: IPAddress
    underlay: str


@dataclass(frozen=True)
class BridgeSpec(InterfaceSpec):
    ports: tuple[str, ...]


@dataclass(frozen=True)
class RouteSpec:
    dst: IPNetwork | None  # None: the default route
    via: IPAddress | None
    dev: str | None


@dataclass(frozen=True)
class NeighbourSpec:
    dev: str
    address: IPAddress
    mac: str


@dataclass(frozen=True)
class NodeSpec:
    name: str
    host: bool  # lives in the host's namespace, its interfaces named with the run's prefix
    sysctls: tuple[tuple[str, str], ...]
    vxlans: tuple[VxlanSpec, ...]
    bridges: tuple[BridgeSpec, ...]
    routes: tuple[RouteSpec, ...]
    neighbours: tuple[NeighbourSpec, ...]


@dataclass(frozen=True)
class TopologySpec:
    path: Path
    name: str
    description: str
    nodes: dict[str, NodeSpec]
    links: tuple[LinkSpec, ...]

    def ends_of(self, node: str) -> list[EndSpec]:
        return [end for link in self.links for end in link.ends if end.node == node]

    def ifnames_of(self, node: str) -> list[str]:
        """Every interface name declared on ``node``: link ends, VXLANs, bridges."""
        spec = self.nodes[node]
        return [
            *(end.ifname for end in self.ends_of(node)),
            *(vxlan.ifname for vxlan in spec.vxlans),
            *(bridge.ifname for bridge in spec.bridges),
        ]


def _ip_interface(value: Any) -> IPInterface:
    if not isinstance(value, str) or "/" not in value:
        raise Expected("an address with its prefix length, like 10.0.0.1/24 or fd00::1/64")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise Expected(
            "an address with its prefix length, like 10.0.0.1/24 or fd00::1/64"
        ) from None


def _destination(value: Any) -> IPNetwork | None:
    if value == "default":
        return None
    try:
        return ipaddress.ip_network(value)
    except (ValueError, TypeError):
        raise Expected("'default' or a prefix like 10.1.0.0/16 (host bits zero)") from None


def _nic_role(value: Any) -> NicRole:
    try:
        return NicRole(value)
    except ValueError:
        raise Expected("'nic' or 'egress-nic'") from None


def _sysctl_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Expected("an integer or a string")
    return str(value)


def _addresses(reader: _Reader) -> tuple[IPInterface, ...]:
    return tuple(
        reader.convert_item(where, item, _ip_interface) for where, item in reader.items("addresses")
    )


def _offloads(reader: _Reader) -> Offloads:
    sub = reader.sub("offloads")
    offloads = Offloads(
        **{
            name: sub.optional(name, schema.boolean)
            for name in ("gro", "gso", "tso", "tx_checksum")
        }
    )
    sub.done()
    return offloads


def _interface(reader: _Reader) -> dict[str, Any]:
    return {
        "ifname": reader.required("ifname", schema.ifname),
        "mac": reader.optional("mac", schema.mac),
        "mtu": reader.optional("mtu", schema.int_range(68, 65535)),
        "addresses": _addresses(reader),
        "offloads": _offloads(reader),
    }


def _end(file: Path, where: str, data: Any) -> EndSpec:
    r = _Reader(file, where, data)
    end = EndSpec(
        node=r.required("node", schema.text),
        **_interface(r),
        queues=r.optional("queues", schema.int_range(1, 64)),
        real_nic=r.optional("real_nic", _nic_role),
    )
    r.done()
    return end


def _link(file: Path, where: str, data: Any) -> LinkSpec:
    r = _Reader(file, where, data)
    items = r.items("ends", required=True)
    if len(items) != 2:
        raise r.fail("ends", "exactly two ends (a veth pair)", f"{len(items)} ends")
    r.done()
    return LinkSpec(ends=(_end(file, *items[0]), _end(file, *items[1])))


def _vxlan(file: Path, where: str, data: Any) -> VxlanSpec:
    r = _Reader(file, where, data)
    vxlan = VxlanSpec(
        **_interface(r),
        vni=r.required("vni", schema.int_range(0, 2**24 - 1)),
        port=r.optional("port", schema.int_range(1, 65535), 4789),
        local=r.optional("local", schema.ip),
        remote=r.required("remote", schema.ip),
        underlay=r.required("underlay", schema.ifname),
    )
    r.done()
    if vxlan.local is not None and vxlan.local.version != vxlan.remote.version:
        raise r.fail("local", f"an IPv{vxlan.remote.version} address like remote", str(vxlan.local))
    return vxlan


def _bridge(file: Path, where: str, data: Any) -> BridgeSpec:
    r = _Reader(file, where, data)
    ports = tuple(r.convert_item(at, item, schema.ifname) for at, item in r.items("ports"))
    bridge = BridgeSpec(**_interface(r), ports=ports)
    r.done()
    return bridge


def _route(file: Path, where: str, data: Any) -> RouteSpec:
    r = _Reader(file, where, data)
    route = RouteSpec(
        dst=r.required("dst", _destination),
        via=r.optional("via", schema.ip),
        dev=r.optional("dev", schema.ifname),
    )
    r.done()
    if route.via is None and route.dev is None:
        raise r.fail("via", "'via' or 'dev' (a route needs a gateway or a device)")
    if route.dst is not None and route.via is not None and route.dst.version != route.via.version:
        raise r.fail("via", f"an IPv{route.dst.version} gateway for {route.dst}", str(route.via))
    return route


def _neighbour(file: Path, where: str, data: Any) -> NeighbourSpec:
    r = _Reader(file, where, data)
    neighbour = NeighbourSpec(
        dev=r.required("dev", schema.ifname),
        address=r.required("address", schema.ip),
        mac=r.required("mac", schema.mac),
    )
    r.done()
    return neighbour


def _node(file: Path, where: str, name: str, data: Any) -> NodeSpec:
    r = _Reader(file, where, data, null_is_empty=True)
    sysctls_reader = r.sub("sysctls")
    sysctls = []
    for key in sysctls_reader.data:
        if not isinstance(key, str) or not _SYSCTL.fullmatch(key):
            raise sysctls_reader.fail(
                str(key), "a net.* sysctl key (only those are per namespace)", key
            )
        sysctls.append((key, sysctls_reader.required(key, _sysctl_value)))
    node = NodeSpec(
        name=name,
        host=r.optional("host", schema.boolean, False),
        sysctls=tuple(sysctls),
        vxlans=tuple(_vxlan(file, w, item) for w, item in r.items("vxlans")),
        bridges=tuple(_bridge(file, w, item) for w, item in r.items("bridges")),
        routes=tuple(_route(file, w, item) for w, item in r.items("routes")),
        neighbours=tuple(_neighbour(file, w, item) for w, item in r.items("neighbours")),
    )
    r.done()
    return node


def _check_references(spec: TopologySpec) -> None:
    """Cross-field checks: every name a field refers to must be declared."""
    node_list = ", ".join(spec.nodes)
    for i, link in enumerate(spec.links):
        for j, end in enumerate(link.ends):
            if end.node not in spec.nodes:
                raise TopologyError(
                    spec.path, f"links[{i}].ends[{j}].node", f"one of {node_list}", end.node
                )
    for node in spec.nodes.values():
        _check_node_references(spec, node)
    _check_real_nics(spec)


def _check_node_references(spec: TopologySpec, node: NodeSpec) -> None:
    """Interface names on a node are unique, and what refers to one names one of that node."""
    file, where = spec.path, f"nodes.{node.name}"
    seen: set[str] = set()
    for ifname in spec.ifnames_of(node.name):
        if ifname in seen:
            raise TopologyError(file, where, f"interface names unique on node {node.name}", ifname)
        seen.add(ifname)
    declared = ", ".join(sorted(seen)) or "none declared"

    def must_be(field: str, ifname: str | None, allowed: set[str], what: str) -> None:
        if ifname is not None and ifname not in allowed:
            raise TopologyError(file, field, f"{what} of node {node.name} ({declared})", ifname)

    for k, vxlan in enumerate(node.vxlans):
        field = f"{where}.vxlans[{k}].underlay"
        must_be(field, vxlan.underlay, seen - {vxlan.ifname}, "another interface")
    ports_allowed = {end.ifname for end in spec.ends_of(node.name)} | {
        v.ifname for v in node.vxlans
    }
    enslaved: set[str] = set()
    for k, bridge in enumerate(node.bridges):
        for m, port in enumerate(bridge.ports):
            field = f"{where}.bridges[{k}].ports[{m}]"
            must_be(field, port, ports_allowed, "a veth end or VXLAN device")
            if port in enslaved:
                raise TopologyError(file, field, "a port not already in a bridge", port)
            enslaved.add(port)
    for k, route in enumerate(node.routes):
        must_be(f"{where}.routes[{k}].dev", route.dev, seen, "an interface")
    for k, neighbour in enumerate(node.neighbours):
        must_be(f"{where}.neighbours[{k}].dev", neighbour.dev, seen, "an interface")
    for key, _ in node.sysctls:
        parts = key.split(".")
        if len(parts) > 4 and parts[2] in ("conf", "neigh"):
            allowed = seen | {"all", "default", "lo"}
            must_be(f"{where}.sysctls.{key}", parts[3], allowed, "an interface (or all, default)")


def _check_real_nics(spec: TopologySpec) -> None:
    """Real-NIC ends: each role once, all on one node, and the far node of each has only that link.

    The far node stands for the other side of the wire and is not built when the NIC is bound.
    """
    file = spec.path
    roles: dict[NicRole, str] = {}
    host_node = None
    for i, link in enumerate(spec.links):
        for j, end in enumerate(link.ends):
            if end.real_nic is None:
                continue
            field = f"links[{i}].ends[{j}].real_nic"
            if end.real_nic in roles:
                raise TopologyError(
                    file,
                    field,
                    f"{end.real_nic.value} on one end only",
                    f"also on {roles[end.real_nic]}",
                )
            roles[end.real_nic] = f"{end.node}.{end.ifname}"
            if host_node not in (None, end.node):
                raise TopologyError(
                    file, field, f"real NICs on one node only (the host): {host_node}", end.node
                )
            host_node = end.node
            far = link.peer_of(end).node
            if far == end.node or len(spec.ends_of(far)) != 1:
                raise TopologyError(
                    file,
                    field,
                    f"a far node ({far}) with no other link, as it is left out when the NIC is bound",
                )


def load_spec(path: Path) -> TopologySpec:
    """Read and check a topology file; raises TopologyError (or OSError if it cannot be read)."""
    data = load_yaml(path, TopologyError)
    r = _Reader(path, "", data)
    description = r.required("description", schema.text)
    nodes_reader = r.sub("nodes")
    if not nodes_reader.data:
        raise r.fail("nodes", "a mapping of at least one node name to its settings")
    nodes = {}
    for name, node_data in nodes_reader.data.items():
        if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
            raise nodes_reader.fail(
                str(name), "a node name: lowercase letter, then [a-z0-9_], at most 32"
            )
        nodes_reader.required(name, lambda v: v)
        nodes[name] = _node(path, f"nodes.{name}", name, node_data)
    links = tuple(_link(path, where, item) for where, item in r.items("links"))
    r.done()
    spec = TopologySpec(path, path.stem, description, nodes, links)
    _check_references(spec)
    return spec
