"""``injector send``: send a traffic spec (YAML, see injector/README.md) or a pcap from an interface.
``injector pppoe``: send the PF_PACKET RPS seed's PPPoE frames (``bpf.pfrps.model.seed_macs``) over
AF_PACKET, paced as the seed's (20 us apart); a send the loaded link refuses is counted, not raised.

Backends: ``xdp`` (live frames, Mpps, exact counts), ``scapy`` (exact packet list, slow), ``pcap``
(replay a capture), ``trex`` (a TRex server's ports; needs ``--trex-server``). A long run shows its
progress on the terminal; ``--json`` prints the result as one JSON object instead of a sentence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import replace

from bpf.cli import failure
from injector.spec import SpecError, load_spec
from injector.trex_backend import TrexError

BACKENDS = ("xdp", "scapy", "pcap", "trex")
SEED_FRAME_LEN = 148  # Ethernet 14 + PPPoE 6 + 128 bytes of payload


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


def _mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return mac


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a count of frames is a whole number, 1 or more"
        )
    return int(text)


def _gap_us(text: str) -> float:
    try:
        gap = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microseconds") from None
    if gap < 0:
        raise argparse.ArgumentTypeError(f"{gap} us: cannot be negative")
    return gap


SEED_GAP_US = 20.0  # the seed's injector sleeps 20 us between frames
PPPOE_KINDS = ("discovery", "session", "both")


def _add_pppoe(commands) -> None:
    pppoe = commands.add_parser(
        "pppoe",
        help="send the PF_PACKET RPS seed's PPPoE frames (a random walk of source MACs)",
        description="The seed's `inject -i IF -d DEST_MAC -p COUNT`: 148-byte PPPoE frames from "
        "02:00:01:01:01:01 with a random value added to bytes 1-5 of the source MAC per frame.",
    )
    pppoe.add_argument("-i", "--interface", required=True, help="interface to send from")
    pppoe.add_argument("-d", "--dest-mac", type=_mac, required=True, help="destination MAC")
    pppoe.add_argument("-p", "--pkt-count", type=_count, required=True, help="frames to send")
    pppoe.add_argument("--netns", help="network namespace of the interface (default: this one)")
    pppoe.add_argument(
        "--kind",
        choices=PPPOE_KINDS,
        default="discovery",
        help="discovery (0x8863, the seed's frame), session (0x8864, PPP/IPv4/UDP) or both "
        "(alternating)",
    )
    pppoe.add_argument(
        "--seed", type=int, help="rand_r's seed (default: the time, as the seed's time(NULL))"
    )
    pppoe.add_argument(
        "--gap-us",
        type=_gap_us,
        default=SEED_GAP_US,
        help=f"microseconds between frames (default {SEED_GAP_US:g}, the seed's; 0: flat out)",
    )
    pppoe.add_argument("--json", action="store_true", help="print the result as JSON")


def pppoe_frames(dest: bytes, count: int, seed: int, kind: str) -> Iterator[bytes]:
    """The seed's frames to ``dest`` from ``model.seed_macs(count, seed)``: its 148-byte Discovery
    frame, or a PPPoE session frame (session 0xcafe, PPP/IPv4/UDP) padded to the same 148 bytes,
    or the two alternating (discovery first)."""
    from bpf.pfrps.model import seed_frame, seed_macs
    from injector import templates

    session = bytes(templates.pad_to(templates.pppoe_session(session_id=0xCAFE), SEED_FRAME_LEN))
    for i, mac in enumerate(seed_macs(count, seed)):
        if kind == "discovery" or (kind == "both" and i % 2 == 0):
            yield seed_frame(mac, dest)
        else:
            yield dest + mac + session[12:]


def _pppoe(args: argparse.Namespace) -> dict:
    from injector.scapy_backend import PacketSocket

    seed = int(time.time()) if args.seed is None else args.seed
    gap = args.gap_us / 1e6
    frames = pppoe_frames(args.dest_mac, args.pkt_count, seed, args.kind)
    with PacketSocket(args.interface, args.netns) as out:  # a refused send is counted, not raised
        result = out.send_paced((i * gap, frame) for i, frame in enumerate(frames))
    return {
        "packets": result.sent,
        "seconds": result.seconds,
        "refused": result.refused,
        "seed": seed,
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
    _add_pppoe(commands)
    args = parser.parse_args(argv)
    if args.command == "pppoe":
        try:
            return _report(_pppoe(args), args.json)
        except OSError as err:
            print(failure("injector", err), file=sys.stderr)
            return 1
    if (args.backend == "pcap") != (args.pcap is not None):
        parser.error("--pcap goes with --backend pcap, and the pcap backend needs --pcap")
    if args.backend == "trex" and not args.trex_server:
        parser.error("the trex backend needs --trex-server")
    try:
        result = _send(args)
    except OSError as err:
        print(failure("injector", err), file=sys.stderr)
        return 1
    except (SpecError, ValueError, TrexError) as err:
        print(f"injector: {err}", file=sys.stderr)
        return 1
    return _report(result, args.json or args.backend == "trex")  # TRex's: a nested report


def _report(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        rate = f" ({result['pps'] / 1e6:.2f} Mpps)" if "pps" in result else ""
        refused = ", ".join(f"{why} {n:,}" for why, n in result.get("refused", {}).items())
        refused = f"; refused by the link: {refused}" if refused else ""
        print(f"sent {result['packets']:,} packets in {result['seconds']:.2f} s{rate}{refused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
