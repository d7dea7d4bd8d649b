"""The CI workflows in ``ci/workflows/`` (to copy into ``.github/workflows/``) are valid GitHub
workflows (the schema ``check-jsonschema`` carries), and every command they run exists here: the
scripts, the tox environments, the ``harness`` subcommands."""

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "ci" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def run_steps(workflow: Path) -> list[str]:
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    return [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]


def tox_envs() -> set[str]:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    listed = {e.strip() for e in tox["tox"]["env_list"].split(",")}
    return listed | {s.split(":", 1)[1] for s in tox.sections() if s.startswith("testenv:")}


def test_there_are_workflows_for_the_tests_and_the_gate():
    assert {w.stem for w in WORKFLOWS} == {"functional", "perf"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_the_workflow_is_valid_for_github(workflow):
    done = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(workflow),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_command_the_workflow_runs_exists(workflow):
    harness_help = subprocess.run(
        [str(BIN / "harness"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for script in run_steps(workflow):
        for path in re.findall(r"(?<![\w./])(ci/[\w./-]+)", script):
            assert (ROOT / path).is_file(), f"{workflow.name} runs {path}, which is not here"
        for env in re.findall(r"tox -e (\S+)", script) + re.findall(r"\.tox/(\w[\w-]*)/", script):
            assert env in tox_envs(), f"{workflow.name} uses tox env {env!r}, not in tox.ini"
        for command in re.findall(r"harness (\w+)", script):
            assert command in harness_help, f"{workflow.name} runs `harness {command}`: no such"
