"""The ``harness`` command: build topologies and leave them up, run commands in them, clean up.

    harness topo up FILE|NAME [--nic IF] [--egress-nic IF]
    harness topo down NAME
    harness topo ls
    harness topo exec [-t NAME] NODE -- CMD...
    harness clean
    harness run demo [--packets N] [--json]
    harness gate RESULTS... [--history DIR] [--update-baseline]
    harness preflight IF [--netns NS] [--testbed NAME|FILE] [--json]
    harness sink IF [--netns NS]          # count arriving frames: one JSON line per line read

``topo up`` leaves the network up after it exits, so it records it as a detached topology: its
journal goes to ``/run/bpflab/topologies/NAME/`` rather than the per-process journal directory, and a
``state.json`` beside it, written once the build succeeded, says it is up. ``clean`` leaves such a
topology alone until ``topo down NAME`` removes it (``harness.cleanup.Detached`` has the details). A
``topo up`` killed mid-build leaves no ``state.json``, and ``clean`` removes what it built.

Each subcommand is one ``_cmd_*`` function registered in ``_parser()``; add new ones the same way.
This module only parses arguments and prints; the work is in ``harness.topology`` and
``harness.cleanup``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bpf import netns as bpf_netns
from bpf.cli import failure
from harness import cleanup
from harness import results as results_file
from harness.schema import SchemaError
from harness.topology import Topology


def _cmd_topo_up(args: argparse.Namespace) -> int:
    topo = Topology.load(args.file, nic=args.nic, egress_nic=args.egress_nic)
    detached = cleanup.Detached(topo.name)
    topo.journal = detached.new_journal()
    try:
        topo.up()
    except BaseException:
        detached.remove()
        raise
    detached.save(topo.describe())
    print(json.dumps(topo.describe(), indent=2))
    print(f"up: `harness topo down {topo.name}` removes it", file=sys.stderr)
    return 0


def _cmd_topo_down(args: argparse.Namespace) -> int:
    detached = cleanup.Detached(args.name)
    if not detached.directory.is_dir():
        up = ", ".join(d.name for d in cleanup.Detached.all()) or "none"
        print(f"topology {args.name} is not up (up: {up})", file=sys.stderr)
        return 1
    for line in detached.remove():
        print(line)
    return 0


def _cmd_topo_ls(args: argparse.Namespace) -> int:
    for detached in cleanup.Detached.all():
        if not detached.is_up():
            print(f"{detached.name}\t(being built, or killed while building: `harness clean`)")
            continue
        state = detached.state()
        nodes = " ".join(f"{n}={v['netns'] or '(host)'}" for n, v in state["nodes"].items())
        print(f"{detached.name}\trun {state['run_id']}\t{nodes}\t{state['file']}")
    return 0


def _cmd_topo_exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("topo exec: no command given (NODE -- CMD...)", file=sys.stderr)
        return 2
    states = [d.state() for d in cleanup.Detached.all() if d.is_up()]
    if args.topology is not None:
        states = [s for s in states if s["name"] == args.topology]
    owners = [s for s in states if args.node in s["nodes"]]
    if len(owners) != 1:
        which = ", ".join(s["name"] for s in owners) or "none"
        print(
            f"node {args.node}: in {which} of the up topologies; name one with -t", file=sys.stderr
        )
        return 1
    with bpf_netns.entered(owners[0]["nodes"][args.node]["netns"]):
        os.execvp(command[0], command)  # the new program keeps this thread's namespace


def _cmd_clean(args: argparse.Namespace) -> int:
    report = cleanup.clean()
    for line in report:
        print(line)
    return 1 if any(not line.startswith("removed") for line in report) else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from harness import demo  # loads BPF objects: only when a run is asked for

    return demo.main(args.packets, args.json)


def _cmd_gate(args: argparse.Namespace) -> int:
    from harness import gate

    paths = [Path(p) for p in args.results]
    try:
        results = gate.pooled([results_file.read(p) for p in paths])
    except ValueError as err:
        print(f"harness gate: {err}", file=sys.stderr)
        return 2
    history = gate.history_dir(Path(args.history), results)
    verdicts = gate.gate(results, gate.load_history(history))
    print(f"{' + '.join(map(str, paths))} against {history} (testbed {results['testbed']}):")
    print(gate.table(verdicts))
    if args.update_baseline:
        changed = [v.name for v in verdicts if v.verdict in ("regression", "improvement")]
        where = gate.record(results, Path(args.history), changed)
        print(
            f"recorded in the history as {where}"
            + (f", accepting {len(changed)} change(s)" if changed else "")
        )
    regressions = [v.name for v in verdicts if v.regression]
    if regressions:
        print(f"harness gate: {len(regressions)} regression(s): {', '.join(regressions)}")
    return 1 if regressions and not args.update_baseline else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness import report  # matplotlib: only when a report is asked for

    history = Path(args.history) if args.history else None
    try:
        md, page = report.build([Path(r) for r in args.results], Path(args.output), history)
    except ValueError as err:
        print(f"harness report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {md} and {page}")
    return 0


def _cmd_preflight(args: argparse.Namespace) -> int:
    from harness.preflight import preflight  # loads a BPF object: only when asked for
    from harness.testbed import find_testbed, load_testbed

    driver = load_testbed(find_testbed(args.testbed)).driver if args.testbed else None
    report = preflight(args.interface, args.netns, driver=driver)
    print(json.dumps(report.as_dict()) if args.json else report.text())
    return 1 if report.failed else 0


def _cmd_sink(args: argparse.Namespace) -> int:
    from harness.sink import Sink  # loads a BPF object: only when asked for

    # The counter a benchmark reads on a peer host over ssh (harness.bench.PeerReceiver): each
    # line on stdin asks for the counts so far; end of input detaches.
    with Sink(args.interface, args.netns) as sink:
        print(json.dumps({"ready": args.interface}), flush=True)
        for _ in sys.stdin:
            counts = {cls.name.lower(): frames for cls, (frames, _) in sink.counts().items()}
            print(json.dumps(counts), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="bpflab test harness")
    commands = parser.add_subparsers(dest="command", required=True)

    topo = commands.add_parser("topo", help="network topologies").add_subparsers(
        dest="topo_command", required=True
    )
    up = topo.add_parser("up", help="build a topology and leave it up")
    up.add_argument("file", metavar="FILE|NAME", help="a topology file or a shipped topology name")
    up.add_argument("--nic", metavar="IF", help="real NIC for the end marked real_nic: nic")
    up.add_argument("--egress-nic", metavar="IF", help="real NIC for real_nic: egress-nic")
    up.set_defaults(run=_cmd_topo_up)

    down = topo.add_parser("down", help="tear down a topology left up by `topo up`")
    down.add_argument("name")
    down.set_defaults(run=_cmd_topo_down)

    topo.add_parser("ls", help="list the topologies left up").set_defaults(run=_cmd_topo_ls)

    exec_ = topo.add_parser("exec", help="run a command inside a node's namespace")
    exec_.add_argument("-t", "--topology", metavar="NAME", help="when several topologies are up")
    exec_.add_argument("node")
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    exec_.set_defaults(run=_cmd_topo_exec)

    clean = commands.add_parser("clean", help="remove what dead runs left behind")
    clean.set_defaults(run=_cmd_clean)

    run = commands.add_parser("run", help="run a scenario end to end and print a verdict")
    run.add_argument(
        "scenario", choices=["demo"], help="demo: the harness on two_host (see README)"
    )
    run.add_argument("--packets", type=int, default=2_000_000, help="packets of the rate check")
    run.add_argument("--json", action="store_true", help="print the checks as JSON")
    run.set_defaults(run=_cmd_run)

    check = commands.add_parser(
        "gate", help="a run's results against the history of its testbed and machine"
    )
    check.add_argument(
        "results",
        metavar="RESULTS",
        nargs="+",
        help="results files of `pytest tests/perf`; several, of one build: judged as one run",
    )
    check.add_argument(
        "--history", default=".benchmarks/history", help="the runs accepted so far (a directory)"
    )
    check.add_argument(
        "--update-baseline",
        action="store_true",
        help="accept the run: add it to the history (and exit 0); a figure it flagged starts a "
        "new history there",
    )
    check.set_defaults(run=_cmd_gate)

    rep = commands.add_parser(
        "report", help="Markdown and HTML report, with plots, of benchmark results files"
    )
    rep.add_argument("results", metavar="RESULTS", nargs="+", help="results files")
    rep.add_argument("-o", "--output", metavar="DIR", required=True, help="where to write it")
    rep.add_argument("--history", metavar="DIR", help="add each run's gate table against it")
    rep.set_defaults(run=_cmd_report)

    pre = commands.add_parser(
        "preflight", help="what a NIC can do, checked before benchmarks run on it"
    )
    pre.add_argument("interface", metavar="IF")
    pre.add_argument("--netns", metavar="NS", help="the interface's network namespace")
    pre.add_argument("--testbed", metavar="NAME|FILE", help="check the driver it expects")
    pre.add_argument("--json", action="store_true", help="print the checks as JSON")
    pre.set_defaults(run=_cmd_preflight)

    sink = commands.add_parser(
        "sink", help="count frames arriving on an interface (XDP, dropped); a line in, counts out"
    )
    sink.add_argument("interface", metavar="IF")
    sink.add_argument("--netns", metavar="NS", help="the interface's network namespace")
    sink.set_defaults(run=_cmd_sink)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except OSError as err:
        print(failure("harness", err), file=sys.stderr)
        return 1
    except (SchemaError, RuntimeError, ValueError) as err:
        print(f"harness: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
