"""The ``vxlan-pipeline`` command: run the VXLAN pipeline, and change it while it runs.

    vxlan-pipeline run -i IF -t IF [--netns NS] [--mode redirect|tc|ringbuf] [--next-hop-mac MAC]
            [--vni N] [--match src|dst|either] [--default-nat IP[:PORT]] [--allowlist FILE]
            [--port N] [--ring-size BYTES] [--workers N] [--xdp-mode native|generic] [--name NAME]
            [-s SECONDS] [-v] [--json]
    vxlan-pipeline allowlist load FILE | show | clear   [--name NAME]
    vxlan-pipeline nat add PORT IP[:PORT] | list | del PORT   [--name NAME]
    vxlan-pipeline stats [--name NAME] [--json]

``run`` loads the data plane, sets the egress, pins its maps under ``bpf.pin_dir("vxlan-NAME")``
(the host's bpffs, under ``ip netns exec`` too),
attaches to ``-i``, runs a re-injector worker per ring in ``ringbuf`` mode, prints the counters every ``-s`` seconds
and, on SIGINT/SIGTERM, detaches, forwards what the ring still holds, prints the counters a last time
and removes its pins. The other commands open those pins: they change or read the running pipeline
called NAME (default ``default``). A ``run`` killed with SIGKILL leaves its pins; ``harness clean``
removes them (they are journaled).

Every argument and file is checked before anything is loaded, attached or changed; errors name the
option, file, line and field. This module parses and prints; the work is in ``pipeline`` and
``reinjector``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import bpf
from bpf import LibbpfError, XdpMode
from bpf import netns as bpf_netns
from bpf.attach import host_path
from bpf.cli import (
    UsageError,
    add_stats_interval,
    check_interface,
    failure,
    port_arg,
    stop_event,
    wait_supervising,
)
from bpf.vxlan.allowlist import Allowlist, AllowlistError
from bpf.vxlan.model import Config, Match, Mode, NatTarget
from bpf.vxlan.pipeline import Stats, VxlanPipeline, format_mac, parse_mac
from bpf.vxlan.reinjector import Reinjectors

PROG = "vxlan-pipeline"
DEFAULT_NAME = "default"


# --- argument types ---


def _vni(text: str) -> int:
    try:
        vni = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a VNI") from None
    if not 0 <= vni < 1 << 24:
        raise argparse.ArgumentTypeError(f"VNI {vni}: must be 0..16777215 (24 bits)")
    return vni


def _vxlan_port(text: str) -> int:
    port = port_arg(text)
    if port == 0:
        raise argparse.ArgumentTypeError("port 0: VXLAN needs a real UDP port (4789, Linux's 8472)")
    return port


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _ring_size(text: str) -> int:
    """Bytes, with an optional K, M or G (powers of 1024): ``8M``, ``65536``."""
    number, unit = text[:-1] if text[-1:].isalpha() else text, text[-1:].lower()
    try:
        size = int(number) * _SIZE_UNITS[unit if unit.isalpha() else ""]
        return Config(ring_size=size).ring_size
    except (KeyError, ValueError) as err:
        detail = err if isinstance(err, ValueError) and "ring size" in str(err) else "not a size"
        raise argparse.ArgumentTypeError(f"{text!r}: {detail}") from None


def _workers(text: str) -> int:
    """1 up to the CPUs this process may run on: more workers than CPUs only contend."""
    allowed = len(os.sched_getaffinity(0))
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers") from None
    if not 1 <= workers <= allowed:
        raise argparse.ArgumentTypeError(f"{workers}: must be 1..{allowed} (the CPUs to run on)")
    return workers


def _mac(text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def nat_target(text: str) -> NatTarget:
    """``IP`` or ``IP:PORT`` (port 0 or none: the destination port is kept)."""
    addr, _, port = text.partition(":")
    try:
        return NatTarget(ipaddress.IPv4Address(addr), port_arg(port) if port else 0)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not IPv4[:PORT]: {err}") from None


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"the running pipeline's name: its maps are pinned under "
        f"{bpf.PIN_ROOT / 'vxlan-NAME'} (default {DEFAULT_NAME})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The VXLAN pipeline for AWS Traffic Mirroring: decapsulate, allowlist, NAT, "
        "forward. `run` runs it; the other commands change or read a running one.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="load, attach and run until SIGINT/SIGTERM")
    run.add_argument("-i", "--interface", required=True, metavar="IF", help="mirror target")
    run.add_argument("-t", "--egress", required=True, metavar="IF", help="egress interface")
    run.add_argument("--netns", metavar="NS", help="network namespace of both interfaces")
    run.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.REDIRECT.value,
        help="redirect (XDP, DEVMAP; default), tc (TC ingress, any driver), ringbuf (XDP to a "
        "ring buffer, re-injected from user space)",
    )
    run.add_argument(
        "--xdp-mode",
        choices=["native", "generic"],
        default="native",
        help="XDP attach mode for redirect and ringbuf (default native; no fallback)",
    )
    run.add_argument(
        "--next-hop-mac",
        type=_mac,
        metavar="MAC",
        help="destination MAC of forwarded frames (default: the egress's default gateway's, "
        "from the neighbour table)",
    )
    run.add_argument("--vni", type=_vni, help="forward this VNI only (default: any)")
    run.add_argument(
        "--port",
        type=_vxlan_port,
        default=Config.port,
        help=f"UDP destination port of VXLAN (default {Config.port}, IANA's and AWS's)",
    )
    run.add_argument(
        "--ring-size",
        type=_ring_size,
        default=Config.ring_size,
        metavar="BYTES",
        help=f"ringbuf mode: the ring's size, a power of 2 (K, M, G; default "
        f"{Config.ring_size >> 20}M)",
    )
    run.add_argument(
        "--workers",
        type=_workers,
        default=len(os.sched_getaffinity(0)),
        metavar="N",
        help="ringbuf mode: rings and re-injector worker processes, one per CPU by default; CPU c's "
        "frames go to ring c %% N, whose worker runs on those CPUs",
    )
    run.add_argument(
        "--match",
        choices=[m.value for m in Match],
        default=Match.EITHER.value,
        help="which inner address must be allowlisted (default either)",
    )
    run.add_argument(
        "--default-nat",
        type=nat_target,
        metavar="IP[:PORT]",
        help="NAT target of inner packets without a rule of their own",
    )
    run.add_argument("--allowlist", metavar="FILE", help="allowlist to load before attaching")
    add_stats_interval(run)
    run.add_argument("-v", "--verbose", action="store_true", help="print every counter")
    run.add_argument("--json", action="store_true", help="print one JSON object per interval")
    _name_argument(run)

    allowlist = commands.add_parser("allowlist", help="the running pipeline's allowlist")
    allowlist_commands = allowlist.add_subparsers(dest="action", required=True)
    load = allowlist_commands.add_parser("load", help="replace it with FILE (validated first)")
    load.add_argument("file", metavar="FILE")
    _name_argument(load)
    for action, text in (("show", "print it as an allowlist file"), ("clear", "empty it")):
        _name_argument(allowlist_commands.add_parser(action, help=text))

    nat = commands.add_parser("nat", help="the running pipeline's NAT rules")
    nat_commands = nat.add_subparsers(dest="action", required=True)
    add = nat_commands.add_parser("add", help="inner TCP/UDP to PORT goes to IP[:PORT]")
    add.add_argument("port", type=port_arg, metavar="PORT")
    add.add_argument("target", type=nat_target, metavar="IP[:PORT]")
    _name_argument(add)
    remove = nat_commands.add_parser("del", help="remove the rule for PORT")
    remove.add_argument("port", type=port_arg, metavar="PORT")
    _name_argument(remove)
    _name_argument(nat_commands.add_parser("list", help="print the rules"))

    stats = commands.add_parser("stats", help="the running pipeline's counters")
    stats.add_argument("--json", action="store_true", help="print them as JSON")
    _name_argument(stats)
    return parser


# --- run ---


def default_next_hop(ifname: str, namespace: str | None) -> bytes:
    """The MAC of ``ifname``'s IPv4 default gateway, from the neighbour table."""
    from pyroute2 import IPRoute  # only when --next-hop-mac is left out

    with bpf_netns.entered(namespace), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        for route in ipr.get_default_routes(family=2):
            gateway = route.get_attr("RTA_GATEWAY")
            if route.get_attr("RTA_OIF") != index or gateway is None:
                continue
            for neighbour in ipr.get_neighbours(ifindex=index, dst=gateway):
                lladdr = neighbour.get_attr("NDA_LLADDR")
                if lladdr:
                    return parse_mac(lladdr)
            raise UsageError(
                f"--next-hop-mac: the gateway {gateway} of {ifname} is not in the neighbour "
                "table yet; give its MAC"
            )
    raise UsageError(f"--next-hop-mac: {ifname} has no IPv4 default gateway to take it from")


def _run_checks(args: argparse.Namespace) -> tuple[Config, bytes, Allowlist | None]:
    check_interface(args.interface, args.netns, "-i/--interface")
    check_interface(args.egress, args.netns, "-t/--egress")
    if args.interface == args.egress:
        raise UsageError(
            f"-t/--egress: {args.egress} is the mirror target: frames must never go back out"
        )
    pins = bpf.pin_dir(f"vxlan-{args.name}")
    if pins.exists():
        raise UsageError(
            f"--name: a pipeline is already pinned as {args.name!r} ({host_path(pins)}); stop it, or "
            "run `harness clean` if it was killed"
        )
    mac = args.next_hop_mac or default_next_hop(args.egress, args.netns)
    allowlist = _load_allowlist(args.allowlist) if args.allowlist else None
    config = Config(
        Mode(args.mode),
        args.vni,
        Match(args.match),
        args.default_nat,
        args.port,
        args.ring_size,
        args.workers,
    )
    return config, mac, allowlist


def stats_dict(stats: Stats, seconds: float, previous: Stats | None) -> dict[str, Any]:
    """One interval as JSON: every counter, the invariant, the rates since the last interval."""
    before_total = previous.total if previous else 0
    before_forwarded = previous.forwarded if previous else 0
    return {
        "time": round(time.time(), 3),
        "interval_s": round(seconds, 3),
        "counters": stats.counts(),
        "dropped": stats.dropped,
        "balanced": stats.balanced,
        "pps": round((stats.total - before_total) / seconds, 1) if seconds else 0.0,
        "forwarded_pps": round((stats.forwarded - before_forwarded) / seconds, 1)
        if seconds
        else 0.0,
    }


def stats_line(stats: Stats, verbose: bool) -> str:
    drops = ", ".join(f"{reason} {n:,}" for reason, n in stats.drops.items() if n) or "none"
    line = (
        f"total {stats.total:,}  forwarded {stats.forwarded:,}  passed {stats.passed:,}  "
        f"dropped {stats.dropped:,} ({drops})"
        + ("" if stats.balanced else "  UNBALANCED: total != passed + forwarded + dropped")
    )
    if verbose:
        line += "\n  " + "  ".join(f"{name} {n:,}" for name, n in stats.counts().items())
    return line


def reinjector_dict(vx: VxlanPipeline, reinjectors: Reinjectors) -> dict[str, Any]:
    """The re-injectors' counts, in total and per ring beside what the data plane queued to it."""
    rings = [
        {"queued": queued, "forwarded": count.forwarded, "failed": count.failed, "restarts": r}
        for queued, count, r in zip(
            vx.queued_per_ring(), reinjectors.counts(), reinjectors.restarts, strict=True
        )
    ]
    return {
        "forwarded": sum(r["forwarded"] for r in rings),
        "failed": sum(r["failed"] for r in rings),
        "restarts": sum(r["restarts"] for r in rings),
        "rings": rings,
    }


def _report(args, vx: VxlanPipeline, seconds: float, previous: Stats | None, reinjectors) -> Stats:
    stats = vx.stats()
    if args.json:
        line = stats_dict(stats, seconds, previous)
        if reinjectors is not None:
            line["reinjector"] = reinjector_dict(vx, reinjectors)
        print(json.dumps(line), flush=True)
        return stats
    text = stats_line(stats, args.verbose)
    if reinjectors is not None:
        counts = reinjector_dict(vx, reinjectors)
        per_ring = "  ".join(
            f"#{i}: {r['forwarded']:,}/{r['failed']:,}" for i, r in enumerate(counts["rings"])
        )
        text += (
            f"\n  re-injected {counts['forwarded']:,}, failed {counts['failed']:,} "
            f"(per ring, re-injected/failed: {per_ring})"
        )
    print(text, flush=True)
    return stats


def _run(args: argparse.Namespace) -> int:
    config, next_hop, allowlist = _run_checks(args)
    stop = stop_event()
    with VxlanPipeline(config) as vx:
        egress = vx.set_egress(args.egress, next_hop, args.netns)
        if allowlist is not None:
            vx.set_allowlist(allowlist)
        pins = vx.pin(args.name)
        reinjectors = None
        if config.mode is Mode.RINGBUF:
            reinjectors = Reinjectors(vx.rings, args.egress, args.netns)

        def restarted() -> list[str]:  # a re-injector that died: its ring would fill and drop
            ended = reinjectors.supervise() if reinjectors is not None else []
            return [f"re-injector {worker}: restarted" for worker in ended]

        try:
            vx.attach(args.interface, args.netns, XdpMode[args.xdp_mode.upper()])
            if reinjectors is not None:
                reinjectors.start()
            where = f" in {args.netns}" if args.netns else ""
            workers = f", {config.rings} re-injector workers" if reinjectors is not None else ""
            print(
                f"{PROG}: running as {args.name!r}: {args.interface} -> {args.egress}{where} "
                f"(next hop {format_mac(egress.dst_mac)}), mode {config.mode.value}{workers}; "
                f"maps pinned in {host_path(pins)}",
                file=sys.stderr,
                flush=True,
            )
            last, previous = time.monotonic(), None
            while not wait_supervising(
                stop, last + args.stats_interval - time.monotonic(), restarted, PROG
            ):
                now = time.monotonic()
                previous, last = _report(args, vx, now - last, previous, reinjectors), now
            vx.detach()
            if reinjectors is not None:
                reinjectors.stop()  # after detaching: each forwards what its ring holds, then exits
            _report(args, vx, time.monotonic() - last, previous, reinjectors)
        finally:
            if reinjectors is not None:
                reinjectors.close()
    return 0


# --- commands on a running pipeline ---


def _load_allowlist(path: str) -> Allowlist:
    """The file's allowlist; what it holds that is odd but harmless is said on stderr."""
    allowlist = Allowlist.load(path)
    for warning in allowlist.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return allowlist


def _allowlist(args: argparse.Namespace) -> int:
    new = _load_allowlist(args.file) if args.action == "load" else None  # before any change
    with VxlanPipeline.open_pinned(args.name) as vx:
        if args.action == "load":
            vx.set_allowlist(new)
            print(f"{PROG}: {args.name}: allowlist of {len(new)} entries loaded from {args.file}")
        elif args.action == "clear":
            vx.clear_allowlist()
            print(f"{PROG}: {args.name}: allowlist cleared: nothing is forwarded")
        else:
            print(json.dumps(vx.allowlist().document(), indent=1))
    return 0


def _nat(args: argparse.Namespace) -> int:
    with VxlanPipeline.open_pinned(args.name) as vx:
        if args.action == "add":
            vx.add_nat(args.port, args.target.addr, args.target.port)
            print(f"{PROG}: {args.name}: port {args.port} -> {args.target}")
        elif args.action == "del":
            if not vx.del_nat(args.port):
                raise UsageError(f"nat del: no rule for port {args.port}")
            print(f"{PROG}: {args.name}: rule for port {args.port} removed")
        else:
            for port, target in vx.nat_rules().items():
                print(f"{port} {target}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    with VxlanPipeline.open_pinned(args.name) as vx:
        stats = vx.stats()
    if args.json:
        print(json.dumps(stats_dict(stats, 0.0, None)))
    else:
        print(stats_line(stats, verbose=True))
    return 0


COMMANDS = {"run": _run, "allowlist": _allowlist, "nat": _nat, "stats": _stats}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, AllowlistError, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    except (LibbpfError, OSError, RuntimeError) as err:
        print(failure(PROG, err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
