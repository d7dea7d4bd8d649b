"""The ``pfrps`` command: spread an interface's PPPoE frames over N worker processes and print, every
second, how many each one read, in the seed's line.

    pfrps -i IF -w N -a 0|1|2 [--mode filters|fanout-ebpf|fanout-hash|fanout-cpu] [--mac src|dst]
          [--proto discovery|session|both] [--cpus N,N-M,...] [--rx ring|recv] [--netns NS]
          [-s SECONDS] [--json]

``-a`` is the seed's hash (0 mac_hash, 1 mac_jhash, 2 jhash_oaat; with fanout-hash and fanout-cpu
the kernel places the frames and ``-a`` only names the hash it would have used). Every ``-s``
seconds (default 1, as the seed) it prints ``#0:0232 #1:0237 ... (total:1922 std_dev:9.959292)``,
each count the frames worker i read, or with ``--json`` one object a line with each worker's frames,
bytes, cut frames, kernel drops and restarts. ``--rx`` is how a worker reads: a TPACKET_V3 ring
(default) or one recv() per frame. A worker that dies is restarted on its own socket (its frames
wait there meanwhile) and the restart is reported on stderr. SIGINT or SIGTERM stops the workers
after they drain their queues; the last line is printed and the command exits 0.

Every argument is checked before anything is loaded or opened. This module parses and prints; the
work is in ``bpf.pfrps.pfrps``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from bpf import LibbpfError
from bpf.cli import (
    UsageError,
    add_stats_interval,
    check_interface,
    failure,
    stop_event,
    wait_supervising,
)
from bpf.pfrps.model import HashAlg, MacSide, Protocols, seed_line, std_dev
from bpf.pfrps.pfrps import MAX_WORKERS, Config, Mode, Node, Rx, WorkerCount

PROTOCOLS = {"discovery": Protocols.DISCOVERY, "session": Protocols.SESSION, "both": Protocols.BOTH}
SEED_INTERVAL = 1.0  # the seed prints every second


def workers_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"{n} workers: must be 1..{MAX_WORKERS} (a fanout group's)"
        )
    return n


def cpus_arg(text: str) -> tuple[int, ...]:
    """``0,1`` or ``0-3,6``: CPUs in the order workers take them."""
    cpus: list[int] = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or int(last or first) < int(first):
            raise argparse.ArgumentTypeError(f"{text!r}: CPUs are N or N-M (M >= N), by commas")
        cpus.extend(range(int(first), int(last or first) + 1))
    return tuple(cpus)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfrps",
        description="PF_PACKET receive packet steering: PPPoE frames over N workers by MAC hash.",
    )
    parser.add_argument("-i", "--interface", help="the interface to receive on")
    parser.add_argument("--netns", help="the interface's network namespace")
    parser.add_argument("-w", "--workers", type=workers_arg, default=8, help="worker processes")
    parser.add_argument(
        "-a",
        "--hash-alg",
        type=int,
        choices=[a.value for a in HashAlg],
        default=HashAlg.MAC_HASH.value,
        help="0 mac_hash, 1 mac_jhash, 2 jhash_oaat (default 0, the seed's)",
    )
    parser.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.FILTERS.value,
        help="filters (the seed: one per socket), fanout-ebpf (one program per frame, same "
        "placement), fanout-hash or fanout-cpu (the kernel's, no MAC affinity)",
    )
    parser.add_argument(
        "--mac", choices=[s.value for s in MacSide], default=MacSide.SRC.value, help="MAC hashed"
    )
    parser.add_argument(
        "--proto", choices=list(PROTOCOLS), default="discovery", help="PPPoE frames received"
    )
    parser.add_argument("--cpus", type=cpus_arg, default=(), help="pin worker i to the i-th CPU")
    parser.add_argument(
        "--rx",
        choices=[r.value for r in Rx],
        default=Rx.RING.value,
        help="ring (a TPACKET_V3 ring: a block of frames a wake-up; default) or recv (one "
        "recv() a frame: no wait for a block at low rates)",
    )
    add_stats_interval(parser, default=SEED_INTERVAL)
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    return parser


def _config(args: argparse.Namespace) -> Config:
    check_interface(args.interface, args.netns)
    try:
        return Config(
            args.interface,
            workers=args.workers,
            hash=HashAlg(args.hash_alg),
            mode=Mode(args.mode),
            mac=MacSide(args.mac),
            protocols=PROTOCOLS[args.proto],
            cpus=args.cpus,
            netns=args.netns,
            rx=Rx(args.rx),
        )
    except ValueError as err:  # Config names the option: "cpus: CPU 7 is not ..."
        raise UsageError(f"--{err}") from None


def report(counts: list[WorkerCount], restarts: list[int], as_json: bool) -> str:
    frames = [c.frames for c in counts]
    if not as_json:
        return seed_line(frames)
    return json.dumps(
        {
            "time": round(time.time(), 3),
            "total": sum(frames),
            "std_dev": std_dev(frames),
            "workers": [
                {
                    "frames": c.frames,
                    "bytes": c.bytes,
                    "cut": c.cut,
                    "steered": c.steered,
                    "dropped": c.dropped,
                    "restarts": r,
                }
                for c, r in zip(counts, restarts, strict=True)
            ],
        }
    )


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    stop = stop_event()
    with Node(config) as node:
        node.start()
        where = f"{config.ifname}@{config.netns}" if config.netns else config.ifname
        print(
            f"pfrps: {config.workers} workers on {where} ({config.mode.value}, {config.rx.value}, "
            f"{config.hash.name.lower()} of the {config.mac.value} MAC), pids "
            f"{' '.join(str(p) for p in node.pids)}",
            file=sys.stderr,
            flush=True,
        )

        def restarted() -> list[str]:  # a worker that died: its queue fills meanwhile
            return [f"worker #{i} died; restarted as pid {node.pids[i]}" for i in node.supervise()]

        while True:
            stopping = wait_supervising(stop, args.stats_interval, restarted, "pfrps")
            if stopping:
                node.stop()  # the workers drain their queues: the last line counts everything
            print(report(node.counts(), node.restarts, args.json), flush=True)
            if stopping:
                break
    print(f"pfrps: stopped; nothing left on {where}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.interface is None:
            raise UsageError("-i/--interface: required")
        return _run(args)
    except UsageError as err:
        print(f"pfrps: {err}", file=sys.stderr)
        return 2
    except (LibbpfError, OSError) as err:
        print(failure("pfrps", err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
