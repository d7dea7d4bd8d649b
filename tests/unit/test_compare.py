"""Expected and received packets compared as multisets, with a field-by-field report."""

from scapy.layers.l2 import Ether

from harness.compare import compare, field_diff, normalized
from injector import templates


def frames(*sports: int, ttl: int = 64) -> list[bytes]:
    return [bytes(templates.udp4(sport=port, ttl=ttl)) for port in sports]


def test_order_does_not_matter_counts_do():
    assert compare(frames(1, 2, 3), frames(3, 1, 2)).ok
    twice = compare(frames(1, 2), frames(1, 1, 2))
    assert not twice.ok and twice.unexpected == frames(1) and twice.missing == []
    assert "1 unexpected" in twice.report()


def test_report_names_the_field_that_differs():
    result = compare(frames(7), frames(7, ttl=63))
    report = result.report()
    assert "IP.ttl: expected 64, got 63" in report, report
    assert "IP.chksum" in report, "a changed TTL changes the header checksum too"


def test_declared_fields_are_ignored_and_only_those():
    assert compare(frames(7), frames(7, ttl=63), ignore=("IP.ttl", "IP.chksum")).ok
    assert not compare(frames(7), frames(8, ttl=63), ignore=("IP.ttl", "IP.chksum")).ok


def test_encapsulated_layers_are_named_by_index():
    outer = templates.vxlan(templates.udp4(sport=1))
    inner_changed = Ether(bytes(outer))
    inner_changed["UDP"].payload["UDP"].sport = 2  # the inner UDP header, behind VXLAN
    lines = field_diff(bytes(outer), bytes(inner_changed))
    assert lines == ["UDP:1.sport: expected 1, got 2"], lines
    assert normalized(bytes(outer), ("UDP:1.sport",)) == normalized(
        bytes(inner_changed), ("UDP:1.sport",)
    )


def test_missing_without_replacement_is_reported_as_such():
    report = compare(frames(1, 2), frames(1)).report()
    assert "nothing unexpected arrived instead" in report, report
