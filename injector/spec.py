"""Traffic descriptions: a template, the fields that vary across flows, how packets spread over flows,
frame sizes, and how many packets at what rate. One description serves unit tests (``expand()``),
live injection and TRex, because all of them consume its ``resolve()`` form (``injector.program``).

Field paths name a scapy layer class and field, with an optional index among layers of that class
for encapsulations: ``"IP.src"``, ``"IP:1.src"`` (the second IP header, the inner one of VXLAN),
``"Ether.src"``, ``"UDP.sport"``, ``"PPPoE.sessionid"``, ``"VXLAN.vni"``. Only byte-aligned
fields can vary (not ``Dot1Q.vlan``, a 12-bit field).

A varied field takes one value per flow (``FieldOp.value_for(flow)``): packets of a flow carry the
same 5-tuple, so random ports and addresses are random *per flow*, not per packet. Packet i belongs
to flow ``schedule[i % len(schedule)]``: ``Uniform`` is round-robin over the flows; ``Zipf`` and
``Elephants`` give each flow a share of a seeded, shuffled cycle.

Spec files (YAML, read by ``load_spec``) have the same shape; see ``injector/README.md``.
Sending is not here: see ``scapy_backend``, ``pcap_backend`` and ``trex_backend``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scapy.fields import ConditionalField, Field
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, raw

from bpf import files
from injector import malformed, templates
from injector.program import (
    MASK64,
    ChecksumFix,
    ChecksumKind,
    FieldOp,
    FieldProgram,
    LengthField,
    OpKind,
    checksum_of,
    l4_end,
    mix64,
)

MAX_FLOWS = 1 << 20
MAX_CYCLE = 65535  # a TRex value list holds at most 65535 entries
DEFAULT_IMIX = ((60, 7), (590, 4), (1514, 1))
_PATH = re.compile(r"^(?P<layer>\w+)(?::(?P<index>\d+))?\.(?P<field>\w+)$")


class SpecError(ValueError):
    """A traffic description is invalid; the message names the source, the field and the template."""


Value = int | str


@dataclass(frozen=True)
class Range:
    """``start, start + step, ...`` up to ``end`` (inclusive); addresses may be given as strings."""

    start: Value
    end: Value
    step: int = 1


@dataclass(frozen=True)
class Random:
    """A seeded pseudo-random value in ``[min, max]`` per flow."""

    min: Value
    max: Value


@dataclass(frozen=True)
class Values:
    """The given values, one per flow in turn."""

    items: tuple[Value, ...]


@dataclass(frozen=True)
class Vary:
    path: str
    values: Range | Random | Values


@dataclass(frozen=True)
class Uniform:
    """Every flow gets the same number of packets, round-robin."""


@dataclass(frozen=True)
class Zipf:
    """Flow f gets a share proportional to ``1 / (f + 1) ** s`` of a cycle of ``cycle`` packets."""

    s: float = 1.0
    cycle: int | None = None


@dataclass(frozen=True)
class Elephants:
    """The first ``count`` flows carry ``share`` of the packets; the other flows share the rest."""

    count: int
    share: float = 0.9
    cycle: int | None = None


@dataclass(frozen=True)
class Fixed:
    """Every frame is ``size`` bytes (FCS excluded), the template padded with zeros."""

    size: int


@dataclass(frozen=True)
class Imix:
    """Frames of several sizes interleaved by weight; the default is TRex's simple IMIX 7:4:1."""

    mix: tuple[tuple[int, int], ...] = DEFAULT_IMIX


Distribution = Uniform | Zipf | Elephants
Sizes = Fixed | Imix


@dataclass(frozen=True)
class TrafficSpec:
    """A traffic description. ``template`` is a scapy packet or raw frame bytes (malformed variants).

    ``flows`` defaults to the largest number of values among the Range and Values variations.
    ``source`` names where the spec came from (a file) in error messages.
    """

    template: Packet | bytes
    vary: tuple[Vary, ...] = ()
    flows: int | None = None
    distribution: Distribution = field(default_factory=Uniform)
    sizes: Sizes | None = None
    count: int | None = None
    duration: float | None = None
    rate_pps: float | None = None
    seed: int = 0
    name: str | None = None
    source: str = ""

    @property
    def template_name(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.template, bytes):
            return f"raw frame of {len(self.template)} bytes"
        return self.template.summary()

    def _error(self, where: str, message: str) -> SpecError:
        prefix = f"{self.source}: " if self.source else ""
        return SpecError(f"{prefix}{where}: {message} (template {self.template_name})")

    def resolve(self) -> FieldProgram:
        """The byte-level program every sender consumes; raises SpecError naming what is wrong."""
        sizes = self._frame_sizes()
        frame = self._frame(max(sizes) if sizes else None)
        sizes = sizes or (len(frame),)
        layers = templates.layers_with_offsets(Ether(frame))
        ops = tuple(self._op(i, v, layers) for i, v in enumerate(self.vary))
        self._check_overlaps(ops)
        length_fields = _length_fields(layers) if len(sizes) > 1 else ()
        if len(sizes) > 1:
            headers_end = _payload_offset(layers, frame)
            if min(sizes) < headers_end:
                raise self._error(
                    "sizes", f"frame size {min(sizes)} cuts into the {headers_end} bytes of headers"
                )
        checksums = _checksum_fixes(frame, layers, ops, len(sizes) > 1)
        for op in ops:
            for fix in checksums:
                if _overlap(op.offset, op.size, fix.csum_offset, 2):
                    raise self._error(
                        op.path,
                        f"it overlaps the {fix.kind.value} checksum, "
                        "which is recomputed for every packet",
                    )
            for lf in length_fields:
                if _overlap(op.offset, op.size, lf.offset, 2):
                    raise self._error(op.path, f"it overlaps {lf.path}, set from the frame size")
        flows = self._flows(ops)
        for what, value in (
            ("count", self.count),
            ("rate_pps", self.rate_pps),
            ("duration", self.duration),
        ):
            if value is not None and value <= 0:
                raise self._error(what, f"must be positive, got {value}")
        return FieldProgram(
            description=self.template_name,
            template=frame,
            flows=flows,
            schedule=self._schedule(flows),
            frame_sizes=sizes,
            ops=ops,
            length_fields=length_fields,
            checksums=checksums,
            count=self.count,
            duration=self.duration,
            rate_pps=self.rate_pps,
            seed=self.seed,
        )

    def expand(self, count: int | None = None) -> Iterator[bytes]:
        """The exact packets (deterministic given ``seed``); ``count`` defaults as in
        ``FieldProgram.packet_count``: the spec's count, else duration x rate, else one period."""
        return self.resolve().packets(count)

    def _frame(self, size: int | None) -> bytes:
        if isinstance(self.template, bytes):
            if size is not None:
                raise self._error("sizes", "a raw-bytes template is sent at its own length")
            return self.template
        if size is None:
            return raw(self.template)
        try:
            return raw(templates.pad_to(self.template, size))
        except ValueError as e:
            raise self._error("sizes", str(e)) from None

    def _frame_sizes(self) -> tuple[int, ...]:
        if self.sizes is None:
            return ()
        if isinstance(self.sizes, Fixed):
            sizes: tuple[int, ...] = (self.sizes.size,)
        else:
            if not self.sizes.mix or any(w <= 0 for _, w in self.sizes.mix):
                raise self._error("sizes", f"IMIX weights must be positive: {self.sizes.mix}")
            sizes = _interleave(self.sizes.mix)
        if any(not 14 <= s <= 65535 for s in sizes):
            raise self._error(
                "sizes", f"frame sizes must be 14..65535 bytes, got {sorted(set(sizes))}"
            )
        return sizes

    def _op(self, index: int, vary: Vary, layers: list[tuple[Packet, int]]) -> FieldOp:
        where = f"vary[{index}] {vary.path!r}"
        layer, layer_offset, fld = self._field(where, vary.path, layers)
        offset, size = self._field_span(where, layer, fld)
        offset += layer_offset

        def number(value: Value, what: str) -> int:
            n = self._value(where, layer, fld, value, what)
            if not 0 <= n < 1 << (8 * size):
                raise self._error(where, f"{what} {value!r} does not fit the {size}-byte field")
            return n

        v = vary.values
        common = {"path": vary.path, "offset": offset, "size": size}
        if isinstance(v, Values):
            if not v.items:
                raise self._error(where, "the list of values is empty")
            items = tuple(number(x, f"value {i}") for i, x in enumerate(v.items))
            return FieldOp(kind=OpKind.LIST, values=items, **common)
        low_name, high_name = ("start", "end") if isinstance(v, Range) else ("min", "max")
        low = number(v.start if isinstance(v, Range) else v.min, low_name)
        high = number(v.end if isinstance(v, Range) else v.max, high_name)
        if high < low:
            raise self._error(where, f"{high_name} {high} is below {low_name} {low}")
        if high - low > MASK64:
            raise self._error(where, f"the span {high - low + 1} exceeds 2**64 values")
        if isinstance(v, Random):
            return FieldOp(
                kind=OpKind.RANDOM, min=low, max=high, seed=mix64(self.seed, index), **common
            )
        if v.step < 1:
            raise self._error(where, f"step must be at least 1, got {v.step}")
        last = low + v.step * ((high - low) // v.step)
        return FieldOp(kind=OpKind.RANGE, min=low, max=last, step=v.step, **common)

    def _field(
        self, where: str, path: str, layers: list[tuple[Packet, int]]
    ) -> tuple[Packet, int, Field]:
        m = _PATH.match(path)
        if m is None:
            raise self._error(where, "a field path is Layer.field or Layer:index.field")
        name, index = m["layer"], int(m["index"] or 0)
        matching = [(layer, o) for layer, o in layers if type(layer).__name__ == name]
        if index >= len(matching):
            present = ", ".join(type(layer).__name__ for layer, _ in layers)
            raise self._error(
                where, f"the template has {len(matching)} {name} layer(s); its layers: {present}"
            )
        layer, offset = matching[index]
        for fld in layer.fields_desc:
            if fld.name == m["field"]:
                return layer, offset, fld
        names = ", ".join(f.name for f in layer.fields_desc)
        raise self._error(where, f"{name} has no field {m['field']!r}; its fields: {names}")

    def _field_span(self, where: str, layer: Packet, target: Field) -> tuple[int, int]:
        built: bytes | tuple = b""
        for fld in layer.fields_desc:
            before = built
            built = fld.addfield(layer, built, layer.getfieldval(fld.name))
            if fld is target:
                if isinstance(before, tuple) or isinstance(built, tuple):
                    raise self._error(where, "the field is not byte-aligned; it cannot vary")
                if len(built) == len(before):
                    raise self._error(where, "the field is absent from this template")
                return len(before), len(built) - len(before)
        raise AssertionError("target field is in fields_desc")

    def _value(self, where: str, layer: Packet, fld: Field, value: Value, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self._error(where, f"{what} {value!r} is neither an integer nor a string")
        if isinstance(value, int):
            return value
        inner = fld.fld if isinstance(fld, ConditionalField) else fld
        try:
            encoded = inner.addfield(layer, b"", inner.any2i(layer, value))
        except Exception as e:  # scapy raises many types for unparsable values
            raise self._error(where, f"{what} {value!r} is not a valid {fld.name}: {e}") from None
        return int.from_bytes(encoded, "big")

    def _check_overlaps(self, ops: tuple[FieldOp, ...]) -> None:
        for i, a in enumerate(ops):
            for b in ops[:i]:
                if _overlap(a.offset, a.size, b.offset, b.size):
                    raise self._error(f"vary[{i}] {a.path!r}", f"it overlaps {b.path!r}")

    def _flows(self, ops: tuple[FieldOp, ...]) -> int:
        if self.flows is not None:
            flows = self.flows
        elif any(op.kind is OpKind.RANDOM for op in ops):
            raise self._error("flows", "required when a field varies at random")
        else:
            flows = max((op.count for op in ops), default=1)
        if not 1 <= flows <= MAX_FLOWS:
            raise self._error("flows", f"must be 1..{MAX_FLOWS}, got {flows}")
        return flows

    def _schedule(self, flows: int) -> tuple[int, ...]:
        dist = self.distribution
        if isinstance(dist, Uniform):
            return tuple(range(flows))
        cycle = dist.cycle if dist.cycle is not None else min(max(flows, 10 * flows), MAX_CYCLE)
        if cycle < flows:
            raise self._error("distribution", f"cycle {cycle} is shorter than the {flows} flows")
        if isinstance(dist, Zipf):
            if dist.s <= 0:
                raise self._error("distribution", f"zipf s must be positive, got {dist.s}")
            weights = [1 / (f + 1) ** dist.s for f in range(flows)]
        else:
            if not 0 < dist.count < flows or not 0 < dist.share < 1:
                raise self._error(
                    "distribution",
                    f"elephants need 0 < count < flows ({flows}) and 0 < share < 1, "
                    f"got count {dist.count}, share {dist.share}",
                )
            mice = flows - dist.count
            weights = [dist.share / dist.count] * dist.count + [(1 - dist.share) / mice] * mice
        order = [f for f, n in enumerate(_apportion(weights, cycle)) for _ in range(n)]
        random.Random(self.seed).shuffle(order)
        return tuple(order)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> TrafficSpec:
        """A spec from plain data (a parsed YAML file), validated and resolved once; errors name
        ``source`` and the offending key."""
        return _SpecReader(source).spec(data)


def load_spec(path: str | Path) -> TrafficSpec:
    """Read a YAML spec file (``injector send --spec FILE``)."""
    path = Path(path)
    try:
        data = files.load_yaml(path)
    except files.FileError as err:
        raise SpecError(str(err)) from None
    return TrafficSpec.from_dict(data, source=str(path))


def _overlap(a: int, a_size: int, b: int, b_size: int) -> bool:
    return a < b + b_size and b < a + a_size


def _interleave(mix: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """Sizes in smooth weighted round-robin order (weights reduced by their gcd)."""
    g = math.gcd(*(w for _, w in mix))
    weights = [w // g for _, w in mix]
    current = [0] * len(mix)
    out = []
    for _ in range(sum(weights)):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = max(range(len(mix)), key=lambda i: current[i])
        current[best] -= sum(weights)
        out.append(mix[best][0])
    return tuple(out)


def _apportion(weights: list[float], total: int) -> list[int]:
    """Integer counts summing to ``total``, proportional to ``weights``, each at least 1."""
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    counts = [max(1, math.floor(x)) for x in exact]
    by_remainder = sorted(
        range(len(weights)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True
    )
    i = 0
    while sum(counts) < total:
        counts[by_remainder[i % len(counts)]] += 1
        i += 1
    while sum(counts) > total:
        largest = max(range(len(counts)), key=lambda j: counts[j])
        counts[largest] -= 1
    return counts


def _length_fields(layers: list[tuple[Packet, int]]) -> tuple[LengthField, ...]:
    seen: dict[str, int] = {}
    out = []
    for layer, o in layers:
        name = type(layer).__name__
        index = seen.get(name, 0)
        seen[name] = index + 1
        spot = {
            "IP": ("len", 2, o),
            "IPv6": ("plen", 4, o + 40),
            "UDP": ("len", 4, o),
            "PPPoE": ("len", 4, o + 6),
        }.get(name)
        if spot is not None:
            fname, at, base = spot
            out.append(LengthField(f"{name}:{index}.{fname}", o + at, base))
    return tuple(out)


def _payload_offset(layers: list[tuple[Packet, int]], frame: bytes) -> int:
    if not layers:
        return len(frame)
    last, o = layers[-1]
    return o + len(raw(last)) - len(raw(last.payload))


_L4_KINDS = {
    4: {6: ChecksumKind.TCP, 17: ChecksumKind.UDP, 1: ChecksumKind.ICMPV4},
    6: {6: ChecksumKind.TCP, 17: ChecksumKind.UDP, 58: ChecksumKind.ICMPV6},
}


def _checksum_fixes(
    frame: bytes, layers: list[tuple[Packet, int]], ops: tuple[FieldOp, ...], sizes_vary: bool
) -> tuple[ChecksumFix, ...]:
    """The checksums the template carries correctly and the variation changes, inner first."""
    varied = {b for op in ops for b in range(op.offset, op.offset + op.size)}
    fixes: list[ChecksumFix] = []

    def add_if_needed(fix: ChecksumFix, covered: range, pseudo: range | None) -> None:
        stored = int.from_bytes(frame[fix.csum_offset : fix.csum_offset + 2], "big")
        if fix.kind is ChecksumKind.UDP and fix.ip_version == 4 and stored == 0:
            return
        if checksum_of(frame, fix) != stored:
            return
        touched = sizes_vary or any(b in varied for b in covered)
        touched = touched or (pseudo is not None and any(b in varied for b in pseudo))
        if touched:
            fixes.append(fix)
            varied.update((fix.csum_offset, fix.csum_offset + 1))

    for layer, o in reversed(layers):
        if type(layer) not in (IP, IPv6):
            continue
        version = 4 if type(layer) is IP else 6
        header = (frame[o] & 0x0F) * 4 if version == 4 else 40
        if version == 4 and (header < 20 or o + header > len(frame)):
            continue
        end = l4_end(frame, o, version)
        is_fragment = version == 4 and int.from_bytes(frame[o + 6 : o + 8], "big") & 0x3FFF
        proto = frame[o + 9] if version == 4 else frame[o + 6]
        kind = _L4_KINDS[version].get(proto)
        l4 = o + header
        if kind is not None and not is_fragment and end <= len(frame):
            fix = ChecksumFix(kind, o, l4, version)
            if fix.csum_offset + 2 <= end:
                pseudo = range(o + 12, o + 20) if version == 4 else range(o + 8, o + 40)
                add_if_needed(fix, range(l4, end), pseudo if fix.pseudo_header else None)
        if version == 4:
            add_if_needed(
                ChecksumFix(ChecksumKind.IPV4_HEADER, o, o, 4), range(o, o + header), None
            )
    return tuple(fixes)


class _SpecReader:
    """Turns parsed YAML into a TrafficSpec, naming the file and key on every error."""

    KEYS = frozenset(
        {
            "template",
            "vary",
            "flows",
            "distribution",
            "sizes",
            "count",
            "duration",
            "rate_pps",
            "seed",
            "name",
        }
    )
    BYTES_ARGS = frozenset({"payload", "host_uniq", "service_name"})

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {key}: {message}")

    def mapping(self, data: Any, key: str, allowed: set[str] | frozenset[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(key, f"expected a mapping, got {type(data).__name__}")
        unknown = set(data) - allowed
        if unknown:
            raise self.error(key, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return data

    def number(self, data: dict[str, Any], key: str, kind: type, where: str) -> Any:
        value = data.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not isinstance(value, int))
        ):
            raise self.error(f"{where}{key}", f"expected {kind.__name__}, got {value!r}")
        return kind(value)

    def spec(self, data: Any) -> TrafficSpec:
        data = self.mapping(data, "spec", self.KEYS)
        if "template" not in data:
            raise self.error("template", "missing")
        template, name = self.template(data["template"], "template")
        vary = data.get("vary") or []
        if not isinstance(vary, list):
            raise self.error("vary", "expected a list")
        spec = TrafficSpec(
            template=template,
            vary=tuple(self.vary(v, f"vary[{i}]") for i, v in enumerate(vary)),
            flows=self.number(data, "flows", int, ""),
            distribution=self.distribution(data.get("distribution", "uniform")),
            sizes=self.sizes(data.get("sizes")),
            count=self.number(data, "count", int, ""),
            duration=self.number(data, "duration", float, ""),
            rate_pps=self.number(data, "rate_pps", float, ""),
            seed=self.number(data, "seed", int, "") or 0,
            name=str(data.get("name") or name),
            source=self.source,
        )
        spec.resolve()
        return spec

    def template(self, data: Any, key: str) -> tuple[Packet | bytes, str]:
        data = self.mapping(data, key, {"kind", "args", "inner", "malformed"})
        kind = data.get("kind")
        build: Callable[..., Packet] | None = templates.TEMPLATES.get(kind)
        if build is None:
            raise self.error(f"{key}.kind", f"{kind!r} is not one of {sorted(templates.TEMPLATES)}")
        args = data.get("args") or {}
        if not isinstance(args, dict):
            raise self.error(f"{key}.args", f"expected a mapping, got {type(args).__name__}")
        args = dict(args)
        for arg in self.BYTES_ARGS & set(args):
            if isinstance(args[arg], str):
                args[arg] = args[arg].encode()
        name = kind
        if "inner" in data:
            if kind not in ("vxlan", "pppoe_session"):
                raise self.error(
                    f"{key}.inner", "only vxlan and pppoe_session take an inner packet"
                )
            inner, inner_name = self.template(data["inner"], f"{key}.inner")
            if isinstance(inner, bytes):
                raise self.error(f"{key}.inner", "an inner packet cannot be malformed")
            if kind == "pppoe_session":
                l3 = inner.getlayer(IP) or inner.getlayer(IPv6)
                if l3 is None:
                    raise self.error(f"{key}.inner", f"{inner_name} has no IP layer to carry")
                args["l3"] = l3
            else:
                args["inner"] = inner
            name = f"{kind}({inner_name})"
        elif kind == "vxlan":
            raise self.error(f"{key}.inner", "vxlan needs an inner frame")
        try:
            pkt = build(**args)
        except (TypeError, ValueError) as e:
            raise self.error(f"{key}.args", f"cannot build {kind}: {e}") from None
        if "malformed" not in data:
            return pkt, name
        try:
            variant = malformed.variant(pkt, str(data["malformed"]))
        except KeyError as e:
            raise self.error(f"{key}.malformed", str(e.args[0])) from None
        return variant.packet, f"{name} {variant.name}"

    def vary(self, data: Any, key: str) -> Vary:
        data = self.mapping(data, key, {"field", "range", "random", "list"})
        path = data.get("field")
        if not isinstance(path, str):
            raise self.error(f"{key}.field", "missing or not a string")
        kinds = [k for k in ("range", "random", "list") if k in data]
        if len(kinds) != 1:
            raise self.error(key, "give exactly one of range, random, list")
        (kind,) = kinds
        if kind == "list":
            if not isinstance(data["list"], list):
                raise self.error(f"{key}.list", "expected a list of values")
            return Vary(path, Values(tuple(data["list"])))
        if kind == "range":
            r = self.mapping(data["range"], f"{key}.range", {"start", "end", "step"})
            if "start" not in r or "end" not in r:
                raise self.error(f"{key}.range", "needs start and end")
            step = self.number(r, "step", int, f"{key}.range.") or 1
            return Vary(path, Range(r["start"], r["end"], step))
        r = self.mapping(data["random"], f"{key}.random", {"min", "max"})
        if "min" not in r or "max" not in r:
            raise self.error(f"{key}.random", "needs min and max")
        return Vary(path, Random(r["min"], r["max"]))

    def distribution(self, data: Any) -> Distribution:
        if data == "uniform":
            return Uniform()
        data = self.mapping(data, "distribution", {"zipf", "elephants"})
        if len(data) != 1:
            raise self.error("distribution", "give uniform, zipf or elephants")
        if "zipf" in data:
            z = self.mapping(data["zipf"] or {}, "distribution.zipf", {"s", "cycle"})
            return Zipf(
                self.number(z, "s", float, "distribution.zipf.") or 1.0,
                self.number(z, "cycle", int, "distribution.zipf."),
            )
        e = self.mapping(data["elephants"], "distribution.elephants", {"count", "share", "cycle"})
        count = self.number(e, "count", int, "distribution.elephants.")
        if count is None:
            raise self.error("distribution.elephants.count", "missing")
        share = self.number(e, "share", float, "distribution.elephants.")
        return Elephants(
            count,
            0.9 if share is None else share,
            self.number(e, "cycle", int, "distribution.elephants."),
        )

    def sizes(self, data: Any) -> Sizes | None:
        if data is None:
            return None
        if isinstance(data, int) and not isinstance(data, bool):
            return Fixed(data)
        if data == "imix":
            return Imix()
        data = self.mapping(data, "sizes", {"fixed", "imix"})
        if "fixed" in data:
            return Fixed(self.number(data, "fixed", int, "sizes."))
        mix = data.get("imix")
        if not isinstance(mix, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) for x in p) for p in mix
        ):
            raise self.error("sizes.imix", "expected a list of [frame_size, weight] pairs")
        return Imix(tuple((s, w) for s, w in mix))
