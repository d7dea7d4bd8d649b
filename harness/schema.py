"""What the harness's YAML files (topologies, testbeds) share: reading, field checks and the error.

A file is read into a mapping by ``load_yaml`` and walked with a ``Reader``, which hands each field
to a converter (a function that returns the converted value or raises ``Expected`` with what it
wanted) and names the field path (``links[1].ends[0].mtu``) when one fails. ``Reader.done()``
rejects keys it was never asked for, so a misspelt key is an error rather than a silent default.
Each file format subclasses ``SchemaError`` and ``Reader`` (``harness.topology_schema``,
``harness.testbed``); this module knows no format.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from bpf import files

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")


class SchemaError(ValueError):
    """A file is wrong: which file, which field, what was expected and what was found."""

    def __init__(self, file: Path | str, field: str, expected: str, got: object = None) -> None:
        self.file, self.field, self.expected = str(file), field, expected
        message = f"{file}: {field}: expected {expected}"
        if got is not None:
            message += f", got {got!r}"
        super().__init__(message)


class Expected(Exception):
    """Raised by a field converter; the reader adds the file and the field path."""

    def __init__(self, expected: str) -> None:
        self.expected = expected


def load_yaml(path: Path, error: type[SchemaError]) -> Any:
    """The parsed YAML of ``path`` (``bpf.files``); a file that is not is ``error`` naming the line."""
    try:
        return files.load_yaml(path)
    except files.FileError as err:
        raise error(
            path, err.where or "(file)", "valid YAML (UTF-8, each key once)", err.problem
        ) from None


class Reader:
    """The fields of one YAML mapping at ``where`` in ``file``; ``done()`` rejects unknown keys."""

    error: ClassVar[type[SchemaError]] = SchemaError

    def __init__(self, file: Path, where: str, data: Any, *, null_is_empty: bool = False) -> None:
        if data is None and null_is_empty:
            data = {}
        if not isinstance(data, dict):
            raise self.error(file, where or "(top level)", "a mapping", data)
        self.file, self.where, self.data = file, where, data
        self._seen: set[str] = set()

    def path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.where}[{key}]"
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str | int, expected: str, got: object = None) -> SchemaError:
        return self.error(self.file, self.path(key), expected, got)

    def _convert(self, key: str, value: Any, convert: Callable[[Any], T]) -> T:
        try:
            return convert(value)
        except Expected as err:
            raise self.fail(key, err.expected, value) from None

    def required(self, key: str, convert: Callable[[Any], T]) -> T:
        self._seen.add(key)
        if key not in self.data:
            raise self.fail(key, "this field (it is required)")
        return self._convert(key, self.data[key], convert)

    def optional(self, key: str, convert: Callable[[Any], T], default: T = None) -> T:
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        return self._convert(key, self.data[key], convert)

    def items(self, key: str, *, required: bool = False) -> list[tuple[str, Any]]:
        """The elements of the list at ``key``, each with its field path."""
        self._seen.add(key)
        value = self.data.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list) or (required and not value):
            raise self.fail(key, "a non-empty list" if required else "a list", value)
        return [(f"{self.path(key)}[{i}]", item) for i, item in enumerate(value)]

    def convert_item(self, where: str, item: Any, convert: Callable[[Any], T]) -> T:
        """One element of a list from ``items``, converted; a bad one names its own path."""
        try:
            return convert(item)
        except Expected as err:
            raise self.error(self.file, where, err.expected, item) from None

    def sub(self, key: str) -> Reader:
        self._seen.add(key)
        return type(self)(self.file, self.path(key), self.data.get(key), null_is_empty=True)

    def done(self) -> None:
        for key in self.data:
            if key not in self._seen:
                known = ", ".join(sorted(self._seen))
                raise self.fail(str(key), f"no such field here (known fields: {known})")


# Field converters: value -> converted value, or raise Expected(what was expected).


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Expected("a non-empty string")
    return value


def ifname(value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise Expected("an interface name of 1 to 15 letters, digits, '_', '.' or '-'")
    return value


def int_range(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Expected(f"an integer from {low} to {high}")
        return value

    return convert


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise Expected("a number greater than 0")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Expected("true or false")
    return value


def mac(value: Any) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value.lower()):
        raise Expected("a MAC address like 02:00:00:00:00:01")
    if int(value[:2], 16) & 1:
        raise Expected("a unicast MAC address (first octet even)")
    return value.lower()


def ip(value: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise Expected("an IPv4 or IPv6 address") from None


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise Expected(" or ".join(repr(c) for c in choices))
        return value

    return convert
