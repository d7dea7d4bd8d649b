"""pytest plugin (``pytest_plugins = ["harness.pytest_plugin"]``): topologies for tests, and leak checks.

- ``topology("two_host")``: a fixture factory that builds a topology (a shipped name or a path) and
  tears it down after the test; ``nic=`` / ``egress_nic=`` bind real NICs. ``two_host`` and
  ``mirror_vxlan`` are the two shipped topologies most tests use, built that way.
- ``--nic IF`` / ``--egress-nic IF`` name real NICs; the ``real_nic`` / ``real_egress_nic`` fixtures
  return them or skip the test with the reason. ``--trex-server HOST`` names a TRex server; the
  ``trex_server`` fixture returns it or skips.
- ``--fuzz-frames N`` / ``--fuzz-seed N``: the ``fuzz_budget`` fixture of the fuzz campaigns
  (``harness.fuzz``); the seed is printed in the header, so a failing run can be repeated.
- A test that fails in its setup or body leaves a failure bundle under ``--bundle-dir``
  (``harness.bundle``: captures, bpftool dumps, the namespaces' state, the kernel log, the seeds).
- Before the session, leftovers of dead runs are removed (``harness.cleanup.clean_once``), and
  scapy's neighbour lookups are refused: an ``Ether()`` without ``dst`` would send ARP or ND on the
  host's own network and wait for answers.
- After every test, what exists is compared with what existed before it: namespaces, host interfaces,
  XDP programs and TC qdiscs/filters on host interfaces, pins under ``bpf.attach.PIN_ROOT``, and this
  process's child processes. Anything new fails that test, listed. Names carrying another run's id
  (``bl-<id>-``, ``bl<id>-``) belong to that run (a pytest-xdist sibling) and are not counted.

This plugin does not build networks itself (``harness.topology``) nor send traffic.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import random
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from pyroute2 import IPRoute
from scapy.config import conf
from scapy.packet import Packet

import testbeds
from bpf import journal
from bpf.attach import PIN_ROOT
from bpf.netns import NETNS_RUN_DIR
from harness import bundle, cleanup
from harness.bench import Bench
from harness.capture import Capture
from harness.counters import silence_ipv6_everywhere
from harness.peer import SshPeer
from harness.preflight import PPS_COUNTER, Report, preflight
from harness.results import DEFAULT_PATH as DEFAULT_RESULTS
from harness.results import Results
from harness.sshd import Sshd
from harness.testbed import (
    DEFAULT_TESTBED,
    PeerAddress,
    SourceKind,
    Testbed,
    TestbedError,
    bind,
    find_testbed,
    load_testbed,
)
from harness.topology import Topology
from injector import templates

_TC_INGRESS, _TC_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3
_FUZZ_SEED = pytest.StashKey[int]()
_RUN_ID_IN_NAME = re.compile(r"\bbl-?([0-9a-f]{6})-")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bpflab", "bpflab network harness")
    group.addoption("--nic", metavar="IF", help="a real NIC for tests of the real-NIC path")
    group.addoption(
        "--egress-nic", metavar="IF", help="a second real NIC, for topologies with an egress NIC"
    )
    group.addoption("--trex-server", metavar="HOST", help="a TRex server, for tests that drive one")
    group.addoption(
        "--testbed",
        metavar="NAME|FILE",
        help=f"the testbed benchmarks run on (shipped: {', '.join(testbeds.names())}; "
        f"default {DEFAULT_TESTBED}, or with --nic the options alone)",
    )
    group.addoption(
        "--peer", metavar="ssh://[USER@]HOST", help="a peer host sending the benchmarks' traffic"
    )
    group.addoption(
        "--peer-bin", metavar="DIR", help="where the project's commands are on the peer (PATH)"
    )
    group.addoption(
        "--ssh-config", metavar="FILE", help="an ssh_config(5) file for reaching the peer (ssh -F)"
    )
    group.addoption(
        "--results",
        metavar="FILE",
        default=str(DEFAULT_RESULTS),
        help=f"where benchmarks write their figures, as JSON (default {DEFAULT_RESULTS})",
    )
    group.addoption(
        "--bundle-dir",
        metavar="DIR",
        default=str(bundle.DEFAULT_DIR),
        help=f"where a failed test's bundle goes (harness.bundle; default {bundle.DEFAULT_DIR})",
    )
    group.addoption(
        "--soak-seconds",
        type=float,
        default=600.0,
        metavar="S",
        help="how long each soak test runs its data plane under traffic (tox -e soak: 10 minutes)",
    )
    group.addoption(
        "--soak-rate",
        type=float,
        default=20_000.0,
        metavar="PPS",
        help="the soak's steady rate (well under every data plane's zero-loss rate on veth)",
    )
    group.addoption(
        "--fuzz-frames",
        type=int,
        default=2000,
        metavar="N",
        help="mutated frames per configuration in the fuzz campaigns (tox -e fuzz: 100000)",
    )
    group.addoption(
        "--fuzz-seed",
        type=int,
        metavar="N",
        help="the fuzz campaigns' seed (default: a new one each run, printed in the header)",
    )


def _refuse_neighbour_lookup(l2: Packet, l3: Packet) -> None:
    raise RuntimeError(
        f"scapy was about to resolve the MAC address of {l3.dst} by sending ARP/ND on the host's "
        f"network: build the frame with an explicit Ether(dst=...) (the injector's templates do)"
    )


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("fuzz_seed")
    config.stash[_FUZZ_SEED] = random.randrange(1 << 32) if seed is None else seed
    # An Ether() without dst makes scapy ask the host's network for the address (and wait seconds
    # for an answer): tests must never send outside their namespaces, so every lookup is refused.
    # The IPv4 and IPv6 layers register those lookups when imported: import them first.
    importlib.import_module("scapy.layers.inet6")
    for key in list(conf.neighbor.resolvers):
        conf.neighbor.resolvers[key] = _refuse_neighbour_lookup


def pytest_report_header(config: pytest.Config) -> str:
    return f"fuzz seed: {config.stash[_FUZZ_SEED]} (repeat a run with --fuzz-seed)"


def pytest_sessionstart(session: pytest.Session) -> None:
    cleanup.clean_once()


def pytest_runtest_setup(item: pytest.Item) -> None:
    Capture.opened.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A test failing in setup or body gets its bundle, while its fixtures still exist."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        config = item.config
        directory = bundle.write(
            bundle.bundle_path(Path(config.getoption("bundle_dir")), item.nodeid),
            report.longreprtext,
            seeds={
                "hypothesis seed": config.getoption("hypothesis_seed", None),
                "fuzz seed": config.stash[_FUZZ_SEED],
            },
            error=call.excinfo.value if call.excinfo else None,
            tmp_path=getattr(item, "funcargs", {}).get("tmp_path"),
            captures=list(Capture.opened),
        )
        report.sections.append(("failure bundle", str(directory.resolve())))
    return report


@dataclass(frozen=True)
class FuzzBudget:
    frames: int  # per configuration of a data plane
    seed: int


@pytest.fixture(scope="session")
def fuzz_budget(request: pytest.FixtureRequest) -> FuzzBudget:
    """How many mutated frames each fuzz campaign feeds, and the seed they are drawn from."""
    config = request.config
    return FuzzBudget(config.getoption("fuzz_frames"), config.stash[_FUZZ_SEED])


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest) -> Testbed:
    """The testbed of the run: ``--testbed`` with ``--nic``/``--egress-nic``/``--peer``/
    ``--trex-server`` in place of its own (``harness.testbed.bind``)."""
    option = request.config.getoption
    try:
        chosen = option("testbed") and load_testbed(find_testbed(option("testbed")))
        bound = bind(
            chosen or None,
            nic=option("nic"),
            egress_nic=option("egress_nic"),
            peer=option("peer"),
            trex_server=option("trex_server"),
        )
    except TestbedError as err:
        raise pytest.UsageError(str(err)) from None
    if option("peer_bin"):
        bound = dataclasses.replace(
            bound, source=dataclasses.replace(bound.source, bin=option("peer_bin"))
        )
    return bound


@pytest.fixture(scope="session")
def peer(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[SshPeer | None]:
    """The testbed's peer host over one ssh connection for the whole run; None without one."""
    if testbed.source.kind is not SourceKind.SSH:
        yield None
        return
    config = request.config.getoption("ssh_config")
    with SshPeer(
        testbed.source.peer, testbed.source.bin, config=Path(config) if config else None
    ) as host:
        yield host


@pytest.fixture
def bench(
    testbed: Testbed, peer: SshPeer | None, results: Results
) -> Iterator[Callable[[str], Bench]]:
    """``bench(topology_name)`` -> a ``harness.bench.Bench`` on the run's testbed, down after the
    test: the DUT's ports and a traffic source, whether veths and the local injector or real NICs
    and a peer. The DUT's ingress passes preflight first (``harness.preflight``), recorded with the
    results; a failed check fails the benchmark with its reason and fix."""
    built: list[tuple[Bench, Report]] = []

    def build(topology_name: str) -> Bench:
        made = Bench.build(topology_name, testbed, peer)
        port = made.ingress
        report = preflight(port.ifname, port.netns, driver=testbed.driver)
        built.append((made, report))
        results.record_preflight(port.ifname, report.as_dict())
        if report.failed:
            pytest.fail(f"preflight refused testbed {testbed.name}:\n{report.text()}")
        return made

    yield build
    for made, report in reversed(built):
        capped = report.pps_capped()
        made.topology.down()
        if capped:  # AWS refused packets over the instance's allowance: the NIC was not the limit
            results.preflight[report.ifname]["pps_capped"] = capped
            warnings.warn(
                f"{report.ifname}: {capped} packets over the instance's pps allowance during the "
                f"benchmark ({PPS_COUNTER}): its figures measure AWS's cap, not the DUT",
                stacklevel=1,
            )


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[Results]:
    """The run's benchmark figures (``Results.record``), written to ``--results`` at its end."""
    run = Results(
        testbed=testbed.name,
        tree=request.config.rootpath,
        budgets=testbed.budgets.values(),
        enforce=not request.config.getoption("benchmark_disable", False),  # smoke: tiny samples
    )
    yield run
    if run.figures:
        run.write(Path(request.config.getoption("results")))


@pytest.fixture
def topology() -> Iterator[Callable[..., Topology]]:
    """``topology(name_or_path, nic=None, egress_nic=None)`` -> a built Topology, down after the test."""
    built: list[Topology] = []

    def build(
        file: str | Path, *, nic: str | None = None, egress_nic: str | None = None
    ) -> Topology:
        topo = Topology.load(file, nic=nic, egress_nic=egress_nic).up()
        built.append(topo)
        return topo

    yield build
    for topo in reversed(built):
        topo.down()


@pytest.fixture
def two_host(topology) -> tuple[str, str]:
    """``two_host`` up: the injector's and the dut's namespaces."""
    topo = topology("two_host")
    return topo.node("injector").netns, topo.node("dut").netns


@dataclass
class MirrorVxlan:
    """``mirror_vxlan``'s namespaces, and where a test writes the allowlist its pipeline loads."""

    mirror: str
    dut: str
    collector: str
    allowlist: Path

    VNI: ClassVar[int] = 42
    MIRROR_MAC, DUT_MAC = "02:00:00:00:02:01", "02:00:00:00:02:02"  # the mirror's eth0, ens5
    COLLECTOR_MAC = "02:00:00:00:03:02"

    def pipeline_argv(self, mode: str, name: str, interval: float) -> list[str]:
        """``vxlan-pipeline run`` in the dut's namespace: ens5 in, ens6 out to the collector, this
        topology's VNI, the allowlist file, the counters as JSON every ``interval`` seconds."""
        argv = [str(Path(STANDIN_BIN) / "vxlan-pipeline"), "run", "-i", "ens5", "-t", "ens6"]
        argv += ["--mode", mode, "--name", name, "--next-hop-mac", self.COLLECTOR_MAC]
        argv += ["--vni", str(self.VNI), "--allowlist", str(self.allowlist), "--json"]
        return [*argv, "-s", str(interval), "--netns", self.dut]

    def mirrored(self, inner: Packet) -> Packet:
        """``inner`` as the mirror sends it to the dut: VXLAN over the topology's outer network."""
        return templates.vxlan(
            inner,
            vni=self.VNI,
            outer_src="10.1.0.1",
            outer_dst="10.1.0.2",
            eth_src=self.MIRROR_MAC,
            eth_dst=self.DUT_MAC,
        )


@pytest.fixture
def mirror_vxlan(topology, tmp_path: Path) -> MirrorVxlan:
    """``mirror_vxlan`` up, its links quiet: exact counts need no kernel chatter (harness.counters)."""
    topo = topology("mirror_vxlan")
    silence_ipv6_everywhere(topo)
    netns = (topo.node(n).netns for n in ("mirror", "dut", "collector"))
    return MirrorVxlan(*netns, tmp_path / "allowlist.json")


STANDIN_PEER = "ssh://root@192.168.77.2"  # nic_standin's peer: its sshd on the management link
STANDIN_BIN = str(Path(sys.executable).parent)  # the project's commands (one filesystem)


@dataclass
class NicStandIn:
    """``nic_standin`` up: host veths for the DUT's NICs, and a peer host (a namespace running sshd)."""

    topology: Topology
    sshd: Sshd

    @property
    def peer_netns(self) -> str:
        return self.topology.node("peer").netns

    def nic(self, declared: str) -> str:
        """The host's name of ``nic0`` / ``nic1`` (they carry the run's prefix)."""
        return self.topology.node("host").ifname(declared)

    def connect(self) -> SshPeer:
        address = PeerAddress.parse(STANDIN_PEER)
        return SshPeer(address, STANDIN_BIN, config=self.sshd.client_config)


HOST_NAMESPACE_LOCK = Path("/run/bpflab/host-namespace.lock")


@pytest.fixture
def _host_namespace() -> Iterator[None]:
    """Held while a topology that puts fixed addresses in the host namespace is up: two of them at
    once (pytest-xdist workers, two sessions) would share one address. Requested before the
    topology, it is released after the topology is down."""
    HOST_NAMESPACE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with HOST_NAMESPACE_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def nic_standin(_host_namespace, topology, tmp_path: Path) -> Iterator[NicStandIn]:
    """``nic_standin`` up with Debian's sshd started in its peer namespace, a key generated for
    it (``harness.sshd``): what ``--nic``/``--peer`` runs are tested with here. IPv6 stays on, as
    on a real NIC; tests count their own IPv4 frames."""
    topo = topology("nic_standin")
    address = PeerAddress.parse(STANDIN_PEER).host
    sshd = Sshd.start(topo.node("peer").netns, address, tmp_path / "sshd")
    yield NicStandIn(topo, sshd)
    sshd.stop()


def _option_or_skip(request: pytest.FixtureRequest, option: str, reason: str) -> str:
    value = request.config.getoption(option)
    if value is None:
        pytest.skip(reason)
    return value


@pytest.fixture
def real_nic(request: pytest.FixtureRequest) -> str:
    return _option_or_skip(request, "nic", "needs a real NIC: run with --nic IF")


@pytest.fixture
def trex_server(request: pytest.FixtureRequest) -> str:
    return _option_or_skip(
        request,
        "trex_server",
        "needs a TRex server: pass --trex-server HOST (none can run on this machine)",
    )


@pytest.fixture
def real_egress_nic(request: pytest.FixtureRequest) -> str:
    return _option_or_skip(
        request, "egress_nic", "needs a second real NIC: run with --egress-nic IF"
    )


def _ours(name: str) -> bool:
    """False for what carries another run's id in its name."""
    match = _RUN_ID_IN_NAME.search(name)
    return match is None or match[1] == journal.current().run_id


def _attachments(ipr: IPRoute, links: list) -> set[str]:
    found = set()
    names = {link["index"]: link.get("ifname") for link in links}
    for link in links:
        prog = link.get_nested("IFLA_XDP", "IFLA_XDP_PROG_ID")
        if prog:
            found.add(f"{names[link['index']]}: XDP program {prog}")
    for qdisc in ipr.get_qdiscs():
        if qdisc.get("TCA_KIND") in ("clsact", "ingress"):
            ifname = names.get(qdisc["index"], qdisc["index"])
            found.add(f"{ifname}: qdisc {qdisc.get('TCA_KIND')}")
            for parent, side in ((_TC_INGRESS, "ingress"), (_TC_EGRESS, "egress")):
                for tc_filter in ipr.get_filters(index=qdisc["index"], parent=parent):
                    found.add(f"{ifname}: TC {side} filter {tc_filter.get('TCA_KIND')}")
    return found


def _children() -> set[str]:
    found = set()
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except FileNotFoundError:
                continue
            found.add(f"pid {pid} ({comm})")
    return found


def _pins() -> list[str]:
    """Pins, and directories of pins left empty: a directory holding another run's pins (an xdist
    sibling's, named with its namespace) is that run's."""

    def counted(path: Path) -> bool:
        try:
            return not path.is_dir() or not any(path.iterdir())
        except OSError:  # removed by its owner while we looked
            return False

    for _ in range(5):
        try:
            return [str(p) for p in PIN_ROOT.rglob("*") if counted(p)] if PIN_ROOT.is_dir() else []
        except FileNotFoundError:  # the root, or a directory of it, removed by its last owner
            continue
    return []


@dataclass(frozen=True)
class Snapshot:
    """What exists outside the test process that a test could leave behind."""

    items: dict[str, frozenset[str]]

    @staticmethod
    def take() -> Snapshot:
        with IPRoute() as ipr:
            links = ipr.link("dump")
            attachments = _attachments(ipr, links)
        kinds = {
            "namespaces": [p.name for p in NETNS_RUN_DIR.iterdir()]
            if NETNS_RUN_DIR.is_dir()
            else [],
            "host interfaces": [link.get("ifname") for link in links],
            "XDP/TC attachments": attachments,
            "pins": _pins(),
            "child processes": _children(),
        }
        return Snapshot({kind: frozenset(filter(_ours, names)) for kind, names in kinds.items()})

    def new_since(self, before: Snapshot) -> list[str]:
        return [
            f"{kind}: {', '.join(sorted(names - before.items[kind]))}"
            for kind, names in self.items.items()
            if names - before.items[kind]
        ]


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail the test that leaves anything behind (runs last: autouse fixtures are set up first)."""
    before = Snapshot.take()
    yield
    leaked = Snapshot.take().new_since(before)
    if leaked:
        pytest.fail("the test left behind (run `harness clean`):\n  " + "\n  ".join(leaked))
