"""The ``trafcount`` command: count packets and bytes per IP address on an interface, or detach.

    trafcount -i IF -a xdp|tc [--netns NS] [--direction ingress|egress] [--key src|dst]
              [--bytes l3|wire] [--entries N] [--mode native|generic] [-s SECONDS] [--json]
              [--hz N [--binary PATH]] [--prometheus [HOST]:PORT]
    trafcount -i IF --detach

The first form loads the data plane, pins its maps under ``bpf.pin_dir("trafcount")/IF/`` (for
``bpftool map dump pinned``), attaches at the hook (XDP: ingress; TC: ingress by default, or
egress), keyed on the seed's address for the direction (ingress: the source; egress: the
destination) unless ``--key`` says otherwise, and prints every ``-s`` seconds the seed's line per
address::

    IP: 129.57.178.31 - TCP Packets: 12, TCP Bytes: 720 | UDP Packets: 3, UDP Bytes: 120

(with ``| Other Packets: N, Other Bytes: M`` after it for an address that sent anything else), or
with ``--json`` one object a line. ``--hz N`` writes the time series (``bpf.trafcount.series``) to
stdout as JSON lines, or to PATH in the binary format with ``--binary``, and the totals go to
stderr. ``--prometheus`` serves the counters over HTTP (``bpf.trafcount.metrics``). SIGINT or
SIGTERM stops it: it detaches, removes its pins, and prints the totals a last time.

``--detach`` does that from another shell, the seed's seven clean-up steps: it stops the trafcount
counting on IF, which detaches its XDP link or its TC filter, removes the clsact qdisc if it added
it, and unpins its maps. A trafcount killed with SIGKILL cannot undo anything: ``harness clean``
removes its TC filter, qdisc and pins (they are journaled as they are made); an XDP link dies with
it. Until then a new run on IF, and ``--detach``, refuse and say so.

Every argument is checked before anything is loaded or attached. This module parses and prints; the
work is in ``bpf.trafcount.trafcount``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bpf import LibbpfError, XdpMode
from bpf.attach import pin_name
from bpf.cli import (
    UsageError,
    add_stats_interval,
    check_interface,
    failure,
    positive_int,
    process_alive,
    stop_event,
    stop_process,
)
from bpf.trafcount import metrics, series
from bpf.trafcount.model import (
    DEFAULT_ENTRIES,
    MAX_ENTRIES,
    ByteCount,
    Config,
    Hook,
    Key,
    TrafKey,
    default_key,
)
from bpf.trafcount.trafcount import TrafCount

STOP_WAIT_S = 5.0  # how long --detach waits for the running trafcount to detach and exit
MAX_HZ = 10_000
TCP, UDP = 6, 17


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trafcount",
        description="Packets and bytes per IP address and protocol, at XDP or TC.",
    )
    parser.add_argument("-i", "--interface", required=True, help="the interface to count on")
    parser.add_argument("--netns", help="the interface's network namespace")
    parser.add_argument("-a", "--attach", choices=["xdp", "tc"], help="the hook (not --detach)")
    parser.add_argument(
        "--direction",
        choices=["ingress", "egress"],
        help="TC: which way (default ingress); XDP sees ingress only",
    )
    parser.add_argument(
        "--key",
        choices=[k.value for k in Key],
        help="count under the source or the destination address (default: src at ingress, "
        "dst at egress, as the seed)",
    )
    parser.add_argument(
        "--bytes",
        choices=[b.value for b in ByteCount],
        help="l3: IP bytes, as the seed (default); wire: the Ethernet frame",
    )
    parser.add_argument(
        "--entries",
        type=positive_int,
        help=f"addresses x protocols per IP version the LRU holds (default {DEFAULT_ENTRIES})",
    )
    parser.add_argument("--mode", choices=["native", "generic"], default="native", help="XDP mode")
    add_stats_interval(parser)
    parser.add_argument("--json", action="store_true", help="the totals as one JSON object a line")
    parser.add_argument(
        "--hz", type=positive_int, help=f"write a time series, N bins a second (1..{MAX_HZ})"
    )
    parser.add_argument("--binary", type=Path, help="with --hz: the series to PATH, binary")
    parser.add_argument("--prometheus", metavar="[HOST]:PORT", help="serve Prometheus metrics")
    parser.add_argument(
        "--detach", action="store_true", help="stop the trafcount on IF and remove its pins"
    )
    return parser


# --- output ---


def by_address(counts: dict[TrafKey, tuple[int, int]]) -> list[tuple[str, dict[str, int]]]:
    """Per address, most packets first: TCP, UDP and other packets and bytes."""
    rows: dict[TrafKey, dict[str, int]] = {}
    for k, (p, b) in counts.items():
        address = TrafKey(k.version, k.packed, 0)
        row = rows.setdefault(address, dict.fromkeys(_FIELDS, 0))
        kind = {TCP: "tcp", UDP: "udp"}.get(k.proto, "other")
        row[f"{kind}_packets"] += p
        row[f"{kind}_bytes"] += b
    ordered = sorted(rows.items(), key=lambda kv: (-sum(kv[1][f] for f in _PACKETS), kv[0]))
    return [(str(k.address), row) for k, row in ordered]


_FIELDS = ("tcp_packets", "tcp_bytes", "udp_packets", "udp_bytes", "other_packets", "other_bytes")
_PACKETS = ("tcp_packets", "udp_packets", "other_packets")


def seed_line(address: str, row: dict[str, int]) -> str:
    line = (
        f"IP: {address} - TCP Packets: {row['tcp_packets']}, TCP Bytes: {row['tcp_bytes']} | "
        f"UDP Packets: {row['udp_packets']}, UDP Bytes: {row['udp_bytes']}"
    )
    if row["other_packets"]:
        line += f" | Other Packets: {row['other_packets']}, Other Bytes: {row['other_bytes']}"
    return line


def report(tc: TrafCount, args: argparse.Namespace, as_json: bool) -> str:
    rows = by_address(tc.counts())
    totals = tc.totals()
    if as_json:
        return json.dumps(
            {
                "time": round(time.time(), 3),
                "interface": args.interface,
                "hook": args.hook.value,
                "key": tc.config.key.value,
                "bytes": tc.config.bytes.value,
                "addresses": [{"ip": a, **row} for a, row in rows],
                "entries_created": totals.created,
                "entries_evicted": totals.evicted,
                "packets_lost": {"entry_gone": totals.entry_gone, "no_room": totals.no_room},
                "unparsed": tc.unparsed(),
            }
        )
    lines = ["Tracking per-IP TCP/UDP traffic:"] + [seed_line(a, row) for a, row in rows]
    lost = totals.entry_gone + totals.no_room
    if totals.evicted or lost:
        lines.append(f"({totals.evicted} entries evicted, {lost} packets lost)")
    return "\n".join(lines)


# --- commands ---


def _check(args: argparse.Namespace) -> Config:
    """Every option, before anything loads; the configuration, with args.hook set."""
    if args.attach is None:
        raise UsageError("-a/--attach: required (xdp or tc), unless --detach")
    direction = args.direction or "ingress"
    if args.attach == "xdp" and direction != "ingress":
        raise UsageError(f"--direction {direction}: XDP sees ingress only; use -a tc for egress")
    args.hook = Hook.XDP if args.attach == "xdp" else Hook(f"tc-{direction}")
    if args.entries is not None and args.entries > MAX_ENTRIES:
        raise UsageError(f"--entries {args.entries}: must be 1..{MAX_ENTRIES}")
    if args.hz is not None and args.hz > MAX_HZ:
        raise UsageError(f"--hz {args.hz}: must be 1..{MAX_HZ}")
    if args.binary is not None and args.hz is None:
        raise UsageError("--binary: writes the time series; give --hz N too")
    if args.binary is not None and not args.binary.parent.is_dir():
        raise UsageError(f"--binary {args.binary}: no directory {args.binary.parent}")
    if args.prometheus is not None:
        try:
            args.listen = metrics.parse_address(args.prometheus)
        except ValueError as err:
            raise UsageError(str(err)) from None
    check_interface(args.interface, args.netns)
    found = TrafCount.pinned_config(args.pins)
    if found is not None and process_alive(found[1]):
        raise UsageError(
            f"-i {args.interface}: trafcount (pid {found[1]}) already counts there; "
            f"`trafcount -i {args.interface}{_netns_option(args)} --detach` stops it"
        )
    if found is not None:
        raise UsageError(f"-i {args.interface}: {_killed(args.pins, found[1])}")
    return Config(
        key=Key(args.key) if args.key else default_key(args.hook),
        bytes=ByteCount(args.bytes) if args.bytes else ByteCount.L3,
        entries=args.entries or DEFAULT_ENTRIES,
    )


def _run(args: argparse.Namespace) -> int:
    config = _check(args)
    stop = stop_event()
    where = f"{args.interface}@{args.netns}" if args.netns else args.interface
    with ExitStack() as stack:
        tc = stack.enter_context(TrafCount(config))
        tc.pin(args.pins)
        tc.attach(args.interface, args.hook, args.netns, XdpMode[args.mode.upper()])
        if args.prometheus is not None:
            collector = metrics.TrafCollector(tc, args.interface, args.hook.value)
            server = metrics.serve(collector, *args.listen)
            stack.callback(server.shutdown)
        print(
            f"trafcount: counting on {where} at {args.hook.value} by {config.key.value} address, "
            f"{config.bytes.value} bytes, {config.entries} entries per IP version; maps pinned at "
            f"{TrafCount.pin_path(args.pins)}"
            + (f"; metrics at http://{args.prometheus}/metrics" if args.prometheus else ""),
            file=sys.stderr,
            flush=True,
        )
        totals_out = sys.stderr if args.hz else sys.stdout
        series_done = _start_series(tc, args, stop, stack) if args.hz else None
        while not stop.wait(args.stats_interval):
            print(report(tc, args, args.json) + ("" if args.json else "\n"), file=totals_out)
            totals_out.flush()
        # Stopped: detach first, so that the series' last bin and the last totals see the same.
        tc.detach()
        failed = series_done() if series_done is not None else None
        print(report(tc, args, args.json) + ("" if args.json else "\n"), file=totals_out)
        if failed is not None:
            raise failed
    print(f"trafcount: detached from {where} and unpinned", file=sys.stderr)
    return 0


def _start_series(
    tc: TrafCount, args: argparse.Namespace, stop: threading.Event, stack: ExitStack
) -> Callable[[], OSError | None]:
    """Start the time series in a thread of its own (the C reader, which writes to the output's fd
    itself); the function that stops it, after a last bin, and gives what failed in it, if
    anything. A failure (the output's reader gone, a full disk) stops the run too."""
    if args.binary is not None:
        out: Any = stack.enter_context(args.binary.open("wb"))
        form = series.Format.BINARY
    else:
        out = sys.stdout
        form = series.Format.JSON
    out.flush()
    sampler = stack.enter_context(series.Sampler(tc, args.hz, out.fileno(), form))
    failed: list[OSError] = []

    def run() -> None:
        try:
            sampler.run()
        except OSError as err:
            failed.append(err)
            stop.set()

    thread = threading.Thread(target=run, name="trafcount-series")
    thread.start()
    stack.callback(thread.join)  # then the sampler closes: never under a running thread
    stack.callback(sampler.stop)

    def done() -> OSError | None:
        sampler.stop()
        thread.join()
        return failed[0] if failed else None

    return done


def _killed(ifname: str, pid: int) -> str:
    return (
        f"the trafcount that counted on {ifname} (pid {pid}) was killed and left its pins (and a "
        f"TC filter, if it used TC) at {TrafCount.pin_path(ifname)}: `harness clean` removes them"
    )


def _detach(args: argparse.Namespace) -> int:
    given = [
        name
        for name in ("attach", "direction", "key", "bytes", "entries", "hz", "binary", "prometheus")
        if getattr(args, name) not in (None, False)
    ]
    if given or args.json:
        raise UsageError(
            f"--detach: takes -i only (given --{(given or ['json'])[0]}); it stops whatever "
            "trafcount counts on the interface"
        )
    found = TrafCount.pinned_config(args.pins)
    if found is None:
        print(f"trafcount: nothing of trafcount on {args.interface}", file=sys.stderr)
        return 0
    owner = found[1]
    if not process_alive(owner):
        print(f"trafcount: {_killed(args.pins, owner)}", file=sys.stderr)
        return 1
    # It detaches, removes its pins and the qdisc it added, prints its last totals and exits.
    if not stop_process(owner, STOP_WAIT_S):
        print(f"trafcount: pid {owner} did not stop in {STOP_WAIT_S:g} s", file=sys.stderr)
        return 1
    left = TrafCount.pinned_config(args.pins)
    print(
        f"trafcount: stopped pid {owner}; nothing of trafcount is left on {args.interface}"
        if left is None
        else f"trafcount: pid {owner} stopped but left its pins at {TrafCount.pin_path(args.pins)}",
        file=sys.stderr,
    )
    return 0 if left is None else 1


def _netns_option(args: argparse.Namespace) -> str:
    return f" --netns {args.netns}" if args.netns else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.pins = pin_name(args.interface, args.netns)  # IF, or IF@NS: one namespace's IF only
    try:
        return _detach(args) if args.detach else _run(args)
    except UsageError as err:
        print(f"trafcount: {err}", file=sys.stderr)
        return 2
    except (LibbpfError, OSError) as err:
        print(failure("trafcount", err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
