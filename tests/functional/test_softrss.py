"""Soft RSS on ``two_host``: attached natively to the dut's ens5, fed by the xdp injector.

- ``count``: the per-bucket counters equal the model's prediction for the injected frames exactly
  (plus, flow by flow, whatever the injector's kernel sent on its own: IPv6 neighbour discovery).
- ``cpu``: every frame reaches the stack through the CPUMAP, on the CPU of its bucket
  (``SO_INCOMING_CPU`` of the socket that receives the flow).
- ``ifaces``: each bucket's frames leave through their own veth in the dut namespace and arrive,
  all of them and only them, at its peer (counted there by ``xdp_sink``).
"""

from __future__ import annotations

import contextlib
import socket

import pytest
from pyroute2 import IPRoute

from bpf import POSSIBLE_CPUS, netns
from bpf.netns import silence_ipv6
from bpf.softrss import Action, Config, SoftRss
from bpf.softrss.model import Model
from harness.counters import delta, interface_stats, settled
from harness.sink import FrameClass, Sink
from injector import templates
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

DUT_MAC, INJECTOR_MAC = "02:00:00:00:01:02", "02:00:00:00:01:01"
ADDRESSED = {"eth_src": INJECTOR_MAC, "eth_dst": DUT_MAC}
SO_INCOMING_CPU, SO_RCVBUFFORCE = 49, 33  # asm-generic/socket.h; Python's socket module lacks them


def inject(program, injector: str) -> list[bytes]:
    frames = list(program.packets())
    with XdpSender(program, "veth0", injector) as sender:
        report = sender.send(count=len(frames), rate_pps=20_000)
    assert report.packets == len(frames) and report.aborted == 0
    return frames


def test_count_mode_buckets_equal_the_model(two_host):
    injector, dut = two_host
    config = Config(buckets=4, threshold_packets=15)
    spec = TrafficSpec(
        templates.udp4(**ADDRESSED),
        vary=(
            Vary("IP.src", Range("10.0.5.1", "10.0.5.40")),
            Vary("UDP.sport", Range(2000, 2039)),
        ),
        flows=40,
        count=800,
    )
    model = Model(config)
    with SoftRss(config) as rss:
        rss.attach("ens5", dut)
        frames = inject(spec.resolve(), injector)
        for frame in frames:
            model.feed(frame)
        settled(lambda: rss.bucket_stats().total_packets, len(frames))
        report, flows, elephants = rss.bucket_stats(), rss.flows(), rss.elephants()

    # The injector's kernel talks too (IPv6 ND and MLD): its flows are in the table, each in its bucket.
    others = [f for f in flows if f.key not in model.flows]
    expected = [[b.packets, b.bytes, b.flows] for b in model.buckets]
    for f in others:
        expected[f.bucket][0] += f.packets
        expected[f.bucket][1] += f.bytes
        expected[f.bucket][2] += 1
    got = [[b.packets, b.bytes, b.flows] for b in report.buckets]
    assert got == expected, (
        f"per bucket [packets, bytes, flows]: kernel {got}, model {expected} "
        f"(with {len(others)} flows of the injector's own kernel: {[str(f.key) for f in others]})"
    )
    ours = {f.key: f for f in flows if f.key in model.flows}
    assert {k: (f.hash, f.bucket, f.packets) for k, f in ours.items()} == {
        k: (f.hash, f.bucket, f.packets) for k, f in model.flows.items()
    }
    assert sorted(e.key for e in elephants if e.key in model.flows) == sorted(model.elephants)
    assert len(model.elephants) == 40, "each flow got 20 packets: all crossed 15, once"


SOURCE_PORT = 1024  # templates.udp4's


def _udp_socket(dut: str, port: int) -> socket.socket:
    with netns.entered(dut):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # An XDP frame becomes a page-sized skb: the default buffer holds ~50 of them.
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    sock.bind(("10.0.0.2", port))
    # Connected: only then does UDP record the CPU each datagram was received on.
    sock.connect(("10.0.0.1", SOURCE_PORT))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> int:
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(2048)
            n += 1
    return n


def test_cpu_mode_delivers_each_bucket_on_its_cpu(two_host):
    if POSSIBLE_CPUS < 2:
        pytest.skip("the cpu action needs two CPUs to show steering")
    injector, dut = two_host
    config = Config(buckets=2, action=Action.CPU, threshold_packets=0)
    # One destination port per flow: pick flows until each bucket has two.
    by_bucket: dict[int, list[int]] = {0: [], 1: []}
    port = 6000
    while min(len(v) for v in by_bucket.values()) < 2:
        frame = bytes(templates.udp4(dport=port, **ADDRESSED))
        bucket = Model(config).feed(frame).bucket
        if len(by_bucket[bucket]) < 2:
            by_bucket[bucket].append(port)
        port += 1
    ports = sorted(p for v in by_bucket.values() for p in v)
    per_flow = 200
    sockets = {p: _udp_socket(dut, p) for p in ports}
    try:
        with SoftRss(config) as rss:
            rss.set_cpus([0, 1])
            rss.attach("ens5", dut)
            spec = TrafficSpec(
                templates.udp4(**ADDRESSED),
                vary=(Vary("UDP.dport", Range(ports[0], ports[-1])),),
                count=per_flow * (ports[-1] - ports[0] + 1),
            )
            inject(spec.resolve(), injector)
            received = dict.fromkeys(ports, 0)

            def total() -> int:
                for p, s in sockets.items():
                    received[p] += _drain(s)
                return sum(received.values())

            settled(total, per_flow * len(ports))
        assert received == dict.fromkeys(ports, per_flow), "CPUMAP redirect lost or added frames"
        for bucket, bucket_ports in by_bucket.items():
            for p in bucket_ports:
                cpu = sockets[p].getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU)
                assert cpu == bucket, f"port {p} is in bucket {bucket}, handled on CPU {cpu}"
    finally:
        for s in sockets.values():
            s.close()


def test_ifaces_mode_fans_each_bucket_out_to_its_interface(two_host):
    injector, dut = two_host
    config = Config(buckets=3, action=Action.IFACES, threshold_packets=0)
    names = [f"rss{b}" for b in range(config.buckets)]
    with netns.entered(dut), IPRoute() as ipr:
        for name in names:
            ipr.link("add", ifname=name, kind="veth", peer=f"{name}p")
            for end in (name, f"{name}p"):
                ipr.link("set", index=ipr.link_lookup(ifname=end)[0], state="up")
    spec = TrafficSpec(
        templates.udp4(**ADDRESSED),
        vary=(Vary("UDP.sport", Range(3000, 3059)),),
        count=600,
    )
    model = Model(config)
    with contextlib.ExitStack() as stack:
        # An XDP program on each receiving peer: a veth drops redirected frames silently when its
        # peer has neither XDP nor GRO (PLATFORM trap 4); xdp_sink also counts what arrives.
        sinks = [stack.enter_context(Sink(f"{name}p", dut)) for name in names]
        rss = stack.enter_context(SoftRss(config))
        rss.set_ifaces(names, dut)
        rss.attach("ens5", dut)
        frames = inject(spec.resolve(), injector)
        for frame in frames:
            model.feed(frame)
        expected = [b.packets for b in model.buckets]
        got = [sink.settled(FrameClass.IPV4, n) for sink, n in zip(sinks, expected, strict=True)]
    assert sum(expected) == len(frames)
    assert got == expected, f"IPv4 frames per bucket interface: got {got}, model {expected}"


RACE_ATTEMPTS = 3


def race_once(config: Config, program, count: int, injector: str, dut: str):
    """Both injector workers' ``count`` frames through a fresh soft RSS on ens5: veth0's drops, the
    flows by key, the per-CPU bucket counters, the misses."""
    with SoftRss(config) as rss:
        rss.attach("ens5", dut)
        before = interface_stats("veth0", injector)
        with XdpSender(program, "veth0", injector) as sender:
            report = sender.send(count=count, workers=2, batch=64)
        assert report.packets == count and report.aborted == 0, report
        dropped = delta(before, interface_stats("veth0", injector))["tx_dropped"]
        settled(lambda: rss.bucket_stats().total_packets, count - dropped)
        flows = {f.key: f for f in rss.flows()}
        per_cpu = [rss.obj.maps["buckets"][b] for b in range(config.buckets)]
        return dropped, flows, per_cpu, rss.misses()


def test_two_senders_meeting_the_same_new_flows_on_two_queues_count_each_once(two_host):
    """Two injector workers, pinned to the two CPUs and started together, send the same 20,000 new
    flows in the same order flat out; each CPU's frames reach ens5's XDP on a receive queue of its
    own, on that CPU, so both CPUs meet each new flow at about the same time. Each flow must be
    counted new once, in its bucket, with every packet and byte from both. How many inserts
    collide in the same instant depends on the senders' phase (a planted BPF_ANY insert failed
    this test in 3 runs of 3 alone, 1 of 2 beside other tests); tests/unit/test_softrss.py's
    lockstep test makes them collide on purpose.

    Flat out on a loaded machine veth0 drops what ens5's 256-frame ring cannot take (11,425 frames
    of 80,000 in a run beside other tests), and no sender can say which. So the judgment needs
    not all of them: what arrived is what veth0 did not drop, exactly; each flow holds at most the
    model's packets (none, if all four were dropped), of the model's size, in the model's bucket;
    and the data plane's two ledgers agree bucket by bucket, the packets its flows hold with the
    packets it counted and its flows with the new flows it counted. A lost insert race shows as
    packets counted in no flow, a flow counted new twice as one new flow too many. A send whose
    frames one CPU took nearly all (its NAPI polling both queues) ran no race and is sent again.
    With nothing dropped, every flow is the model's."""
    injector, dut = two_host
    silence_ipv6("veth0", injector)  # only our flows: exact per-bucket counts
    silence_ipv6("ens5", dut)
    n_flows, laps = 20_000, 2
    config = Config(buckets=8, threshold_packets=0)
    spec = TrafficSpec(
        templates.udp4(**ADDRESSED),
        vary=(Vary("UDP.sport", Range(1024, 1024 + n_flows - 1)),),
        flows=n_flows,
        count=2
        * laps
        * n_flows,  # worker w sends packets [w * laps * n_flows, ...): the same flows
    )
    program = spec.resolve()
    frames = list(program.packets())
    model = Model(config)
    for frame in frames:
        model.feed(frame)
    for attempt in range(1, RACE_ATTEMPTS + 1):
        dropped, flows, per_cpu, misses = race_once(config, program, len(frames), injector, dut)
        counted = [sum(cpus[cpu].packets for cpus in per_cpu) for cpu in range(POSSIBLE_CPUS)]
        created = [sum(cpus[cpu].flows for cpus in per_cpu) for cpu in range(POSSIBLE_CPUS)]
        ledgers = f"packets per CPU {counted}, new flows per CPU {created}, misses {misses}"
        assert sum(counted) == len(frames) - dropped, (
            f"{len(frames)} sent, {dropped} dropped: {ledgers}"
        )
        if sorted(counted)[-2] >= sum(counted) // 4:
            break
        # One CPU's NAPI took both queues (seen on a loaded machine: 64 frames on the other):
        # no race was run, so nothing to judge; send again.
        assert attempt < RACE_ATTEMPTS, f"{ledgers}: both CPUs must have counted, {attempt} tries"
    assert flows.keys() <= model.flows.keys(), "only our flows: the links are quiet"
    wrong = {
        str(key): ((f.packets, f.bytes, f.bucket), (want.packets, want.bytes, want.bucket))
        for key, f in flows.items()
        if not (
            f.bucket == (want := model.flows[key]).bucket
            and 1 <= f.packets <= want.packets
            and f.bytes * want.packets == want.bytes * f.packets
        )
    }
    assert not wrong, f"(kernel, model) of {len(wrong)} flows: {dict(list(wrong.items())[:5])}"
    in_table = [[0, 0] for _ in range(config.buckets)]
    for f in flows.values():
        in_table[f.bucket][0] += f.packets
        in_table[f.bucket][1] += 1
    in_buckets = [[sum(c.packets for c in cpus), sum(c.flows for c in cpus)] for cpus in per_cpu]
    assert in_table == in_buckets, (
        f"per bucket [packets, flows]: the flow table holds {in_table}, the buckets counted "
        f"{in_buckets}; {ledgers}"
    )
    if not dropped:
        assert flows.keys() == model.flows.keys()
        assert all(f.packets == model.flows[key].packets for key, f in flows.items())
