"""Attaching programs on the real kernel (``bpf.attach``), on ``two_host``: each attachment is checked
where the kernel shows it (netlink, the socket's queue), on traffic, and after it is gone.

Frames are sent from the injector's veth0 to the dut's ens5 (and, for TC egress, out of ens5) with
destination MACs nobody else uses, so the counters and sockets tell them from the kernels' own frames
(IPv6 ND/MLD, ARP). The programs count in ``by_key``, keyed by the first 8 bytes of the frame
(destination MAC, first byte of the source MAC). Killed owners are played by a child process.
"""

from __future__ import annotations

import errno
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

import bpf
from bpf import TcDirection, XdpMode, netns
from harness.capture import Capture
from harness.topology import Node
from injector.scapy_backend import send_packets

SELFTEST = Path(bpf.__file__).parent / "selftest"
HARNESS = Path(sys.executable).with_name("harness")
INJECTOR_MAC = "02:00:00:00:01:01"
DUT_MAC = "02:00:00:00:01:02"
TO_DUT = "02:00:00:00:aa:01"  # frames injected towards the dut
FROM_DUT = "02:00:00:00:bb:01"  # frames the dut sends out of ens5
TC_INGRESS, TC_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3  # the clsact parents
XDP_ATTACHED = {XdpMode.NATIVE: "xdp", XdpMode.GENERIC: "xdpgeneric"}  # IFLA_XDP_ATTACHED
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4


@pytest.fixture
def net(topology) -> tuple[Node, Node]:
    topo = topology("two_host")
    return topo.node("injector"), topo.node("dut")


@pytest.fixture
def binding() -> Iterator[bpf.BpfObject]:
    with bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as obj:
        yield obj.load()


# A child that attaches one program to ens5 of a namespace, prints the program's id and waits to be
# killed. Its attachment is its own: the test process holds no reference to the program.
HOLDER = """
import signal, sys
import bpf

path, kind, namespace = sys.argv[1:]
programs = bpf.BpfObject.open(path).load().programs
if kind == "xdp":
    program = programs["xdp_sample"]
    program.attach_xdp("ens5", bpf.XdpMode.GENERIC, namespace)
else:
    program = programs["tc_sample"]
    program.attach_tc("ens5", bpf.TcDirection.INGRESS, namespace)
print(program.info().id, flush=True)
signal.pause()
"""


@pytest.fixture
def holder() -> Iterator[Callable[[str, str], tuple[subprocess.Popen, int]]]:
    """``holder(kind, namespace)`` -> (child, program id) once attached; reaped after the test."""
    children: list[subprocess.Popen] = []

    def start(kind: str, namespace: str) -> tuple[subprocess.Popen, int]:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(SELFTEST / "binding.bpf.c"), kind, namespace],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        line = child.stdout.readline()
        if not line:
            child.wait()
            pytest.fail(f"the child could not attach {kind}: {child.stderr.read()}")
        return child, int(line)

    yield start
    for child in children:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()


def kill9(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()


def frame(dst_mac: str, l3=None, src_mac: str = INJECTOR_MAC) -> bytes:
    """An Ethernet frame to ``dst_mac``; IPv4/UDP to the dut unless ``l3`` says otherwise."""
    return bytes(
        Ether(src=src_mac, dst=dst_mac) / (l3 or IP(src="10.0.0.1", dst="10.0.0.2") / UDP())
    )


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def packets_to(obj: bpf.BpfObject, dst_mac: str) -> int:
    """How many frames to ``dst_mac`` (from a 02:... source) the program counted in ``by_key``."""
    by_key = obj.maps["by_key"]
    head = frame(dst_mac)[:7] + b"\0"  # the key's last byte (pad) is zeroed by the programs
    counters = by_key.lookup(by_key.key_type.from_buffer_copy(head))
    return 0 if counters is None else counters.packets


def eventually(read: Callable[[], object], expected: object, timeout: float = 2.0) -> object:
    """``read()`` once it returns ``expected``, or its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def xdp_attached(node: Node) -> tuple[int, str] | None:
    """(program id, IFLA_XDP_ATTACHED) of ens5 as netlink reports it, or None."""
    with node.ipr() as ipr:
        (link,) = ipr.link("get", ifname="ens5")
    prog_id = link.get_nested("IFLA_XDP", "IFLA_XDP_PROG_ID")
    return (prog_id, link.get_nested("IFLA_XDP", "IFLA_XDP_ATTACHED")) if prog_id else None


def qdiscs(node: Node) -> list[str]:
    with node.ipr() as ipr:
        index = ipr.link_lookup(ifname="ens5")[0]
        return [q.get("TCA_KIND") for q in ipr.get_qdiscs(index=index)]


def tc_filters(node: Node) -> dict[str, list[int]]:
    """Program ids of the BPF filters on ens5's clsact parents (none without a clsact qdisc).

    pyroute2 0.9.7 does not decode TCA_BPF_ID; the id is read from TCA_BPF_NAME, which libbpf sets
    to "name:[id]" of the program it attached.
    """
    found: dict[str, list[int]] = {"ingress": [], "egress": []}
    if "clsact" not in qdiscs(node):
        return found
    with node.ipr() as ipr:
        index = ipr.link_lookup(ifname="ens5")[0]
        for side, parent in (("ingress", TC_INGRESS), ("egress", TC_EGRESS)):
            for tc_filter in ipr.get_filters(index=index, parent=parent):
                name = tc_filter.get_nested("TCA_OPTIONS", "TCA_BPF_NAME")
                if name:
                    found[side].append(int(name.rsplit("[", 1)[1].rstrip("]")))
    return found


# --- XDP -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [XdpMode.NATIVE, XdpMode.GENERIC], ids=lambda m: m.name)
def test_xdp_attach_runs_on_traffic_and_detaches(net, binding, mode):
    injector, dut = net
    program = binding.programs["xdp_sample"]
    with program.attach_xdp("ens5", mode, dut.netns):
        assert xdp_attached(dut) == (program.info().id, XDP_ATTACHED[mode]), (
            f"netlink must show xdp_sample ({program.info().id}) attached in {mode.name} mode"
        )
        send_packets([frame(TO_DUT)] * 5, "veth0", injector.netns)
        counted = eventually(lambda: packets_to(binding, TO_DUT), 5)
        assert counted == 5, f"the attached program counted {counted} of 5 frames sent to ens5"
    assert xdp_attached(dut) is None, "leaving the `with` block must detach the program"
    with Capture("ens5", netns=dut.netns, match=lambda f: f[:6] == mac_bytes(TO_DUT)) as capture:
        send_packets([frame(TO_DUT)] * 3, "veth0", injector.netns)
        assert len(capture.frames(3, timeout=2.0)) == 3, "the frames must reach ens5"
    assert packets_to(binding, TO_DUT) == 5, "a detached program must not count any more frames"


def test_xdp_detached_by_closing_the_object(net):
    _, dut = net
    obj = bpf.BpfObject.open(SELFTEST / "binding.bpf.c").load()
    try:
        obj.programs["xdp_sample"].attach_xdp("ens5", XdpMode.NATIVE, dut.netns)
        assert xdp_attached(dut) is not None
    finally:
        obj.close()
    assert xdp_attached(dut) is None, "closing the object must detach what was attached through it"


@pytest.mark.parametrize("second", [XdpMode.NATIVE, XdpMode.GENERIC], ids=lambda m: m.name)
def test_xdp_second_attach_fails_and_keeps_the_first(net, binding, second):
    _, dut = net
    first = binding.programs["xdp_sample"]
    with (
        first.attach_xdp("ens5", XdpMode.NATIVE, dut.netns),
        bpf.BpfObject.open(SELFTEST / "trivial.bpf.c") as other,
    ):
        other.load()
        with pytest.raises(bpf.LibbpfError) as caught:
            other.programs["xdp_pass"].attach_xdp("ens5", second, dut.netns)
        assert caught.value.errno in (errno.EBUSY, errno.EEXIST)
        message = str(caught.value)
        assert f"ens5@{dut.netns}" in message and "already attached" in message, message
        assert xdp_attached(dut) == (first.info().id, "xdp"), "the first program must stay"


@pytest.mark.parametrize("kind", ["xdp", "tc"])
def test_missing_interface_named_with_its_namespace(net, binding, kind):
    _, dut = net
    with pytest.raises(bpf.LibbpfError) as caught:
        if kind == "xdp":
            binding.programs["xdp_sample"].attach_xdp("nope0", XdpMode.GENERIC, dut.netns)
        else:
            binding.programs["tc_sample"].attach_tc("nope0", TcDirection.INGRESS, dut.netns)
    assert caught.value.errno == errno.ENODEV
    assert f"no interface 'nope0' in network namespace '{dut.netns}'" in str(caught.value)
    assert "clsact" not in qdiscs(dut), "a failed attach must create nothing"


def test_xdp_link_goes_with_its_killed_owner(net, holder):
    _, dut = net
    child, prog_id = holder("xdp", dut.netns)
    assert xdp_attached(dut) == (prog_id, "xdpgeneric")
    kill9(child)
    left = eventually(lambda: xdp_attached(dut), None)
    assert left is None, f"a SIGKILLed owner's XDP link must be released by the kernel: {left}"


# --- TC --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", list(TcDirection), ids=lambda d: d.name)
def test_tc_filter_visible_and_counts_its_direction(net, binding, direction):
    injector, dut = net
    program = binding.programs["tc_count_by_key"]
    with program.attach_tc("ens5", direction, dut.netns) as tc_filter:
        assert tc_filter.prog_id == program.info().id
        expected = {side: [] for side in ("ingress", "egress")}
        expected[direction.name.lower()] = [program.info().id]
        assert tc_filters(dut) == expected
        with Capture("ens5", netns=dut.netns, match=lambda f: f[:6] == mac_bytes(TO_DUT)) as cap:
            send_packets([frame(TO_DUT)] * 3, "veth0", injector.netns)
            assert len(cap.frames(3, timeout=2.0)) == 3, "the frames must reach ens5"
        send_packets([frame(FROM_DUT, src_mac=DUT_MAC)] * 5, "ens5", dut.netns)
        ingress = direction is TcDirection.INGRESS
        got = {
            "in": eventually(lambda: packets_to(binding, TO_DUT), 3 if ingress else 0),
            "out": eventually(lambda: packets_to(binding, FROM_DUT), 0 if ingress else 5),
        }
        assert got == {"in": 3 if ingress else 0, "out": 0 if ingress else 5}, (
            f"an {direction.name} filter counts only the frames of its direction"
        )
    assert tc_filters(dut) == {"ingress": [], "egress": []}


@pytest.mark.parametrize("first", list(TcDirection), ids=lambda d: f"{d.name.lower()}_first")
def test_tc_both_directions_detached_in_either_order(net, binding, first):
    _, dut = net
    program = binding.programs["tc_count_by_key"]
    prog_id = program.info().id
    assert "clsact" not in qdiscs(dut)
    filters = {d: program.attach_tc("ens5", d, dut.netns) for d in TcDirection}
    assert tc_filters(dut) == {"ingress": [prog_id], "egress": [prog_id]}
    filters[first].detach()
    (other,) = set(TcDirection) - {first}
    assert tc_filters(dut) == {first.name.lower(): [], other.name.lower(): [prog_id]}
    assert "clsact" in qdiscs(dut), "the clsact qdisc must stay while one of its filters does"
    filters[other].detach()
    assert "clsact" not in qdiscs(dut), "the binding's clsact qdisc goes with its last filter"


def test_tc_existing_clsact_is_left_in_place(net, binding):
    _, dut = net
    with dut.ipr() as ipr:
        ipr.tc("add", kind="clsact", index=ipr.link_lookup(ifname="ens5")[0])
    program = binding.programs["tc_count_by_key"]
    for direction in TcDirection:
        program.attach_tc("ens5", direction, dut.netns)
    assert tc_filters(dut) == {"ingress": [program.info().id], "egress": [program.info().id]}
    binding.close()
    assert tc_filters(dut) == {"ingress": [], "egress": []}, "closing the object detaches both"
    assert "clsact" in qdiscs(dut), "a clsact qdisc that was there before must be left in place"


def test_tc_failed_attach_leaves_no_clsact(net):
    _, dut = net
    with (
        bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as unloaded,
        pytest.raises(RuntimeError, match="not loaded"),
    ):
        unloaded.programs["tc_sample"].attach_tc("ens5", TcDirection.INGRESS, dut.netns)
    assert "clsact" not in qdiscs(dut), "a clsact qdisc created for a failed attach must go"


@pytest.mark.dead_run
def test_tc_filter_of_a_killed_owner_is_removed_by_harness_clean(net, holder):
    _, dut = net
    child, prog_id = holder("tc", dut.netns)
    assert tc_filters(dut) == {"ingress": [prog_id], "egress": []}
    kill9(child)
    assert tc_filters(dut)["ingress"] == [prog_id], "a TC filter outlives its owner"
    result = subprocess.run([HARNESS, "clean"], capture_output=True, text=True, timeout=30)
    ours = [line for line in result.stdout.splitlines() if f"prog_id={prog_id}," in line]
    assert len(ours) == 1 and ours[0].startswith("removed tc("), (
        f"`harness clean` must undo the dead owner's journal entry:\n{result.stdout}{result.stderr}"
    )
    assert tc_filters(dut) == {"ingress": [], "egress": []}
    assert "clsact" not in qdiscs(dut), "the clsact qdisc the dead owner created goes too"
    assert netns.exists(dut.netns), "the live test's own namespace must be left alone"


# --- sockets ---------------------------------------------------------------------------------------


def packet_socket(node: Node) -> socket.socket:
    """An AF_PACKET socket in the node's namespace; it receives nothing until ``bind_ens5``."""
    with node.entered():
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)


def bind_ens5(sock: socket.socket) -> None:
    sock.bind(("ens5", ETH_P_ALL))


def received(sock: socket.socket, dst_mac: str, count: int, timeout: float) -> list[bytes]:
    """Incoming frames to ``dst_mac``: until ``count`` of them or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    found: list[bytes] = []
    while len(found) < count:
        left = max(0.0, deadline - time.monotonic())
        if not select.select([sock], [], [], left)[0]:
            break
        data, address = sock.recvfrom(65536)
        if address[2] != PACKET_OUTGOING and data[:6] == mac_bytes(dst_mac):
            found.append(data)
    return found


SOCKET_FRAMES = {
    "ipv4 udp": frame(TO_DUT),
    "ipv4 tcp": frame(TO_DUT, IP(src="10.0.0.1", dst="10.0.0.2") / TCP()),
    "ipv6 udp": frame(TO_DUT, IPv6(src="fd00::1", dst="fd00::2") / UDP()),
}


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("socket_accept_all", ["ipv4 udp", "ipv4 tcp", "ipv6 udp"]),
        ("socket_drop_all", []),
        ("socket_ipv4_udp", ["ipv4 udp"]),
    ],
)
def test_socket_filter_decides_what_the_socket_gets(net, binding, name, accepted):
    injector, dut = net
    frames = list(SOCKET_FRAMES.values())
    with packet_socket(dut) as control, packet_socket(dut) as filtered:
        with binding.programs[name].attach_socket(filtered):
            bind_ens5(control)
            bind_ens5(filtered)
            send_packets(frames, "veth0", injector.netns)
            assert received(control, TO_DUT, len(frames), timeout=2.0) == frames
            # Every packet socket got its copy before `control` did: what is queued is all there is.
            got = received(filtered, TO_DUT, len(frames), timeout=0.1)
        assert got == [SOCKET_FRAMES[a] for a in accepted], (
            f"{name}: expected {accepted} whole (the return value is the snap length), got "
            f"{[f.hex() for f in got]}"
        )
        send_packets(frames, "veth0", injector.netns)
        after = received(filtered, TO_DUT, len(frames), timeout=2.0)
        assert after == frames, "a detached filter must let every frame through"


def test_fanout_program_chooses_the_socket(net, binding):
    injector, dut = net
    members = 3
    addresses = [f"10.0.0.{last}" for last in range(10, 22)]
    frames = {a: frame(TO_DUT, IP(src="10.0.0.1", dst=a) / UDP(dport=9)) for a in addresses}
    sockets = [packet_socket(dut) for _ in range(members)]
    try:
        for sock in sockets:
            bind_ens5(sock)
            bpf.join_fanout(sock, 0x4C42, binding.programs["fanout_by_ipv4_daddr"])
        send_packets(frames.values(), "veth0", injector.netns)
        got = [received(sock, TO_DUT, len(frames), timeout=0.5) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    expected = [
        [frames[a] for a in addresses if int(a.rsplit(".")[-1]) % members == member]
        for member in range(members)
    ]
    assert got == expected, (
        "each frame must reach exactly the member the program chose (the destination's last byte "
        f"modulo {members}); per member got {[len(g) for g in got]}, expected "
        f"{[len(e) for e in expected]}"
    )
