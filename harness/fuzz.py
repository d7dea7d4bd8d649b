"""Fuzz campaigns: mutated frames through a data plane in the kernel and through its model.

A subject is one data plane under test, loaded with one configuration next to its model.
``feed(frame)`` runs a frame through both and raises :class:`Disagreement` on what one frame shows
(the verdict, a frame sent out); ``check()`` compares what has built up (tables, counters) and
raises on any difference. A verdict of XDP_ABORTED (or TC_ACT_SHOT where
the model passes) is a disagreement like any other: test_run returns the program's action itself,
so no ``xdp:xdp_exception`` tracepoint is needed to see it.

Frames go in batches, each to a freshly loaded subject with a ``check()`` at its end. On a disagreement the batch is replayed on a
fresh subject with a check after every frame, to find the first frame where kernel and model part;
the frames up to it are saved as a regression case (JSON, named by data plane and content hash)
that the campaign's tests replay on every later run, and the disagreement is raised naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from injector.mutate import Mutant


class Disagreement(AssertionError):
    """The kernel and the model differ; the message says on what and for which frame."""


class Subject(AbstractContextManager, Protocol):
    def feed(self, frame: bytes) -> str:
        """Run ``frame`` through kernel and model; return the verdict's name."""

    def check(self) -> None: ...


@dataclass
class Campaign:
    """One data plane's campaign: ``subject()`` makes a fresh subject of configuration ``config``."""

    plane: str
    config: str
    subject: Callable[[], Subject]
    cases: Path  # where regression cases are kept
    verdicts: Counter[str] = field(default_factory=Counter)
    frames: int = 0

    def run(self, mutants: Iterable[Mutant], batch: int, seed: int) -> None:
        pending: list[Mutant] = []
        for mutant in mutants:
            pending.append(mutant)
            if len(pending) == batch:
                self._run_batch(pending, seed)
                pending = []
        if pending:
            self._run_batch(pending, seed)

    def _run_batch(self, batch: Sequence[Mutant], seed: int) -> None:
        try:
            with self.subject() as subject:
                for mutant in batch:
                    self.verdicts[subject.feed(mutant.frame)] += 1
                subject.check()
        except Disagreement as err:
            path = self._save(self._first_disagreement(batch), seed)
            raise Disagreement(f"{self.plane}/{self.config}: {err}\nsaved as {path}") from None
        self.frames += len(batch)

    def _first_disagreement(self, batch: Sequence[Mutant]) -> Sequence[Mutant]:
        with self.subject() as subject:
            found = first_disagreement(subject, [m.frame for m in batch])
        return batch if found is None else batch[: found[0] + 1]  # None: only the whole batch

    def _save(self, frames: Sequence[Mutant], seed: int) -> Path:
        case = {
            "plane": self.plane,
            "config": self.config,
            "seed": seed,
            "mutations": [m.name for m in frames],
            "frames": [m.frame.hex() for m in frames],
        }
        digest = hashlib.sha1("".join(case["frames"]).encode()).hexdigest()[:12]
        self.cases.mkdir(parents=True, exist_ok=True)
        path = self.cases / f"{self.plane}-{digest}.json"
        path.write_text(json.dumps(case, indent=1) + "\n")
        return path

    def summary(self) -> str:
        verdicts = ", ".join(f"{name} {n}" for name, n in sorted(self.verdicts.items()))
        return f"{self.plane}/{self.config}: {self.frames} frames, 0 disagreements; {verdicts}"


def first_disagreement(
    subject: Subject, frames: Iterable[bytes]
) -> tuple[int, Disagreement] | None:
    """Feed ``frames`` with a check after each: the index of the first where kernel and model
    part, and how; None if they never do."""
    for index, frame in enumerate(frames):
        try:
            subject.feed(frame)
            subject.check()
        except Disagreement as err:
            return index, err
    return None


def saved_cases(directory: Path, plane: str) -> list[Path]:
    return sorted(directory.glob(f"{plane}-*.json"))


def replay(path: Path, subject: Callable[[str], Subject]) -> None:
    """Feed a saved case to a fresh subject of its configuration, checking after every frame."""
    case = json.loads(path.read_text())
    with subject(case["config"]) as s:
        found = first_disagreement(s, (bytes.fromhex(frame) for frame in case["frames"]))
    if found is not None:
        index, err = found
        raise Disagreement(f"{path.name}, frame {case['mutations'][index]}: {err}")
