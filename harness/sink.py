"""Count frames arriving on an interface at rates no capture keeps up with (``xdp_sink.bpf.c``).

An XDP program attached natively counts every frame by L3 class (IPv4, IPv6, ARP, VLAN, PPPoE,
other), per CPU, then drops it or passes it on. Counting by class lets a test reconcile exactly
what it injected (say IPv4) while the kernel's own IPv6 neighbour discovery goes on beside it.
Not for: looking at packet contents (``harness.capture``).
"""

from __future__ import annotations

import enum
from pathlib import Path

from bpf import BpfObject, XdpAction, XdpMode
from harness.counters import settled

SOURCE = Path(__file__).with_name("xdp_sink.bpf.c")


class FrameClass(enum.IntEnum):
    IPV4 = 0
    IPV6 = 1
    ARP = 2
    VLAN = 3
    PPPOE = 4
    OTHER = 5


class Sink:
    """``xdp_sink`` attached to ``ifname`` in ``netns``; ``counts()`` reads it, ``close()`` detaches."""

    def __init__(
        self,
        ifname: str,
        netns: str | None = None,
        verdict: XdpAction = XdpAction.DROP,
        mode: XdpMode = XdpMode.NATIVE,
    ) -> None:
        self.obj = BpfObject.open(SOURCE)
        try:
            self.obj.rodata["sink_verdict"] = int(verdict)
            self.obj.load()
            self.obj.programs["xdp_sink"].attach_xdp(ifname, mode, netns)
        except BaseException:
            self.obj.close()
            raise

    def counts(self) -> dict[FrameClass, tuple[int, int]]:
        """Frames and bytes seen so far, by class (summed over CPUs)."""
        counts = self.obj.maps["counts"]
        result = {}
        for cls in FrameClass:
            total = counts.lookup_sum(int(cls))
            result[cls] = (total.frames, total.bytes)
        return result

    def frames(self, cls: FrameClass) -> int:
        return self.obj.maps["counts"].lookup_sum(int(cls)).frames

    def settled(
        self, cls: FrameClass, at_least: int, timeout: float = 2.0, still: float = 0.02
    ) -> int:
        """The frame count of ``cls`` once it reached ``at_least`` and did not move for ``still``
        seconds, or at ``timeout`` (``harness.counters.settled``)."""
        return settled(lambda: self.frames(cls), at_least, still, timeout)

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
