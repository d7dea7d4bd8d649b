"""Topology files: the shipped ones load; malformed ones are rejected with the file, the field and
what was expected, before anything is created."""

from __future__ import annotations

import ipaddress
import re

import pytest

import topologies
from bpf import journal
from bpf.netns import NETNS_RUN_DIR
from harness.topology import Topology
from harness.topology_schema import NicRole, TopologyError, load_spec

GOOD = """\
description: two nodes
nodes:
  a:
    vxlans: [{ifname: vx0, vni: 7, remote: 10.0.0.2, underlay: eth0}]
    bridges: [{ifname: br0, ports: [vx0]}]
    routes: [{dst: default, via: 10.0.0.2}]
    neighbours: [{dev: eth0, address: 10.0.0.2, mac: 02:00:00:00:00:02}]
    sysctls: {net.ipv4.conf.eth0.rp_filter: 0}
  b:
links:
  - ends:
      - {node: a, ifname: eth0, addresses: [10.0.0.1/24], mtu: 9000, queues: 4, offloads: {gro: true}}
      - {node: b, ifname: eth0, mac: 02:00:00:00:00:02, real_nic: nic}
"""

# (what to replace in GOOD, with what, the field named in the error, a fragment of what was expected)
MALFORMED = [
    ("description: two nodes\n", "", "description", "this field (it is required)"),
    ("nodes:", "nodez: {}\nnodes:", "nodez", "no such field here"),
    ("mtu: 9000", "mtu: 9000, colour: red", "links[0].ends[0].colour", "no such field"),
    ("mtu: 9000", "mtu: 50", "links[0].ends[0].mtu", "an integer from 68 to 65535"),
    ("mtu: 9000", "mtu: big", "links[0].ends[0].mtu", "an integer from 68 to 65535"),
    ("queues: 4", "queues: true", "links[0].ends[0].queues", "an integer"),
    ("{gro: true}", "{gro: yes please}", "links[0].ends[0].offloads.gro", "true or false"),
    ("{gro: true}", "{lro: true}", "links[0].ends[0].offloads.lro", "no such field"),
    ("[10.0.0.1/24]", "[10.0.0.1]", "links[0].ends[0].addresses[0]", "prefix length"),
    ("[10.0.0.1/24]", "[10.0.0.300/24]", "links[0].ends[0].addresses[0]", "prefix length"),
    (
        "mac: 02:00:00:00:00:02, real",
        "mac: 03:00:00:00:00:02, real",
        "links[0].ends[1].mac",
        "unicast",
    ),
    ("mac: 02:00:00:00:00:02, real", "mac: 02-00, real", "links[0].ends[1].mac", "a MAC address"),
    (
        "ifname: eth0, addresses",
        "ifname: a_very_long_ifname, addresses",
        "links[0].ends[0].ifname",
        "1 to 15",
    ),
    (
        "{node: b, ifname: eth0, mac",
        "{node: c, ifname: eth0, mac",
        "links[0].ends[1].node",
        "one of a, b",
    ),
    ("real_nic: nic", "real_nic: wan", "links[0].ends[1].real_nic", "'nic' or 'egress-nic'"),
    (
        "      - {node: b",
        "      - {node: a, ifname: eth1}\n      - {node: b",
        "links[0].ends",
        "exactly two ends",
    ),
    (
        "underlay: eth0",
        "underlay: eth9",
        "nodes.a.vxlans[0].underlay",
        "another interface of node a",
    ),
    ("underlay: eth0", "underlay: vx0", "nodes.a.vxlans[0].underlay", "another interface"),
    ("vni: 7", "vni: 16777216", "nodes.a.vxlans[0].vni", "an integer from 0 to 16777215"),
    ("remote: 10.0.0.2", "remote: fd00::2, local: 10.0.0.1", "nodes.a.vxlans[0].local", "IPv6"),
    ("ports: [vx0]", "ports: [eth7]", "nodes.a.bridges[0].ports[0]", "a veth end or VXLAN device"),
    ("dst: default, via: 10.0.0.2", "dst: default", "nodes.a.routes[0].via", "'via' or 'dev'"),
    ("dst: default", "dst: 10.1.0.1/16", "nodes.a.routes[0].dst", "host bits zero"),
    (
        "dst: default, via: 10.0.0.2",
        "dst: fd00::/64, via: 10.0.0.2",
        "nodes.a.routes[0].via",
        "an IPv6 gateway",
    ),
    (
        "{dev: eth0, address",
        "{dev: eth3, address",
        "nodes.a.neighbours[0].dev",
        "an interface of node a",
    ),
    (
        "conf.eth0.rp_filter",
        "conf.eth5.rp_filter",
        "nodes.a.sysctls.net.ipv4.conf.eth5.rp_filter",
        "an interface (or all, default)",
    ),
    (
        "net.ipv4.conf.eth0.rp_filter: 0",
        "kernel.panic: 1",
        "nodes.a.sysctls.kernel.panic",
        "a net.* sysctl key",
    ),
    (
        "rp_filter: 0",
        "rp_filter: [0]",
        "nodes.a.sysctls.net.ipv4.conf.eth0.rp_filter",
        "an integer or a string",
    ),
    ("  a:\n", "  A-1:\n", "nodes.A-1", "a node name"),
    ("vxlans: [{ifname: vx0", "vxlans: [{ifname: eth0", "nodes.a", "interface names unique"),
    ("links:", "links: {}\nlinkz:", "links", "a list"),
    ("  b:\n", "  b:\n    routes: oops\n", "nodes.b.routes", "a list"),
    ("nodes:", "nodes: [\nx:", "line 4", "valid YAML"),
]


def write(tmp_path, text: str):
    path = tmp_path / "topo.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", topologies.names())
def test_shipped_topologies_load(name):
    spec = load_spec(topologies.path(name))
    assert spec.name == name and spec.nodes and spec.links


def test_good_file_loads_into_typed_fields(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    a, b = spec.links[0].ends
    assert (a.mtu, a.queues, a.offloads.gro, a.offloads.gso) == (9000, 4, True, None)
    assert a.addresses == (ipaddress.ip_interface("10.0.0.1/24"),)
    assert b.real_nic is NicRole.NIC
    assert spec.nodes["a"].vxlans[0].port == 4789
    assert spec.nodes["a"].routes[0].dst is None
    assert spec.ifnames_of("a") == ["eth0", "vx0", "br0"]


@pytest.mark.parametrize(("old", "new", "field", "expected"), MALFORMED)
def test_malformed_file_is_rejected(tmp_path, old, new, field, expected):
    assert old in GOOD, "the test case no longer matches GOOD"
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(TopologyError) as rejected:
        Topology.load(path)
    error = rejected.value
    assert (error.file, error.field) == (str(path), field), str(error)
    assert expected in error.expected, str(error)
    assert str(error).startswith(f"{path}: {field}: expected ")


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        (
            "[{ends: [{node: a, ifname: x, real_nic: nic}, {node: b, ifname: x, real_nic: nic}]}]",
            "nic on one end only",
        ),
        (
            "[{ends: [{node: a, ifname: x, real_nic: nic}, {node: b, ifname: x}]},"
            " {ends: [{node: a, ifname: y}, {node: b, ifname: y}]}]",
            "a far node (b) with no other link",
        ),
        (
            "[{ends: [{node: a, ifname: x, real_nic: nic}, {node: b, ifname: x}]},"
            " {ends: [{node: c, ifname: y, real_nic: egress-nic}, {node: d, ifname: y}]}]",
            "real NICs on one node only",
        ),
    ],
)
def test_real_nic_ends_are_checked(tmp_path, links, expected):
    text = f"description: d\nnodes: {{a: , b: , c: , d: }}\nlinks: {links}\n"
    with pytest.raises(TopologyError, match=re.escape(expected)):
        load_spec(write(tmp_path, text))


@pytest.mark.parametrize(
    ("nic", "egress_nic", "field", "expected"),
    [
        ("bl-no-such-if", None, "--nic", "an interface of the host namespace"),
        ("lo", "lo", "--egress-nic", "a NIC other than --nic"),
        (None, "lo", "--egress-nic", "an end marked real_nic: egress-nic"),
    ],
)
def test_bad_nic_binding_creates_nothing(nic, egress_nic, field, expected):
    before = set(NETNS_RUN_DIR.iterdir()) if NETNS_RUN_DIR.is_dir() else set()
    topo = Topology.load("two_host", nic=nic, egress_nic=egress_nic)
    with pytest.raises(TopologyError) as rejected:
        topo.up()
    assert (rejected.value.field, expected in rejected.value.expected) == (field, True), str(
        rejected.value
    )
    after = set(NETNS_RUN_DIR.iterdir()) if NETNS_RUN_DIR.is_dir() else set()
    assert after == before
    assert not journal.current().path.exists()
