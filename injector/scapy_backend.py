"""Send exact packet lists on an interface (optionally inside a network namespace): slow, for correctness.

Packets come from ``TrafficSpec.expand()`` (or any list of frames) and go out through an AF_PACKET
raw socket opened inside the namespace (``bpf.netns.entered``); the socket stays bound to that
namespace's interface afterwards. Measured: ~290 kpps of prebuilt frames from Python, far below what
a data plane needs for load; use the xdp or trex backend for rate. Capturing is not done here.
A send the loaded link refuses (ENOBUFS, EAGAIN, ENETDOWN: ``bpf.txring.SEND_REFUSALS``) is a frame
not sent, counted in ``SendResult.refused`` by reason; the next frame is still sent.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from bpf.netns import entered
from bpf.txring import refused
from injector.spec import TrafficSpec

ETH_P_ALL = 0x0003


@dataclass(frozen=True)
class SendResult:
    """Frames the kernel took (``sent``), and those it refused, by errno name (``refused``)."""

    sent: int
    seconds: float
    refused: dict[str, int] = field(default_factory=dict)


class PacketSocket:
    """An AF_PACKET socket bound to ``interface`` in namespace ``netns`` (``None``: the current one)."""

    def __init__(self, interface: str, netns: str | None = None) -> None:
        with entered(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                self.sock.bind((interface, 0))
            except OSError as e:
                self.sock.close()
                where = f" in netns {netns}" if netns else ""
                raise OSError(e.errno, f"cannot send on {interface}{where}: {e.strerror}") from None
        self.refused: Counter[str] = Counter()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, frame: bytes) -> bool:
        """Send one frame; False if the link refused it (counted in ``refused``)."""
        try:
            self.sock.send(frame)
        except OSError as err:
            self.refused[refused(err)] += 1
            return False
        return True

    def send_paced(self, frames: Iterable[tuple[float, bytes]]) -> SendResult:
        """Send each frame at its time (seconds from the start; 0 for all means as fast as possible)."""
        start, before = time.monotonic(), Counter(self.refused)
        sent = 0
        for at, frame in frames:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent += self.send(frame)
        return SendResult(sent, time.monotonic() - start, dict(self.refused - before))


def send_packets(
    frames: Iterable[bytes], interface: str, netns: str | None = None, rate_pps: float | None = None
) -> SendResult:
    """Send ``frames`` in order, at ``rate_pps`` or as fast as the socket takes them."""
    gap = 0.0 if rate_pps is None else 1.0 / rate_pps
    with PacketSocket(interface, netns) as out:
        return out.send_paced((i * gap, f) for i, f in enumerate(frames))


def send_spec(spec: TrafficSpec, interface: str, netns: str | None = None) -> SendResult:
    """Send the spec's exact packets (``count``, else duration x rate, else one period)."""
    return send_packets(spec.expand(), interface, netns, spec.rate_pps)
