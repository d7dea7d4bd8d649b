"""``injector send``: send a traffic spec (YAML, see injector/README.md) or a pcap from an interface.

Backends: ``xdp`` (live frames, Mpps, exact counts), ``scapy`` (exact packet list, slow), ``pcap``
(replay a capture), ``trex`` (a TRex server's ports; needs ``--trex-server``). A long run shows its
progress on the terminal; ``--json`` prints the result as one JSON object instead of a sentence.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from injector.spec import SpecError, load_spec

BACKENDS = ("xdp", "scapy", "pcap", "trex")


def _progress(sent: int, total: int | None, elapsed: float) -> None:
    rate = sent / elapsed if elapsed else 0.0
    of = f" / {total:,}" if total else ""
    sys.stderr.write(f"\rsent {sent:,}{of}  {rate / 1e6:.2f} Mpps  {elapsed:.1f} s ")
    sys.stderr.flush()


def _batch(text: str) -> int:
    from injector.xdp import MAX_BATCH

    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{text!r}: a batch is 1 to {MAX_BATCH} frames")
    return int(text)


def _send(args: argparse.Namespace) -> dict:
    if args.backend == "pcap":
        from injector.pcap_backend import replay_pcap

        result = replay_pcap(args.pcap, args.interface, args.netns, args.speed, args.rate)
        return {"packets": result.sent, "seconds": result.seconds, "refused": result.refused}
    spec = load_spec(args.spec)
    overrides = {k: v for k, v in (("count", args.count), ("rate_pps", args.rate)) if v is not None}
    if args.duration is not None:
        overrides.update(duration=args.duration, count=args.count)
    spec = replace(spec, **overrides)
    if args.backend == "scapy":
        from injector.scapy_backend import send_spec

        result = send_spec(spec, args.interface, args.netns)
        return {"packets": result.sent, "seconds": result.seconds, "refused": result.refused}
    program = spec.resolve()
    if args.backend == "trex":
        from injector.trex_backend import run_on_trex

        return run_on_trex(program, args.trex_server, tuple(args.trex_ports))
    from injector.xdp import XdpSender

    progress = _progress if sys.stderr.isatty() and not args.json else None
    with XdpSender(program, args.interface, args.netns) as sender:
        report = sender.send(
            count=spec.count,
            rate_pps=spec.rate_pps,
            duration=spec.duration,
            workers=args.workers,
            batch=args.batch,
            progress=progress,
        )
    if progress:
        sys.stderr.write("\n")
    return {
        "packets": report.packets,
        "seconds": report.seconds,
        "pps": report.pps,
        "workers": report.workers,
        "aborted": report.aborted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="injector", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="send traffic from an interface")
    send.add_argument("-i", "--interface", required=True, help="interface to send from")
    send.add_argument("--netns", help="network namespace of the interface (default: this one)")
    send.add_argument("-b", "--backend", choices=BACKENDS, default="xdp")
    source = send.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="traffic spec (YAML)")
    source.add_argument("--pcap", help="capture to replay (pcap backend)")
    send.add_argument("-n", "--count", type=int, help="packets to send (overrides the spec)")
    send.add_argument("-r", "--rate", type=float, help="packets per second (overrides the spec)")
    send.add_argument("-d", "--duration", type=float, help="seconds to send for (overrides count)")
    send.add_argument("-w", "--workers", type=int, default=1, help="xdp: one sender per CPU")
    send.add_argument(
        "--batch", type=_batch, help="xdp: frames handed to the kernel at a time (1-256)"
    )
    send.add_argument("--speed", type=float, default=1.0, help="pcap: replay this much faster")
    send.add_argument("--trex-server", help="trex: address of the TRex server")
    send.add_argument("--trex-ports", type=int, nargs="+", default=[0], help="trex: ports to use")
    send.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if (args.backend == "pcap") != (args.pcap is not None):
        parser.error("--pcap goes with --backend pcap, and the pcap backend needs --pcap")
    if args.backend == "trex" and not args.trex_server:
        parser.error("the trex backend needs --trex-server")
    try:
        result = _send(args)
    except (SpecError, OSError, ValueError) as err:
        print(f"injector: {err}", file=sys.stderr)
        return 1
    if args.json or args.backend == "trex":  # TRex's counters are a nested report
        print(json.dumps(result))
    else:
        rate = f" ({result['pps'] / 1e6:.2f} Mpps)" if "pps" in result else ""
        refused = ", ".join(f"{why} {n:,}" for why, n in result.get("refused", {}).items())
        refused = f"; refused by the link: {refused}" if refused else ""
        print(f"sent {result['packets']:,} packets in {result['seconds']:.2f} s{rate}{refused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
