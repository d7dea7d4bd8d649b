"""Beyond broken files: privileges, pins, and shell strings.

Every command run without the capabilities it needs says so, naming them, with no traceback; the
data planes' pins are readable and writable by root alone (0600); no code of the product or the
harness builds a shell command line (a user's interface or file name must never reach a shell).
"""

from __future__ import annotations

import ast
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bpf import journal
from bpf.cli import NOT_PERMITTED
from bpf.flowmon import FlowMon
from bpf.trafcount import TrafCount
from harness.topology import host_ifname

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "trafcount": ["-i", "lo", "-a", "xdp", "-s", "1"],
    "flowmon": ["-i", "lo", "-a", "xdp", "-s", "1"],
    "softrss": ["-i", "lo"],
    "pfrps": ["-i", "lo", "-s", "1"],
    "harness": ["topo", "up", "two_host"],
    "injector": ["pppoe", "-i", "lo", "-d", "02:00:00:00:04:02", "-p", "1"],
}


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("command", COMMANDS)
def test_without_capabilities_a_command_says_what_it_needs(command):
    program = Path(sys.executable).with_name(command)
    done = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", str(program), *COMMANDS[command]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert NOT_PERMITTED in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("kind", [TrafCount, FlowMon])
def test_pins_are_root_only(kind):
    ifname = host_ifname(journal.current().run_id, "hostile")
    with kind() as plane:
        directory = plane.pin(ifname)
        try:
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
        finally:
            kind.unpin(ifname)
    assert modes and set(modes.values()) == {0o600}, modes


def _shell_calls(tree: ast.AST) -> list[int]:
    """Lines calling os.system/os.popen or anything with shell=True."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ("system", "popen")
            and isinstance(func.value, ast.Name)
            and func.value.id == "os"
        ):
            found.append(node.lineno)
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(node.lineno)
    return found


def test_no_shell_command_lines_anywhere():
    sources = [
        p
        for package in ("bpf", "harness", "injector", "tests")
        for p in (ROOT / package).rglob("*.py")
    ]
    assert len(sources) > 50, f"the scan found {len(sources)} files under {ROOT}"
    offenders = {
        str(p.relative_to(ROOT)): lines
        for p in sources
        if (lines := _shell_calls(ast.parse(p.read_text(), str(p))))
    }
    assert not offenders, f"shell command lines built at: {offenders}"


def test_the_scan_sees_a_shell_call_when_there_is_one():
    assert _shell_calls(ast.parse("import subprocess\nsubprocess.run(cmd, shell=True)\n")) == [2]
    assert _shell_calls(ast.parse("import os\nos.system('ls ' + name)\n")) == [2]
    assert _shell_calls(ast.parse("subprocess.run(['ls', name], shell=False)\n")) == []
