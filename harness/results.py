"""The results file of a benchmark run: every figure with its samples and its same-run baseline, and
the machine it was taken on.

A benchmark hands each ``harness.measure.Comparison`` to ``Results.record``, which prints the
``RESULT`` line CI already collects and keeps the figure; at the end of the run the file is written
(``pytest tests/perf --results FILE``; default ``.benchmarks/results.json``)::

    {"testbed": "veth", "time": "2026-12-02T20:40:00+00:00", "git_revision": "93eff87...",
     "fingerprint": {"cpu_model": ..., "cores": 2, "virtualization": ..., "kernel": ...},
     "figures": [{"name": ..., "unit": ..., "ratio": ..., "subject": {"median": ..., "values": [...]},
                  "baseline_name": ..., "baseline": {...}, "extra": {...}}]}

The fingerprint says what a figure's machine was, so that figures of unlike machines are never set
against each other (the same kind of machine has been a KVM guest one day and a slower Firecracker
guest the next). Each figure is checked against its testbed's budget as it is recorded (a missed
budget fails the benchmark), and the verdict kept. Not for: gates or reports, which read these files.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bpf import files
from harness.measure import Comparison
from harness.testbed import Budget

DEFAULT_PATH = Path(".benchmarks/results.json")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _virtualization() -> str:
    """``bare metal``, or the hypervisor's machine as DMI names it (KVM and EC2 guests have DMI);
    a guest without DMI (a Firecracker microVM) is said to be one."""
    if " hypervisor" not in Path("/proc/cpuinfo").read_text():
        return "bare metal"
    dmi = Path("/sys/class/dmi/id")
    names = [
        (dmi / name).read_text().strip()
        for name in ("sys_vendor", "product_name")
        if (dmi / name).is_file()
    ]
    return f"guest of {' '.join(names)}" if names else "guest without DMI (a microVM: Firecracker)"


def fingerprint() -> dict[str, Any]:
    """What the figures' machine is: CPU model, cores, virtualization, kernel."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "virtualization": _virtualization(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_revision(where: Path) -> str | None:
    """The checked-out commit of the tree at ``where``, None outside a git checkout."""
    done = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


KEYS = {"testbed": str, "time": str, "fingerprint": dict, "figures": list}  # Results.document


def read(path: Path) -> dict[str, Any]:
    """A results file of ``pytest tests/perf``, checked to be one (ValueError naming what is not)."""
    try:
        run = files.load_json(path)
    except files.FileError as err:
        raise ValueError(f"not a results file: {err}") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path}: not a results file: a JSON object expected")
    missing = sorted(KEYS - run.keys())
    if missing:
        raise ValueError(f"{path}: not a results file: it has no {', '.join(missing)}")
    for key, kind in KEYS.items():
        if not isinstance(run[key], kind):
            raise ValueError(f"{path}: {key}: a JSON {kind.__name__} expected, got {run[key]!r}")
    if not all(isinstance(figure, dict) for figure in run["figures"]):
        raise ValueError(f"{path}: figures: a list of JSON objects expected")
    return run


class BudgetMissed(AssertionError):
    """A figure missed its testbed's budget; the message says by how much and against what."""


class Results:
    """The figures of one run on ``testbed``, written as one JSON file, each checked against the
    testbed's budget for it (``harness.testbed``) unless ``enforce`` is off (smoke runs, whose
    samples are too small to judge by)."""

    def __init__(
        self,
        testbed: str = "veth",
        tree: Path | None = None,
        budgets: Sequence[Budget] = (),
        enforce: bool = True,
    ) -> None:
        self.testbed, self.tree = testbed, tree or Path.cwd()
        self.budgets, self.enforce = tuple(budgets), enforce
        self.figures: list[dict[str, Any]] = []
        self.preflight: dict[str, dict[str, Any]] = {}  # interface -> its preflight record

    def budget_for(self, name: str) -> Budget | None:
        """The first budget whose name (a glob: ``softrss * established``) matches ``name``."""
        return next((b for b in self.budgets if fnmatch.fnmatchcase(name, b.figure)), None)

    def record(self, result: Comparison, **extra: Any) -> Comparison:
        """Keep ``result`` (and ``extra`` facts of its run), print its ``RESULT`` line, and check
        its budget: BudgetMissed says what was measured, the budget, the baseline, the testbed."""
        print(result.result_line())
        budget = self.budget_for(result.name)
        met = budget.met_by(result) if budget else None
        self.figures.append(
            {
                "name": result.name,
                "unit": result.subject.unit,
                "ratio": result.ratio,
                "subject": asdict(result.subject),
                "baseline_name": result.baseline_name,
                "baseline": asdict(result.baseline),
                "budget": budget.describe() if budget else None,
                "budget_met": met,
                "extra": extra,
            }
        )
        if met is False and self.enforce:
            raise BudgetMissed(
                f"{result.name}: {result.subject} ({result.ratio:.3g}x {result.baseline_name}, "
                f"which measured {result.baseline}) misses its budget on testbed {self.testbed}: "
                f"{budget.describe()} ({budget.figure!r})"
            )
        return result

    def record_preflight(self, ifname: str, record: dict[str, Any]) -> None:
        """Keep the first preflight record of each DUT interface (``harness.preflight``)."""
        self.preflight.setdefault(ifname, record)

    def document(self) -> dict[str, Any]:
        return {
            "testbed": self.testbed,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_revision": git_revision(self.tree),
            "fingerprint": {**fingerprint(), "preflight": self.preflight},
            "figures": self.figures,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.document(), indent=1) + "\n")
