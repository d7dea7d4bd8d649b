"""The allowlist file: read, validate, write. No kernel here (``pipeline`` loads it into maps).

The format is the seed's ``ip_allowlist.json``, as its users have it::

    {
      "version": "1.0",
      "total_ips": 3,
      "organizations": [{"name": "Example Corp", "ips": ["192.0.2.10", "198.51.100.0/24"]}],
      "flat_ip_list": ["192.0.2.10", "198.51.100.0/24", "203.0.113.7"]
    }

``flat_ip_list`` is what the data plane matches: IPv4 or IPv6 addresses, or prefixes (``a.b.c.d/n``,
``2001:db8::/32``; host bits zero; a ``/32`` IPv4 or ``/128`` IPv6 prefix is an address). Every
invalid entry is reported with its line and column, all at once, before anything is loaded anywhere.
The rest is description, which never reaches the kernel: ``organizations`` is kept as written (the
seed's list, or the name -> entries object of this tool's first releases); a ``total_ips`` that
disagrees with the flat list is a warning (``Allowlist.warnings``), not a refusal. ``version`` may be
the seed's ``"1.0"``, the ``1`` of the first releases, or absent.

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

from bpf import files

FORMAT_VERSION = "1.0"  # the seed's; files of this tool's first releases say 1
_VERSIONS_READ = (FORMAT_VERSION, 1)


class AllowlistError(ValueError):
    """An allowlist file is not valid; the message lists every problem with its position."""


class _Located(str):
    """A JSON string value that remembers where it starts in the text."""

    offset: int


def _decoder() -> json.JSONDecoder:
    """A JSON decoder whose string values carry their offsets (the pure-Python scanner's hook)."""
    decoder = json.JSONDecoder(object_pairs_hook=files.unique_keys)

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


Organizations = list[Any] | dict[str, Any]


@dataclass(frozen=True)
class Allowlist:
    """Addresses and prefixes to keep. ``organizations`` (whose each entry is) and ``warnings``
    (what a load found odd but harmless) describe a file; they are not part of what is matched."""

    hosts: frozenset[Address] = frozenset()
    prefixes: frozenset[Network] = frozenset()
    organizations: Organizations = field(default_factory=list, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of(
        cls,
        entries: list[str],
        organizations: Organizations | None = None,
        warnings: tuple[str, ...] = (),
    ) -> Allowlist:
        """From address/prefix strings; ValueError names the first bad one."""
        parsed = [parse_entry(e) for e in entries]
        return cls(
            frozenset(p for p in parsed if isinstance(p, Address)),
            frozenset(p for p in parsed if isinstance(p, Network)),
            [] if organizations is None else organizations,
            warnings,
        )

    @classmethod
    def load(cls, path: Path | str) -> Allowlist:
        """Read and validate ``path``; AllowlistError lists every problem as ``path:line:col``."""
        where = Path(path)
        try:
            text = files.read_text(where)
            doc = files.parse_json(text, where, _decoder())
        except files.FileError as err:
            raise AllowlistError(str(err)) from None
        return cls._from_document(doc, text, str(where))

    @classmethod
    def _from_document(cls, doc: Any, text: str, where: str) -> Allowlist:
        if not isinstance(doc, dict):
            raise AllowlistError(f"{where}: the top level must be an object")
        problems: list[str] = []
        version = doc.get("version", FORMAT_VERSION)
        if version not in _VERSIONS_READ or isinstance(version, bool):
            problems.append(
                f"{where}: version {version!r}: this tool reads version {FORMAT_VERSION!r} files"
            )
        flat = doc.get("flat_ip_list")
        if not isinstance(flat, list):
            raise AllowlistError(f"{where}: 'flat_ip_list' must be a list of addresses/prefixes")
        problems += _check_entries(flat, "flat_ip_list", text, where)
        orgs = doc.get("organizations", [])
        if not isinstance(orgs, list | dict):
            problems.append(f"{where}: 'organizations' is {orgs!r}, not a list (or an object)")
        if problems:
            raise AllowlistError(
                f"{len(problems)} problem(s), nothing loaded:\n" + "\n".join(problems)
            )
        warnings = []
        total = doc.get("total_ips")
        if total is not None and total != len(flat):
            warnings.append(
                f"{where}: total_ips is {total!r} but flat_ip_list has {len(flat)} entries: "
                f"the {len(flat)} are loaded"
            )
        return cls.of([str(e) for e in flat], orgs, tuple(warnings))

    @property
    def entries(self) -> list[str]:
        """Hosts then prefixes, IPv4 first, sorted: the flat list as the data plane sees it."""
        hosts = sorted(self.hosts, key=lambda a: (a.version, a))
        prefixes = sorted(self.prefixes, key=lambda n: (n.version, n))
        return [str(h) for h in hosts] + [str(p) for p in prefixes]

    def document(self) -> dict[str, Any]:
        """The seed's JSON format (what ``load`` reads); ``organizations`` as they were loaded."""
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
