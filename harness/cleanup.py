"""Remove what runs that no longer exist left behind, and keep the records of ``harness topo up``.

``clean()`` (the ``harness clean`` command; also run once at the start of every process's first
``Topology.up()``) does, in order:

1. imports ``UNDO_MODULES`` so that every resource kind has its undo function registered;
2. ``bpf.journal.clean_stale()``: undoes what each dead owner's journal still lists;
3. removes detached topologies whose ``topo up`` died before finishing (see ``Detached``);
4. belt and braces: deletes namespaces ``bl-<id>-*`` and host interfaces ``bl<id>-*`` whose run id is
   neither a live owner's nor a detached topology's (a kill between create and record, a lost line).

Detached topologies. ``harness topo up`` must leave its network up after it exits, which the journal
alone would call a dead owner's leftovers. So ``topo up`` keeps its journal in a directory of its own,
``/run/bpflab/topologies/NAME/`` (``clean_stale()`` reads only ``/run/bpflab/journal/``), owned as
usual by the ``topo up`` process, and writes ``state.json`` there once the build has succeeded. A
directory with ``state.json`` is up until ``topo down NAME`` undoes its journal and deletes it; one
without is a build in progress (its owner alive) or a killed one, which ``clean()`` undoes.

This module does not build anything and knows no resource kind itself.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from bpf import journal
from bpf.netns import NETNS_RUN_DIR
from harness.topology import remove_host_link, remove_netns

UNDO_MODULES = ("bpf.attach", "bpf.daemon", "bpf.softrss.argus", "harness.topology", "injector.xdp")
DETACHED_DIR = journal.STATE_DIR / "topologies"
_RUN_NETNS = re.compile(r"bl-([0-9a-f]{6})-.+")
_RUN_LINK = re.compile(r"bl([0-9a-f]{6})-.+")


@dataclass(frozen=True)
class Detached:
    """The record of one topology left up by ``harness topo up``."""

    name: str

    @property
    def directory(self) -> Path:
        return DETACHED_DIR / self.name

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @staticmethod
    def all() -> list[Detached]:
        if not DETACHED_DIR.is_dir():
            return []
        return [Detached(d.name) for d in sorted(DETACHED_DIR.iterdir()) if d.is_dir()]

    def is_up(self) -> bool:
        return self.state_file.is_file()

    def new_journal(self) -> journal.Journal:
        """The journal a ``topo up`` records into; refuses if the name is taken."""
        try:
            self.directory.mkdir(parents=True)
        except FileExistsError:
            raise FileExistsError(
                f"topology {self.name} is already up or being built ({self.directory}): "
                f"`harness topo down {self.name}` first"
            ) from None
        return journal.Journal(self.directory)

    def save(self, description: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(description, indent=2))
        tmp.replace(self.state_file)

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def run_ids(self) -> set[str]:
        return {path.stem for path in self.directory.glob("*.jsonl")}

    def remove(self) -> list[str]:
        """Undo the recorded network and forget the record; raises if something could not go."""
        _import_undo_modules()
        report = journal.clean_stale(self.directory)
        if self.run_ids():
            raise RuntimeError(
                f"topology {self.name} could not be taken down entirely (is the `topo up` that "
                f"built it still running?): " + "; ".join(report)
            )
        shutil.rmtree(self.directory)
        return report


def _import_undo_modules() -> None:
    for name in UNDO_MODULES:
        importlib.import_module(name)


def clean() -> list[str]:
    """Remove every leftover of runs that no longer exist; one line per thing removed or failed."""
    _import_undo_modules()
    report = journal.clean_stale()
    protected = journal.live_run_ids()
    for detached in Detached.all():
        if not detached.is_up():
            report += journal.clean_stale(detached.directory)
            if not any(detached.directory.iterdir()):
                detached.directory.rmdir()
                continue
        protected |= detached.run_ids()
    names = [p.name for p in NETNS_RUN_DIR.iterdir()] if NETNS_RUN_DIR.is_dir() else []
    for name in names:
        match = _RUN_NETNS.fullmatch(name)
        if match and match[1] not in protected:
            remove_netns(name)
            report.append(f"removed unrecorded namespace {name}")
    with IPRoute() as ipr:
        host_links = [link.get("ifname") for link in ipr.link("dump")]
    for ifname in host_links:
        match = _RUN_LINK.fullmatch(ifname)
        if match and match[1] not in protected:
            remove_host_link(ifname)
            report.append(f"removed unrecorded interface {ifname}")
    return report


@functools.cache
def clean_once() -> list[str]:
    """``clean()`` the first time a process asks; what the next run does by itself."""
    return clean()
