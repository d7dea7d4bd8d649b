"""The benchmark results file: every figure with its samples and baseline, and the machine's
fingerprint, read back as written."""

import json
import platform

import pytest

from harness.measure import Comparison, summarize
from harness.results import BudgetMissed, Results, fingerprint
from harness.testbed import Budget, BudgetKind, find_testbed, load_testbed


def test_fingerprint_names_the_machine():
    machine = fingerprint()
    assert machine["kernel"] == platform.release()
    assert machine["cores"] >= 1 and machine["cpu_model"] not in ("", "unknown")
    assert machine["virtualization"] == "bare metal" or machine["virtualization"].startswith(
        "guest"
    )


def test_a_recorded_figure_is_written_with_its_samples_and_baseline(tmp_path, capsys):
    subject = summarize([10.0, 11.0, 12.0, 11.0, 10.0, 11.0, 12.0, 50.0], "Mpps")
    baseline = summarize([20.0, 22.0, 21.0], "Mpps")
    run = Results(testbed="veth", tree=tmp_path)
    run.record(Comparison("demo", subject, baseline, "bare"), flows=40)
    assert capsys.readouterr().out.startswith('RESULT {"name": "demo"')
    path = tmp_path / "out" / "results.json"
    run.write(path)
    written = json.loads(path.read_text())
    assert written["testbed"] == "veth" and written["git_revision"] is None, "tmp is no checkout"
    assert written["fingerprint"] == {**fingerprint(), "preflight": {}}
    (figure,) = written["figures"]
    assert figure["subject"]["values"][-1] == 50.0, "every sample is kept, outliers too"
    assert figure["subject"]["outliers"] == 1 and figure["subject"]["median"] == 11.0
    assert figure["baseline"]["median"] == 21.0 and figure["baseline_name"] == "bare"
    assert figure["ratio"] == 11.0 / 21.0 and figure["extra"] == {"flows": 40}


def _figure(name: str, subject: float, baseline: float) -> Comparison:
    return Comparison(
        name, summarize([subject] * 5, "Mpps"), summarize([baseline] * 5, "Mpps"), "bare"
    )


def test_a_missed_budget_fails_saying_what_and_against_what(tmp_path, capsys):
    budgets = [Budget("softrss * zero-loss", BudgetKind.RATIO_FLOOR, 0.5)]
    run = Results(testbed="veth", tree=tmp_path, budgets=budgets)
    run.record(_figure("softrss ifaces native zero-loss", 3.0, 5.0))
    with pytest.raises(BudgetMissed) as missed:
        run.record(_figure("softrss ifaces generic zero-loss", 2.0, 5.0))
    message = str(missed.value)
    for part in ("softrss ifaces generic zero-loss", "2 Mpps", "0.4x bare", "5 Mpps", "veth"):
        assert part in message, message
    assert "at least 0.5x the baseline ('softrss * zero-loss')" in message
    kept = [(f["name"], f["budget_met"]) for f in run.figures]
    assert kept == [
        ("softrss ifaces native zero-loss", True),
        ("softrss ifaces generic zero-loss", False),
    ], "a figure that misses its budget is still kept"


def test_smoke_runs_record_but_do_not_enforce(tmp_path):
    budgets = [Budget("figure", BudgetKind.CEILING, 1.0)]
    run = Results(testbed="veth", tree=tmp_path, budgets=budgets, enforce=False)
    run.record(_figure("figure", 2.0, 1.0))
    assert run.figures[0]["budget_met"] is False


def test_the_first_matching_budget_applies_and_none_may():
    veth = load_testbed(find_testbed("veth"))
    run = Results(budgets=veth.budgets.values())
    assert run.budget_for("softrss jhash udp4 established").limit == 8
    assert run.budget_for("xdp backend, 10k flows, 2 worker(s)").limit == 0.5
    assert run.budget_for("xdp backend, 10k flows, 1 worker").limit == 1
    assert run.budget_for("a figure with no budget") is None
