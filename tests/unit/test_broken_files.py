"""Every loader of a user's file, fed a corpus of broken files: a clear error, nothing else.

Loaders: topology, testbed, traffic spec, allowlist, soft RSS state, Argus settings, benchmark
results. Each gets a valid file (checked to load), then each broken variant of it: empty,
truncated, every top-level field of the wrong type, the whole document of the wrong type, huge,
a key given twice, a byte that is not UTF-8. Each variant must raise the loader's own error
(a ``ValueError``) naming the file, and the line where there is one; a soft RSS state that fails
leaves no object loaded. The commands that read those files print that error, exit 1 or 2, and
print no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import testbeds
import topologies
from bpf import BpfObject
from bpf.files import DEFAULT_LIMIT
from bpf.softrss import Config, SoftRss
from bpf.softrss import argus as softrss_argus
from bpf.softrss.argus import ConfigError, read_config_file
from bpf.softrss.softrss import StateError
from bpf.vxlan import Allowlist, AllowlistError
from harness import cli as harness_cli
from harness import results
from harness.testbed import TestbedError, load_testbed
from harness.topology_schema import TopologyError, load_spec
from injector import cli as injector_cli
from injector.spec import SpecError
from injector.spec import load_spec as load_traffic_spec

SPEC = """\
template: {kind: udp4, args: {src: 10.1.0.1, payload: hello}}
vary:
  - {field: UDP.sport, random: {min: 1024, max: 65535}}
flows: 100
sizes: {imix: [[128, 7], [590, 4], [1514, 1]]}
count: 50
"""
ALLOWLIST = (
    '{\n "version": "1.0",\n "flat_ip_list": ["10.0.0.1", "172.16.0.0/12", "2001:db8::/32"]\n}\n'
)
ARGUS = "interface: ens5\noutput_dir: /tmp/argus\nbuckets: 4\nhash: jhash\n"
RESULTS = {"testbed": "veth", "time": "2026-12-03T10:00:00Z", "fingerprint": {}, "figures": []}


@dataclass(frozen=True)
class Loader:
    load: Callable[[Path], object]
    error: type[ValueError]
    valid: Callable[[Path], str]  # writes nothing; the valid file's text (tmp_path for state)
    json: bool  # the format: JSON, else YAML


def _softrss_state(tmp_path: Path) -> str:
    with SoftRss(Config(buckets=4)) as rss:
        rss.save(tmp_path / "valid-state.json")
    return (tmp_path / "valid-state.json").read_text()


def _restore(path: Path) -> object:
    SoftRss.restore(path).close()
    return True


LOADERS = {
    "topology": Loader(
        load_spec,
        TopologyError,
        lambda _: (Path(topologies.__file__).parent / "two_host.yaml").read_text(),
        json=False,
    ),
    "testbed": Loader(
        load_testbed,
        TestbedError,
        lambda _: (Path(testbeds.__file__).parent / "veth.yaml").read_text(),
        json=False,
    ),
    "traffic spec": Loader(load_traffic_spec, SpecError, lambda _: SPEC, json=False),
    "allowlist": Loader(Allowlist.load, AllowlistError, lambda _: ALLOWLIST, json=True),
    "soft RSS state": Loader(_restore, StateError, _softrss_state, json=True),
    "Argus settings": Loader(read_config_file, ConfigError, lambda _: ARGUS, json=False),
    "results": Loader(results.read, ValueError, lambda _: json.dumps(RESULTS, indent=1), json=True),
}


def _dump(doc: object, as_json: bool) -> str:
    return json.dumps(doc, indent=1) if as_json else yaml.safe_dump(doc, sort_keys=False)


@dataclass(frozen=True)
class Variant:
    name: str
    content: bytes
    line: int | None = None  # the line the error must name
    may_load: bool = False  # a truncation can be a valid file itself


def broken_variants(valid: str, as_json: bool) -> Iterator[Variant]:
    doc = json.loads(valid) if as_json else yaml.safe_load(valid)
    yield Variant("empty", b"")
    for cut in (3, len(valid) // 3, len(valid) // 2, len(valid) - 3):
        yield Variant(f"truncated at {cut}", valid[:cut].encode(), may_load=True)
    yield Variant("top level a list", _dump([doc], as_json).encode())
    for key, value in doc.items():
        wrong = 7 if isinstance(value, list | dict) else [value, value]
        yield Variant(f"{key} of the wrong type", _dump({**doc, key: wrong}, as_json).encode())
    first = next(iter(doc))
    body = _dump(doc, as_json)
    if as_json:  # the key again on line 2, ahead of the first: the error is at the first
        twice = "{\n" + f'"{first}": {json.dumps(doc[first])},' + body.lstrip("{")
        line = 1 + next(
            i for i, text in enumerate(twice.splitlines()[2:], 2) if f'"{first}"' in text
        )
    else:  # the key again after the rest
        twice = body + f"{first}: {json.dumps(doc[first])}\n"
        line = len(twice.splitlines())
    yield Variant("a key twice", twice.encode(), line)
    lines = valid.encode().split(b"\n")
    yield Variant("not UTF-8", b"\n".join([lines[0], b"\xff\xfe" + lines[1], *lines[2:]]), 2)
    padding = (b" " if as_json else b"#") * (DEFAULT_LIMIT + 1)
    yield Variant("huge", valid.encode() + b"\n" + padding)


@pytest.mark.parametrize("kind", LOADERS)
def test_broken_files_get_a_clear_error(kind, tmp_path):
    loader = LOADERS[kind]
    valid = tmp_path / "valid"
    valid.write_text(loader.valid(tmp_path))
    assert loader.load(valid), f"the valid {kind} file loads"
    for variant in broken_variants(valid.read_text(), loader.json):
        what = f"{kind}, {variant.name}"
        path = tmp_path / f"{variant.name.replace(' ', '-')}.file"
        path.write_bytes(variant.content)
        try:
            loader.load(path)
        except loader.error as err:
            message = str(err)
        else:
            assert variant.may_load, f"{what}: loaded without an error"
            continue
        finally:
            assert not BpfObject.loaded_objects(), f"{what}: an object stayed loaded"
        assert str(path) in message, f"{what}: the error must name the file: {message}"
        if variant.line is not None:
            assert f"line {variant.line}" in message, f"{what}: line {variant.line}? {message}"
        if variant.name == "huge":
            assert "larger than" in message, message


# --- the commands that read them -----------------------------------------------------------------

COMMANDS = {
    "topology": (harness_cli.main, lambda f: ["topo", "up", str(f)], LOADERS["topology"]),
    "results": (harness_cli.main, lambda f: ["gate", str(f)], LOADERS["results"]),
    "traffic spec": (
        injector_cli.main,
        lambda f: ["send", "-i", "lo", "--spec", str(f)],
        LOADERS["traffic spec"],
    ),
    "Argus settings": (
        softrss_argus.main,
        lambda f: ["-c", str(f)],
        LOADERS["Argus settings"],
    ),
}


@pytest.mark.parametrize("kind", COMMANDS)
def test_commands_print_the_error_without_a_traceback(kind, tmp_path, capsys):
    main, argv, loader = COMMANDS[kind]
    for variant in broken_variants(loader.valid(tmp_path), loader.json):
        if variant.may_load or variant.name == "huge":
            continue  # the loaders' test covers these; a valid file would run the command
        path = tmp_path / f"{variant.name.replace(' ', '-')}.file"
        path.write_bytes(variant.content)
        try:
            code = main(argv(path))
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        assert code in (1, 2), f"{kind}, {variant.name}: exit {code}; {err}"
        assert str(path) in err and "Traceback" not in err, f"{kind}, {variant.name}: {err}"
