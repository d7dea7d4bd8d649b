"""The README's main job, run as a user runs it: `harness run demo`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(sys.executable).with_name("harness")


@pytest.mark.dead_run  # the demo's topologies clean dead runs' leftovers first
def test_demo_passes_every_check_and_reports_figures():
    done = subprocess.run(
        [str(HARNESS), "run", "demo", "--packets", "200000", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(done.stdout)["checks"]
    assert [c["passed"] for c in checks] == [True] * 8, checks
    rate = checks[2]["figures"]
    assert rate["sent"] == 200_000 and rate["arrived"] + rate["dropped"] == 200_000
