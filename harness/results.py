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
guest the next). Not for: budgets, gates or reports, which read these files.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.measure import Comparison

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


class Results:
    """The figures of one run on ``testbed``, written as one JSON file."""

    def __init__(self, testbed: str = "veth", tree: Path | None = None) -> None:
        self.testbed, self.tree = testbed, tree or Path.cwd()
        self.figures: list[dict[str, Any]] = []
        self.preflight: dict[str, dict[str, Any]] = {}  # interface -> its preflight record

    def record(self, result: Comparison, **extra: Any) -> Comparison:
        """Keep ``result`` (and ``extra`` facts of its run) and print its ``RESULT`` line."""
        print(result.result_line())
        self.figures.append(
            {
                "name": result.name,
                "unit": result.subject.unit,
                "ratio": result.ratio,
                "subject": asdict(result.subject),
                "baseline_name": result.baseline_name,
                "baseline": asdict(result.baseline),
                "extra": extra,
            }
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
