"""The ``flowmon`` command: count flows on an interface and print the flow table, or unload.

    flowmon -i IF -a xdp|tc [--netns NS] [--direction ingress|egress|both] [--storage KIND]
            [--entries N] [--full drop|evict|spill] [--ring-bytes N] [--mode native|generic]
            [-s SECONDS] [--top N] [--sort packets|bytes] [--json]
            [--ipfix HOST:PORT [--active-timeout S] [--idle-timeout S]]
    flowmon -i IF -u

The first form loads the data plane (or reopens the maps pinned for IF by an earlier run: the counts
go on), pins its maps under ``bpf.pin_dir("flowmon")/IF/``, attaches at the hooks asked for (XDP:
ingress; TC: ingress, egress or both, egress by default as the seed's ``-a tc``), and prints the flow
table every ``-s`` seconds with the seed's columns (flow start, flow end, protocol, source ip:port,
destination ip:port, packets, bytes), or one JSON object a line with ``--json``, until SIGINT or
SIGTERM; then it prints the table a last time and detaches. The maps stay pinned for the next run
or for ``bpftool map dump pinned``. With ``--ipfix`` the flows also go to an IPFIX collector
(``bpf.flowmon.ipfix``): the table is read every ``-s`` or every second, whichever is shorter; an
ended flow is exported and leaves the table, a long one is re-exported every active timeout, and
on exit every flow left is exported (flowEndReason 4) and the table emptied, so that a next run
sends nothing twice. ``-u`` stops the flowmon counting on IF, if one runs, and removes the pins:
nothing of flowmon is left on IF.

Every argument is checked before anything is loaded or attached. This module parses and prints; the
work is in ``bpf.flowmon.flowmon``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
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
    seconds_arg,
    stop_event,
    stop_process,
)
from bpf.flowmon.flowmon import Flow, FlowMon, wall_time
from bpf.flowmon.ipfix import IPFIX_PORT, Collector, FlowExporter, IpfixSender, Timeouts
from bpf.flowmon.model import DEFAULT_ENTRIES, RING_BYTES, Config, Full, Hook, Storage

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "ipv6-icmp", 132: "sctp"}
HOOKS = {
    ("xdp", "ingress"): [Hook.XDP],
    ("tc", "ingress"): [Hook.TC_INGRESS],
    ("tc", "egress"): [Hook.TC_EGRESS],
    ("tc", "both"): [Hook.TC_INGRESS, Hook.TC_EGRESS],
}
STOP_WAIT_S = 5.0  # how long -u waits for the running flowmon to detach and exit
EXPORT_READ_S = 1.0  # with --ipfix, the table is read at least this often (the timeouts' checks)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowmon",
        description="Flow metrics (5-tuple packets and bytes) at XDP or TC, in the map you choose.",
    )
    parser.add_argument("-i", "--interface", required=True, help="the interface to count on")
    parser.add_argument("--netns", help="the interface's network namespace")
    parser.add_argument("-a", "--attach", choices=["xdp", "tc"], help="the hook (not with -u)")
    parser.add_argument(
        "--direction",
        choices=["ingress", "egress", "both"],
        help="TC: which way (default egress, as the seed's tc); XDP sees ingress only",
    )
    parser.add_argument(
        "--storage",
        choices=[s.value for s in Storage],
        help=f"the flow table's map (default {Storage.HASH.value})",
    )
    parser.add_argument(
        "--entries",
        type=positive_int,
        help=f"flows per IP version, or array slots (default {DEFAULT_ENTRIES})",
    )
    parser.add_argument(
        "--full",
        choices=[f.value for f in Full],
        help="what a full table does: drop (counted), evict (LRU kinds, their default), spill "
        "(to the ring buffer)",
    )
    parser.add_argument(
        "--ring-bytes",
        type=positive_int,
        help=f"the ring buffer (ringbuf storage, spill): a power of 2 (default {RING_BYTES})",
    )
    parser.add_argument("--mode", choices=["native", "generic"], default="native", help="XDP mode")
    add_stats_interval(parser)
    parser.add_argument("--top", type=positive_int, help="print only the N biggest flows")
    parser.add_argument("--sort", choices=["packets", "bytes"], default="packets")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument(
        "--ipfix",
        metavar="HOST:PORT",
        help=f"export the flows as IPFIX (RFC 7011) over UDP to a collector (port {IPFIX_PORT})",
    )
    parser.add_argument(
        "--active-timeout",
        type=seconds_arg,
        metavar="S",
        help=f"--ipfix: re-export a flow still going every S seconds (default "
        f"{Timeouts.active_s:g})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=seconds_arg,
        metavar="S",
        help=f"--ipfix: a flow without a packet for S seconds has ended (default "
        f"{Timeouts.idle_s:g})",
    )
    parser.add_argument(
        "-u", "--unload", action="store_true", help="stop the flowmon on IF and remove its pins"
    )
    return parser


# --- output ---


def endpoint(address: Any, port: int, proto: int) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{host}:{port}" if proto in (6, 17, 132) else host


def protocol_name(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, str(proto))


def ordered(flows: list[Flow], sort: str, top: int | None) -> list[Flow]:
    flows = sorted(flows, key=lambda f: (-getattr(f, sort), f.key))
    return flows[:top] if top else flows


def flow_dict(f: Flow) -> dict[str, Any]:
    k = f.key
    return {
        "flow_start": round(wall_time(f.first_seen_ns), 3),
        "flow_end": round(wall_time(f.last_seen_ns), 3),
        "protocol": protocol_name(k.proto),
        "src": str(k.src),
        "sport": k.sport,
        "dst": str(k.dst),
        "dport": k.dport,
        "ifindex": k.ifindex,
        "direction": k.direction.name.lower(),
        "packets": f.packets,
        "bytes": f.bytes,
        "tcp_flags": f.tcp_flags,
        "first_seen_ns": f.first_seen_ns,
        "last_seen_ns": f.last_seen_ns,
        "syn_ns": f.syn_ns,
        "fin_ns": f.fin_ns,
    }


def _clock(coarse_ns: int) -> str:
    seconds = wall_time(coarse_ns)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}"


def flow_table(flows: list[Flow], misses: dict[str, int], unparsed: dict[str, int]) -> str:
    lines = [
        f"{'flow start':<12} {'flow end':<12} {'dir':<3} {'protocol':<9} {'source':<41} "
        f"{'destination':<41} {'packets':>12} {'bytes':>15}"
    ]
    for f in flows:
        k = f.key
        lines.append(
            f"{_clock(f.first_seen_ns):<12} {_clock(f.last_seen_ns):<12} "
            f"{'in' if k.direction == 0 else 'out':<3} {protocol_name(k.proto):<9} "
            f"{endpoint(k.src, k.sport, k.proto):<41} {endpoint(k.dst, k.dport, k.proto):<41} "
            f"{f.packets:>12,} {f.bytes:>15,}"
        )
    not_counted = {k: v for k, v in misses.items() if v}
    lines.append(
        f"{len(flows)} flows; not counted: "
        + (", ".join(f"{k} {v}" for k, v in not_counted.items()) or "none")
        + "; not parsed: "
        + (", ".join(f"{k} {v}" for k, v in unparsed.items()) or "none")
    )
    return "\n".join(lines)


# --- commands ---


def _config(args: argparse.Namespace) -> Config:
    try:
        return Config(
            storage=Storage(args.storage or Storage.HASH.value),
            full=Full(args.full) if args.full else None,
            entries=args.entries or DEFAULT_ENTRIES,
            ring_bytes=args.ring_bytes or RING_BYTES,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None


def _hooks(args: argparse.Namespace) -> list[Hook]:
    if args.attach is None:
        raise UsageError("-a/--attach: required (xdp or tc), unless -u")
    direction = args.direction or ("ingress" if args.attach == "xdp" else "egress")
    if (args.attach, direction) not in HOOKS:
        raise UsageError(
            f"--direction {direction}: XDP sees ingress only; use -a tc for egress or both"
        )
    return HOOKS[(args.attach, direction)]


def _ipfix(args: argparse.Namespace) -> tuple[Collector, Timeouts] | None:
    """The collector and timeouts of ``--ipfix``, or None; UsageError for a bad one."""
    if args.ipfix is None:
        for option, value in (
            ("--active-timeout", args.active_timeout),
            ("--idle-timeout", args.idle_timeout),
        ):
            if value is not None:
                raise UsageError(f"{option}: only with --ipfix HOST:PORT (a timeout of the export)")
        return None
    try:
        collector = Collector.parse(args.ipfix)
    except ValueError as err:
        raise UsageError(f"--ipfix {err}") from None
    timeouts = Timeouts(
        active_s=args.active_timeout or Timeouts.active_s,
        idle_s=args.idle_timeout or Timeouts.idle_s,
    )
    return collector, timeouts


def _reuse(args: argparse.Namespace) -> bool:
    """True if IF's pinned maps are to be reopened; UsageError if they clash with the options."""
    found = FlowMon.pinned_config(args.pins)
    if found is None:
        return False
    pinned, owner = found
    if process_alive(owner) and owner != os.getpid():
        raise UsageError(
            f"-i {args.interface}: flowmon (pid {owner}) already counts there; "
            f"`flowmon -i {args.interface}{_netns_option(args)} -u` stops it"
        )
    given = {
        "--storage": (args.storage, pinned.storage.value),
        "--full": (args.full, pinned.full.value),
        "--entries": (args.entries, pinned.entries),
        "--ring-bytes": (args.ring_bytes, pinned.ring_bytes),
    }
    for option, (asked, have) in given.items():
        if asked is not None and asked != have:
            raise UsageError(
                f"{option} {asked}: the table pinned for {args.interface} has {have}; keep it, "
                f"or `flowmon -i {args.interface}{_netns_option(args)} -u` to start over"
            )
    return True


def _run(args: argparse.Namespace) -> int:
    hooks = _hooks(args)
    config = _config(args)
    ipfix = _ipfix(args)
    check_interface(args.interface, args.netns)
    reuse = _reuse(args)
    stop = stop_event()
    fm = FlowMon.reopen(args.pins) if reuse else FlowMon(config)
    with fm:
        if not reuse:
            fm.pin(args.pins)
        fm.attach(args.interface, hooks, args.netns, XdpMode[args.mode.upper()])
        where = f"{args.interface}@{args.netns}" if args.netns else args.interface
        exporting = ""
        exporter = None
        if ipfix is not None:
            collector, timeouts = ipfix
            exporter = FlowExporter(fm.table, IpfixSender(collector), timeouts)
            exporter.start()
            exporting = (
                f"; IPFIX to {collector} (active timeout {timeouts.active_s:g} s, idle "
                f"{timeouts.idle_s:g} s)"
            )
        print(
            f"flowmon: counting on {where} at {', '.join(h.value for h in hooks)} in "
            f"{fm.config.storage.value} ({fm.config.entries} entries, full: "
            f"{fm.config.full.value}); maps {'reopened' if reuse else 'pinned'} at "
            f"{FlowMon.pin_path(args.pins)}{exporting}",
            file=sys.stderr,
            flush=True,
        )
        with fm.table.reading():
            _loop(args, fm, exporter, stop)
        if exporter is not None:
            fm.detach()  # nothing counts any more: what is left is final
            exporter.finish()
            exporter.sender.close()
            sent = exporter.sender
            print(
                f"flowmon: exported {sent.records} flow records in {sent.messages} messages to "
                f"{sent.collector}" + (f" ({sent.errors} sends failed)" if sent.errors else ""),
                file=sys.stderr,
            )
    kept = "the maps stay pinned, the flows exported" if ipfix else "the counts stay pinned"
    print(
        f"flowmon: detached from {where}; {kept} "
        f"(`flowmon -i {args.interface}{_netns_option(args)} -u` removes them)",
        file=sys.stderr,
    )
    return 0


def _loop(
    args: argparse.Namespace, fm: FlowMon, exporter: FlowExporter | None, stop: threading.Event
) -> None:
    """Read the table (and export) every read period, print it every ``-s``, until ``stop``."""
    period = args.stats_interval if exporter is None else min(args.stats_interval, EXPORT_READ_S)
    printed, failed = time.monotonic(), 0
    while True:
        stopping = stop.wait(period)
        if exporter is not None:
            exporter.cycle()
        if not stopping and time.monotonic() - printed < args.stats_interval - period / 2:
            continue
        printed = time.monotonic()
        if exporter is not None and exporter.sender.errors > failed:
            failed = exporter.sender.errors
            print(
                f"flowmon: IPFIX: {failed} sends failed so far, the last: "
                f"{exporter.sender.last_error}",
                file=sys.stderr,
                flush=True,
            )
        flows = ordered(fm.flows(), args.sort, args.top)
        misses, unparsed = fm.misses(), fm.unparsed()
        if args.json:
            line = {
                "time": round(time.time(), 3),
                "interface": args.interface,
                "storage": fm.config.storage.value,
                "flows": [flow_dict(f) for f in flows],
                "misses": misses,
                "unparsed": unparsed,
                "activity": fm.activity(),
            }
            if exporter is not None:
                line["ipfix"] = exporter.sender.counts()
            print(json.dumps(line), flush=True)
        else:
            print(flow_table(flows, misses, unparsed) + "\n", flush=True)
        if stopping:
            return


def _unload(args: argparse.Namespace) -> int:
    exporting = args.ipfix or args.active_timeout or args.idle_timeout
    if (
        args.attach
        or args.storage
        or args.entries
        or args.full
        or args.top
        or args.direction
        or (exporting)
    ):
        raise UsageError("-u: takes -i only (it stops whatever flowmon runs on the interface)")
    found = FlowMon.pinned_config(args.pins)
    if found is None:
        print(f"flowmon: nothing pinned for {args.pins}", file=sys.stderr)
        return 0
    owner = found[1]
    # A running flowmon detaches, prints its last table and exits on SIGTERM.
    if not stop_process(owner, STOP_WAIT_S):
        print(f"flowmon: pid {owner} did not stop in {STOP_WAIT_S:g} s", file=sys.stderr)
        return 1
    removed = FlowMon.unpin(args.pins)
    print(f"flowmon: removed {len(removed)} pins of {args.pins}", file=sys.stderr)
    return 0


def _netns_option(args: argparse.Namespace) -> str:
    return f" --netns {args.netns}" if args.netns else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.pins = pin_name(args.interface, args.netns)  # IF, or IF@NS: one namespace's IF only
    try:
        return _unload(args) if args.unload else _run(args)
    except UsageError as err:
        print(f"flowmon: {err}", file=sys.stderr)
        return 2
    except (LibbpfError, OSError) as err:
        print(failure("flowmon", err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
