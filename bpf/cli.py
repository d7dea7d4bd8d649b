"""What every data plane's command shares: argument types, the interface check, the stop signal,
and stopping the process that counts on an interface (its pid is pinned with its maps).

Each command validates all of its input before it loads or changes anything, and reports a bad value
as a ``UsageError`` naming the option. Not for: a command's own options (they live with it).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bpf import netns
from bpf.attach import ifindex
from bpf.libbpf import LibbpfError


class UsageError(ValueError):
    """An argument is wrong; the message names it. Raised before anything is loaded or changed."""


NOT_PERMITTED = (
    "run as root: loading BPF programs, opening packet sockets and building network namespaces "
    "need CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN"
)


def failure(prog: str, err: Exception) -> str:
    """The line a command prints for a system error; a refused privilege says what is needed."""
    if getattr(err, "errno", None) in (errno.EPERM, errno.EACCES):
        first, *rest = str(err).split("\n")  # libbpf's lines follow a LibbpfError's first
        return "\n".join([f"{prog}: {first} ({NOT_PERMITTED})", *rest])
    return f"{prog}: {err}"


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be at least 1")
    return n


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} s: must be more than 0")
    return value


STATS_INTERVAL = 10.0  # seconds between two prints of a running command's counters


def add_stats_interval(
    parser: argparse.ArgumentParser, default: float | None = STATS_INTERVAL
) -> None:
    """``-s/--stats-interval SECONDS``; ``default`` None leaves it to a configuration file."""
    parser.add_argument(
        "-s",
        "--stats-interval",
        type=seconds_arg,
        default=default,
        metavar="SECONDS",
        help=f"print the counters this often (default {STATS_INTERVAL:g})",
    )


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port {port}: must be 0..65535")
    return port


def check_interface(
    ifname: str | None, namespace: str | None, option: str = "-i/--interface"
) -> None:
    """Raise UsageError, naming ``option``, unless ``ifname`` exists in ``namespace``."""
    if ifname is None:
        raise UsageError(f"{option}: required")
    if namespace is not None and not netns.exists(namespace):
        raise UsageError(f"--netns: network namespace {namespace!r} does not exist")
    try:
        ifindex(ifname, namespace)
    except LibbpfError as err:
        raise UsageError(f"{option}: {err}") from None


def stop_event() -> threading.Event:
    """An event set by SIGINT or SIGTERM (the main thread's waits on it wake up at once)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


WATCH_INTERVAL = 0.1  # seconds between looks at a command's worker processes


def wait_supervising(
    stop: threading.Event, seconds: float, supervise: Callable[[], list[str]], prog: str
) -> bool:
    """Sleep ``seconds``, calling ``supervise()`` (it restarts the workers that died, a sentence for
    each) every WATCH_INTERVAL and saying each sentence on stderr; True if told to stop first. A
    worker that died is restarted within WATCH_INTERVAL, not at the next print."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if stop.wait(min(left, WATCH_INTERVAL)):
            return True
        for restarted in supervise():
            print(f"{prog}: {restarted}", file=sys.stderr, flush=True)
    return False


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text() if pid > 0 else ""
    except OSError:
        return False
    return bool(stat) and stat.rpartition(")")[2].split()[0] != "Z"


def stop_process(pid: int, wait_s: float) -> bool:
    """SIGTERM ``pid`` (a command that detaches and exits on it) and wait up to ``wait_s`` for it to
    be gone; False if it still runs."""
    if not process_alive(pid):
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_alive(pid)
