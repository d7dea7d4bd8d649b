"""Capture frames from an interface of a node: an AF_PACKET socket, no BPF.

``Capture(ifname, netns=..., match=...)`` opens a socket on entry, so nothing sent after that is
missed; ``frames(count, timeout)`` returns the frames ``match`` (a plain Python predicate on the frame
bytes) accepts, in both directions, bounded by count and timeout. Frames are returned as they were
on the wire: a VLAN tag the kernel moved into packet metadata (VLAN offload, as veth does) is put back
from ``PACKET_AUXDATA``, as libpcap does. It keeps frames in memory, in a receive buffer large enough
for thousands of frames, and ``write_pcap`` saves them for Wireshark or tcpdump: it is for checking
packets in a test, not for rates (``harness.sink``).
Sending is the injector's job (``injector.scapy_backend.send_packets``).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from scapy.data import DLT_EN10MB
from scapy.utils import PcapWriter

from bpf import netns as bpf_netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_SO_RCVBUFFORCE = 33  # not exported by Python's socket module; root may exceed rmem_max
_SOL_PACKET, _PACKET_AUXDATA = 263, 8
_TP_STATUS_VLAN_VALID, _TP_STATUS_VLAN_TPID_VALID = 1 << 4, 1 << 6
_AUXDATA = struct.Struct("IIIHHHH")  # struct tpacket_auxdata
_MAX_FRAME = 65536
_RECEIVE_BUFFER = 64 << 20  # a few thousand frames queued while the test is still sending


@dataclass(frozen=True)
class Frame:
    data: bytes
    outgoing: bool  # sent by this host on the interface, rather than received on it


def _packet_socket(ifname: str, netns: str | None) -> socket.socket:
    # Protocol 0 receives nothing until bound to the interface: no frames of other interfaces slip in.
    with bpf_netns.entered(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER)
        sock.setsockopt(_SOL_PACKET, _PACKET_AUXDATA, 1)
        sock.bind((ifname, ETH_P_ALL))
    except OSError as err:
        sock.close()
        where = f"namespace {netns}" if netns else "the host namespace"
        raise OSError(err.errno, f"cannot open {ifname} in {where}: {err.strerror}") from None
    return sock


class Capture:
    """Frames seen on one interface from the moment the capture is entered.

    ``seen`` keeps every frame ``frames()`` returned; ``Capture.opened`` lists the captures entered
    since the pytest plugin last cleared it (at each test's start), for the failure bundle.
    """

    opened: ClassVar[list[Capture]] = []

    def __init__(
        self,
        ifname: str,
        *,
        netns: str | None = None,
        match: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.ifname, self.netns, self.match = ifname, netns, match
        self._sock: socket.socket | None = None
        self.seen: list[Frame] = []

    def __enter__(self) -> Capture:
        self._sock = _packet_socket(self.ifname, self.netns)
        Capture.opened.append(self)
        return self

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def frames(self, count: int = 1, timeout: float = 1.0) -> list[Frame]:
        """Up to ``count`` matching frames, waiting at most ``timeout`` seconds in all."""
        if self._sock is None:
            raise RuntimeError("Capture.frames() outside `with Capture(...)`")
        deadline = time.monotonic() + timeout
        found: list[Frame] = []
        while len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                break
            data, ancillary, _, address = self._sock.recvmsg(_MAX_FRAME, socket.CMSG_SPACE(64))
            data = _with_vlan_tag(data, ancillary)
            if self.match is None or self.match(data):
                found.append(Frame(data, address[2] == PACKET_OUTGOING))
        self.seen += found
        return found


def _with_vlan_tag(frame: bytes, ancillary: list[tuple[int, int, bytes]]) -> bytes:
    """``frame`` with the VLAN tag the kernel stripped into ``tpacket_auxdata`` put back after the MACs."""
    for level, kind, data in ancillary:
        if level != _SOL_PACKET or kind != _PACKET_AUXDATA or len(data) < _AUXDATA.size:
            continue
        status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(data)
        if status & _TP_STATUS_VLAN_VALID:
            tpid = tpid if status & _TP_STATUS_VLAN_TPID_VALID else 0x8100
            return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


def write_pcap(path: str | Path, frames: Iterable[Frame | bytes]) -> int:
    """Write frames (captured, or raw Ethernet bytes) to a pcap file; returns how many."""
    written = 0
    with PcapWriter(str(path), linktype=DLT_EN10MB, sync=False) as pcap:
        for frame in frames:
            pcap.write(frame.data if isinstance(frame, Frame) else bytes(frame))
            written += 1
    return written
