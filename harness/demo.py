"""The main job on the embedded default topology (``harness run demo``, ``tox -e demo``).

It builds ``two_host`` (injector <-> dut over a veth pair), then ``bng_l2`` (injector <-> an L2
PPPoE node), then ``mirror_vxlan`` (mirror -> dut's ens5, dut's ens6 -> collector), runs eight
checks end to end on the real kernel, prints a verdict line for each with its figures, and tears
everything down:

1. crafted traffic: every template (UDP/TCP/ICMP over IPv4 and IPv6, 802.1Q, PPPoE session and
   discovery, VXLAN) sent with scapy arrives at the dut intact, compared as multisets;
2. the field engine: a 1000-flow IMIX spec made by the in-kernel engine (``BPF_PROG_TEST_RUN``) is
   byte-identical to Python's expansion over a whole period;
3. rate: the xdp injector sends flat out into the dut's XDP sink; sent = arrived + dropped exactly,
   and the rate is reported;
4. soft RSS (``bpf/softrss``): attached natively to the dut's ens5 in ``count`` mode, fed one period
   of the 1000-flow spec by the xdp injector, puts every flow in the bucket the model predicts, with
   its packets; the balance over the buckets is reported;
5. flow metrics (``bpf/flowmon``): a per-CPU hash at the dut's ens5 XDP, fed one period of the same
   spec, holds every flow with the packets and bytes the model predicts, nothing missed;
6. the traffic counter (``bpf/trafcount``) at the dut's ens5 XDP, keyed on the source as the seed,
   holds every address of the spec with the packets and bytes the model predicts;
7. PF_PACKET RPS (``bpf/pfrps``) on ``bng_l2``: the seed's 25,000 PPPoE discovery frames reach 8
   worker sockets, through the seed's per-socket filters and through one PACKET_FANOUT_EBPF group,
   each worker getting exactly the model's count, every frame whole;
8. the VXLAN pipeline (``bpf/vxlan``), redirect mode on mirror_vxlan: of five mirrored frames (an
   allowlisted TCP flow that NAT rewrites, allowlisted UDP, a flow off the allowlist, another
   session's VNI, the host's own UDP), the collector receives exactly what the model predicts, and
   the kernel's counters equal the model's and balance (every frame passed, forwarded or dropped).

Each data plane adds its own checks here as it lands. Not for: benchmarks (``tox -e perf`` measures
against baselines, with repeats) or tests (``tox``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bpf import XdpMode, vxlan
from bpf.flowmon.demo import check_flowmon
from bpf.netns import silence_ipv6
from bpf.pfrps.demo import check_pfrps
from bpf.softrss import Config, SoftRss
from bpf.softrss.model import Model
from bpf.trafcount.demo import check_trafcount
from harness.capture import Capture
from harness.compare import compare
from harness.counters import delta, interface_stats, pin_neighbour, silence_ipv6_everywhere
from harness.sink import FrameClass, Sink
from harness.topology import Topology
from injector import templates
from injector.scapy_backend import send_packets
from injector.spec import Imix, Random, Range, TrafficSpec, Values, Vary
from injector.xdp import PACED_BATCH, FieldEngine, XdpSender

_CHATTER = (b"\x86\xdd", b"\x08\x06")  # the injector kernel's own IPv6 ND/MLD and ARP


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    figures: dict


def _injected_by(mac: bytes) -> Callable[[bytes], bool]:
    return lambda frame: frame[6:12] == mac and frame[12:14] not in _CHATTER


def check_templates(injector: str, dut: str, macs: dict[str, str]) -> Check:
    addressed = {"eth_src": macs["injector"], "eth_dst": macs["dut"]}
    frames = [
        bytes(t)
        for t in (
            templates.udp4(**addressed),
            templates.tcp4(**addressed),
            templates.icmp4(**addressed),
            templates.udp4(vlan=100, **addressed),
            templates.pppoe_session(**addressed),
            templates.padi(eth_src=macs["injector"]),
            templates.vxlan(templates.udp4(), **addressed),
        )
    ]
    mac = bytes.fromhex(macs["injector"].replace(":", ""))
    with Capture("ens5", netns=dut, match=_injected_by(mac)) as capture:
        send_packets(frames, "veth0", injector)
        got = [f.data for f in capture.frames(len(frames), timeout=3.0) if not f.outgoing]
    result = compare(frames, got)
    return Check(
        "crafted templates arrive intact",
        result.ok,
        result.report(),
        {"templates": len(frames), "received": result.received},
    )


def flows_spec(macs: dict[str, str]) -> TrafficSpec:
    return TrafficSpec(
        templates.udp4(eth_src=macs["injector"], eth_dst=macs["dut"], dst="10.0.0.2"),
        vary=(
            Vary("IP.src", Range("10.0.1.1", "10.0.4.232")),
            Vary("UDP.sport", Random(1024, 65535)),
            Vary("UDP.dport", Values((53, 123, 443, 5001))),
        ),
        flows=1000,
        sizes=Imix(((64, 7), (594, 4), (1514, 1))),
    )


def check_field_engine(spec: TrafficSpec) -> Check:
    program = spec.resolve()
    with FieldEngine(program) as engine:
        start = time.perf_counter()
        mismatched = [i for i in range(program.period) if engine.render(i) != program.packet(i)]
        seconds = time.perf_counter() - start
    return Check(
        "in-kernel field engine matches Python's expansion",
        not mismatched,
        f"{program.period} packets compared, {len(mismatched)} differ"
        + (f" (first: packet {mismatched[0]})" if mismatched else ""),
        {"packets": program.period, "flows": program.flows, "seconds": round(seconds, 3)},
    )


def check_rate(
    injector: str, dut: str, spec: TrafficSpec, packets: int, macs: dict[str, str]
) -> Check:
    silence_ipv6("veth0", injector)  # exact counts need a quiet link (bpf.netns)
    pin_neighbour("ens5", "10.0.0.1", macs["injector"], dut)
    with Sink("ens5", dut) as sink, XdpSender(spec.resolve(), "veth0", injector) as sender:
        before = interface_stats("veth0", injector)
        report = sender.send(count=packets)
        arrived = sink.settled(FrameClass.IPV4, packets)
        dropped = delta(before, interface_stats("veth0", injector))["tx_dropped"]
    accounted = arrived + dropped == report.packets
    return Check(
        "xdp injector at full rate, every packet accounted for",
        accounted and report.aborted == 0,
        f"sent {report.packets:,}, arrived {arrived:,}, dropped (counted) {dropped:,}, "
        f"{report.pps / 1e6:.2f} Mpps",
        {
            "sent": report.packets,
            "arrived": arrived,
            "dropped": dropped,
            "mpps": round(report.pps / 1e6, 3),
        },
    )


def check_softrss(injector: str, dut: str, spec: TrafficSpec) -> Check:
    config = Config(buckets=8, threshold_packets=0)
    program = spec.resolve()
    model = Model(config)
    for i in range(program.period):
        model.feed(program.packet(i))
    with SoftRss(config) as rss:
        rss.attach("ens5", dut)
        with XdpSender(program, "veth0", injector) as sender:
            sender.send(count=program.period, batch=PACED_BATCH)
        # Frames are counted when the sender's call returns (the dut's NAPI runs on its CPU); the
        # injector's own kernel may add a few IPv6 flows, which are not ours to compare.
        deadline = time.monotonic() + 3.0
        while True:
            ours = [f for f in rss.flows() if f.key in model.flows]
            if sum(f.packets for f in ours) >= program.period or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        report = rss.bucket_stats()
    got = [[0, 0] for _ in range(config.buckets)]
    for flow in ours:
        got[flow.bucket][0] += flow.packets
        got[flow.bucket][1] += 1
    expected = [[b.packets, b.flows] for b in model.buckets]
    return Check(
        "soft RSS puts every flow in the model's bucket",
        got == expected,
        f"{len(model.flows)} flows, {program.period:,} packets over {config.buckets} buckets; "
        f"packets max/mean {report.packets.max_over_mean:.3f} (stddev "
        f"{report.packets.stddev:.1f}), flows max/mean {report.flows.max_over_mean:.3f}"
        + (
            "" if got == expected else f"\nper bucket [packets, flows]: got {got}, model {expected}"
        ),
        {
            "buckets": config.buckets,
            "packets_per_bucket": [g[0] for g in got],
            "flows_per_bucket": [g[1] for g in got],
            "packets_max_over_mean": round(report.packets.max_over_mean, 3),
            "flows_max_over_mean": round(report.flows.max_over_mean, 3),
        },
    )


def mirrored_frames(macs: dict[str, str]) -> list[bytes]:
    """What an AWS mirror session might deliver to ens5: allowlisted TCP (NATed) and UDP, a flow
    that is not allowlisted, another mirror session's VNI, and the host's own traffic."""
    outer = {"vni": 42, "outer_src": "10.1.0.1", "outer_dst": "10.1.0.2"}
    outer |= {"eth_src": macs["mirror"], "eth_dst": macs["dut"]}
    inner = {"eth_src": "02:00:00:00:2a:01", "eth_dst": "02:00:00:00:2a:02"}
    frames = [
        templates.vxlan(templates.tcp4("10.0.0.1", "198.51.100.7", dport=80, **inner), **outer),
        templates.vxlan(templates.udp4("198.51.100.8", "10.0.0.1", dport=53, **inner), **outer),
        templates.vxlan(templates.udp4("198.51.100.9", "203.0.113.1", **inner), **outer),
        templates.vxlan(templates.udp4("10.0.0.1", "198.51.100.7", **inner), **outer | {"vni": 7}),
        templates.udp4(
            "10.1.0.1", "10.1.0.2", dport=7, eth_src=macs["mirror"], eth_dst=macs["dut"]
        ),
    ]
    return [bytes(f) for f in frames]


def check_vxlan(macs: dict[str, str], mirror: str, dut: str, collector: str) -> Check:
    pin_neighbour("ens5", "10.1.0.1", macs["mirror"], dut)
    frames = mirrored_frames(macs)
    egress_mac = bytes.fromhex(macs["dut_egress"].replace(":", ""))
    with vxlan.VxlanPipeline(vxlan.Config(mode=vxlan.Mode.REDIRECT, vni=42)) as vx:
        vx.set_allowlist(vxlan.Allowlist.of(["10.0.0.0/24"]))
        vx.add_nat(80, "10.2.0.2", 8080)
        vx.set_egress("ens6", macs["collector"], dut)
        vx.attach("ens5", dut, XdpMode.NATIVE)
        model = vxlan.Model(vx.config, egress=vx.egress())
        model.prefixes = set(vx.allowlist().prefixes)
        model.nat = vx.nat_rules()
        expected = [out.frame for out in map(model.feed, frames) if out.frame is not None]
        with Capture("eth0", netns=collector, match=lambda f: f[6:12] == egress_mac) as capture:
            send_packets(frames, "eth0", mirror)
            got = [f.data for f in capture.frames(len(expected), timeout=3.0) if not f.outgoing]
        stats = vx.stats()
    result = compare(expected, got)
    counts_agree = stats.counts() == model.stats
    passed = result.ok and counts_agree and stats.balanced
    detail = (
        f"{len(frames)} mirrored frames: {stats.forwarded} forwarded (as the model predicts: "
        f"{'yes' if result.ok else 'no'}), {stats.passed} passed, {stats.dropped} dropped "
        f"({', '.join(f'{r} {n}' for r, n in stats.drops.items() if n)}); counters "
        + ("balanced and equal to the model's" if counts_agree and stats.balanced else "WRONG")
    )
    if not result.ok:
        detail += "\n" + result.report()
    if not counts_agree:
        detail += f"\nkernel {stats.counts()}\nmodel  {model.stats}"
    return Check("VXLAN pipeline forwards what the model predicts", passed, detail, stats.counts())


def run(packets: int = 2_000_000) -> list[Check]:
    with Topology.load("two_host") as topo:
        injector, dut = topo.node("injector").netns, topo.node("dut").netns
        macs = {end.node: end.mac for link in topo.spec.links for end in link.ends}
        spec = flows_spec(macs)
        checks = [
            check_templates(injector, dut, macs),
            check_field_engine(spec),
            check_rate(injector, dut, spec, packets, macs),
            check_softrss(injector, dut, spec),
            Check(
                "flow metrics count each flow as the model says",
                *check_flowmon(injector, dut, spec),
            ),
            Check(
                "traffic counter counts each address as the model says",
                *check_trafcount(injector, dut, spec),
            ),
        ]
    with Topology.load("bng_l2") as topo:
        injector, bng = topo.node("injector").netns, topo.node("bng").netns
        checks.append(
            Check("PF_PACKET RPS puts each MAC on the model's worker", *check_pfrps(injector, bng))
        )
    with Topology.load("mirror_vxlan") as topo:
        ends = [end for link in topo.spec.links for end in link.ends]
        macs = {end.node: end.mac for end in ends if end.node != "dut"}
        macs |= {"dut": next(e.mac for e in ends if e.ifname == "ens5")}
        macs |= {"dut_egress": next(e.mac for e in ends if e.ifname == "ens6")}
        # The pipeline's counters must see only the check's frames: the mirror's vxlan0 would
        # encapsulate its own kernel's IPv6 chatter too.
        silence_ipv6_everywhere(topo)
        nodes = (topo.node(name).netns for name in ("mirror", "dut", "collector"))
        checks.append(check_vxlan(macs, *nodes))
    return checks


def main(packets: int, as_json: bool) -> int:
    started = time.perf_counter()
    checks = run(packets)
    seconds = time.perf_counter() - started
    if as_json:
        print(json.dumps({"checks": [asdict(c) for c in checks], "seconds": round(seconds, 2)}))
    else:
        for check in checks:
            print(
                f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail.splitlines()[0]}"
            )
            for line in check.detail.splitlines()[1:]:
                print(f"      {line}")
        verdict = "PASS" if all(c.passed for c in checks) else "FAIL"
        print(f"{verdict}: {sum(c.passed for c in checks)}/{len(checks)} checks in {seconds:.1f} s")
    return 0 if all(c.passed for c in checks) else 1
