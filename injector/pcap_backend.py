"""Replay a capture file on an interface, keeping its timing (optionally sped up) or at a fixed rate.

Frames are read with scapy's ``RawPcapReader`` (pcap and pcapng), sent unchanged through the
AF_PACKET socket of ``injector.scapy_backend``. Only Ethernet (link type 1) captures replay; the
pacing is Python's, good to about a millisecond, not for line-rate replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from scapy.utils import RawPcapReader

from injector.scapy_backend import PacketSocket, SendResult

LINKTYPE_ETHERNET = 1


def timed_frames(
    path: str | Path, speed: float = 1.0, rate_pps: float | None = None
) -> Iterator[tuple[float, bytes]]:
    """(seconds from the first frame, frame) for each frame: capture time / ``speed``, or ``i / rate``."""
    if speed <= 0 or (rate_pps is not None and rate_pps <= 0):
        raise ValueError(f"speed and rate_pps must be positive, got {speed} and {rate_pps}")
    with RawPcapReader(str(path)) as reader:
        first = None
        for index, (frame, meta) in enumerate(reader):
            linktype = getattr(meta, "linktype", getattr(reader, "linktype", None))
            if linktype != LINKTYPE_ETHERNET:
                raise ValueError(f"{path}: frame {index} has link type {linktype}, not Ethernet")
            if rate_pps is not None:
                yield index / rate_pps, frame
                continue
            stamp = _timestamp(meta)
            first = stamp if first is None else first
            yield (stamp - first) / speed, frame


def _timestamp(meta: object) -> float:
    if hasattr(meta, "sec"):
        return meta.sec + meta.usec / 1e6
    resolution = getattr(meta, "tsresol", 1_000_000)
    return ((meta.tshigh << 32) | meta.tslow) / resolution


def replay_pcap(
    path: str | Path,
    interface: str,
    netns: str | None = None,
    speed: float = 1.0,
    rate_pps: float | None = None,
) -> SendResult:
    """Send every frame of ``path`` on ``interface``, at capture timing / ``speed`` or at ``rate_pps``."""
    with PacketSocket(interface, netns) as out:
        return out.send_paced(timed_frames(path, speed, rate_pps))
