"""Soak runs: a long-running command under steady traffic for minutes, its memory watched.

``soak(argv, send_chunk, seconds)`` starts the command (stdout and stderr to files), waits for its
ready line, then calls ``send_chunk()`` (one second of paced traffic; it returns the frames the
link took) until ``seconds`` have passed, sampling the resident memory of the command and its child
processes after each chunk; then it stops the command with SIGINT (every data plane's command prints
its last counts on it) and returns what a test reconciles: frames sent, the command's output, the
samples. ``memory_flat`` judges the samples: once warmed up, the last quarter's median may exceed
the second quarter's by at most 4 MiB or 5% (a leak of a few bytes a frame at 20 kpps is megabytes
a minute, past that within the default ten minutes).
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
SLACK_BYTES = 4 << 20
SLACK_SHARE = 0.05


@dataclass(frozen=True)
class SoakRun:
    sent: int
    stdout: str
    stderr: str
    rss: list[int]  # bytes, the command and its children, one sample a chunk


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (0 for a process that has gone)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total = int(line.split()[1]) * 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return total + sum(_rss(int(child)) for child in children)


def soak(
    argv: Sequence[str],
    ready: str,
    send_chunk: Callable[[], int],
    seconds: float,
    directory: Path,
) -> SoakRun:
    out, err = directory / "stdout", directory / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(list(argv), stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while ready not in err.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} did not start: {err.read_text()}")
            time.sleep(0.05)
        sent, samples = 0, []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sent += send_chunk()
            samples.append(_rss(process.pid))
            if process.poll() is not None:
                raise AssertionError(f"{argv[0]} exited during the soak: {err.read_text()}")
        time.sleep(0.5)  # the last chunk's frames reach the counters
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=STOP_TIMEOUT)
        assert code == 0, f"{argv[0]} exited {code}: {err.read_text()}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    return SoakRun(sent, out.read_text(), err.read_text(), samples)


def memory_flat(samples: Sequence[int]) -> tuple[bool, str]:
    """Whether resident memory stayed flat once warmed up (the first quarter is the warm-up)."""
    if len(samples) < 4:
        raise ValueError(f"{len(samples)} memory samples: a soak needs 4 seconds or more")
    quarter = len(samples) // 4
    settled = statistics.median(samples[quarter : 2 * quarter])
    last = statistics.median(samples[-quarter:])
    allowed = settled + max(SLACK_BYTES, SLACK_SHARE * settled)
    detail = f"resident {settled / 2**20:.1f} MiB after warm-up, {last / 2**20:.1f} MiB at the end"
    return last <= allowed, detail
