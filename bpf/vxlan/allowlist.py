"""The allowlist file: read, validate, write. No kernel here (``pipeline`` loads it into maps).

The format is the seed's JSON::

    {
      "version": 1,
      "total_ips": 3,
      "organizations": {"Example Corp": ["192.0.2.10", "198.51.100.0/24"]},
      "flat_ip_list": ["192.0.2.10", "198.51.100.0/24", "203.0.113.7"]
    }

``flat_ip_list`` is what the data plane matches: IPv4 or IPv6 addresses, or prefixes (``a.b.c.d/n``,
``2001:db8::/32``; host bits zero; a ``/32`` IPv4 or ``/128`` IPv6 prefix is an address). ``organizations`` (name -> entries) says whose each entry
is; its entries are validated like the flat list's. ``total_ips``, when present, must equal the
flat list's length. Every invalid entry is reported with its line and column, all at once, before
anything is loaded anywhere.

Not for: the kernel maps (``bpf.vxlan.pipeline.VxlanPipeline.set_allowlist``).
"""

from __future__ import annotations

import ipaddress
import json
import json.decoder
import json.scanner
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


class AllowlistError(ValueError):
    """An allowlist file is not valid; the message lists every problem with its position."""


class _Located(str):
    """A JSON string value that remembers where it starts in the text."""

    offset: int


def _decoder() -> json.JSONDecoder:
    """A JSON decoder whose string values carry their offsets (the pure-Python scanner's hook)."""
    decoder = json.JSONDecoder()

    def parse_string(text: str, end: int, strict: bool = True) -> tuple[str, int]:
        value, after = json.decoder.scanstring(text, end, strict)
        located = _Located(value)
        located.offset = end - 1  # the opening quote
        return located, after

    decoder.parse_string = parse_string
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{column}"


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_entry(entry: str) -> Address | Network:
    """An address, or a prefix (a full-length prefix is its address); ValueError says what is
    wrong. The family is IPv6 if the entry has a colon."""
    family = "IPv6" if ":" in entry else "IPv4"
    network, address = (
        (ipaddress.IPv6Network, ipaddress.IPv6Address)
        if family == "IPv6"
        else (ipaddress.IPv4Network, ipaddress.IPv4Address)
    )
    if "/" in entry:
        try:
            net = network(entry, strict=True)
        except ValueError as err:
            raise ValueError(f"{entry!r} is not an {family} prefix: {err}") from None
        return net.network_address if net.prefixlen == net.max_prefixlen else net
    try:
        return address(entry)
    except ValueError:
        raise ValueError(f"{entry!r} is not an {family} address") from None


@dataclass(frozen=True)
class Allowlist:
    """Addresses and prefixes to keep; ``organizations`` maps a name to its entries as written."""

    hosts: frozenset[Address] = frozenset()
    prefixes: frozenset[Network] = frozenset()
    organizations: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: list[str], organizations: dict[str, list[str]] | None = None) -> Allowlist:
        """From address/prefix strings; ValueError names the first bad one."""
        parsed = [parse_entry(e) for e in entries]
        return cls(
            frozenset(p for p in parsed if isinstance(p, Address)),
            frozenset(p for p in parsed if isinstance(p, Network)),
            dict(organizations or {}),
        )

    @classmethod
    def load(cls, path: Path | str) -> Allowlist:
        """Read and validate ``path``; AllowlistError lists every problem as ``path:line:col``."""
        where = Path(path)
        text = where.read_text()
        try:
            doc = _decoder().decode(text)
        except json.JSONDecodeError as err:
            raise AllowlistError(f"{where}:{err.lineno}:{err.colno}: not JSON: {err.msg}") from None
        return cls._from_document(doc, text, str(where))

    @classmethod
    def _from_document(cls, doc: Any, text: str, where: str) -> Allowlist:
        if not isinstance(doc, dict):
            raise AllowlistError(f"{where}: the top level must be an object")
        problems: list[str] = []
        if doc.get("version") != FORMAT_VERSION:
            problems.append(f"{where}: version {doc.get('version')!r}, {FORMAT_VERSION} expected")
        flat = doc.get("flat_ip_list")
        if not isinstance(flat, list):
            raise AllowlistError(f"{where}: 'flat_ip_list' must be a list of addresses/prefixes")
        problems += _check_entries(flat, "flat_ip_list", text, where)
        total = doc.get("total_ips")
        if total is not None and total != len(flat):
            problems.append(f"{where}: total_ips is {total!r} but flat_ip_list has {len(flat)}")
        orgs = doc.get("organizations", {})
        if not isinstance(orgs, dict) or not all(isinstance(v, list) for v in orgs.values()):
            problems.append(f"{where}: 'organizations' must map names to lists of entries")
            orgs = {}
        for name, entries in orgs.items():
            problems += _check_entries(entries, f"organizations[{name!r}]", text, where)
        if problems:
            raise AllowlistError(
                f"{len(problems)} problem(s), nothing loaded:\n" + "\n".join(problems)
            )
        return cls.of(
            [str(e) for e in flat], {str(k): [str(e) for e in v] for k, v in orgs.items()}
        )

    @property
    def entries(self) -> list[str]:
        """Hosts then prefixes, IPv4 first, sorted: the flat list as the data plane sees it."""
        hosts = sorted(self.hosts, key=lambda a: (a.version, a))
        prefixes = sorted(self.prefixes, key=lambda n: (n.version, n))
        return [str(h) for h in hosts] + [str(p) for p in prefixes]

    def document(self) -> dict[str, Any]:
        """The seed's JSON format (what ``load`` reads)."""
        entries = self.entries
        return {
            "version": FORMAT_VERSION,
            "total_ips": len(entries),
            "organizations": self.organizations,
            "flat_ip_list": entries,
        }

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.document(), indent=1) + "\n")

    def __len__(self) -> int:
        return len(self.hosts) + len(self.prefixes)


def _check_entries(entries: list[Any], what: str, text: str, where: str) -> list[str]:
    problems = []
    for index, entry in enumerate(entries):
        at = f"{where}:{_position(text, entry.offset)}" if isinstance(entry, _Located) else where
        if not isinstance(entry, str):
            problems.append(f"{at}: {what}[{index}] is {entry!r}, not a string")
            continue
        try:
            parse_entry(entry)
        except ValueError as err:
            problems.append(f"{at}: {what}[{index}]: {err}")
    return problems
