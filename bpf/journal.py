"""A crash-safe record of what a process created outside itself, so that a later run can undo it.

Resources that outlive their creator unless someone removes them (network namespaces, TC filters,
pinned objects, daemons, settings changed on a real NIC) are recorded here as they are created and
struck off as they are removed. Each process writes its own JSON-lines file under
``/run/bpflab/journal/``; the first line names the owner by pid and start time, so a recycled pid is
never mistaken for a live owner. ``clean_stale()`` undoes, newest first, whatever dead owners left.

The modules that create a kind of resource register its undo function with ``@undoes(kind)``; code
that cleans up must import them first (``harness.cleanup`` does). This module knows no resource kind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/bpflab")
JOURNAL_DIR = STATE_DIR / "journal"

UndoFn = Callable[..., None]
_UNDO: dict[str, UndoFn] = {}


def undoes(kind: str) -> Callable[[UndoFn], UndoFn]:
    """Register the function that removes a leftover resource of ``kind`` given its recorded fields."""

    def register(fn: UndoFn) -> UndoFn:
        _UNDO[kind] = fn
        return fn

    return register


@dataclass(frozen=True)
class Owner:
    pid: int
    start_time: int

    @staticmethod
    def of(pid: int) -> Owner | None:
        """The process ``pid`` as it is now, or None if there is none."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        return Owner(pid, int(fields[19]))

    def alive(self) -> bool:
        return Owner.of(self.pid) == self


class Journal:
    """The record of one process. ``run_id`` also prefixes the names of what the process creates."""

    def __init__(self, directory: Path = JOURNAL_DIR) -> None:
        self.run_id = secrets.token_hex(3)
        self.owner = Owner.of(os.getpid())
        self.path = directory / f"{self.run_id}.jsonl"
        self._fd: int | None = None
        self._next_id = 0
        self._open: dict[int, tuple[str, dict]] = {}  # entry id -> (kind, fields)

    def _write(self, entry: dict) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
            self._write({"owner": {"pid": self.owner.pid, "start_time": self.owner.start_time}})
        # One write(2) per line on an O_APPEND file: a kill can lose a line, never tear one.
        os.write(self._fd, (json.dumps(entry) + "\n").encode())

    def record(self, kind: str, **fields: object) -> int:
        """Note a resource just created; returns the id to strike it off with."""
        if kind not in _UNDO:
            raise KeyError(f"no undo function registered for resource kind {kind!r}")
        entry_id = self._next_id
        self._next_id += 1
        self._write({"id": entry_id, "kind": kind, "fields": fields})
        self._open[entry_id] = (kind, fields)
        return entry_id

    def undo(self, entry_id: int) -> None:
        """Remove the resource with its kind's registered undo function, then strike it off.

        If the undo raises, the entry stays recorded, for ``clean_stale()`` to retry later.
        """
        kind, fields = self._open[entry_id]
        _UNDO[kind](**fields)
        self.strike(entry_id)

    def strike(self, entry_id: int) -> None:
        """Note that the resource has been removed by its owner."""
        self._open.pop(entry_id, None)
        self._write({"done": entry_id})
        if not self._open:
            self.close()

    def close(self) -> None:
        """Forget the file once nothing recorded in it is left."""
        if self._fd is not None and not self._open:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)


_current: Journal | None = None


def current() -> Journal:
    """This process's journal (a forked child gets its own)."""
    global _current
    if _current is None or _current.owner.pid != os.getpid():
        _current = Journal()
    return _current


@dataclass
class Leftover:
    kind: str
    fields: dict
    journal: Path

    def __str__(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.kind}({what}) from {self.journal.name}"


def _read(path: Path) -> tuple[Owner | None, list[Leftover]]:
    owner, entries, done = None, {}, set()
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed writer
        if "owner" in item:
            owner = Owner(**item["owner"])
        elif "done" in item:
            done.add(item["done"])
        else:
            entries[item["id"]] = Leftover(item["kind"], item["fields"], path)
    left = [entry for entry_id, entry in sorted(entries.items()) if entry_id not in done]
    return owner, left


def live_run_ids(directory: Path = JOURNAL_DIR) -> set[str]:
    """Run ids whose owner is still running (their resources are not leftovers), the caller's own
    included even before it has recorded anything."""
    ids = {current().run_id}
    for path in directory.glob("*.jsonl"):
        owner, _ = _read(path)
        if owner is None or owner.alive():
            ids.add(path.stem)
    return ids


def clean_stale(directory: Path = JOURNAL_DIR) -> list[str]:
    """Undo what dead owners left, newest first; returns one line per resource removed or failed."""
    report = []
    for path in sorted(directory.glob("*.jsonl")):
        owner, left = _read(path)
        if owner is not None and owner.alive():
            continue
        failed = False
        for entry in reversed(left):
            undo = _UNDO.get(entry.kind)
            if undo is None:
                report.append(f"cannot undo {entry}: no handler for {entry.kind!r} imported")
                failed = True
                continue
            try:
                undo(**entry.fields)
            except Exception as err:  # one stuck resource must not stop the others' removal
                report.append(f"failed to undo {entry}: {err}")
                failed = True
            else:
                report.append(f"removed {entry}")
        if not failed:
            path.unlink()
    return report
