"""What every data plane's command shares: argument types, the interface check, the stop signal.

Each command validates all of its input before it loads or changes anything, and reports a bad value
as a ``UsageError`` naming the option. Not for: a command's own options (they live with it).
"""

from __future__ import annotations

import argparse
import signal
import threading

from bpf import netns
from bpf.attach import ifindex
from bpf.libbpf import LibbpfError


class UsageError(ValueError):
    """An argument is wrong; the message names it. Raised before anything is loaded or changed."""


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
