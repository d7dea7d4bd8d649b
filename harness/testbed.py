"""Testbeds: what the device under test is, where its traffic comes from, and the budgets it must meet.

A testbed is a YAML file in ``testbeds/`` (a shipped name: ``veth``, ``ena``, ``bluefield``) or
anywhere (a path)::

    description: AWS, two ENA interfaces, a traffic peer in the same cluster placement group
    driver: ena                      # what `ethtool -i` must say of the DUT's interfaces
    interfaces: {nic: ens5, egress_nic: ens6}   # absent: each benchmark's topology brings veths
    source:                          # where traffic comes from
      kind: ssh                      # local | ssh | trex
      peer: ssh://root@10.0.0.12     # ssh: the peer host (--peer overrides)
      bin: /opt/bpflab/bin           # ssh: where the project's commands are on the peer
    budgets:                         # per figure, as recorded (harness.results): exactly one of
      softrss ifaces native zero-loss: {ratio_floor: 0.3}   # ratio to the same-run baseline
      probe latency p50 through soft RSS: {ceiling: 40}     # absolute, in the figure's unit

``source.kind``: ``local`` runs the ``xdp`` injector in a namespace of the benchmark's topology
(veth testbeds only); ``ssh`` runs the project's injector on a peer host over OpenSSH
(``harness.peer``); ``trex`` drives a TRex server through its client API (``server``, ``ports``).

Budgets are floors (throughput) or ceilings (latency, ns/packet): as a ratio to the baseline
measured in the same run (``ratio_floor``/``ratio_ceiling``), which is what holds on shared machines
like this one, or as an absolute (``floor``/``ceiling``), which only dedicated hardware keeps.

``load_testbed`` rejects a malformed file with a ``TestbedError`` naming the file, the field path
and what was expected, before anything is built. Not for: building the DUT's network
(``harness.topology``) or checking its NICs (``harness.preflight``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import testbeds
from harness import schema
from harness.measure import Comparison
from harness.schema import Expected, Reader, SchemaError, load_yaml

DEFAULT_TESTBED = "veth"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class TestbedError(SchemaError):
    """A testbed file (or an option binding it) is wrong; says where and what was expected."""

    __test__ = False  # a name pytest would otherwise try to collect


class _Reader(Reader):
    error = TestbedError


class SourceKind(enum.Enum):
    LOCAL = "local"
    SSH = "ssh"
    TREX = "trex"


@dataclass(frozen=True)
class PeerAddress:
    """``ssh://[USER@]HOST[:PORT]``, as OpenSSH takes it."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> PeerAddress:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme != "ssh" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
            raise Expected("a peer like ssh://root@10.0.0.12 or ssh://user@host:2222")
        return cls(parts.hostname, parts.username, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"ssh://{self.destination}{port}"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    peer: PeerAddress | None = None
    bin: str | None = None  # the directory of the project's commands on the peer; None: PATH
    server: str | None = None
    ports: tuple[int, ...] = (0,)


class BudgetKind(enum.Enum):
    RATIO_FLOOR = "ratio_floor"
    RATIO_CEILING = "ratio_ceiling"
    FLOOR = "floor"
    CEILING = "ceiling"


@dataclass(frozen=True)
class Budget:
    figure: str
    kind: BudgetKind
    limit: float

    def measured(self, result: Comparison) -> float:
        ratio = self.kind in (BudgetKind.RATIO_FLOOR, BudgetKind.RATIO_CEILING)
        return result.ratio if ratio else result.subject.median

    def met_by(self, result: Comparison) -> bool:
        value = self.measured(result)
        if self.kind in (BudgetKind.RATIO_FLOOR, BudgetKind.FLOOR):
            return value >= self.limit
        return value <= self.limit

    def describe(self) -> str:
        bound = "at least" if self.kind in (BudgetKind.RATIO_FLOOR, BudgetKind.FLOOR) else "at most"
        if self.kind in (BudgetKind.RATIO_FLOOR, BudgetKind.RATIO_CEILING):
            return f"{bound} {self.limit:g}x the baseline"
        return f"{bound} {self.limit:g}"


@dataclass(frozen=True)
class Testbed:
    __test__ = False

    path: Path | None  # None: made from --nic alone, with no file
    name: str
    description: str
    driver: str | None  # None: whatever the NIC's driver is (not checked)
    nic: str | None
    egress_nic: str | None
    source: Source
    budgets: dict[str, Budget] = field(default_factory=dict)

    @property
    def real(self) -> bool:
        """Whether the DUT's interfaces are real NICs (else each topology's veths)."""
        return self.nic is not None


def _source(r: _Reader) -> Source:
    sub = r.sub("source")
    kind = sub.required("kind", _source_kind)
    peer = sub.optional("peer", PeerAddress.parse)
    bin_dir = sub.optional("bin", _absolute_dir)
    server = sub.optional("server", schema.text)
    ports = tuple(
        sub.convert_item(at, item, schema.int_range(0, 31)) for at, item in sub.items("ports")
    )
    sub.done()
    allowed = {
        SourceKind.LOCAL: set(),
        SourceKind.SSH: {"peer", "bin"},
        SourceKind.TREX: {"server", "ports"},
    }[kind]
    for key in sorted(set(sub.data) - {"kind"} - allowed):
        takes = ", ".join(sorted(allowed)) or "nothing but kind"
        raise sub.fail(key, f"no such field for kind {kind.value} (it takes {takes})")
    return Source(kind, peer, bin_dir, server, ports or (0,))


def _source_kind(value: Any) -> SourceKind:
    try:
        return SourceKind(value)
    except ValueError:
        raise Expected("'local', 'ssh' or 'trex'") from None


def _absolute_dir(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise Expected("an absolute directory on the peer, like /opt/bpflab/bin")
    return value.rstrip("/") or "/"


def _budgets(r: _Reader) -> dict[str, Budget]:
    sub = r.sub("budgets")
    budgets = {}
    for figure in list(sub.data):
        if not isinstance(figure, str) or not figure.strip():
            raise sub.fail(str(figure), "a figure's name, as its benchmark records it")
        entry = sub.sub(figure)
        given = [kind for kind in BudgetKind if kind.value in entry.data]
        if len(given) != 1:
            kinds = ", ".join(kind.value for kind in BudgetKind)
            raise entry.fail("(budget)", f"exactly one of {kinds}", dict(entry.data))
        (kind,) = given
        budgets[figure] = Budget(figure, kind, entry.required(kind.value, schema.positive_number))
        entry.done()
    return budgets


def load_testbed(path: Path) -> Testbed:
    """Read and check a testbed file; raises TestbedError (or OSError if it cannot be read)."""
    r = _Reader(path, "", load_yaml(path, TestbedError))
    description = r.required("description", schema.text)
    driver = r.required("driver", schema.text)
    interfaces = r.sub("interfaces")
    nic = interfaces.optional("nic", schema.ifname)
    egress_nic = interfaces.optional("egress_nic", schema.ifname)
    interfaces.done()
    if egress_nic is not None and nic is None:
        raise interfaces.fail("nic", "a NIC, since egress_nic is given")
    if nic is not None and nic == egress_nic:
        raise interfaces.fail("egress_nic", "a NIC other than nic", egress_nic)
    source = _source(r)
    budgets = _budgets(r)
    r.done()
    if source.kind is SourceKind.LOCAL and nic is not None:
        raise r.fail("source.kind", "ssh or trex: real NICs are fed from outside the host", "local")
    return Testbed(path, path.stem, description, driver, nic, egress_nic, source, budgets)


def find_testbed(name_or_path: str) -> Path:
    """A shipped testbed's file (``veth``), or the path given; TestbedError if neither exists."""
    if _NAME.fullmatch(name_or_path):
        try:
            return testbeds.path(name_or_path)
        except FileNotFoundError as err:
            raise TestbedError("--testbed", name_or_path, str(err)) from None
    if not Path(name_or_path).is_file():
        raise TestbedError("--testbed", name_or_path, "a shipped testbed's name or a testbed file")
    return Path(name_or_path)


def bind(
    testbed: Testbed | None,
    *,
    nic: str | None = None,
    egress_nic: str | None = None,
    peer: str | None = None,
    trex_server: str | None = None,
) -> Testbed:
    """The testbed a run uses: ``testbed`` (None: ``veth``, or with ``--nic`` a testbed made of the
    options alone, with no budgets) with the command line's interfaces and traffic source in place
    of the file's. Raises TestbedError naming the option that does not fit."""
    if testbed is None and nic is None:
        testbed = load_testbed(find_testbed(DEFAULT_TESTBED))
    elif testbed is None:
        testbed = Testbed(
            None, "nic", f"--nic {nic} alone", None, nic, None, Source(SourceKind.SSH)
        )
    where = testbed.path or "(command line)"
    if peer is not None and trex_server is not None:
        raise TestbedError(where, "--peer", "either --peer or --trex-server, not both", peer)
    if egress_nic is not None and (nic or testbed.nic) is None:
        raise TestbedError(where, "--egress-nic", "--nic too (the DUT's first NIC)", egress_nic)
    if nic is not None or egress_nic is not None:
        testbed = replace(
            testbed, nic=nic or testbed.nic, egress_nic=egress_nic or testbed.egress_nic
        )
    source = testbed.source
    if peer is not None:
        try:
            address = PeerAddress.parse(peer)
        except Expected as err:
            raise TestbedError(where, "--peer", err.expected, peer) from None
        source = Source(
            SourceKind.SSH, address, source.bin if source.kind is SourceKind.SSH else None
        )
    elif trex_server is not None:
        ports = source.ports if source.kind is SourceKind.TREX else (0,)
        source = Source(SourceKind.TREX, server=trex_server, ports=ports)
    if not testbed.real and source.kind is not SourceKind.LOCAL:
        raise TestbedError(
            where, "--nic", f"real NICs for a {source.kind.value} traffic source (give --nic IF)"
        )
    if testbed.real and source.kind is SourceKind.LOCAL:
        source = Source(SourceKind.SSH)
    if source.kind is SourceKind.SSH and source.peer is None:
        raise TestbedError(where, "source.peer", "a peer host: give --peer ssh://USER@HOST")
    if source.kind is SourceKind.TREX and source.server is None:
        raise TestbedError(where, "source.server", "a TRex server: give --trex-server HOST")
    return replace(testbed, source=source)
