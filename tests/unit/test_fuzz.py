"""Fuzz campaigns: every data plane, in the kernel through BPF_PROG_TEST_RUN, against its model.

Each configuration of each data plane gets ``--fuzz-frames`` mutants (``injector.mutate``) of valid
templates: 2,000 in the default ``tox`` run, 100,000 in ``tox -e fuzz``. A frame's verdict and any
frame the kernel sends must be the model's; after each batch the tables and counters must be
too (``harness.fuzz``). A verdict the model does not give (XDP_ABORTED included) is a disagreement.
A disagreement is saved under ``fuzz_cases/`` as a regression case, which every later run replays
before its campaign: commit the file with the fix.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from itertools import cycle
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

import bpf
from bpf import flowmon, pfrps, softrss, trafcount, vxlan
from bpf.pfrps.model import HashAlg, MacSide, Protocols, frame_mac, worker_of
from harness.fuzz import Campaign, Disagreement, replay, saved_cases
from injector import templates
from injector.mutate import Mutant, Mutator, Template

CASES = Path(__file__).with_name("fuzz_cases")
BATCH = 1000  # frames between two table checks (and fresh loads)
PASS = {"xdp": bpf.XdpAction.PASS, "tc": bpf.TcAction.OK}
REFUSED = "refused by test_run"  # a frame no skb hook is given (bpf.Program.test_run_takes)


pytestmark = pytest.mark.usefixtures("one_cpu")  # the models count one CPU (conftest.py)


def _ip_templates() -> dict:
    """Few hosts and ports, so that flows repeat and counts add up; every protocol each plane keys."""
    found = {}
    for host in (1, 2, 3):
        v4, v6 = (
            {"src": f"10.0.0.{host}", "dst": "10.1.0.1"},
            {"src": f"fd00::{host}", "dst": "fd01::1"},
        )
        found |= {
            f"udp4.{host}": templates.udp4(**v4, sport=1000 + host, payload=b"u" * 8),
            f"tcp4.{host}": templates.tcp4(**v4, sport=2000 + host, flags="SA", payload=b"t" * 6),
            f"udp6.{host}": templates.udp6(**v6, sport=1000 + host, payload=b"u" * 8),
            f"tcp6.{host}": templates.tcp6(**v6, sport=2000 + host, flags="F"),
            f"icmp4.{host}": templates.icmp4(**v4),
            f"icmp6.{host}": templates.icmp6(**v6),
        }
    return found | {
        "vlan.udp4": templates.udp4(vlan=7),
        "pppoe.udp4": templates.pppoe_session(),
        "padi": templates.padi(),
        "arp": templates.ether() / ARP(),
    }


def mutants(seed: int, count: int, tmpl: dict | None = None) -> Iterator[Mutant]:
    return Mutator(tmpl or _ip_templates(), seed).mutants(count)


def run_campaign(plane: str, config: str, subject: Callable, stream: Iterator[Mutant], seed: int):
    for case in saved_cases(CASES, plane):
        replay(case, subject)
    campaign = Campaign(plane, config, lambda: subject(config), CASES)
    campaign.run(stream, BATCH, seed)
    print(campaign.summary())
    assert campaign.frames > 0


def _differ(what: str, kernel: dict, model: dict) -> str:
    only_k = {str(k): kernel[k] for k in kernel.keys() - model.keys()}
    only_m = {str(k): model[k] for k in model.keys() - kernel.keys()}
    both = {
        str(k): (kernel[k], model[k]) for k in kernel.keys() & model.keys() if kernel[k] != model[k]
    }
    return (
        f"{what}: only in the kernel {only_k}; only in the model {only_m}; (kernel, model) {both}"
    )


def _frame(what: str, frame: bytes) -> str:
    return f"{what}; frame {frame.hex()}"


def passed(program, hook, frame: bytes) -> str:
    """A counting program (flow metrics, the traffic counter) on ``frame`` at ``hook``: it must
    pass every frame; the verdict's name, or REFUSED when test_run cannot be given the frame."""
    if not program.test_run_takes(frame):
        return REFUSED
    verdict = program.test_run(frame).verdict
    if verdict != PASS["xdp" if hook.xdp else "tc"]:
        raise Disagreement(_frame(f"{hook.value} must pass every frame, said {verdict!r}", frame))
    return verdict.name


# --- soft RSS ------------------------------------------------------------------------------------

SOFTRSS = {
    "toeplitz": softrss.Config(buckets=6),
    "jhash-symmetric": softrss.Config(buckets=5, hash=softrss.HashKind.JHASH, symmetric=True),
}


class SoftRssSubject:
    def __init__(self, name: str) -> None:
        self.config = SOFTRSS[name]

    def __enter__(self):
        self.rss = softrss.SoftRss(self.config).__enter__()
        self.model = softrss.model.Model(self.config)
        return self

    def __exit__(self, *exc):
        self.rss.__exit__(*exc)

    def feed(self, frame: bytes) -> str:
        verdict = self.rss.program.test_run(frame).verdict
        self.model.feed(frame)
        if verdict is not bpf.XdpAction.PASS:
            raise Disagreement(
                _frame(f"count mode passes every frame; kernel said {verdict!r}", frame)
            )
        return verdict.name

    def check(self) -> None:
        kernel = {f.key: (f.hash, f.bucket, f.packets) for f in self.rss.flows()}
        model = {k: (f.hash, f.bucket, f.packets) for k, f in self.model.flows.items()}
        if kernel != model:
            raise Disagreement(_differ("flows (hash, bucket, packets)", kernel, model))
        buckets = self.rss.obj.maps["buckets"]
        for index, want in enumerate(self.model.buckets):
            got = buckets.lookup_sum(index)
            got, want = (got.packets, got.bytes, got.flows), (want.packets, want.bytes, want.flows)
            if got != want:
                raise Disagreement(
                    f"bucket {index} (packets, bytes, flows): kernel {got}, model {want}"
                )
        if self.rss.unparsed() != self.model.unparsed:
            raise Disagreement(
                _differ("unparsed by reason", self.rss.unparsed(), self.model.unparsed)
            )


@pytest.mark.parametrize("config", SOFTRSS)
def test_softrss(config, fuzz_budget):
    stream = mutants(fuzz_budget.seed, fuzz_budget.frames)
    run_campaign("softrss", config, SoftRssSubject, stream, fuzz_budget.seed)


# --- flow metrics --------------------------------------------------------------------------------

FM = flowmon.Storage
FLOWMON = {
    "hash": flowmon.Config(storage=FM.HASH, entries=64),
    "percpu_hash-spill": flowmon.Config(
        storage=FM.PERCPU_HASH, entries=64, full=flowmon.Full.SPILL
    ),
    "lru_hash": flowmon.Config(storage=FM.LRU_HASH, entries=4096),
    "array": flowmon.Config(storage=FM.ARRAY, entries=64),
    "percpu_array-spill": flowmon.Config(
        storage=FM.PERCPU_ARRAY, entries=64, full=flowmon.Full.SPILL
    ),
    "ringbuf": flowmon.Config(storage=FM.RINGBUF, ring_bytes=1 << 16),
}


class FlowMonSubject:
    def __init__(self, name: str) -> None:
        self.config = FLOWMON[name]
        self.hooks = cycle(flowmon.Hook)

    def __enter__(self):
        self.fm = flowmon.FlowMon(self.config).__enter__()
        self.model = flowmon.Model(self.config)
        return self

    def __exit__(self, *exc):
        self.fm.__exit__(*exc)

    def feed(self, frame: bytes) -> str:
        hook = next(self.hooks)
        verdict = passed(self.fm.program(hook), hook, frame)
        if verdict != REFUSED:
            self.model.feed(frame, hook, ifindex=1)  # test_run's device: the namespace's loopback
        return verdict

    def check(self) -> None:
        self.model.drain()
        kernel = {
            f.key: (f.packets, f.bytes, f.tcp_flags, bool(f.syn_ns), bool(f.fin_ns))
            for f in self.fm.flows()
        }
        model = {
            k: (c.packets, c.bytes, c.tcp_flags, c.syn, c.fin) for k, c in self.model.flows.items()
        }
        if kernel != model:
            raise Disagreement(_differ("flows (packets, bytes, flags, syn, fin)", kernel, model))
        misses = {k: v for k, v in self.fm.misses().items() if v}
        if misses != dict(self.model.misses):
            raise Disagreement(_differ("misses", misses, dict(self.model.misses)))
        if self.fm.unparsed() != dict(self.model.unparsed):
            raise Disagreement(_differ("unparsed", self.fm.unparsed(), dict(self.model.unparsed)))
        activity = self.fm.activity()
        if (activity["created"], activity["spilled"]) != (self.model.created, self.model.spilled):
            raise Disagreement(
                f"created, spilled: kernel {activity}, model {self.model.created, self.model.spilled}"
            )


@pytest.mark.parametrize("config", FLOWMON)
def test_flowmon(config, fuzz_budget):
    stream = mutants(fuzz_budget.seed, fuzz_budget.frames)
    run_campaign("flowmon", config, FlowMonSubject, stream, fuzz_budget.seed)


# --- traffic counter -----------------------------------------------------------------------------

TRAFCOUNT = {
    f"{key.value}-{count.value}": trafcount.Config(key=key, bytes=count)
    for key in trafcount.Key
    for count in trafcount.ByteCount
}


class TrafCountSubject:
    def __init__(self, name: str) -> None:
        self.config = TRAFCOUNT[name]
        self.hooks = cycle(trafcount.Hook)

    def __enter__(self):
        self.tc = trafcount.TrafCount(self.config).__enter__()
        self.model = trafcount.Model(self.config)
        return self

    def __exit__(self, *exc):
        self.tc.__exit__(*exc)

    def feed(self, frame: bytes) -> str:
        hook = next(self.hooks)
        verdict = passed(self.tc.program(hook), hook, frame)
        if verdict != REFUSED:
            self.model.feed(frame, hook)
        return verdict

    def check(self) -> None:
        kernel, model = self.tc.counts(), self.model.table()
        if kernel != model:
            raise Disagreement(_differ("(packets, bytes) by address and protocol", kernel, model))
        if self.tc.unparsed() != dict(self.model.unparsed):
            raise Disagreement(_differ("unparsed", self.tc.unparsed(), dict(self.model.unparsed)))
        totals = self.tc.totals()
        if (totals.created, totals.evicted, totals.entry_gone, totals.no_room) != (
            self.model.created,
            0,
            0,
            0,
        ):
            raise Disagreement(f"kernel {totals}, model created {self.model.created}")


@pytest.mark.parametrize("config", TRAFCOUNT)
def test_trafcount(config, fuzz_budget):
    stream = mutants(fuzz_budget.seed, fuzz_budget.frames)
    run_campaign("trafcount", config, TrafCountSubject, stream, fuzz_budget.seed)


# --- PF_PACKET steering --------------------------------------------------------------------------

PFRPS = {
    "mac_hash-src-3": pfrps.Config(
        "lo", 3, HashAlg.MAC_HASH, mac=MacSide.SRC, protocols=Protocols.BOTH
    ),
    "mac_jhash-src-8": pfrps.Config("lo", 8, HashAlg.MAC_JHASH, mac=MacSide.SRC),
    "jhash_oaat-dst-5": pfrps.Config(
        "lo", 5, HashAlg.JHASH_OAAT, mac=MacSide.DST, protocols=Protocols.SESSION
    ),
}
ETHERTYPES = {Protocols.DISCOVERY: 0x8863, Protocols.SESSION: 0x8864}


class PfrpsSubject:
    """The filters of every worker and the fanout program, on one frame: exactly the model's worker
    takes a wanted frame whole (test_run's skb starts at the network header), the others nothing."""

    def __init__(self, name: str) -> None:
        self.config = PFRPS[name]

    def __enter__(self):
        self.objects = [pfrps.pfrps.load(self.config, i) for i in range(self.config.workers)]
        return self

    def __exit__(self, *exc):
        for obj in self.objects:
            obj.close()

    def feed(self, frame: bytes) -> str:
        c = self.config
        if not self.objects[0].programs["pfrps_filter"].test_run_takes(frame):
            return REFUSED
        ethertype = int.from_bytes(frame[12:14], "big")
        wanted = any(ethertype == ETHERTYPES[p] for p in ETHERTYPES if p & c.protocols)
        worker = worker_of(frame_mac(frame, c.mac), c.workers, c.hash)
        want = [len(frame) - 14 if wanted and i == worker else 0 for i in range(c.workers)]
        got = [obj.programs["pfrps_filter"].test_run(frame).verdict for obj in self.objects]
        if got != want:
            raise Disagreement(_frame(f"filters took {got}, the model {want}", frame))
        fanout = self.objects[0].programs["pfrps_fanout"].test_run(frame).verdict
        if fanout != worker:
            raise Disagreement(_frame(f"fanout chose {fanout}, the model {worker}", frame))
        return f"worker {worker}" if wanted else "not wanted"

    def check(self) -> None:
        """The filters keep no state: every frame was checked as it went."""


def pppoe_templates() -> dict:
    return {
        f"{kind}.{host}": pkt
        for host in range(4)
        for kind, pkt in (
            ("padi", templates.padi(eth_src=f"02:00:00:00:{host:02x}:{host * 7:02x}")),
            ("session", templates.pppoe_session(eth_src=f"02:00:00:01:{host:02x}:{host * 5:02x}")),
        )
    } | {"udp4": templates.udp4()}


@pytest.mark.parametrize("config", PFRPS)
def test_pfrps(config, fuzz_budget):
    stream = mutants(fuzz_budget.seed, fuzz_budget.frames, pppoe_templates())
    run_campaign("pfrps", config, PfrpsSubject, stream, fuzz_budget.seed)


# --- VXLAN pipeline ------------------------------------------------------------------------------

VX_ALLOWED = ["10.0.0.1", "10.0.0.2", "10.1.0.0/16", "fd00::1", "fd01::/16"]
VXLAN_CONFIGS = {
    "redirect": vxlan.Config(mode=vxlan.Mode.REDIRECT),
    "tc": vxlan.Config(mode=vxlan.Mode.TC),
    "ringbuf": vxlan.Config(mode=vxlan.Mode.RINGBUF),
}
NAT = {80: ("10.2.0.2", 8080), 1001: ("10.2.0.3", 0)}


class VxlanSubject:
    def __init__(self, name: str) -> None:
        self.config = VXLAN_CONFIGS[name]

    def __enter__(self):
        self.vx = vxlan.VxlanPipeline(self.config).__enter__()
        self.vx.set_egress("lo", "02:00:00:00:03:02", src_mac="02:00:00:00:03:01")
        self.model = vxlan.Model(self.vx.config, egress=self.vx.egress())
        allowlist = vxlan.Allowlist.of(VX_ALLOWED)
        self.vx.set_allowlist(allowlist)
        self.model.hosts, self.model.prefixes = set(allowlist.hosts), set(allowlist.prefixes)
        for port, (addr, new_port) in NAT.items():
            self.vx.add_nat(port, addr, new_port)
            self.model.nat[port] = vxlan.NatTarget(ipaddress.IPv4Address(addr), new_port)
        return self

    def __exit__(self, *exc):
        self.vx.__exit__(*exc)

    def feed(self, frame: bytes) -> str:
        if not self.vx.program.test_run_takes(frame):
            return REFUSED
        want = self.model.feed(frame)
        run = self.vx.program.test_run(frame)
        mode = self.config.mode
        xdp = mode is not vxlan.Mode.TC
        verdicts = {
            vxlan.Verdict.PASS: bpf.XdpAction.PASS if xdp else bpf.TcAction.OK,
            vxlan.Verdict.DROP: bpf.XdpAction.DROP if xdp else bpf.TcAction.SHOT,
            vxlan.Verdict.FORWARD: {
                vxlan.Mode.REDIRECT: bpf.XdpAction.REDIRECT,
                vxlan.Mode.TC: bpf.TcAction.REDIRECT,
                vxlan.Mode.RINGBUF: bpf.XdpAction.DROP,
            }[mode],
        }
        if run.verdict is not verdicts[want.verdict]:
            raise Disagreement(_frame(f"kernel said {run.verdict!r}, the model {want}", frame))
        sent = run.packet if want.verdict is vxlan.Verdict.FORWARD else None
        if mode is vxlan.Mode.RINGBUF:
            ring = self.vx.frames()
            if len(ring) > 1 or bool(ring) != (want.verdict is vxlan.Verdict.FORWARD):
                raise Disagreement(
                    _frame(f"the ring held {len(ring)} frames, the model {want}", frame)
                )
            sent = ring[0] if ring else None
        if sent is not None and sent != want.frame:
            raise Disagreement(
                _frame(f"kernel sent {sent.hex()}, the model {want.frame.hex()}", frame)
            )
        if want.verdict is vxlan.Verdict.PASS and run.packet != frame:
            raise Disagreement(_frame(f"a passed frame was changed to {run.packet.hex()}", frame))
        return want.verdict.name

    def check(self) -> None:
        stats = self.vx.stats()
        if stats.counts() != self.model.stats:
            raise Disagreement(_differ("counters", stats.counts(), self.model.stats))
        if not stats.balanced:
            raise Disagreement(f"total != passed + forwarded + dropped: {stats}")


def vxlan_mutants(seed: int, count: int) -> Iterator[Mutant]:
    """Mutated inner frames (addresses and ports the allowlist and NAT rules take, and others),
    carried in VXLAN over IPv4 or IPv6, the outer headers themselves mutated at times."""
    inner = _ip_templates() | {
        "nat.tcp4": templates.tcp4(src="10.0.0.1", dst="10.1.2.3", dport=80),
        "nat.udp4": templates.udp4(src="10.0.0.2", dst="10.1.2.3", dport=1001, payload=b"n" * 5),
        "denied.udp4": templates.udp4(src="203.0.113.9", dst="198.51.100.1"),
        "runt": templates.ether() / Raw(b"\x08\x00"),
    }
    outers = [
        Template.of("vxlan4", templates.vxlan(Raw(b""), vni=42)),
        Template.of(
            "vxlan6",
            Ether(src=templates.SRC_MAC, dst=templates.DST_MAC)
            / templates.udp6(dport=templates.VXLAN_PORT)[1]
            / templates.vxlan(Raw(b""))[3],
        ),
    ]
    mutator = Mutator(inner, seed)
    for outer, mutant in zip(cycle(outers), mutator.mutants(count), strict=False):
        yield mutator.encapsulated(outer, mutant)


@pytest.mark.parametrize("config", VXLAN_CONFIGS)
def test_vxlan(config, fuzz_budget):
    stream = vxlan_mutants(fuzz_budget.seed, fuzz_budget.frames)
    run_campaign("vxlan", config, VxlanSubject, stream, fuzz_budget.seed)


# --- the campaign machinery --------------------------------------------------------------------


class ModelMissesAFrame(TrafCountSubject):
    """A model bug planted on purpose: the kernel counts the 137th frame, the model never sees it."""

    def __enter__(self):
        self.fed = 0
        return super().__enter__()

    def feed(self, frame: bytes) -> str:
        self.fed += 1
        if self.fed == 137:
            return self.tc.program(trafcount.Hook.XDP).test_run(frame).verdict.name
        return super().feed(frame)


def test_a_disagreement_is_saved_at_its_first_frame_and_replayed(tmp_path):
    campaign = Campaign("trafcount", "src-l3", lambda: ModelMissesAFrame("src-l3"), tmp_path)
    with pytest.raises(Disagreement, match="saved as"):
        campaign.run(mutants(seed=1, count=400), batch=300, seed=1)
    (case,) = saved_cases(tmp_path, "trafcount")
    saved = json.loads(case.read_text())
    assert len(saved["frames"]) == 137, "cut at the frame where kernel and model part"
    assert saved["seed"] == 1 and saved["mutations"][0].split("+")[0] in _ip_templates()
    with pytest.raises(Disagreement, match=case.name):
        replay(case, ModelMissesAFrame)
    replay(case, TrafCountSubject)  # the data plane itself agrees with a correct model
