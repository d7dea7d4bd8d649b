"""Reading the files users hand the tools (topologies, testbeds, traffic specs, allowlists, soft RSS
state, Argus settings, benchmark results): one way for every loader, every failure a clear error.

``read_text`` refuses a file that is missing or unreadable, larger than ``limit`` (these are
hand-written or tool-written files of kilobytes: a huge one is a mistake, not something to parse),
or not UTF-8 (naming the line and byte of the first bad byte). ``load_yaml`` and ``load_json`` also
refuse syntax errors and duplicate keys (YAML and JSON parsers keep the last of two silently, so a
setting written twice would be half ignored), naming the line. Each raises :class:`FileError`, a
``ValueError`` whose text is ``PATH:LINE: problem``; each loader turns it into its own error type.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEFAULT_LIMIT = 16 << 20
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it


class FileError(ValueError):
    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        self.path, self.where, self.problem = str(path), where, problem
        super().__init__(f"{path}:{where}: {problem}" if where else f"{path}: {problem}")


def read_text(path: Path | str, limit: int = DEFAULT_LIMIT) -> str:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise FileError(path, "", err.strerror or str(err)) from None
    if len(data) > limit:
        raise FileError(path, "", f"larger than {limit >> 20} MiB: not a file this tool reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise FileError(
            path, f"line {line}", f"not UTF-8 (byte {err.start}: {data[err.start]:#04x})"
        ) from None


class _UniqueKeyLoader(_YAML_LOADER):  # type: ignore[misc, valid-type]
    """A safe loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def load_yaml(path: Path | str, limit: int = DEFAULT_LIMIT) -> Any:
    text = read_text(path, limit)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise FileError(
            path, where, f"not valid YAML: {getattr(err, 'problem', None) or err}"
        ) from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON ``object_pairs_hook`` that refuses a key given twice in one object."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"key {key!r} given twice")
        found[key] = value
    return found


def load_json(path: Path | str, limit: int = DEFAULT_LIMIT) -> Any:
    return parse_json(read_text(path, limit), path)


def parse_json(text: str, path: Path | str, decoder: json.JSONDecoder | None = None) -> Any:
    """``text`` (read from ``path``) as JSON, duplicate keys refused; ``decoder``, if given, must
    use ``unique_keys`` as its ``object_pairs_hook``."""
    decoder = decoder or json.JSONDecoder(object_pairs_hook=unique_keys)
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as err:
        raise FileError(
            path, f"line {err.lineno}", f"not JSON: {err.msg} (column {err.colno})"
        ) from None
    except ValueError as err:  # a duplicate key; json does not say where
        raise FileError(path, _line_of_duplicate(text, str(err)), str(err)) from None


def _line_of_duplicate(text: str, message: str) -> str:
    """The line of the key's second occurrence (json does not say where the duplicate was)."""
    key = message.split("'")[1] if "'" in message else ""
    places = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    return f"line {text.count(chr(10), 0, places[1]) + 1}" if len(places) > 1 else ""
