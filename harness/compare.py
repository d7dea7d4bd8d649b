"""Compare the packets a test expected with the packets it received, as multisets, and say how they differ.

Order is not compared (several queues and CPUs reorder legitimately); counts are. Fields a test
declares may change (``ignore=("IP.ttl", "IP.chksum")``, with an optional layer index ``IP:1.ttl``
for encapsulated headers) are blanked before comparing. On a mismatch, each missing packet is paired
with the most alike unexpected one and the pair is diffed field by field with scapy, so a failure
reads ``packet 3: IP.ttl expected 64, got 63`` instead of two hex dumps.
Not for: capturing (``harness.capture``) or counting at rates (``harness.sink``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

_MAX_REPORTED = 5


def _layer(pkt: Packet, path: str) -> tuple[Packet | None, str]:
    layer_name, _, field_name = path.rpartition(".")
    name, _, index = layer_name.partition(":")
    nth = int(index or 0) + 1
    found, seen = None, 0
    for layer in _layers(pkt):
        if layer.__class__.__name__ == name:
            seen += 1
            if seen == nth:
                found = layer
                break
    return found, field_name


def _layers(pkt: Packet) -> list[Packet]:
    layers = []
    while pkt is not None and not isinstance(pkt, Raw) and pkt.__class__.__name__ != "NoPayload":
        layers.append(pkt)
        pkt = pkt.payload if pkt.payload else None
    return layers


def normalized(frame: bytes, ignore: Iterable[str]) -> bytes:
    """``frame`` with the ignored fields set to zero (other checksums kept as they were)."""
    ignore = tuple(ignore)
    if not ignore:
        return frame
    pkt = Ether(frame)
    for path in ignore:
        layer, name = _layer(pkt, path)
        if layer is not None and name in _field_names(layer):
            setattr(layer, name, 0)
    return bytes(pkt)


def _field_names(layer: Packet) -> list[str]:
    return [f.name for f in layer.fields_desc]


def field_diff(expected: bytes, got: bytes) -> list[str]:
    """Fields that differ, layer by layer: ``IP.ttl: expected 64, got 63``."""
    exp, rec = _layers(Ether(expected)), _layers(Ether(got))
    lines = []
    counts: Counter[str] = Counter()
    for e, g in zip(exp, rec, strict=False):
        name = e.__class__.__name__
        label = f"{name}:{counts[name]}" if counts[name] else name
        counts[name] += 1
        if e.__class__ is not g.__class__:
            lines.append(f"layer {len(lines) + 1}: expected {name}, got {g.__class__.__name__}")
            break
        for fname in _field_names(e):
            ev, gv = e.getfieldval(fname), g.getfieldval(fname)
            if ev != gv:
                lines.append(f"{label}.{fname}: expected {ev!r}, got {gv!r}")
    if len(exp) != len(rec):
        lines.append(f"expected {len(exp)} headers, got {len(rec)}")
    if not lines and expected != got:
        at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
        where = f"byte {at}" if at is not None else f"length {len(expected)} vs {len(got)}"
        lines.append(f"payload differs at {where}")
    return lines


@dataclass
class Comparison:
    """The outcome of comparing two multisets of frames."""

    expected: int
    received: int
    missing: list[bytes] = field(default_factory=list)
    unexpected: list[bytes] = field(default_factory=list)
    ignore: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def report(self) -> str:
        if self.ok:
            return f"all {self.expected} packets received as expected"
        lines = [
            f"expected {self.expected} packets, received {self.received}: "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
            + (f" (ignoring {', '.join(self.ignore)})" if self.ignore else "")
        ]
        spare = list(self.unexpected)
        for n, want in enumerate(self.missing[:_MAX_REPORTED]):
            summary = Ether(want).summary()
            if not spare:
                lines.append(f"missing {n + 1}: {summary} (nothing unexpected arrived instead)")
                continue
            closest = min(spare, key=lambda got: _distance(want, got))
            spare.remove(closest)
            lines.append(f"missing {n + 1}: {summary}; closest arrival differs in:")
            lines += [f"    {line}" for line in field_diff(want, closest)]
        for got in spare[:_MAX_REPORTED]:
            lines.append(f"unexpected: {Ether(got).summary()}")
        hidden = max(0, len(self.missing) - _MAX_REPORTED) + max(0, len(spare) - _MAX_REPORTED)
        if hidden:
            lines.append(f"... and {hidden} more")
        return "\n".join(lines)


def _distance(a: bytes, b: bytes) -> int:
    return abs(len(a) - len(b)) * 8 + sum(x != y for x, y in zip(a, b, strict=False))


def compare(
    expected: Iterable[bytes], received: Iterable[bytes], ignore: Iterable[str] = ()
) -> Comparison:
    """Compare as multisets after blanking the ``ignore`` fields in both."""
    ignore = tuple(ignore)
    want = Counter(normalized(bytes(f), ignore) for f in expected)
    got = Counter(normalized(bytes(f), ignore) for f in received)
    return Comparison(
        expected=sum(want.values()),
        received=sum(got.values()),
        missing=list((want - got).elements()),
        unexpected=list((got - want).elements()),
        ignore=ignore,
    )


def assert_same(
    expected: Iterable[bytes], received: Iterable[bytes], ignore: Iterable[str] = ()
) -> None:
    """Fail with the field-by-field report unless both multisets are equal."""
    result = compare(expected, received, ignore)
    assert result.ok, result.report()
