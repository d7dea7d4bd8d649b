"""The regression gate: a run's figures against the stored history of the same testbed and machine.

    harness gate RESULTS... [--history DIR] [--update-baseline]

History is plain files: ``DIR/TESTBED/MACHINE/TIME.json``, each a results file
(``harness.results``) of an accepted run; MACHINE is a digest of the fingerprint, so figures of unlike
machines are never compared. ``--update-baseline`` adds the run to its history (an accepted change).
Several RESULTS of one build on one machine are judged as one run (``pooled``).

The method, and why. On shared machines a figure's level drifts from run to run (a slow neighbour, a
different host of the same kind), so each figure is first divided by its same-run baseline's median
(``center``: of whole-ns test_run durations, the grouped median): a slow day moves both. The
evidence is then judged at two levels, and a regression needs both:

- **Run level.** The history's runs give a center (the median of their normalized medians) and a
  spread (1.4826 x their MAD, a standard deviation robust to one odd run). The new run is worse by
  more than ``BAND`` spreads, and by at least ``FLOOR``. This is what separates a change from the
  run-to-run noise that a fixed percentage (pytest-benchmark's ``--benchmark-compare-fail``) cannot
  tell apart, and it needs only a few runs of history (Bencher's z-score wants ~30).
- **Sample level.** A one-sided Mann-Whitney U test (what Google benchmark's compare.py uses) of the
  new run's samples against the pooled samples of the history has p < ``ALPHA``: the shift is not
  carried by one or two samples of a run whose median happened to land low.

A figure needs ``MIN_RUNS`` runs of history and ``MIN_SAMPLES`` samples (U wants 9 or more to have
power; fewer are reported as not judged, never as passed). Higher is better for rates, lower for
times (by the unit).

Measured on synthetic histories at this machine's spread (``tests/unit/test_gate.py``: 7% per
sample, 1% run to run after normalizing, 8 runs of history, 200 seeded trials): with 15 samples a
run, 0.5-1% false alarms on the same build and 3.5-6.5% misses of a 10% slowdown. With 9 samples
the misses rise to ~12%, and a figure whose samples vary by 10% wants ~25: a gated run should take
more repeats than the smoke run's 3.
End to end on real runs (``tests/perf/test_gate_end_to_end.py``, ``docs/gate.md``): the traffic
counter's ns/packet, run medians moving 4% from run to run, 8 runs of history: 1.9% of same-
configuration runs flagged, 10% / 20% slowdowns caught 63% / 98% of the time, a planted 3x always.
Not for: taking the figures (``harness.measure``), budgets of a testbed, reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BAND = 2.0  # spreads of the history's run medians
FLOOR = 0.02  # the smallest change called a regression, of the history's center
ALPHA = 0.01
MIN_RUNS = 3
MIN_SAMPLES = 5
LOWER_IS_BETTER = ("ns", "us", "ms", "s")  # the unit's first word: ns/packet, us/call, ms


def machine_id(fingerprint: dict[str, Any]) -> str:
    """A short, stable name for a fingerprint (its keys sorted, hashed)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def history_dir(root: Path, results: dict[str, Any]) -> Path:
    return root / results["testbed"] / machine_id(results["fingerprint"])


def center(summary: dict[str, Any]) -> float:
    """A summary's median; of whole numbers, the interpolated median of grouped data. The kernel
    times test_run in whole ns: a bare program's median is 9 or 10 ns from run to run, an 11% jump
    that would move every figure set against it, where the grouped median moves by a fraction."""
    values = summary.get("values") or []
    if values and all(float(v).is_integer() for v in values):
        return statistics.median_grouped(values)
    return summary["median"]


def normalized(figure: dict[str, Any]) -> list[float]:
    """The figure's samples, each divided by its same-run baseline's median (``center``)."""
    base = center(figure["baseline"])
    return [v / base for v in figure["subject"]["values"]] if base else []


def mann_whitney_greater(x: list[float], y: list[float]) -> float:
    """One-sided p-value that ``x`` tends to be greater than ``y`` (normal approximation with tie
    and continuity corrections; adequate from about 5 samples each)."""
    n1, n2 = len(x), len(y)
    ranked = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks, ties, i = [0.0] * len(ranked), 0.0, 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        ties += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    u = (
        sum(r for r, (_, group) in zip(ranks, ranked, strict=True) if group == 0)
        - n1 * (n1 + 1) / 2
    )
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    if sigma == 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Verdict:
    """One figure of the run against its history; ``change`` is signed so that positive is worse."""

    name: str
    unit: str
    history: float | None  # center of the history's normalized run medians
    now: float
    change: float | None
    band: float | None
    p_value: float | None
    verdict: str  # regression, improvement, no change, not judged: <why>

    @property
    def regression(self) -> bool:
        return self.verdict == "regression"


def judge(figure: dict[str, Any], past: list[dict[str, Any]]) -> Verdict:
    """``figure`` of the new run against the same figure in ``past`` runs."""
    samples = normalized(figure)
    now = statistics.median(samples) if samples else math.nan
    higher_is_better = figure["unit"].split("/")[0] not in LOWER_IS_BETTER
    runs = [s for s in (normalized(f) for f in past) if len(s) >= MIN_SAMPLES]

    def verdict(history=None, change=None, band=None, p=None, why="") -> Verdict:
        return Verdict(figure["name"], figure["unit"], history, now, change, band, p, why)

    if len(samples) < MIN_SAMPLES:
        return verdict(why=f"not judged: {len(samples)} samples, {MIN_SAMPLES} needed")
    if len(runs) < MIN_RUNS:
        return verdict(why=f"not judged: {len(runs)} runs of history, {MIN_RUNS} needed")
    medians = [statistics.median(r) for r in runs]
    center = statistics.median(medians)
    spread = 1.4826 * statistics.median(abs(m - center) for m in medians)
    band = max(BAND * spread / center, FLOOR)
    # positive change: worse (a lower rate, a longer time)
    change = (center - now if higher_is_better else now - center) / center
    pooled = [v for r in runs for v in r]
    larger_when_worse, smaller = (pooled, samples) if higher_is_better else (samples, pooled)
    p_worse = mann_whitney_greater(larger_when_worse, smaller)
    p_better = mann_whitney_greater(smaller, larger_when_worse)
    if change > band and p_worse < ALPHA:
        return verdict(center, change, band, p_worse, "regression")
    if -change > band and p_better < ALPHA:
        return verdict(center, change, band, p_better, "improvement")
    return verdict(center, change, band, min(p_worse, p_better), "no change")


def load_history(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def gate(results: dict[str, Any], history: list[dict[str, Any]]) -> list[Verdict]:
    """A verdict for every figure of ``results``, against the runs of ``history``."""
    verdicts = []
    for figure in results["figures"]:
        past = [f for run in history for f in run["figures"] if f["name"] == figure["name"]]
        verdicts.append(judge(figure, past))
    return verdicts


def rows(verdicts: list[Verdict]) -> list[list[str]]:
    """The verdicts as table rows, a header first: metric, history, now, change, band, p, verdict."""
    table_rows = [["metric", "history", "now", "worse by", "band", "p", "verdict"]]
    for v in verdicts:
        table_rows.append(
            [
                f"{v.name} ({v.unit}, / baseline)",
                "-" if v.history is None else f"{v.history:.4g}",
                f"{v.now:.4g}",
                "-" if v.change is None else f"{v.change:+.1%}",
                "-" if v.band is None else f"{v.band:.1%}",
                "-" if v.p_value is None else f"{v.p_value:.2g}",
                v.verdict,
            ]
        )
    return table_rows


def table(verdicts: list[Verdict]) -> str:
    """The verdicts as a plain-text table (``rows``, columns aligned)."""
    lines = rows(verdicts)
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one build on one machine as one run (``harness gate A.json B.json``): each
    figure's samples, each divided by its own run's baseline, side by side. A gated run wants 15
    samples a figure or more; the benchmarks take 3-7 each, so CI runs the suite more than once
    (``ci/workflows/perf.yml``). ValueError if the runs are of different testbeds, machines or
    revisions: those are what the gate compares, never what it pools."""
    first = runs[0]
    if len(runs) == 1:
        return first  # kept whole: its baselines' samples and extra facts go into the history
    for run in runs[1:]:
        for what, of in (
            ("testbed", lambda r: r["testbed"]),
            ("machine", lambda r: machine_id(r["fingerprint"])),
            ("revision", lambda r: r.get("git_revision")),
        ):
            if of(run) != of(first):
                raise ValueError(
                    f"runs of {run['time']} and {first['time']} differ in {what} "
                    f"({of(run)} against {of(first)}): pool runs of one build on one machine"
                )
    figures: dict[str, dict[str, Any]] = {}
    for run in runs:
        for f in run["figures"]:
            into = figures.setdefault(
                f["name"],
                {
                    "name": f["name"],
                    "unit": f["unit"],
                    "baseline_name": f.get("baseline_name"),
                    "subject": {"values": []},
                    "baseline": {"median": 1.0},
                    "runs": 0,
                },
            )
            into["subject"]["values"] += normalized(f)
            into["runs"] += 1
    for f in figures.values():
        f["subject"]["median"] = f["ratio"] = (
            statistics.median(f["subject"]["values"]) if f["subject"]["values"] else None
        )
    return {
        **first,
        "time": max(r["time"] for r in runs),
        "pooled_from": [r["time"] for r in runs],
        "figures": list(figures.values()),
    }


def record(results: dict[str, Any], root: Path) -> Path:
    """Add a run (or a pooled run) to its history (``--update-baseline``)."""
    stem = results["time"].replace(":", "")
    target = history_dir(root, results) / f"{stem}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while target.exists():  # two runs in one second (the time has seconds): keep both
        target = target.with_name(f"{stem}-{n}.json")
        n += 1
    target.write_text(json.dumps(results, indent=1) + "\n")
    return target
