"""The benchmark report (``harness report``) as CI builds it, opened in Debian's chromium.

A results file is made the way a benchmark run makes it (``harness.results.Results`` with a
testbed's budgets, a preflight record, figures with flow counts, probes and buckets); the report is
built by the command, and the HTML page is loaded by a real headless browser, which must decode
every plot (the page counts the images with a natural width into ``data-plots-rendered``).
"""

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.measure import Comparison, summarize
from harness.results import Results
from harness.testbed import Budget, BudgetKind

HARNESS = Path(sys.executable).with_name("harness")
CHROMIUM = shutil.which("chromium")


def _comparison(name: str, unit: str, level: float, rng: random.Random) -> Comparison:
    subject = summarize([level * rng.uniform(0.97, 1.03) for _ in range(5)], unit)
    baseline = summarize([rng.uniform(0.97, 1.03) for _ in range(5)], unit)
    return Comparison(name, subject, baseline, "bare")


def results_file(path: Path) -> Path:
    rng = random.Random(7)
    results = Results(
        "veth",
        budgets=[Budget("flowmon * zero-loss", BudgetKind.RATIO_FLOOR, 0.5)],
        enforce=False,
    )
    results.record_preflight(
        "ens5",
        {"ifname": "ens5", "checks": [{"name": "driver", "status": "pass", "detail": "veth"}]},
    )
    for storage, cost in (("hash", 0.9), ("array", 0.95)):
        for flows in (1, 40, 10_000):
            level = cost - 0.05 * len(str(flows))
            results.record(
                _comparison(f"flowmon {storage} {flows} flows zero-loss", "Mpps", level, rng)
            )
    probes = {
        "subject": sorted(rng.gauss(60, 5) for _ in range(200)),
        "baseline": sorted(rng.gauss(50, 5) for _ in range(200)),
    }
    results.record(_comparison("probe latency p50", "us", 1.2, rng), latencies_us=probes)
    results.record(
        _comparison("softrss ifaces zero-loss", "Mpps", 0.4, rng),
        buckets=[rng.randint(900, 1100) for _ in range(8)],
    )
    results.write(path)
    return path


def test_report_renders_in_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: ci/bootstrap installs Debian's chromium")
    source = results_file(tmp_path / "results.json")
    out = tmp_path / "report"
    done = subprocess.run(
        [str(HARNESS), "report", str(source), "-o", str(out), "--history", str(tmp_path / "h")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    md = (out / "report.md").read_text()
    for name in ("flowmon hash 40 flows zero-loss", "probe latency p50", "softrss ifaces"):
        assert name in md, f"{name} missing from the Markdown report"
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    # ratios, flowmon's throughput against flows, flowmon beside the seed, the latency CDF, the buckets
    assert len(linked) == 5, linked
    assert "| hash | 1 | " in md and "| 0.29 |" in md, "the seed's one-flow hash beside ours"
    assert all((out / png).stat().st_size > 1000 for png in linked)
    assert "not judged: 0 runs of history" in md, "the gate's table is in the report"
    assert "| ens5 | driver | pass | veth |" in md, "the preflight record is in the report"

    page = out / "report.html"
    assert "http" not in re.sub(r"<[^>]*xmlns[^>]*>", "", page.read_text()), "self-contained"
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root, as CI runs it
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rendered = re.search(r'data-plots-rendered="([^"]*)"', dom.stdout)
    assert rendered, f"chromium printed no page: {dom.stderr[-2000:]}"
    assert rendered[1] == "5/5", f"plots rendered by chromium: {rendered[1]}"


def test_report_refuses_a_file_that_is_not_results(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text(json.dumps({"testbed": "veth"}))
    done = subprocess.run(
        [str(HARNESS), "report", str(bad), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(bad) in done.stderr and "fingerprint" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists(), "nothing written for a bad input"
