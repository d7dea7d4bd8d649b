"""Sending on AF_PACKET: what a loaded link refuses (``SEND_REFUSALS``), and a TX ring (TPACKET_V2)
that sends many frames with few system calls.

Under load a send can be refused: a full qdisc, or a device without one (a veth) that dropped the
frame at its full peer (ENOBUFS; the veth counts it in its ``tx_dropped`` too), a non-blocking
socket that would block (EAGAIN), a link that is down (ENETDOWN). Each is a frame not sent, counted by its errno's
name, never an exception: every AF_PACKET sender of the project counts them this way
(``refused(err)``).

A Python ``send()`` per frame tops out near 290 kpps (PLATFORM.md). Here frames are copied into a
ring of slots shared with the kernel (``PACKET_TX_RING``, mmap), marked ``TP_STATUS_SEND_REQUEST``,
and one ``send()`` transmits every marked slot; ``PACKET_QDISC_BYPASS`` skips the qdisc layer, as
pktgen does. The kernel hands a slot back by setting its status to ``TP_STATUS_AVAILABLE``; a slot it
could not send is marked ``TP_STATUS_WRONG_FORMAT``, counted in ``rejected``, and freed.

A flush refused with ENOBUFS or EAGAIN loses nothing: the kernel marks the slot it could not send
for sending again, and the next flush retries it. A flush refused with ENETDOWN sends nothing (the
kernel checks the link first), so the slots still marked are taken back and counted in ``refused``.

Each slot carries a virtio-net header (``PACKET_VNET_HDR``) whose ``hdr_len`` is the whole frame: the
kernel then copies the frame into the skb's linear part. Without it the payload is attached as
zero-copy fragments of the ring's pages, which any receiver in the same host (a veth peer, the
stack) must copy again (``skb_copy_ubufs``) before the slot can be handed back: a profile on a
veth into a native XDP sink showed that copy, the page references and the fragment walk making a
frame from the ring cost the kernel as much as a ``send()`` of it (~1.8 us on a 2-vCPU Intel
Firecracker guest), so the ring saved only the system call, which is cheap there. Linear frames
measured 5-12% faster; what remains per frame is the skb, the veth's copy into its XDP page pool,
and this module's Python loop (~1 us).
Not for: receiving, or frames larger than ``frame_size`` less the 42 bytes of slot headers.
"""

from __future__ import annotations

import errno
import mmap
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable

from bpf import netns

_SOL_PACKET = 263
_PACKET_VERSION, _PACKET_TX_RING, _PACKET_VNET_HDR, _PACKET_QDISC_BYPASS = 10, 13, 15, 20
_TPACKET_V2 = 1
_TP_STATUS_AVAILABLE, _TP_STATUS_SEND_REQUEST, _TP_STATUS_SENDING = 0, 1, 2
_TP_STATUS_WRONG_FORMAT = 4
# A slot: tp_status, tp_len, tp_snaplen (the start of struct tpacket2_hdr); at 32, where a TX slot's
# data begins (TPACKET_ALIGN(sizeof(struct tpacket2_hdr))), a struct virtio_net_hdr (flags, gso_type,
# hdr_len, gso_size, csum_start, csum_offset), zeros but hdr_len; then the frame.
_HEADER = struct.Struct("=III20x2xH6x")
_VNET_HDR_SIZE = 10
_DATA_OFFSET = 32 + _VNET_HDR_SIZE
_PAGE = mmap.PAGESIZE

SEND_REFUSALS = frozenset({errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN})


def refused(err: OSError) -> str:
    """The name of the errno with which a loaded or down link refused a send (``"ENOBUFS"``);
    any other error is raised again."""
    if err.errno not in SEND_REFUSALS:
        raise err
    return errno.errorcode[err.errno]


class TxRing:
    """A TX ring on ``ifname`` in ``namespace``: ``send(frames)`` returns how many were queued."""

    def __init__(
        self, ifname: str, namespace: str | None = None, frame_size: int = 2048, frames: int = 4096
    ) -> None:
        if frame_size % 16 or _PAGE % frame_size:
            raise ValueError(f"frame_size {frame_size}: a multiple of 16 that divides {_PAGE}")
        self.frame_size, self.slots = frame_size, frames
        self.max_frame = frame_size - _DATA_OFFSET
        with netns.entered(namespace):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(_SOL_PACKET, _PACKET_VERSION, _TPACKET_V2)
            self.sock.setsockopt(_SOL_PACKET, _PACKET_QDISC_BYPASS, 1)
            self.sock.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
            per_block = _PAGE // frame_size
            blocks = -(-frames // per_block)
            self.slots = blocks * per_block
            request = struct.pack("=IIII", _PAGE, blocks, frame_size, self.slots)
            self.sock.setsockopt(_SOL_PACKET, _PACKET_TX_RING, request)
            self.sock.bind((ifname, 0))
            self.ring = mmap.mmap(self.sock.fileno(), _PAGE * blocks)
        except OSError as err:
            self.sock.close()
            where = f"{ifname} in namespace {namespace}" if namespace else ifname
            raise OSError(err.errno, f"TX ring on {where}: {err.strerror}") from None
        self._next = 0
        self.sent = 0
        self.rejected = 0
        self.refused: Counter[str] = Counter()

    def send(self, frames: Iterable[bytes]) -> int:
        """Queue ``frames`` and flush; blocks while the ring is full. Returns how many were queued.

        The loop is kept to a status byte read, one copy and one header write per frame: at a few
        hundred nanoseconds each, these are what a frame costs here.
        """
        ring, size, slots, pack = self.ring, self.frame_size, self.slots, _HEADER.pack_into
        flush_every, max_frame = slots // 2, self.max_frame
        index, queued = self._next, 0
        for frame in frames:
            length = len(frame)
            if length > max_frame:
                raise ValueError(f"a {length}-byte frame does not fit a {size}-byte slot")
            offset = index * size
            status = ring[offset]  # the low byte of tp_status: every status used fits in it
            while status not in (_TP_STATUS_AVAILABLE, _TP_STATUS_WRONG_FORMAT):
                index = self._flush(index)
                select.select([], [self.sock], [], 0.01)  # let the kernel hand slots back
                offset = index * size
                status = ring[offset]
            if status == _TP_STATUS_WRONG_FORMAT:
                self.rejected += 1
            data = offset + _DATA_OFFSET
            ring[data : data + length] = frame
            size_in_slot = length + _VNET_HDR_SIZE
            pack(ring, offset, _TP_STATUS_SEND_REQUEST, size_in_slot, size_in_slot, length)
            index = index + 1 if index + 1 < slots else 0
            queued += 1
            if queued % flush_every == 0:
                index = self._flush(index)
        if queued:
            index = self._drain(index)
        self._next = index
        self.sent += queued
        return queued

    def _drain(self, index: int, timeout: float = 5.0) -> int:
        """Flush until the kernel has taken the last frame queued, the one before slot ``index``
        (it takes slots in order); returns the slot for the next frame."""
        deadline = time.monotonic() + timeout
        while self.ring[(index - 1) % self.slots * self.frame_size] in (
            _TP_STATUS_SEND_REQUEST,
            _TP_STATUS_SENDING,
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kernel took no frame from the TX ring in {timeout} s")
            index = self._flush(index)
            select.select([], [self.sock], [], 0.001)
        return index

    def _flush(self, index: int) -> int:
        """Have the kernel send the marked slots; returns the slot for the next frame, which moves
        back only when a down link made the slots be taken back."""
        try:
            self.sock.send(b"")
        except OSError as err:
            if refused(err) == "ENETDOWN":
                return self._take_back(index)
            # ENOBUFS, EAGAIN: the slots stay marked for the next flush.
        return index

    def _take_back(self, index: int) -> int:
        """Unmark the slots the kernel did not take, a run that ends just before ``index`` (a down
        link takes none, and the kernel's own position stays at the oldest of them); returns that
        oldest slot, where the kernel looks next."""
        size, slots = self.frame_size, self.slots
        for _ in range(slots):
            previous = index - 1 if index else slots - 1
            if self.ring[previous * size] != _TP_STATUS_SEND_REQUEST:
                break
            self.ring[previous * size] = _TP_STATUS_AVAILABLE
            self.refused["ENETDOWN"] += 1
            index = previous
        return index

    def close(self) -> None:
        self.ring.close()
        self.sock.close()

    def __enter__(self) -> TxRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
