"""Each shipped topology, built on the real kernel, carries traffic the way its file says, and leaves
nothing behind: not after ``down()``, not after a run killed with SIGKILL (``harness clean``)."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.ppp import PPPoED
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

import topologies
from bpf import journal
from bpf.netns import NETNS_RUN_DIR
from harness import cleanup
from harness.capture import Capture
from harness.ethtool import offload
from harness.topology import Topology, create_netns, host_ifname, netns_name
from harness.topology_schema import NicRole
from injector.scapy_backend import send_packets

HARNESS = Path(sys.executable).with_name("harness")
VXLAN_I_FLAG = 0x08  # RFC 7348: the I bit alone; AWS and the kernel send exactly this
MIRROR_MTU = 3498  # topologies/mirror_vxlan.yaml: the largest MTU AWS ENA allows with XDP
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2  # <linux/in.h>: refuse, rather than fragment, over the MTU


def udp_receiver(topo: Topology, node: str, address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with topo.node(node).entered():
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(1.0)
    return sock


def received(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None


def is_vxlan(vni: int, inner_dport: int):
    def match(data: bytes) -> bool:
        packet = Ether(data)
        return (
            IP in packet
            and packet[IP].proto == socket.IPPROTO_UDP  # not an ICMP error quoting one
            and packet[UDP].dport == 4789
            and VXLAN in packet
            and packet[VXLAN].vni == vni
            and UDP in packet[VXLAN]
            and packet[VXLAN][UDP].dport == inner_dport
        )

    return match


@pytest.mark.parametrize("name", topologies.names())
def test_built_as_declared(topology, name):
    """Every declared end exists in its node's namespace with its MAC, MTU, queues, GRO, addresses."""
    topo = topology(name)
    for link in topo.spec.links:
        for end in link.ends:
            node = topo.node(end.node)
            actual = node.ifname(end.ifname)  # a host node's carry the run's prefix
            with node.ipr() as ipr:
                (found,) = ipr.link("get", ifname=actual)
                addresses = {
                    f"{a.get('address')}/{a['prefixlen']}"
                    for a in ipr.addr("dump", index=found["index"])
                }
            where = f"{name}: {end.node}.{end.ifname}"
            assert found.get("operstate") == "UP", f"{where} is not up"
            assert end.mac is None or found.get("address") == end.mac, where
            assert end.mtu is None or found.get("mtu") == end.mtu, where
            assert end.queues is None or found.get("num_rx_queues") == end.queues, where
            assert {str(a) for a in end.addresses} <= addresses, f"{where}: has {addresses}"
            for offload_name, on in end.offloads.items():
                assert offload(actual, offload_name, namespace=node.netns) == on, where


def test_two_host_answers_icmp_echo(topology):
    topo = topology("two_host")
    echo = (
        Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / ICMP(type="echo-request", id=0x4242, seq=1)
        / Raw(b"bpflab")
    )

    def is_reply(data: bytes) -> bool:
        packet = Ether(data)
        return ICMP in packet and packet[ICMP].type == 0 and packet[ICMP].id == 0x4242

    injector = topo.node("injector")
    with Capture("veth0", netns=injector.netns, match=is_reply) as cap:
        send_packets([bytes(echo)], "veth0", injector.netns)
        replies = cap.frames(count=1, timeout=2.0)
    assert replies, "the dut's kernel did not answer an ICMP echo sent to 10.0.0.2 on its ens5"
    assert Ether(replies[0].data)[IP].src == "10.0.0.2"


def test_two_host_delivers_udp_over_ipv6(topology):
    topo = topology("two_host")
    receiver = udp_receiver(topo, "dut", "fd00::2", 5000)
    frame = (
        Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
        / IPv6(src="fd00::1", dst="fd00::2")
        / UDP(sport=4000, dport=5000)
        / Raw(b"over ipv6")
    )
    with receiver:
        send_packets([bytes(frame)], "veth0", topo.node("injector").netns)
        assert received(receiver) == b"over ipv6"


def test_two_host_honours_mtu(topology):
    """A 1500-byte IP packet crosses; 1501 bytes cannot leave the injector's end (MTU 1500)."""
    topo = topology("two_host")
    injector = topo.node("injector").netns

    def udp_frame(ip_size: int) -> bytes:
        headers = (
            Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
            / IP(src="10.0.0.1", dst="10.0.0.2")
            / UDP(sport=4000, dport=5000)
        )
        return bytes(headers / Raw(bytes(ip_size - 28)))

    with udp_receiver(topo, "dut", "10.0.0.2", 5000) as receiver:
        send_packets([udp_frame(1500)], "veth0", injector)
        assert len(received(receiver) or b"") == 1472, "a packet at the MTU was not delivered"
        with pytest.raises(OSError) as refused:
            send_packets([udp_frame(1501)], "veth0", injector)
        assert refused.value.errno == errno.EMSGSIZE
        assert received(receiver) is None, "a packet over the MTU was delivered"


def test_mirror_vxlan_encapsulates_towards_dut(topology):
    """What enters the mirror's vxlan0 reaches the dut's ens5 as VXLAN: UDP 4789, VNI 42, I flag,
    up to a frame at the link's MTU (3498: vxlan0's is 50 bytes less); one byte more cannot leave."""
    topo = topology("mirror_vxlan")
    with topo.node("mirror").entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)  # no fragmenting
    largest = MIRROR_MTU - 50 - 28  # VXLAN's 50 bytes, then the inner IPv4 and UDP headers
    dut = topo.node("dut")
    with sender, Capture("ens5", netns=dut.netns, match=is_vxlan(42, 6000)) as cap:
        for size in (64, largest):
            sender.sendto(bytes(size), ("172.16.0.2", 6000))
        with pytest.raises(OSError) as refused:
            sender.sendto(bytes(largest + 1), ("172.16.0.2", 6000))
        frames = cap.frames(count=3, timeout=2.0)
    assert refused.value.errno == errno.EMSGSIZE, "vxlan0 took a datagram over its MTU"
    assert len(frames) == 2, f"{len(frames)} VXLAN frames reached the dut's ens5, 2 expected"
    for frame, size in zip(frames, (64, largest), strict=True):
        packet = Ether(frame.data)
        assert (packet[IP].src, packet[IP].dst, packet[UDP].dport) == ("10.1.0.1", "10.1.0.2", 4789)
        assert int(packet[VXLAN].flags) == VXLAN_I_FLAG, f"flags {packet[VXLAN].flags!r}"
        assert len(packet[VXLAN][UDP].payload) == size
    assert len(frames[1].data) == 14 + MIRROR_MTU, "the largest frame is not at the link's MTU"


def test_mirror_vxlan_collector_reachable(topology):
    topo = topology("mirror_vxlan")
    with udp_receiver(topo, "collector", "10.2.0.2", 7000) as receiver:
        with topo.node("dut").entered():
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.sendto(b"to the collector", ("10.2.0.2", 7000))
        assert received(receiver) == b"to the collector"


def test_overlay_vxlan_crosses_dut_encapsulated(topology):
    topo = topology("overlay_vxlan")
    dut = topo.node("dut")
    with (
        udp_receiver(topo, "host_b", "10.100.0.2", 8000) as receiver,
        Capture("ens5", netns=dut.netns, match=is_vxlan(100, 8000)) as arriving,
        Capture("ens6", netns=dut.netns, match=is_vxlan(100, 8000)) as forwarded,
    ):
        with topo.node("host_a").entered():
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.sendto(b"through the overlay", ("10.100.0.2", 8000))
        assert received(receiver) == b"through the overlay"
        (inbound,) = arriving.frames(count=1, timeout=1.0)
        (outbound,) = forwarded.frames(count=1, timeout=1.0)
    inner = Ether(inbound.data)
    assert (inner[IP].src, inner[IP].dst) == ("192.168.1.2", "192.168.2.2")
    assert int(inner[VXLAN].flags) == VXLAN_I_FLAG and inner[VXLAN].vni == 100
    assert Ether(outbound.data)[IP].ttl == inner[IP].ttl - 1, "the dut did not route it"


def test_bng_l2_carries_pppoe_discovery(topology):
    topo = topology("bng_l2")
    padi = (
        Ether(src="02:00:00:00:04:01", dst="ff:ff:ff:ff:ff:ff")
        / PPPoED(code=0x09)
        / Raw(
            b"\x01\x01\x00\x00"  # Service-Name tag, empty: any service
        )
    )
    bng = topo.node("bng")
    with Capture("ens5", netns=bng.netns) as cap:
        send_packets([bytes(padi)], "eth0", topo.node("injector").netns)
        frames = cap.frames(count=2, timeout=0.5)
    assert [f.data[: len(bytes(padi))] for f in frames] == [bytes(padi)], (
        "the bng should see the PADI and nothing else (IPv6 is off on both ends)"
    )


def test_down_leaves_nothing():
    topo = Topology.load("mirror_vxlan")
    with topo:
        namespaces = [node.netns for node in topo.nodes.values()]
        assert all((NETNS_RUN_DIR / ns).exists() for ns in namespaces)
    assert not any((NETNS_RUN_DIR / ns).exists() for ns in namespaces)
    assert not journal.current().path.exists(), "the journal still lists resources"


def test_two_topologies_at_once_need_distinct_nodes(topology):
    topology("bng_l2")
    topology("overlay_vxlan")
    with pytest.raises(FileExistsError, match="already up"):
        topology("mirror_vxlan")  # its node dut is overlay_vxlan's too


def test_failed_build_undoes_itself(tmp_path):
    bad = tmp_path / "bad_sysctl.yaml"
    bad.write_text(
        "description: a sysctl this kernel lacks\n"
        "nodes: {a: {sysctls: {net.ipv4.no_such_knob: 1}}, b: }\n"
        "links: [{ends: [{node: a, ifname: eth0}, {node: b, ifname: eth0}]}]\n"
    )
    with pytest.raises(ValueError, match=r"nodes\.a\.sysctls\.net\.ipv4\.no_such_knob"):
        Topology.load(bad).up()
    run = journal.current().run_id
    assert not list(NETNS_RUN_DIR.glob(f"bl-{run}-*"))


@pytest.mark.dead_run
def test_killed_run_is_cleaned():
    script = (
        "from harness.topology import Topology\n"
        "import json, time\n"
        "print(json.dumps(Topology.load('overlay_vxlan').up().describe()), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        built = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    namespaces = [node["netns"] for node in built["nodes"].values()]
    assert all((NETNS_RUN_DIR / ns).exists() for ns in namespaces), "the killed run built nothing"
    result = subprocess.run([HARNESS, "clean"], capture_output=True, text=True, check=True)
    assert not any((NETNS_RUN_DIR / ns).exists() for ns in namespaces), result.stdout
    assert not (journal.JOURNAL_DIR / f"{built['run_id']}.jsonl").exists()


@pytest.mark.dead_run
def test_clean_removes_unrecorded_namespace():
    """Belt and braces: a namespace of a dead run that its journal does not list still goes."""
    orphan = netns_name("0dead0", "lost")
    create_netns(orphan)
    report = cleanup.clean()
    assert not (NETNS_RUN_DIR / orphan).exists()
    assert f"removed unrecorded namespace {orphan}" in report


@pytest.mark.dead_run
def test_cli_up_survives_clean_until_down(tmp_path):
    name = f"cli_{journal.current().run_id}"
    shutil.copy(topologies.path("two_host"), tmp_path / f"{name}.yaml")

    def harness(*args: str) -> str:
        return subprocess.run(
            [HARNESS, *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    built = json.loads(harness("topo", "up", str(tmp_path / f"{name}.yaml")))
    try:
        assert name in harness("topo", "ls")
        harness("clean")
        assert (NETNS_RUN_DIR / built["nodes"]["dut"]["netns"]).exists(), "clean removed it"
        interfaces = harness(
            "topo",
            "exec",
            "-t",
            name,
            "dut",
            "--",
            sys.executable,
            "-c",
            "import socket; print(socket.if_nameindex())",
        )
        assert "'ens5'" in interfaces and "veth0" not in interfaces
    finally:
        harness("topo", "down", name)
    assert not any((NETNS_RUN_DIR / n["netns"]).exists() for n in built["nodes"].values())
    assert name not in harness("topo", "ls")


@pytest.fixture
def stand_in_nic():
    """A veth in the host namespace standing in for a real NIC (its peer stays down beside it)."""
    run = journal.current().run_id
    ifname, peer = host_ifname(run, "nic"), host_ifname(run, "wire")
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="veth", mtu=1400, peer={"ifname": peer})
        index = ipr.link_lookup(ifname=ifname)[0]
        try:
            yield ifname
        finally:
            ipr.link("del", index=index)


def nic_state(ifname: str) -> tuple:
    with IPRoute() as ipr:
        (link,) = ipr.link("get", ifname=ifname)
        addresses = sorted(
            f"{a.get('address')}/{a['prefixlen']}" for a in ipr.addr("dump", index=link["index"])
        )
    disable_ipv6 = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").read_text().strip()
    return link.get("mtu"), link.get("operstate"), addresses, offload(ifname, "gro"), disable_ipv6


def check_bound_and_restored(topology, name: str, nic: str) -> None:
    """The end marked real_nic: nic becomes ``nic`` in the host namespace, with the end's settings;
    the far node is not built; ``down()`` puts the NIC back exactly as it was."""
    before = nic_state(nic)
    topo = topology(name, nic=nic)
    (end,) = [e for link in topo.spec.links for e in link.ends if e.real_nic is NicRole.NIC]
    (far,) = [link.peer_of(end).node for link in topo.spec.links if end in link.ends]
    assert far not in topo.nodes, f"{far} (the far side of the wire) should not be built"
    node = topo.node(end.node)
    assert node.netns is None and node.ifname(end.ifname) == nic
    mtu, _, addresses, gro, _ = nic_state(nic)
    assert end.mtu is None or mtu == end.mtu
    assert {str(a) for a in end.addresses} <= set(addresses)
    assert end.offloads.gro is None or gro == end.offloads.gro
    topo.down()
    assert nic_state(nic) == before, "the NIC was not restored as it was"


@pytest.mark.parametrize("name", ["two_host", "bng_l2", "mirror_vxlan"])
def test_stand_in_nic_bound_then_restored(topology, stand_in_nic, name):
    check_bound_and_restored(topology, name, stand_in_nic)


def test_real_nic_bound_then_restored(topology, real_nic):
    check_bound_and_restored(topology, "two_host", real_nic)
