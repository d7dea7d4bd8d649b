"""The ``softrss`` command: run the soft RSS data plane on an interface, or ask it where a flow goes.

    softrss -i IF [--netns NS] [-b N] [-s SECONDS] [-o STATE.json] [--hash toeplitz|jhash]
            [--key HEX] [--symmetric] [--action count|cpu|ifaces] [--ifaces IF,...] [--cpus N,...]
            [--threshold PACKETS] [--mode native|generic] [--json]
    softrss hash --src IP --dst IP [--sport N --dport N] [--proto tcp|udp] [--hash ...] [--key HEX]
            [--symmetric] [-b N] [--json]

The first form attaches, prints the per-bucket counters every ``-s`` seconds (a table, or one JSON
object a line with ``--json``) with the elephants announced since, and on SIGINT/SIGTERM detaches,
prints them a last time and saves that same state to ``-o`` (``SoftRss.restore`` reads it). ``hash`` runs one
frame through the real program (``BPF_PROG_TEST_RUN``, not attached anywhere) and reads the hash and
bucket it recorded; without ports the frame is a first fragment, which hashes the addresses only.

Every argument is checked before anything is loaded or attached. This module parses and prints; the
work is in ``bpf.softrss.softrss``. ``softrss-argus`` (``bpf.softrss.argus``) shares the data-plane
options defined here.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from bpf import POSSIBLE_CPUS, LibbpfError, XdpMode
from bpf.cli import (
    UsageError,
    add_stats_interval,
    check_interface,
    failure,
    port_arg,
    stop_event,
)
from bpf.softrss.model import MAX_BUCKETS, RETA_SIZE, Action, Config, HashKind
from bpf.softrss.softrss import BucketReport, Elephant, SoftRss
from bpf.toeplitz import MICROSOFT_KEY

PROTOCOLS = {"tcp": 6, "udp": 17}


# --- argument types shared with softrss-argus ---


def buckets_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= n <= MAX_BUCKETS:
        raise argparse.ArgumentTypeError(f"{n} buckets: must be 1..{MAX_BUCKETS}")
    return n


def key_arg(text: str) -> bytes:
    """A Toeplitz key: 40 bytes in hex, colons allowed (``ethtool -x`` prints it so)."""
    try:
        key = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None
    if len(key) != 40:
        raise argparse.ArgumentTypeError(f"the Toeplitz key is 40 bytes, {len(key)} given")
    return key


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: cannot be negative")
    return value


def add_dataplane_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that configure the data plane's hash (``softrss``, ``softrss hash``, argus)."""
    parser.add_argument(
        "--hash",
        choices=[k.value for k in HashKind],
        default=HashKind.TOEPLITZ.value,
        help="toeplitz (bit-exact with NIC RSS; default) or jhash",
    )
    parser.add_argument(
        "--key",
        type=key_arg,
        default=MICROSOFT_KEY,
        metavar="HEX",
        help="Toeplitz key, 40 bytes in hex (default: the Microsoft key most NICs ship)",
    )
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="XOR source and destination first: both directions share a bucket",
    )


def add_attach_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the data plane runs (``softrss``, ``softrss-argus``)."""
    parser.add_argument("-i", "--interface", metavar="IF", help="interface to attach to")
    parser.add_argument("--netns", metavar="NS", help="network namespace of the interface")
    parser.add_argument(
        "--mode",
        choices=["native", "generic"],
        default="native",
        help="XDP mode (default native; no fallback)",
    )


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


# --- softrss (run) ---


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softrss",
        description="Soft RSS: spread flows over buckets as NIC RSS does, count them, steer them. "
        "`softrss hash --help` answers which bucket one flow lands in.",
    )
    add_attach_arguments(parser)
    parser.add_argument(
        "-b", "--buckets", type=buckets_arg, default=8, help="number of buckets (default 8)"
    )
    add_stats_interval(parser)
    parser.add_argument("-o", "--output", metavar="FILE", help="save the state here on exit")
    add_dataplane_arguments(parser)
    parser.add_argument(
        "--action",
        choices=[a.value for a in Action],
        default=Action.COUNT.value,
        help="count and pass (default), cpu: redirect each bucket to a CPU, "
        "ifaces: redirect each bucket to an interface (--ifaces)",
    )
    parser.add_argument(
        "--ifaces", metavar="IF,...", help="with --action ifaces: one interface per bucket"
    )
    parser.add_argument(
        "--cpus",
        metavar="N,...",
        help="with --action cpu: the CPU of each bucket (default b %% CPUs)",
    )
    parser.add_argument(
        "--threshold",
        type=count_arg,
        default=100,
        metavar="PACKETS",
        help="packets that make a flow an elephant (default 100; 0: never)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per interval")
    return parser


def _run_config(args: argparse.Namespace) -> tuple[Config, list[str] | None, list[int] | None]:
    action = Action(args.action)
    config = Config(
        buckets=args.buckets,
        hash=HashKind(args.hash),
        key=args.key,
        symmetric=args.symmetric,
        action=action,
        threshold_packets=args.threshold,
    )
    ifaces = args.ifaces.split(",") if args.ifaces else None
    cpus = _int_list(args.cpus, "--cpus")
    if action is Action.IFACES:
        if ifaces is None or len(ifaces) != config.buckets:
            got = len(ifaces) if ifaces else 0
            raise UsageError(
                f"--action ifaces: --ifaces must name {config.buckets} interfaces (one per "
                f"bucket), {got} given"
            )
        for name in ifaces:
            check_interface(name, args.netns, "--ifaces")
    elif ifaces is not None:
        raise UsageError("--ifaces: only with --action ifaces")
    if cpus is not None:
        if action is not Action.CPU:
            raise UsageError("--cpus: only with --action cpu")
        if len(cpus) != config.buckets or not all(0 <= c < POSSIBLE_CPUS for c in cpus):
            raise UsageError(
                f"--cpus: {config.buckets} CPUs expected, each 0..{POSSIBLE_CPUS - 1}; got {cpus}"
            )
    return config, ifaces, cpus


def report_dict(report: BucketReport, elephants: list[Elephant], seconds: float) -> dict[str, Any]:
    """One interval as JSON: buckets, balance, elephants announced since the last."""
    return {
        "time": round(time.time(), 3),
        "interval_s": round(seconds, 3),
        "total_packets": report.total_packets,
        "buckets": [
            {"bucket": b.index, "packets": b.packets, "bytes": b.bytes, "flows": b.flows}
            for b in report.buckets
        ],
        "packets_balance": {
            "stddev": round(report.packets.stddev, 3),
            "max_over_mean": round(report.packets.max_over_mean, 3),
        },
        "flows_balance": {
            "stddev": round(report.flows.stddev, 3),
            "max_over_mean": round(report.flows.max_over_mean, 3),
        },
        "elephants": [
            {"flow": str(e.key), "bucket": e.bucket, "hash": e.hash, "packets": e.packets}
            for e in elephants
        ],
    }


def report_table(report: BucketReport, elephants: list[Elephant], pps: list[float]) -> str:
    lines = [f"{'bucket':>6} {'packets':>12} {'pps':>10} {'bytes':>14} {'flows':>8} {'share':>7}"]
    for b, rate in zip(report.buckets, pps, strict=True):
        lines.append(
            f"{b.index:>6} {b.packets:>12,} {rate:>10,.0f} {b.bytes:>14,} {b.flows:>8,} "
            f"{b.share:>7.1%}"
        )
    lines.append(
        f"balance: packets max/mean {report.packets.max_over_mean:.3f} "
        f"(stddev {report.packets.stddev:,.1f}), flows max/mean {report.flows.max_over_mean:.3f}"
    )
    lines += [
        f"elephant: {e.key} bucket {e.bucket} hash {e.hash:#010x} ({e.packets} packets)"
        for e in elephants
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    config, ifaces, cpus = _run_config(args)
    check_interface(args.interface, args.netns)
    stop = stop_event()
    with SoftRss(config) as rss:
        if ifaces is not None:
            rss.set_ifaces(ifaces, args.netns)
        if cpus is not None:
            rss.set_cpus(cpus)
        rss.attach(args.interface, args.netns, XdpMode[args.mode.upper()])
        where = f"{args.interface}@{args.netns}" if args.netns else args.interface
        print(
            f"softrss: attached to {where} ({args.mode}): {config.buckets} buckets, "
            f"{config.hash.value}, action {config.action.value}",
            file=sys.stderr,
            flush=True,
        )
        last, last_packets = time.monotonic(), [0] * config.buckets
        while True:
            stopping = stop.wait(args.stats_interval)
            if stopping:  # no frame may be counted between the last figures and the saved state
                rss.detach()
            now = time.monotonic()
            report, elephants = rss.bucket_stats(), rss.elephants()
            if args.json:
                print(json.dumps(report_dict(report, elephants, now - last)), flush=True)
            else:
                pps = [
                    (b.packets - p) / (now - last)
                    for b, p in zip(report.buckets, last_packets, strict=True)
                ]
                print(report_table(report, elephants, pps) + "\n", flush=True)
            last, last_packets = now, [b.packets for b in report.buckets]
            if stopping:
                break
        if args.output:
            rss.save(args.output)
            print(f"softrss: state saved to {args.output}", file=sys.stderr)
    return 0


# --- softrss hash ---


def _hash_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softrss hash",
        description="The hash and bucket of one flow, from the real program (BPF_PROG_TEST_RUN).",
    )
    parser.add_argument("--src", required=True, type=_address, help="source address (v4 or v6)")
    parser.add_argument("--dst", required=True, type=_address, help="destination address")
    parser.add_argument("--sport", type=port_arg, help="source port (with --dport)")
    parser.add_argument("--dport", type=port_arg, help="destination port (with --sport)")
    parser.add_argument("--proto", choices=list(PROTOCOLS), default="udp", help="default udp")
    parser.add_argument(
        "-b", "--buckets", type=buckets_arg, default=8, help="number of buckets (default 8)"
    )
    add_dataplane_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    return parser


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def probe_frame(
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
    proto: int,
    ports: tuple[int, int] | None,
) -> bytes:
    """A frame of the flow; without ports a first fragment, which NICs (and the program) hash on
    the addresses only."""
    sport, dport = ports or (0, 0)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # not hashed
    l4 = (
        TCP(sport=sport, dport=dport)
        if proto == PROTOCOLS["tcp"]
        else UDP(sport=sport, dport=dport)
    )
    if src.version == 4:
        ip = IP(src=str(src), dst=str(dst), flags="MF" if ports is None else 0)
        return bytes(eth / ip / l4)
    ip6 = IPv6(src=str(src), dst=str(dst))
    if ports is None:
        return bytes(eth / ip6 / IPv6ExtHdrFragment(m=1) / l4)
    return bytes(eth / ip6 / l4)


def _hash(args: argparse.Namespace) -> int:
    if args.src.version != args.dst.version:
        raise UsageError(f"--src {args.src} and --dst {args.dst}: not the same IP version")
    if (args.sport is None) != (args.dport is None):
        raise UsageError("--sport and --dport: give both (or neither, to hash the addresses only)")
    ports = None if args.sport is None else (args.sport, args.dport)
    config = Config(
        buckets=args.buckets,
        hash=HashKind(args.hash),
        key=args.key,
        symmetric=args.symmetric,
        threshold_packets=0,
    )
    frame = probe_frame(args.src, args.dst, PROTOCOLS[args.proto], ports)
    with SoftRss(config) as rss:
        rss.program.test_run(frame)
        (flow,) = rss.flows()
    answer = {
        "src": str(args.src),
        "dst": str(args.dst),
        "sport": flow.key.sport,
        "dport": flow.key.dport,
        "proto": args.proto,
        "ports_hashed": ports is not None,
        "hash_kind": config.hash.value,
        "symmetric": config.symmetric,
        "hash": flow.hash,
        "slot": flow.hash & (RETA_SIZE - 1),
        "bucket": flow.bucket,
        "buckets": config.buckets,
    }
    if args.json:
        print(json.dumps(answer))
    else:
        print(
            f"{flow.key}: {config.hash.value} hash {flow.hash:#010x}, RETA slot {answer['slot']}, "
            f"bucket {flow.bucket} of {config.buckets}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash"]:
        command, args = _hash, _hash_parser().parse_args(argv[1:])
    else:
        command, args = _run, _run_parser().parse_args(argv)
    try:
        return command(args)
    except (UsageError, ValueError) as err:
        print(f"softrss: {err}", file=sys.stderr)
        return 2
    except (LibbpfError, OSError) as err:
        print(failure("softrss", err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
