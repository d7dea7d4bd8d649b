"""Testbed files and the command line that binds them: every error names the file (or option), the
field and what was expected; what loads is what was written."""

from __future__ import annotations

from pathlib import Path

import pytest

import testbeds
from harness.measure import Comparison, Summary
from harness.testbed import (
    Budget,
    BudgetKind,
    PeerAddress,
    SourceKind,
    TestbedError,
    bind,
    find_testbed,
    load_testbed,
)

GOOD = """\
description: two ENA interfaces and a peer
driver: ena
interfaces: {nic: ens5, egress_nic: ens6}
source:
  kind: ssh
  peer: ssh://root@10.0.0.12:2222
  bin: /opt/bpflab/bin
budgets:
  softrss ifaces native zero-loss: {ratio_floor: 0.3}
  probe latency p50 through soft RSS: {ceiling: 40}
"""

MALFORMED = [
    ("description: two ENA interfaces and a peer\n", "", "description", "it is required"),
    ("driver: ena", "driver: ena\ncolour: red", "colour", "no such field"),
    ("nic: ens5, egress_nic", "nic: ens5 with a space, egress_nic", "interfaces.nic", "interface"),
    ("nic: ens5, egress_nic: ens6", "egress_nic: ens6", "interfaces.nic", "since egress_nic"),
    ("egress_nic: ens6", "egress_nic: ens5", "interfaces.egress_nic", "other than nic"),
    ("kind: ssh", "kind: telnet", "source.kind", "'local', 'ssh' or 'trex'"),
    ("kind: ssh", "kind: trex", "source.bin", "no such field for kind trex (it takes ports"),
    ("kind: ssh", "kind: local", "source.bin", "kind local (it takes nothing but kind)"),
    ("ssh://root@10.0.0.12:2222", "http://10.0.0.12", "source.peer", "ssh://root@10.0.0.12"),
    ("ssh://root@10.0.0.12:2222", "ssh://root@h:99999", "source.peer", "ssh://"),
    ("/opt/bpflab/bin", "opt/bpflab", "source.bin", "an absolute directory"),
    ("{ratio_floor: 0.3}", "{ratio_floor: 0.3, ceiling: 2}", "exactly one of", ""),
    ("{ratio_floor: 0.3}", "{ratio_floor: -1}", "ratio_floor", "greater than 0"),
    ("{ratio_floor: 0.3}", "{floor: yes}", "floor", "greater than 0"),
    ("{ceiling: 40}", "{ceiling: 40, unit: us}", "unit", "no such field"),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bed.yaml"
    path.write_text(text)
    return path


def test_good_file_loads_as_written(tmp_path):
    bed = load_testbed(write(tmp_path, GOOD))
    assert (bed.name, bed.driver, bed.nic, bed.egress_nic, bed.real) == (
        "bed",
        "ena",
        "ens5",
        "ens6",
        True,
    )
    assert bed.source.kind is SourceKind.SSH
    assert bed.source.peer == PeerAddress("10.0.0.12", "root", 2222)
    assert str(bed.source.peer) == "ssh://root@10.0.0.12:2222"
    assert bed.source.bin == "/opt/bpflab/bin"
    assert bed.budgets == {
        "softrss ifaces native zero-loss": Budget(
            "softrss ifaces native zero-loss", BudgetKind.RATIO_FLOOR, 0.3
        ),
        "probe latency p50 through soft RSS": Budget(
            "probe latency p50 through soft RSS", BudgetKind.CEILING, 40.0
        ),
    }


@pytest.mark.parametrize(("old", "new", "field", "expected"), MALFORMED)
def test_malformed_file_is_rejected(tmp_path, old, new, field, expected):
    assert old in GOOD, "the test case no longer matches GOOD"
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(TestbedError) as rejected:
        load_testbed(path)
    error = rejected.value
    assert error.file == str(path), str(error)
    assert field in error.field or field in error.expected, str(error)
    assert expected in error.expected, str(error)


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(TestbedError, match=r"line 3: expected valid YAML"):
        load_testbed(write(tmp_path, "description: d\ndriver: veth\nsource: {kind: local]\n"))


def test_real_nics_are_not_fed_locally(tmp_path):
    text = "description: d\ndriver: ena\ninterfaces: {nic: ens5}\nsource: {kind: local}\n"
    with pytest.raises(TestbedError, match=r"source\.kind: expected ssh or trex"):
        load_testbed(write(tmp_path, text))


@pytest.mark.parametrize("name", testbeds.names())
def test_shipped_testbeds_load(name):
    bed = load_testbed(find_testbed(name))
    assert bed.name == name and bed.driver and bed.description


def test_shipped_testbeds_are_the_three_the_docs_name():
    assert testbeds.names() == ["bluefield", "ena", "veth"]


def test_unknown_testbed_lists_the_shipped_ones():
    with pytest.raises(TestbedError, match="shipped: bluefield, ena, veth"):
        find_testbed("nosuch")


def test_default_is_veth_with_the_local_injector():
    bed = bind(None)
    assert (bed.name, bed.real, bed.source.kind) == ("veth", False, SourceKind.LOCAL)


def test_nic_alone_makes_a_testbed_that_needs_a_peer():
    with pytest.raises(TestbedError, match="give --peer"):
        bind(None, nic="ens5")
    bed = bind(None, nic="ens5", peer="ssh://root@10.0.0.12")
    assert (bed.name, bed.nic, bed.driver, bed.budgets) == ("nic", "ens5", None, {})
    assert bed.source.peer == PeerAddress("10.0.0.12", "root")


def test_options_take_the_place_of_the_file(tmp_path):
    bed = load_testbed(write(tmp_path, GOOD))
    bound = bind(bed, nic="eth9", peer="ssh://admin@peer")
    assert (bound.nic, bound.egress_nic) == ("eth9", "ens6")
    assert bound.source.peer == PeerAddress("peer", "admin")
    assert bound.source.bin == "/opt/bpflab/bin"  # kept: the peer is still one of this testbed
    trex = bind(bed, trex_server="10.0.0.99")
    assert (trex.source.kind, trex.source.server, trex.source.ports) == (
        SourceKind.TREX,
        "10.0.0.99",
        (0,),
    )
    assert bound.budgets == bed.budgets


@pytest.mark.parametrize(
    ("options", "field", "expected"),
    [
        ({"peer": "ssh://h", "trex_server": "t"}, "--peer", "not both"),
        ({"peer": "ssh://h"}, "--nic", "real NICs for a ssh traffic source"),
        ({"egress_nic": "ens6"}, "--egress-nic", "--nic too"),
        ({"nic": "ens5", "peer": "ftp://h"}, "--peer", "ssh://root@10.0.0.12"),
    ],
)
def test_options_that_do_not_fit_are_named(options, field, expected):
    with pytest.raises(TestbedError) as rejected:
        bind(None, **options)
    assert (rejected.value.field, expected in rejected.value.expected) == (field, True), str(
        rejected.value
    )


def test_trex_testbed_needs_a_server():
    with pytest.raises(TestbedError, match="give --trex-server"):
        bind(load_testbed(find_testbed("bluefield")))
    assert bind(load_testbed(find_testbed("bluefield")), trex_server="t").source.ports == (0, 1)


def _comparison(subject: float, baseline: float) -> Comparison:
    def summary(value: float) -> Summary:
        return Summary("Mpps", value, value, 0.0, value, value, value, 5, 0)

    return Comparison("figure", summary(subject), summary(baseline), "bare")


@pytest.mark.parametrize(
    ("kind", "limit", "met"),
    [
        (BudgetKind.RATIO_FLOOR, 0.5, True),  # 0.6x
        (BudgetKind.RATIO_FLOOR, 0.7, False),
        (BudgetKind.RATIO_CEILING, 0.7, True),
        (BudgetKind.RATIO_CEILING, 0.5, False),
        (BudgetKind.FLOOR, 3.0, True),  # 3 Mpps
        (BudgetKind.FLOOR, 3.5, False),
        (BudgetKind.CEILING, 3.0, True),
        (BudgetKind.CEILING, 2.5, False),
    ],
)
def test_budget_against_a_figure(kind, limit, met):
    assert Budget("figure", kind, limit).met_by(_comparison(3.0, 5.0)) is met
