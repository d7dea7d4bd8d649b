"""What the test_run benchmarks share: XDP programs parked where the kernel's XDP dispatcher keeps
them, and the flow rotator that turns test_run's one frame into N flows.

**Parked.** A test_run with ``repeat`` > 1 of an XDP program attached nowhere adds it to the
kernel's XDP dispatcher and takes it out again (``bpf_prog_change_xdp`` in
``bpf_prog_test_run_xdp``), a synchronize_rcu each call (~18 ms here; PLATFORM trap 1 says so of
live frames). The CPU idles through it, and the run that follows costs ~9 or ~18 ns for a bare
program, ~52 or ~70 for the traffic counter, at random and not in proportion, so no ratio cancels
it (15% of the gate's same-configuration runs were flagged so: ``docs/gate.md``). Each update also
rewrites the dispatcher's image into its other half, so the program is called from code at
another address each time: a likely cause of the two levels. ``parked(*programs)`` attaches them
(xdpgeneric) to the ends of down veth pairs in a namespace of their own, where no frame reaches
them: they stay in the dispatcher, and a call costs ~3 ms. Every XDP test_run benchmark that
repeats measures its programs parked (a single run, ``repeat`` 1, never touches the dispatcher).

**Rotated.** test_run repeats one frame, and a non-live repeat keeps the program's edits:
``bpf/flowmon/flowmon_bench.bpf.c`` turns the frame into the next of ``n_flows`` flows (a 16-bit
field steps from 1024; past ``LAP`` flows a second field counts its laps) and tail-calls the
program measured. A subject and its baseline both pay the rotation and the tail call, so their
ratio is the measured program's cost. ``Rotated`` loads one rotator for an XDP or a TC program
(by the program's type) and parks it when it is XDP.

Not for: what a benchmark measures, or its statistics (``harness.measure``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute

import bpf
from bpf import ProgType, XdpMode, journal
from bpf import netns as bpf_netns
from harness.topology import create_netns

ROTATOR = Path(bpf.__file__).parent / "flowmon" / "flowmon_bench.bpf.c"
LAP = 32768  # flowmon_bench.bpf.c: a 16-bit field from 1024 holds no more flows
UDP_SPORT = 14 + 20  # the UDP source port of an untagged IPv4 frame without options
IPV4_SRC_LOW = 14 + 14  # the low half of its IPv4 source address

_parkings = itertools.count()


@contextlib.contextmanager
def parked(*programs: bpf.Program) -> Iterator[None]:
    """``programs`` (XDP) attached to the ends of down veth pairs in a namespace of their own, for
    the block's time (see the module's docstring for why)."""
    run_id = journal.current().run_id
    netns = f"bl-{run_id}-park{os.getpid() % 10000}-{next(_parkings)}"
    ends = [f"park{n}" for n in range(len(programs) + len(programs) % 2)]
    create_netns(netns)
    recorded = journal.current().record("netns", name=netns)  # a crash leaves it to harness clean
    try:
        with bpf_netns.entered(netns), IPRoute() as ipr:
            for a, b in zip(ends[::2], ends[1::2], strict=True):
                ipr.link("add", ifname=a, kind="veth", peer=b)
        with contextlib.ExitStack() as links:
            for program, end in zip(programs, ends, strict=False):
                links.enter_context(program.attach_xdp(end, XdpMode.GENERIC, netns))
            yield
    finally:
        journal.current().undo(recorded)


class Rotated:
    """``measured`` behind the flow rotator of its type, stepping through ``n_flows`` flows of
    ``frame``: the 16-bit field at ``field`` steps, and past ``LAP`` flows the one at ``laps``
    counts its laps. ``ns_per_packet`` checks that the tail call went (the verdict is
    ``verdict``: what the measured program returns, ``PASS`` or ``OK`` by default)."""

    def __init__(
        self,
        frame: bytes,
        n_flows: int,
        measured: bpf.Program,
        field: int = UDP_SPORT,
        laps: int | None = None,
        verdict: bpf.XdpAction | bpf.TcAction | None = None,
    ) -> None:
        xdp = measured.type == ProgType.XDP
        if n_flows > LAP and laps is None:
            raise ValueError(f"{n_flows} flows: past {LAP} the rotator needs a field for its laps")
        self.frame, self.xdp = frame, xdp
        self.verdict = verdict or (bpf.XdpAction.PASS if xdp else bpf.TcAction.OK)
        self._stack = contextlib.ExitStack()
        self.obj = self._stack.enter_context(bpf.BpfObject.open(ROTATOR))
        try:
            self.obj.rodata["n_flows"] = n_flows
            self.obj.rodata["sport_off"] = field
            if n_flows > LAP:
                self.obj.rodata["high_off"] = laps
                self.obj.rodata["high_base"] = int.from_bytes(frame[laps : laps + 2], "big")
            self.obj.load()
            self.program = self.obj.programs["flow_rotator" if xdp else "flow_rotator_tc"]
            self.point(measured)
            if xdp:
                self._stack.enter_context(parked(self.program))
        except BaseException:
            self._stack.close()
            raise

    def point(self, measured: bpf.Program) -> None:
        """Tail-call ``measured`` from now on (one rotator serving several subjects in turns)."""
        self.obj.maps["measured" if self.xdp else "measured_tc"][0] = measured.fd

    def ns_per_packet(self, repeat: int) -> float:
        run = self.program.test_run(self.frame, repeat=repeat)
        assert run.verdict is self.verdict, f"the tail call failed: {run.verdict!r}"
        return float(run.duration_ns)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Rotated:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
