"""The regression gate: a run's figures against the stored history of the same testbed and machine.

    harness gate RESULTS... [--history DIR] [--update-baseline]

History is plain files: ``DIR/TESTBED/MACHINE/TIME.json``, each a results file
(``harness.results``) of an accepted run; MACHINE is a digest of the fingerprint, so figures of unlike
machines are never compared. ``--update-baseline`` adds the run to its history; the figures it flagged
are accepted changes, whose history starts again at it (``since_accepted``; at most ``WINDOW`` runs).
Several RESULTS of one build on one machine are judged as one run (``pooled``).

The method, and why. On shared machines a figure's level drifts from run to run (a slow neighbour, a
different host of the same kind), so each figure is first divided by its same-run baseline's median
(``center``: of whole-ns test_run durations, the grouped median): a slow day moves both. The
evidence is then judged at two levels, and a regression needs both, and a change of at least
``FLOOR``:

- **Run level.** The runs are what is independent (a run's samples share its drift), so the new
  run's median is set against the history's run medians as one more of them: Student's t
  prediction interval (``prediction_p``), which pays for the history's spread being estimated
  from a few runs (Bencher's z-score wants ~30; this works from ``MIN_RUNS``, with less power).
  A fixed percentage (pytest-benchmark's ``--benchmark-compare-fail``) cannot tell a change from
  that drift.
- **Across the run.** A full run has ~100-170 figures: at 1% false alarms each, most runs of an
  unchanged build would flag something. The run-level p-values of all judged figures are
  adjusted as one family (Benjamini-Hochberg, ``adjusted``) and a figure is flagged at q <=
  ``FAMILY_ALPHA``: an unchanged build fails one run in a hundred, whatever its figure count.
  The price is power on a lone figure (with 100 figures and 8 runs of history it must move by
  ~8 of its run-to-run standard deviations); a change in a data plane moves several of its
  figures, and the adjustment lowers the bar for each one found beside another.
- **Sample level.** A one-sided Mann-Whitney U test (what Google benchmark's compare.py uses) of
  the new run's samples against the pooled samples of the history has p < ``ALPHA``: the shift
  is not carried by one or two samples of a run whose median happened to land low.

A figure needs ``MIN_RUNS`` runs of history and ``MIN_SAMPLES`` samples (U wants 9 or more to have
power; fewer are reported as not judged, never as passed). Higher is better for rates, lower for
times (by the unit). The rates measured, on synthetic histories at this machine's spread
(``tests/unit/test_gate.py``) and end to end on real runs (``tests/perf/test_gate_end_to_end.py``),
are in ``docs/gate.md``.
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

FAMILY_ALPHA = 0.01  # the chance that a run of an unchanged build flags anything
FLOOR = 0.02  # the smallest change called a regression, of the history's center
ALPHA = 0.01  # the samples' U test, per figure
MIN_RUNS = 3
WINDOW = 30  # the most recent runs of history a figure is judged against
MIN_SAMPLES = 5
LOWER_IS_BETTER = ("ns", "us", "ms", "s")  # the unit's first word: ns/packet, us/call, ms


def machine_id(fingerprint: dict[str, Any]) -> str:
    """A short, stable name for a fingerprint's machine: its keys sorted and hashed, of the
    preflight record only each interface's driver check (driver, version, firmware). The rest of
    that record is measured (ENA's pps counter before the run, IRQ affinity, the namespace of a
    veth): hashed whole, no two runs would share a history."""
    identity = {k: v for k, v in fingerprint.items() if k != "preflight"}
    identity["drivers"] = sorted(
        check["detail"]
        for record in fingerprint.get("preflight", {}).values()
        for check in record.get("checks", [])
        if check.get("name") == "driver"
    )
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


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


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz's
    method, as in Numerical Recipes' betacf); for the t distribution's tail."""
    if x <= 0 or x >= 1:
        return max(0.0, min(1.0, x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _incomplete_beta(b, a, 1 - x)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-12:
            break
    return front * fraction / a


def student_t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def prediction_p(medians: list[float], now: float) -> float:
    """One-sided p-value that a run of the history's kind would have a median as high as ``now``:
    (now - mean) / (sd * sqrt(1 + 1/n)) is Student's t with n - 1 degrees of freedom when run
    medians are normal (the prediction interval of one new observation). The history's own
    spread is estimated from n runs, and the t distribution pays for that: with 8 runs, p = 0.01
    lies at 3.2 of their standard deviations, not the normal 2.3."""
    n = len(medians)
    mean, sd = statistics.fmean(medians), statistics.stdev(medians)
    if sd == 0:
        return 0.0 if now > mean else 1.0
    return student_t_sf((now - mean) / (sd * math.sqrt(1 + 1 / n)), n - 1)


def adjusted(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the order given: a figure whose q is at
    most FAMILY_ALPHA is a discovery at that false discovery rate over the family. When every
    figure is noise this bounds the chance that any is flagged by FAMILY_ALPHA (valid for
    independent or positively dependent figures, as figures of one machine's run are)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    q, running = [1.0] * m, 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        q[i] = running
    return q


@dataclass(frozen=True)
class Verdict:
    """One figure of the run against its history; ``change`` is signed so that positive is worse.
    ``p_value`` is the run-level p of the direction the figure moved in, ``q_value`` that p
    adjusted over the run's judged figures (``adjusted``), ``p_samples`` the samples' U test."""

    name: str
    unit: str
    history: float | None  # mean of the history's normalized run medians
    now: float
    change: float | None
    p_value: float | None
    q_value: float | None
    p_samples: float | None
    verdict: str  # regression, improvement, no change, not judged: <why>

    @property
    def regression(self) -> bool:
        return self.verdict == "regression"


@dataclass(frozen=True)
class _Evidence:
    """What one figure's history says of it, before the family's adjustment."""

    history: float
    now: float
    change: float  # positive: worse
    p_worse: float
    p_better: float
    samples: list[float]  # the run's, and the history's pooled, each multiplied so worse is larger
    pooled: list[float]

    def u_p(self, worse: bool) -> float:
        """The samples' one-sided U test in the direction the figure moved."""
        if worse:
            return mann_whitney_greater(self.samples, self.pooled)
        return mann_whitney_greater(self.pooled, self.samples)


def _evidence(figure: dict[str, Any], past: list[dict[str, Any]]) -> _Evidence | str:
    """The figure's evidence against its ``past`` runs, or why it cannot be judged."""
    samples = normalized(figure)
    if len(samples) < MIN_SAMPLES:
        return f"not judged: {len(samples)} samples, {MIN_SAMPLES} needed"
    runs = [s for s in (normalized(f) for f in past) if len(s) >= MIN_SAMPLES]
    if len(runs) < MIN_RUNS:
        return f"not judged: {len(runs)} runs of history, {MIN_RUNS} needed"
    higher_is_better = figure["unit"].split("/")[0] not in LOWER_IS_BETTER
    sign = -1 if higher_is_better else 1  # worse is larger once multiplied by sign
    medians = [sign * statistics.median(r) for r in runs]
    now = sign * statistics.median(samples)
    mean = statistics.fmean(medians)
    return _Evidence(
        history=abs(mean),
        now=abs(now),
        change=(now - mean) / abs(mean),
        p_worse=prediction_p(medians, now),
        p_better=prediction_p([-m for m in medians], -now),
        samples=[sign * v for v in samples],
        pooled=[sign * v for r in runs for v in r],
    )


def since_accepted(history: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each figure's entries in the last ``WINDOW`` runs of ``history`` (oldest first) since the
    last run that accepted a change of it (``record``): an accepted level is the figure's level
    from then on, and the runs before it would only widen its spread. One pass over the history."""
    past: dict[str, list[dict[str, Any]]] = {}
    for run in history:
        for name in run.get("accepted", ()):
            past[name] = []
        for figure in run["figures"]:
            past.setdefault(figure["name"], []).append(figure)
    return {name: figures[-WINDOW:] for name, figures in past.items()}


def gate(results: dict[str, Any], history: list[dict[str, Any]]) -> list[Verdict]:
    """A verdict for every figure of ``results``, against the runs of ``history``. The run-level
    p-values of the judged figures are adjusted as one family (``adjusted``): a run of ~100
    figures at 1% false alarms each would flag something in most runs of an unchanged build."""
    past = since_accepted(history)
    figures = results["figures"]
    evidence = [_evidence(f, past.get(f["name"], [])) for f in figures]
    judged = [e for e in evidence if isinstance(e, _Evidence)]
    q_worse = iter(adjusted([e.p_worse for e in judged]))
    q_better = iter(adjusted([e.p_better for e in judged]))
    verdicts = []
    for figure, e in zip(figures, evidence, strict=True):
        if not isinstance(e, _Evidence):  # why it was not judged
            now = statistics.median(normalized(figure) or [math.nan])
            verdicts.append(
                Verdict(figure["name"], figure["unit"], None, now, None, None, None, None, e)
            )
            continue
        qw, qb = next(q_worse), next(q_better)
        worse = e.change > 0
        p, q = (e.p_worse, qw) if worse else (e.p_better, qb)
        verdict, u = "no change", None
        if q <= FAMILY_ALPHA and abs(e.change) >= FLOOR:  # only then is U worth its sort
            u = e.u_p(worse)
            if u < ALPHA:
                verdict = "regression" if worse else "improvement"
        verdicts.append(
            Verdict(figure["name"], figure["unit"], e.history, e.now, e.change, p, q, u, verdict)
        )
    return verdicts


def load_history(directory: Path) -> list[dict[str, Any]]:
    """The recorded runs, oldest first (two runs of one second in the order recorded)."""
    paths = sorted(directory.glob("*.json"), key=lambda p: (len(p.stem), p.stem))
    runs = [json.loads(p.read_text()) for p in paths]
    return sorted(runs, key=lambda run: run["time"])


def rows(verdicts: list[Verdict]) -> list[list[str]]:
    """The verdicts as table rows, a header first: metric, history, now, change, p, q, U's p,
    verdict."""
    table_rows = [["metric", "history", "now", "worse by", "p", "q", "U p", "verdict"]]
    for v in verdicts:
        table_rows.append(
            [
                f"{v.name} ({v.unit}, / baseline)",
                "-" if v.history is None else f"{v.history:.4g}",
                f"{v.now:.4g}",
                "-" if v.change is None else f"{v.change:+.1%}",
                "-" if v.p_value is None else f"{v.p_value:.2g}",
                "-" if v.q_value is None else f"{v.q_value:.2g}",
                "-" if v.p_samples is None else f"{v.p_samples:.2g}",
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


def record(results: dict[str, Any], root: Path, accepted: list[str] = ()) -> Path:
    """Add a run (or a pooled run) to its history (``--update-baseline``). ``accepted`` names the
    figures whose change it accepts (those the gate flagged): their history starts again here."""
    results = {**results, "accepted": sorted(accepted)}
    stem = results["time"].replace(":", "")
    target = history_dir(root, results) / f"{stem}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while target.exists():  # two runs in one second (the time has seconds): keep both
        target = target.with_name(f"{stem}-{n}.json")
        n += 1
    target.write_text(json.dumps(results, indent=1) + "\n")
    return target
