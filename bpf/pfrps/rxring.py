"""A worker's TPACKET_V3 RX ring: the kernel copies each accepted frame into blocks of memory shared
with the worker, which wakes once a block is full (or its timer retires it), walks the block's
frames and hands the block back, instead of one ``recv()`` system call per frame.

The ring is set up on the node's socket before anything else is (``PACKET_VERSION``, then
``PACKET_RX_RING``, then ``mmap``): a ring set up on a bound socket unhooks it and hooks it again,
which would move a fanout member to the end of its group and renumber the others. The node maps
the ring and its workers inherit the mapping, so a worker restarted on the socket finds the ring
where the dead one left it.

A block (``struct tpacket_block_desc``) belongs to the worker while its ``block_status`` has
``TP_STATUS_USER``; it holds ``num_pkts`` frames (``struct tpacket3_hdr``), the first at
``offset_to_first_pkt``, each the next's ``tp_next_offset`` before it. ``tp_len`` is a frame's
length on the wire, ``tp_snaplen`` what the ring holds of it: shorter only when the socket's filter
returned less than the frame's length (or the frame is longer than a block), so a frame is *cut*
when the two differ. The kernel fills blocks in order and never passes a block the worker holds:
it drops the frame instead and counts it in PACKET_STATISTICS ``tp_drops``, as it does for a full
receive queue.

Accounting that survives SIGKILL at any instruction: the worker counts a whole block, *commits*
the counts with the block to read next and the block's sequence number (``seq_num``, stamped by the
kernel when it opens a block: 1, 2, ...), and only then hands the block back. A commit is two
copies of the record and a sequence word made current by one store (the reader takes the copy it
names), as ``bpf/vxlan/forward.h`` does, so a commit is whole or not made. A worker that starts
(first or after a kill) reads the latest commit: a block before its committed block that is still
the worker's and carries the committed sequence number was counted by the dead worker, which died
before handing it back: it is handed back, not counted again. Every other block the worker holds is
read in order from the committed block. So every frame the kernel put in the ring is counted once,
and a frame that found the ring full is counted by the kernel in ``tp_drops``.

Why Python walks the blocks, not C: a full block of 148-byte frames costs ~0.24 us a frame in
Python (the walk ~0.3 us a frame, measured by the unit test; the commit and status words ~4 us a
block), a ceiling of ~4 Mpps on a worker's CPU, above what the kernel steers into all the workers'
sockets on the machines measured (README): there the sending CPU is the limit, and what the ring
saves it (an skb queued and a reader woken for each frame) is the kernel's work. Loads and stores of the status words are plain: on x86 a load is not reordered with an
earlier load, nor a store with an earlier load, which is the order the kernel's
``smp_wmb()``/``smp_rmb()`` pair asks for here.

Not for: sending (``bpf.txring``), or frames the worker must look at (only counted here).
"""

from __future__ import annotations

import ctypes
import mmap
import select
import socket
import struct
from ctypes import c_uint64
from dataclasses import dataclass

_SOL_PACKET = 263
_PACKET_VERSION, _PACKET_RX_RING = 10, 5
_TPACKET_V3 = 2
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
_PAGE = mmap.PAGESIZE

# struct tpacket_block_desc: version, offset_to_priv, then struct tpacket_hdr_v1: block_status,
# num_pkts, offset_to_first_pkt, blk_len, seq_num (8-aligned at 24), ts_first_pkt, ts_last_pkt.
_BLOCK_STATUS = 8
BLOCK_HEADER = struct.Struct("=8xIII4xQ")  # block_status, num_pkts, offset_to_first_pkt, seq_num
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, ...
FRAME_HEADER = struct.Struct("=I8xII")  # tp_next_offset, tp_snaplen, tp_len


@dataclass(frozen=True)
class Geometry:
    """A ring of ``blocks`` blocks of ``block_size`` bytes; a block the kernel has opened is retired
    to the worker ``retire_ms`` after its first frame at the latest (at low rates, a frame's
    delay)."""

    block_size: int
    blocks: int
    retire_ms: int = 2

    @classmethod
    def for_bytes(cls, size: int, block_size: int = 1 << 14, fewest: int = 4) -> Geometry:
        """About ``size`` bytes in blocks of ``block_size`` (smaller, in pages, for a small ring),
        ``fewest`` blocks at least."""
        block = max(_PAGE, min(block_size, size // fewest // _PAGE * _PAGE))
        return cls(block, max(fewest, size // block))

    @property
    def size(self) -> int:
        return self.block_size * self.blocks


@dataclass(frozen=True)
class BlockCount:
    frames: int
    bytes: int  # what the ring holds of them (tp_snaplen): what a reader would read
    cut: int  # frames held shorter than on the wire (tp_snaplen < tp_len)
    seq: int  # the block's sequence number


def walk(ring, offset: int) -> BlockCount:
    """Count the frames of the block at ``offset`` of ``ring`` (a buffer: the mapping, or bytes)."""
    _, frames, first, seq = BLOCK_HEADER.unpack_from(ring, offset)
    unpack = FRAME_HEADER.unpack_from
    at, octets, cut = offset + first, 0, 0
    for _ in range(frames):
        step, snaplen, length = unpack(ring, at)
        octets += snaplen
        cut += snaplen != length
        at += step
    return BlockCount(frames, octets, cut, seq)


class Commit(ctypes.Structure):
    """What a worker has counted, and where it stands in its ring: every block before ``block``
    (mod the ring's size) is counted; ``block_seq`` is the sequence number of the last block
    counted (0: none; the kernel numbers blocks from 1)."""

    _fields_ = [(name, c_uint64) for name in ("frames", "bytes", "cut", "block", "block_seq")]


class Tally(ctypes.Structure):
    """A worker's counts in memory shared with the node: the latest of two commits, which a killed
    writer leaves whole (``commit[seq & 1]``; ``read()`` it)."""

    _fields_ = [("seq", c_uint64), ("commit", Commit * 2)]

    def read(self) -> Commit:
        while True:
            seq = self.seq
            latest = Commit.from_buffer_copy(self.commit[seq & 1])
            if self.seq == seq:
                return latest

    def publish(self, frames: int, octets: int, cut: int, block: int, block_seq: int) -> None:
        """Write the other copy, then make it current with one store."""
        seq = self.seq
        other = self.commit[(seq + 1) & 1]
        other.frames, other.bytes, other.cut = frames, octets, cut
        other.block, other.block_seq = block, block_seq
        self.seq = seq + 1


def set_up(sock: socket.socket, geometry: Geometry) -> mmap.mmap:
    """Make ``sock`` (not yet bound) receive into a TPACKET_V3 ring of ``geometry``; the mapping."""
    sock.setsockopt(_SOL_PACKET, _PACKET_VERSION, _TPACKET_V3)
    # struct tpacket_req3: block size and count, frame size and count (a V3 block holds frames of
    # any length; the kernel only checks that frames * frame size fill the blocks), retire timeout,
    # private area size, feature word.
    frame_size = 1 << 11
    frames = geometry.blocks * (geometry.block_size // frame_size)
    request = struct.pack(
        "=7I", geometry.block_size, geometry.blocks, frame_size, frames, geometry.retire_ms, 0, 0
    )
    sock.setsockopt(_SOL_PACKET, _PACKET_RX_RING, request)
    return mmap.mmap(sock.fileno(), geometry.size)


class Reader:
    """A worker's side of a ring: counts each block the kernel retires into ``tally``."""

    def __init__(self, sock: socket.socket, ring, geometry: Geometry, tally: Tally) -> None:
        self.sock, self.ring, self.geometry, self.tally = sock, ring, geometry, tally
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)
        latest = tally.read()
        self.block = latest.block
        self._release_counted(latest)

    def _status(self, block: int) -> int:
        offset = block * self.geometry.block_size + _BLOCK_STATUS
        return int.from_bytes(self.ring[offset : offset + 4], "little")

    def _release(self, block: int) -> None:
        offset = block * self.geometry.block_size + _BLOCK_STATUS
        self.ring[offset : offset + 4] = TP_STATUS_KERNEL.to_bytes(4, "little")

    def _release_counted(self, latest: Commit) -> None:
        """Hand back the block a dead worker counted but did not hand back, if it did that."""
        if not latest.block_seq:
            return
        before = (latest.block - 1) % self.geometry.blocks
        if self._status(before) & TP_STATUS_USER:
            _, _, _, seq = BLOCK_HEADER.unpack_from(self.ring, before * self.geometry.block_size)
            if seq == latest.block_seq:
                self._release(before)

    def read(self, timeout_ms: int) -> int:
        """Count every block retired to the worker, waiting up to ``timeout_ms`` for the first;
        the frames counted (0: none came)."""
        blocks, size = self.geometry.blocks, self.geometry.block_size
        if not self._status(self.block) & TP_STATUS_USER:
            self._poll.poll(timeout_ms)
        latest = self.tally.read()
        frames, octets, cut = latest.frames, latest.bytes, latest.cut
        counted = 0
        while self._status(self.block) & TP_STATUS_USER:
            block = walk(self.ring, self.block * size)
            frames, octets, cut = frames + block.frames, octets + block.bytes, cut + block.cut
            following = self.block + 1 if self.block + 1 < blocks else 0
            self.tally.publish(frames, octets, cut, following, block.seq)
            self._release(self.block)
            self.block = following
            counted += block.frames
        return counted
