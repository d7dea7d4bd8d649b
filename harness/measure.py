"""How figures are measured on shared, noisy machines, after the kernel's ``selftests/bpf/benchs``.

A figure is never a single timing: it is the median of repeated samples after a warm-up, with
outliers dropped by the IQR rule, reported with its spread, and set against a baseline measured in the
same run (a ratio survives a noisy neighbour; an absolute number does not). ``check_linear`` verifies
that twice the work takes about twice the time, which catches a measurement dominated by fixed costs.
Every result is also printed as one machine-readable ``RESULT`` line for CI to collect.
Not for: timed assertions in functional tests (performance claims live in ``tests/perf``).
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """Robust statistics of repeated samples of one quantity."""

    unit: str
    median: float
    mean: float
    stddev: float
    p99: float
    minimum: float
    maximum: float
    samples: int
    outliers: int
    values: tuple[float, ...] = ()  # every sample, outliers included, in the order taken

    def __str__(self) -> str:
        return f"{self.median:.4g} {self.unit} (sd {self.stddev:.2g}, n={self.samples})"


def summarize(values: list[float], unit: str) -> Summary:
    """Median, mean, stddev and p99 of ``values`` after dropping outliers beyond 1.5 IQR."""
    if not values:
        raise ValueError("no samples to summarize")
    kept = list(values)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
        fence = 1.5 * (q3 - q1)
        kept = [v for v in values if q1 - fence <= v <= q3 + fence]
    ordered = sorted(kept)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Summary(
        unit=unit,
        median=statistics.median(kept),
        mean=statistics.fmean(kept),
        stddev=statistics.stdev(kept) if len(kept) > 1 else 0.0,
        p99=p99,
        minimum=ordered[0],
        maximum=ordered[-1],
        samples=len(kept),
        outliers=len(values) - len(kept),
        values=tuple(values),
    )


def sample(measure: Callable[[], float], unit: str, repeats: int = 7, warmup: int = 1) -> Summary:
    """Call ``measure`` ``warmup`` times unrecorded, then ``repeats`` times; summarize the results."""
    for _ in range(warmup):
        measure()
    return summarize([measure() for _ in range(repeats)], unit)


def paired(
    subject: Callable[[], float],
    baseline: Callable[[], float],
    unit: str,
    repeats: int = 7,
    warmup: int = 1,
) -> tuple[Summary, Summary]:
    """``sample`` of subject and baseline taken alternately, a pair at a time, so that a drift of the
    machine (a neighbour's load, a cell that runs 2x faster than the one before) reaches both
    alike: (subject, baseline) summaries."""
    for _ in range(warmup):
        baseline()
        subject()
    pairs = [(subject(), baseline()) for _ in range(repeats)]
    return summarize([s for s, _ in pairs], unit), summarize([b for _, b in pairs], unit)


@dataclass(frozen=True)
class Comparison:
    """A subject against its baseline from the same run; ``ratio`` is subject / baseline medians."""

    name: str
    subject: Summary
    baseline: Summary
    baseline_name: str

    @property
    def ratio(self) -> float:
        return self.subject.median / self.baseline.median

    def result_line(self) -> str:
        fields = {
            "name": self.name,
            "unit": self.subject.unit,
            "median": round(self.subject.median, 3),
            "p99": round(self.subject.p99, 3),
            "stddev": round(self.subject.stddev, 3),
            "baseline": self.baseline_name,
            "baseline_median": round(self.baseline.median, 3),
            "ratio": round(self.ratio, 3),
        }
        return "RESULT " + json.dumps(fields)

    def as_dict(self) -> dict:
        return {
            "ratio": self.ratio,
            "subject": asdict(self.subject),
            "baseline": asdict(self.baseline),
        }


def check_linear(cost_of: Callable[[int], float], n: int, tolerance: float = 0.35) -> float:
    """Time ``n`` then ``2n`` units of work; warn if the ratio strays from 2 by more than ``tolerance``.

    Returns the ratio. A ratio far below 2 means fixed costs dominate (raise ``n``); far above, noise.
    """
    single = statistics.median(cost_of(n) for _ in range(3))
    double = statistics.median(cost_of(2 * n) for _ in range(3))
    ratio = double / single
    if abs(ratio - 2) > 2 * tolerance:
        warnings.warn(
            f"2x the work took {ratio:.2f}x the time (n={n}): the figure is noise- or overhead-bound",
            stacklevel=2,
        )
    return ratio
