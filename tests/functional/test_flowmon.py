"""Flow metrics on ``two_host``: live traffic, counted at XDP on the dut's ens5 and at TC.

- Injected flows (the xdp injector, IPv4 and IPv6), in every storage: per flow, packets and bytes
  exactly the model's for the frames sent, with two generator workers sending the same flows at
  once into ens5's two rx queues, so that both CPUs count the same flows (checked: with a per-CPU
  table each CPU holds a share).
- Real TCP through both stacks: at TC egress on the sender's veth0 the GSO packets count as the
  segments TCP says it sent (``tcpi_segs_out``), at TC ingress on the receiver as the segments TCP
  says it received (``tcpi_segs_in``), with the same bytes at both ends; veth0's own counters show
  fewer packets than segments, so GSO did happen.
- A reader that reopens the pins finds the counts, and goes on counting.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from bpf import POSSIBLE_CPUS, netns
from bpf.attach import ifindex, pin_name
from bpf.flowmon import Config, FlowMon, Hook, Model, Storage
from bpf.flowmon.demo import check_flowmon
from bpf.netns import silence_ipv6
from harness.counters import delta, interface_stats, settled
from injector import templates
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

ADDRESSED = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
FLOWS, FRAMES = 40, 2000
TCP_INFO_SEGS = struct.Struct("=II")  # struct tcp_info: tcpi_segs_out, tcpi_segs_in
TCP_INFO_SEGS_OFFSET = 136
TCP_BYTES = 4 << 20


def specs() -> list[TrafficSpec]:
    """40 IPv4 and 40 IPv6 UDP flows of varied sizes, sent round-robin."""
    v4 = TrafficSpec(
        templates.udp4(**ADDRESSED, payload=b"4" * 100),
        vary=(Vary("IP.src", Range("10.0.5.1", "10.0.5.40")), Vary("UDP.sport", Range(2000, 2039))),
        flows=FLOWS,
        count=FRAMES,
    )
    v6 = TrafficSpec(
        templates.udp6(**ADDRESSED, payload=b"6" * 333),
        vary=(Vary("UDP.sport", Range(3000, 3039)),),
        flows=FLOWS,
        count=FRAMES,
    )
    return [v4, v6]


def inject(injector: str, workers: int) -> list[bytes]:
    """Send every spec's frames into veth0 (its peer: the dut's ens5); the frames sent."""
    sent = []
    for spec in specs():
        program = spec.resolve()
        frames = list(program.packets())
        with XdpSender(program, "veth0", injector) as sender:
            report = sender.send(count=len(frames), rate_pps=40_000, workers=workers)
        assert report.packets == len(frames) and report.aborted == 0, report
        sent += frames
    return sent


def by_flow(fm: FlowMon) -> dict:
    return {f.key: (f.packets, f.bytes) for f in fm.flows()}


@pytest.mark.parametrize("storage", list(Storage), ids=lambda s: s.value)
def test_injected_flows_exact_with_two_workers_on_two_queues(two_host, storage):
    injector, dut = two_host
    config = Config(storage=storage, entries=4096)
    model = Model(config)
    with FlowMon(config) as fm:
        fm.attach("ens5", [Hook.XDP], dut)
        frames = inject(injector, workers=2)
        got = settled(lambda: by_flow(fm), still=0.1)
        per_cpu = packets_per_cpu(fm) if storage.percpu else []
        misses = fm.misses()
    ens5 = ifindex("ens5", dut)
    for frame in frames:
        model.feed(frame, Hook.XDP, ens5)
    model.drain()
    want = {k: (c.packets, c.bytes) for k, c in model.flows.items()}
    ours = {k: got.get(k) for k in want}
    assert ours == want, (
        f"{storage.value}: per flow (packets, bytes) differ from the {len(frames)} frames sent; "
        f"kernel {ours}, model {want}"
    )
    assert len(want) == 2 * FLOWS and not any(misses.values()), misses
    if storage.percpu:
        assert len([n for n in per_cpu if n]) == 2, (
            f"both CPUs must have counted (packets per CPU: {per_cpu}): two queues, two workers"
        )


def packets_per_cpu(fm: FlowMon) -> list[int]:
    """Packets each CPU counted in a per-CPU table (raw values, before the reader sums them)."""
    totals = [0] * POSSIBLE_CPUS
    tables = ("slots4", "slots6") if fm.config.storage.array else ("flows4", "flows6")
    for name in tables:
        for _, values in fm.obj.maps[name].items():
            for cpu, v in enumerate(values):
                totals[cpu] += v.stats.packets if fm.config.storage.array else v.packets
    return totals


def _tcp_segs(sock: socket.socket) -> tuple[int, int]:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return TCP_INFO_SEGS.unpack_from(info, TCP_INFO_SEGS_OFFSET)


def _transfer(injector: str, dut: str) -> tuple[int, int, int]:
    """TCP_BYTES from the injector (10.0.0.1) to the dut (10.0.0.2): the client's port, the
    client's segments sent and the server's segments received, once both ends closed."""
    with netns.entered(dut):
        listener = socket.create_server(("10.0.0.2", 0))
    port = listener.getsockname()[1]
    server_segs: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while conn.recv(1 << 16):
                pass
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)  # the client's last ACK
            server_segs.append(_tcp_segs(conn)[1])

    server = threading.Thread(target=serve)
    server.start()
    with netns.entered(injector):
        client = socket.create_connection(("10.0.0.2", port))
    with client:
        client.sendall(b"t" * TCP_BYTES)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b"", "the server closes after reading everything"
        server.join(timeout=10)
        sport = client.getsockname()[1]
        client_segs = _tcp_segs(client)[0]
    listener.close()
    return sport, client_segs, server_segs[0]


@pytest.mark.parametrize("storage", [Storage.HASH, Storage.PERCPU_HASH, Storage.RINGBUF])
def test_tc_counts_gso_packets_as_their_segments(two_host, storage):
    injector, dut = two_host
    config = Config(storage=storage, ring_bytes=1 << 24)
    with FlowMon(config) as sender, FlowMon(config) as receiver:
        sender.attach("veth0", [Hook.TC_EGRESS], injector)
        receiver.attach("ens5", [Hook.TC_INGRESS], dut)
        before = interface_stats("veth0", injector)
        sport, segs_out, segs_in = _transfer(injector, dut)
        skbs = delta(before, interface_stats("veth0", injector))["tx_packets"]

        def data_flow(fm: FlowMon):
            (flow,) = [f for f in fm.flows() if f.key.sport == sport and f.key.dport != 0]
            return flow

        out, into = data_flow(sender), data_flow(receiver)
    assert out.packets == segs_out, (
        f"TC egress counted {out.packets} packets, TCP sent {segs_out} segments"
    )
    assert into.packets == segs_in, (
        f"TC ingress counted {into.packets} packets, TCP received {segs_in} segments"
    )
    assert out.bytes == into.bytes and out.packets == into.packets, "one wire, both ends"
    assert out.bytes >= TCP_BYTES + out.packets * (14 + 20 + 20), "payload plus every header"
    assert skbs < segs_out / 2, (
        f"veth0 sent {skbs} skbs for {segs_out} segments: no GSO happened, the test tests nothing"
    )


def test_reopened_pins_keep_the_counts_and_go_on(two_host):
    injector, dut = two_host
    # Only the test's frames: a router solicitation between the two readings is a flow the first
    # never saw (a fresh-clone run failed so).
    silence_ipv6("veth0", injector)
    silence_ipv6("ens5", dut)
    name = pin_name("ens5", dut)
    config = Config(storage=Storage.LRU_PERCPU_HASH)
    try:
        with FlowMon(config) as first:
            first.pin(name)
            first.attach("ens5", [Hook.XDP], dut)
            frames = inject(injector, workers=1)
            before = settled(lambda: by_flow(first), still=0.1)
        with FlowMon.reopen(name) as second:
            assert by_flow(second) == before, "the reader restarted: the counts are the same"
            second.attach("ens5", [Hook.XDP], dut)
            frames += inject(injector, workers=1)
            after = settled(lambda: by_flow(second), still=0.1)
    finally:
        FlowMon.unpin(name)
    ours = {k for k in before if k.sport >= 2000}
    assert len(ours) == 2 * FLOWS
    assert all(after[k] == (2 * before[k][0], 2 * before[k][1]) for k in ours), (
        "the same frames sent again doubled every flow's counts"
    )
    assert sum(after[k][0] for k in ours) == len(frames)


def test_demo_check_passes_on_two_host(two_host):
    injector, dut = two_host
    spec = TrafficSpec(
        templates.udp4(**ADDRESSED),
        vary=(Vary("UDP.sport", Range(1000, 1999)),),
        flows=1000,
        count=1000,
    )
    passed, detail, figures = check_flowmon(injector, dut, spec)
    assert passed, detail
    assert figures["flows"] == 1000 and figures["packets"] == 1000
