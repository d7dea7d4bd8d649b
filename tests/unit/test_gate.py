"""The regression gate on synthetic histories: its false-alarm and miss rates, measured over many
trials at this machine's measured spread, and ``harness gate`` end to end on files.

The spread: the figures of one full ``tox -e perf`` run here (2 vCPU Intel Xeon, Firecracker,
6.18.44) have a median coefficient of variation of 7% per sample; divided by their same-run
baseline, run medians move ~1% from run to run. The trials are seeded: the rates are the same on
every run of the test.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

from harness import gate
from harness.results import fingerprint

SAMPLE_CV, RUN_CV, SAMPLES, HISTORY_RUNS = 0.07, 0.01, 15, 8
LONG_HISTORY = 20
FIGURES = 100  # a full run has ~100-170
HARNESS = Path(sys.executable).with_name("harness")


def figure(
    rng: random.Random, level: float, unit: str = "Mpps", samples: int = SAMPLES, name: str = "x"
) -> dict:
    """One run's figure: every sample shares the run's drift; the same-run baseline is 1."""
    drift = rng.gauss(0, RUN_CV)
    values = [level * (1 + drift) * (1 + rng.gauss(0, SAMPLE_CV)) for _ in range(samples)]
    return {"name": name, "unit": unit, "subject": {"values": values}, "baseline": {"median": 1.0}}


def run(rng: random.Random, figures: int, slowed: int, by: float, unit: str) -> dict:
    """A run of ``figures`` figures, the first ``slowed`` of them worse by ``by``."""
    worse = 1 + by if unit == "ns/packet" else 1 - by
    return {
        "figures": [
            figure(rng, worse if i < slowed else 1.0, unit, name=f"figure {i}")
            for i in range(figures)
        ]
    }


def rates(
    figures: int,
    slowed: int,
    by: float,
    trials: int,
    unit: str = "Mpps",
    history_runs: int = HISTORY_RUNS,
) -> tuple[float, float]:
    """Over ``trials`` seeded trials against a fresh history each: the share of runs that flagged
    any regression, and the share of the slowed figures flagged."""
    rng = random.Random(f"{figures}-{slowed}-{by}-{unit}-{history_runs}")
    runs_flagged = caught = 0
    for _ in range(trials):
        history = [run(rng, figures, 0, 0.0, unit) for _ in range(history_runs)]
        verdicts = gate.gate(run(rng, figures, slowed, by, unit), history)
        flagged = [v.name for v in verdicts if v.regression]
        runs_flagged += bool(flagged)
        caught += sum(int(name.split()[1]) < slowed for name in flagged)
    return runs_flagged / trials, caught / (trials * slowed) if slowed else 0.0


def test_one_figure_ten_percent_slower_is_caught_and_noise_is_not_flagged():
    """One figure: a 10% slowdown is four of its run-to-run standard deviations (2.5% here: the
    drift and the median of 15 samples). The history's spread is estimated from its runs, so the
    catch rate grows with them: ~80% with 8, ~90% with 20; a 20% slowdown is always caught."""
    trials = 200
    for unit in ("Mpps", "ns/packet"):
        false_alarms, _ = rates(1, 0, 0.0, trials, unit)
        _, caught_10 = rates(1, 1, 0.10, trials, unit)
        _, caught_10_long = rates(1, 1, 0.10, trials, unit, history_runs=LONG_HISTORY)
        _, caught_20 = rates(1, 1, 0.20, trials, unit)
        print(
            f"gate, one figure, {unit}, {trials} trials: {false_alarms:.1%} false alarms; "
            f"10% slowdown caught {caught_10:.1%} with {HISTORY_RUNS} runs of history, "
            f"{caught_10_long:.1%} with {LONG_HISTORY}; 20% caught {caught_20:.1%}"
        )
        assert false_alarms <= 0.02, f"{false_alarms:.1%} false alarms ({unit})"
        assert caught_10 >= 0.7, f"a 10% slowdown caught {caught_10:.1%} of the time ({unit})"
        assert caught_10_long >= 0.85, f"10% caught {caught_10_long:.1%} of the time ({unit})"
        assert caught_20 >= 0.98, f"a 20% slowdown caught {caught_20:.1%} of the time ({unit})"


def test_a_whole_run_of_noise_passes_and_a_slower_data_plane_fails():
    """A run of FIGURES figures: noise alone flags one run in a hundred at most (FAMILY_ALPHA),
    and a data plane slowed by 20% (10 of its figures) fails the run."""
    trials = 50
    noise, _ = rates(FIGURES, 0, 0.0, trials)
    plane, caught = rates(FIGURES, 10, 0.20, trials)
    _, lone = rates(FIGURES, 1, 0.20, trials)
    _, lone_long = rates(FIGURES, 1, 0.20, trials, history_runs=LONG_HISTORY)
    print(
        f"gate, runs of {FIGURES} figures, {trials} trials: {noise:.0%} of unchanged runs flagged; "
        f"10 figures 20% slower: {plane:.0%} of runs failed, {caught:.0%} of those figures "
        f"flagged; one figure 20% slower: caught {lone:.0%} with {HISTORY_RUNS} runs of history, "
        f"{lone_long:.0%} with {LONG_HISTORY}"
    )
    assert noise <= 0.04, f"{noise:.0%} of runs of an unchanged build flagged"
    assert plane >= 0.96, f"a data plane 20% slower failed {plane:.0%} of runs"


def test_an_improvement_is_not_a_regression_and_too_little_is_not_judged():
    rng = random.Random(7)
    history = [figure(rng, 1.0) for _ in range(HISTORY_RUNS)]
    runs = [{"figures": [f]} for f in history]

    def judged(new: dict, past: list[dict]) -> gate.Verdict:
        (verdict,) = gate.gate({"figures": [new]}, past)
        return verdict

    assert judged(figure(rng, 1.2), runs).verdict == "improvement"
    few = judged(figure(rng, 0.5, samples=3), runs)
    assert few.verdict == "not judged: 3 samples, 5 needed" and not few.regression
    short = judged(figure(rng, 0.5), runs[:2])
    assert short.verdict == "not judged: 2 runs of history, 3 needed"


def test_mann_whitney_agrees_with_the_textbook():
    """x entirely above y: the smallest one-sided p for 5 and 5 samples (exactly 1/252 = 0.004;
    the normal approximation gives 0.006); identical samples: no evidence either way."""
    assert 0.003 < gate.mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) < 0.008
    assert gate.mann_whitney_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) > 0.99
    assert gate.mann_whitney_greater([3.0] * 5, [3.0] * 5) == 1.0


def results_file(path: Path, rng: random.Random, level: float, time: str) -> Path:
    one = figure(rng, level)
    one["subject"]["median"], one["baseline_name"], one["ratio"] = level, "bare", level
    doc = {
        "testbed": "veth",
        "time": time,
        "git_revision": None,
        "fingerprint": fingerprint(),
        "figures": [{**one, "name": "xdp backend, 1 flow"}],
    }
    path.write_text(json.dumps(doc))
    return path


def harness_gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HARNESS), "gate", *args], capture_output=True, text=True, timeout=60)


def accept(tmp_path: Path, rng: random.Random, history: Path, runs: int, level: float, day: str):
    """``runs`` runs of the figure at ``level`` recorded by ``harness gate --update-baseline``,
    a minute apart on ``day``."""
    for run in range(runs):
        path = results_file(tmp_path / f"{day}-{run}.json", rng, level, f"{day}T00:{run:02d}")
        done = harness_gate(str(path), "--history", str(history), "--update-baseline")
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_command_keeps_a_history_and_fails_a_regression(tmp_path):
    rng, history = random.Random(3), tmp_path / "history"
    accept(tmp_path, rng, history, 4, 1.0, "2026-12-01")
    stored = list(history.glob("veth/*/*.json"))
    assert len(stored) == 4 and stored[0].parent.name == gate.machine_id(fingerprint())
    same = harness_gate(
        str(results_file(tmp_path / "same.json", rng, 1.0, "t")), "--history", str(history)
    )
    assert same.returncode == 0 and "no change" in same.stdout, same.stdout
    slow = harness_gate(
        str(results_file(tmp_path / "slow.json", rng, 0.7, "t")), "--history", str(history)
    )
    assert slow.returncode == 1, slow.stdout
    assert "regression" in slow.stdout and "1 regression(s): xdp backend, 1 flow" in slow.stdout
    header = slow.stdout.splitlines()[1].split()
    assert header[:3] == ["metric", "history", "now"] and "verdict" in header


def test_a_baseline_in_whole_ns_is_set_against_by_its_grouped_median():
    """test_run's whole-ns durations: 8 samples of 9 ns and 7 of 10 ns give a median of 9 or 10 as
    one sample moves, the grouped median 9.44 or 9.56; samples that are not whole numbers
    keep the plain median."""
    whole = {"median": 9.0, "values": [9.0] * 8 + [10.0] * 7}
    assert 9.4 < gate.center(whole) < 9.6
    moved = {"median": 10.0, "values": [9.0] * 7 + [10.0] * 8}
    assert abs(gate.center(moved) - gate.center(whole)) < 0.15  # 1.3%, where the median moves 11%
    assert gate.center({"median": 4.2, "values": [4.1, 4.2, 4.5]}) == 4.2
    assert gate.center({"median": 1.0}) == 1.0


def test_runs_of_one_build_are_pooled_and_others_refused(tmp_path):
    """Two runs of 7 samples judged as one of 14, each sample divided by its own run's baseline;
    runs of different machines or revisions are what the gate compares, never what it pools."""
    rng, history = random.Random(5), tmp_path / "history"
    accept(tmp_path, rng, history, 4, 1.0, "2026-12-01")
    runs = []
    for n, base in enumerate((1.0, 2.0)):  # the second run's machine was twice as slow
        path = results_file(tmp_path / f"slow{n}.json", rng, 0.7 * base, f"t{n}")
        doc = json.loads(path.read_text())
        doc["figures"][0]["baseline"]["median"] = base
        doc["figures"][0]["subject"]["values"] = doc["figures"][0]["subject"]["values"][:7]
        path.write_text(json.dumps(doc))
        runs.append(path)
    one = gate.pooled([json.loads(p.read_text()) for p in runs])
    (figure,) = one["figures"]
    assert len(figure["subject"]["values"]) == 14 and figure["runs"] == 2
    assert 0.6 < figure["ratio"] < 0.8, figure["ratio"]
    both = harness_gate(*map(str, runs), "--history", str(history))
    assert both.returncode == 1 and "1 regression(s): xdp backend, 1 flow" in both.stdout, (
        both.stdout
    )
    other = json.loads(runs[1].read_text())
    other["git_revision"] = "0" * 40
    runs[1].write_text(json.dumps(other))
    refused = harness_gate(*map(str, runs), "--history", str(history))
    assert refused.returncode == 2 and "differ in revision" in refused.stderr, refused.stderr


def test_a_machine_is_named_by_what_it_is_not_by_what_its_preflight_measured():
    """ENA's pps counter before the run, IRQ affinity, a veth's namespace: measured, different
    every run, so never part of the history's machine; the driver and its firmware are."""

    def with_preflight(driver: str, pps: int) -> dict:
        checks = [
            {"name": "driver", "status": "pass", "detail": driver, "fix": None},
            {"name": "pps-allowance", "status": "pass", "detail": f"exceeded = {pps} before"},
        ]
        return {**fingerprint(), "preflight": {"ens5": {"ifname": "ens5", "checks": checks}}}

    ena = "ena 2.13.0g, firmware 0.10.0, bus 0000:00:05.0"
    assert gate.machine_id(with_preflight(ena, 0)) == gate.machine_id(with_preflight(ena, 4711))
    other_firmware = ena.replace("0.10.0", "0.11.0")
    assert gate.machine_id(with_preflight(ena, 0)) != gate.machine_id(
        with_preflight(other_firmware, 0)
    )
    assert gate.machine_id(with_preflight(ena, 0)) != gate.machine_id(fingerprint())


def test_an_accepted_change_starts_the_figure_history_again(tmp_path):
    """A slowdown recorded with --update-baseline is the figure's level from then on: the runs
    after it are judged against it, not against the runs it replaced."""
    rng, history = random.Random(11), tmp_path / "history"
    accept(tmp_path, rng, history, 8, 1.0, "2026-12-01")
    change = results_file(tmp_path / "change.json", rng, 0.7, "2026-12-02T00:00")
    assert harness_gate(str(change), "--history", str(history)).returncode == 1
    taken = harness_gate(str(change), "--history", str(history), "--update-baseline")
    assert taken.returncode == 0 and "accepting 1 change(s)" in taken.stdout, taken.stdout
    later = results_file(tmp_path / "later.json", rng, 0.7, "2026-12-02T00:01")
    too_soon = harness_gate(str(later), "--history", str(history))
    assert too_soon.returncode == 0 and "1 runs of history, 3 needed" in too_soon.stdout
    accept(tmp_path, rng, history, 3, 0.7, "2026-12-03")
    judged = harness_gate(str(later), "--history", str(history))
    assert judged.returncode == 0 and "no change" in judged.stdout, judged.stdout
    back = harness_gate(
        str(results_file(tmp_path / "b.json", rng, 1.0, "t")), "--history", str(history)
    )
    assert "improvement" in back.stdout, back.stdout
