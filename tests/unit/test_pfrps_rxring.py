"""The workers' TPACKET_V3 ring (``bpf/pfrps/rxring.py``) on rings crafted in memory: blocks laid out
as the kernel lays them (``struct tpacket_block_desc``, ``struct tpacket3_hdr`` frames chained by
``tp_next_offset``), no socket needed but one to poll.

- A block's walk counts its frames, the bytes the ring holds of them (``tp_snaplen``) and the frames
  held shorter than on the wire (``tp_snaplen < tp_len``), whatever their lengths.
- A reader counts every block the kernel gave it, in order from its position, wrapping at the
  ring's end, hands each back (``TP_STATUS_KERNEL``) and stops at the first block still the
  kernel's.
- A reader started after a worker died goes on from its last commit: the block the dead worker
  counted but did not hand back is handed back and not counted again, a block the kernel filled
  again since (another sequence number) is read in its turn, and a commit the dead worker was
  writing when it died does not count. A worker killed (an exception, here) just before its commit
  or just after it, before the hand-back, leaves the next one to count each frame once.
- The walk's cost per frame, the figure that decides Python over C (rxring's docstring).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from bpf.pfrps import rxring
from bpf.pfrps.rxring import TP_STATUS_KERNEL, TP_STATUS_USER, BlockCount, Geometry, Tally

GEOMETRY = Geometry(block_size=4096, blocks=4)
FIRST = 48  # offset_to_first_pkt: the kernel's BLK_PLUS_PRIV(0), the block header aligned to 8
HDRLEN = 82  # tp_mac: where a frame's bytes begin after its tpacket3_hdr and sockaddr_ll


def frame_step(snaplen: int) -> int:
    return (HDRLEN + snaplen + 15) & ~15  # TPACKET_ALIGN


def put_block(
    ring: bytearray,
    block: int,
    frames: list[tuple[int, int]],
    seq: int,
    status: int = TP_STATUS_USER,
    geometry: Geometry = GEOMETRY,
) -> None:
    """Block ``block`` of ``ring`` holding ``frames`` (snaplen, len), sequence number ``seq``."""
    base = block * geometry.block_size
    at = base + FIRST
    for i, (snaplen, length) in enumerate(frames):
        step = frame_step(snaplen) if i + 1 < len(frames) else 0
        struct.pack_into("=IIIIIIHH", ring, at, step, 0, 0, snaplen, length, 1, HDRLEN, 96)
        at += frame_step(snaplen)
    assert at <= base + geometry.block_size, "the frames do not fit the block"
    # version, offset_to_priv, block_status, num_pkts, offset_to_first_pkt, blk_len, seq_num
    struct.pack_into("=IIIIIIQ", ring, base, 3, 0, status, len(frames), FIRST, at - base, seq)


def status(ring: bytearray, block: int) -> int:
    return struct.unpack_from("=I", ring, block * GEOMETRY.block_size + 8)[0]


@pytest.fixture
def polled():
    """A socket for the reader to poll: nothing ever arrives on it."""
    mine, theirs = socket.socketpair()
    yield mine
    mine.close()
    theirs.close()


def reader(ring: bytearray, tally: Tally, sock: socket.socket) -> rxring.Reader:
    return rxring.Reader(sock, ring, GEOMETRY, tally)


def test_walk_counts_frames_bytes_and_cut_frames():
    ring = bytearray(GEOMETRY.size)
    frames = [(148, 148), (60, 60), (1, 148), (1514, 1514), (64, 1000)]
    put_block(ring, 1, frames, seq=7)
    got = rxring.walk(ring, GEOMETRY.block_size)
    assert got == BlockCount(5, 148 + 60 + 1 + 1514 + 64, cut=2, seq=7)


def test_walk_of_an_empty_block():
    ring = bytearray(GEOMETRY.size)
    put_block(ring, 0, [], seq=1)
    assert rxring.walk(ring, 0) == BlockCount(0, 0, 0, 1)


def test_reader_counts_blocks_in_order_and_wraps(polled):
    ring, tally = bytearray(GEOMETRY.size), Tally()
    for block, seq in ((0, 1), (1, 2), (2, 3)):
        put_block(ring, block, [(148, 148)] * (block + 1), seq)
    out = reader(ring, tally, polled)
    assert out.read(0) == 6
    latest = tally.read()
    assert (latest.frames, latest.bytes, latest.cut) == (6, 6 * 148, 0)
    assert (latest.block, latest.block_seq) == (3, 3)
    assert [status(ring, b) for b in range(4)] == [TP_STATUS_KERNEL] * 4
    assert out.read(0) == 0, "block 3 is still the kernel's"
    # The kernel goes on: block 3, then 0 again (the ring wraps).
    put_block(ring, 3, [(148, 148)], seq=4)
    put_block(ring, 0, [(60, 60), (1, 148)], seq=5)
    assert out.read(0) == 3
    latest = tally.read()
    assert (latest.frames, latest.bytes, latest.cut, latest.block) == (9, 7 * 148 + 61, 1, 1)


def test_a_block_counted_but_not_handed_back_is_handed_back_uncounted(polled):
    """The dead worker committed block 1 (block 2 next, block 1's sequence 2) and died before it
    set block 1's status back: block 1 is still the worker's, with sequence 2."""
    ring, tally = bytearray(GEOMETRY.size), Tally()
    put_block(ring, 0, [(148, 148)] * 2, seq=1, status=TP_STATUS_KERNEL)
    put_block(ring, 1, [(148, 148)] * 3, seq=2)
    put_block(ring, 2, [(148, 148)] * 4, seq=3)
    tally.publish(5, 5 * 148, 0, block=2, block_seq=2)
    out = reader(ring, tally, polled)
    assert status(ring, 1) == TP_STATUS_KERNEL, "the counted block was not handed back"
    assert out.read(0) == 4
    assert (tally.read().frames, tally.read().block) == (9, 3)


def test_a_block_filled_again_after_a_wrap_is_read_in_its_turn(polled):
    """Block 1 was counted and handed back; the kernel went round the ring and filled it again
    (sequence 6) before the new worker started at block 2: it is not the counted block."""
    ring, tally = bytearray(GEOMETRY.size), Tally()
    put_block(ring, 2, [(148, 148)], seq=3)
    put_block(ring, 3, [(148, 148)], seq=4)
    put_block(ring, 0, [(148, 148)], seq=5)
    put_block(ring, 1, [(148, 148)] * 2, seq=6)
    tally.publish(10, 10 * 148, 0, block=2, block_seq=2)
    out = reader(ring, tally, polled)
    assert status(ring, 1) == TP_STATUS_USER, "a block with new frames was handed back unread"
    assert out.read(0) == 5
    assert (tally.read().frames, tally.read().block, tally.read().block_seq) == (15, 2, 6)


class Killed(BaseException):
    """A worker's death at a chosen point of its loop."""


def test_killed_before_its_commit_the_block_is_read_again(polled, monkeypatch):
    """Killed while committing block 1: the block is still the worker's, so the next worker,
    going on from the last whole commit, reads it again and counts it once."""
    ring, tally = bytearray(GEOMETRY.size), Tally()
    put_block(ring, 0, [(148, 148)], seq=1)
    put_block(ring, 1, [(148, 148)] * 2, seq=2)
    publish = Tally.publish

    def die_at_the_second(self, *args, **kwargs):
        if self.seq == 1:
            raise Killed
        publish(self, *args, **kwargs)

    monkeypatch.setattr(Tally, "publish", die_at_the_second)
    with pytest.raises(Killed):
        reader(ring, tally, polled).read(0)
    monkeypatch.setattr(Tally, "publish", publish)
    assert status(ring, 1) == TP_STATUS_USER, "a block was handed back before its commit"
    assert reader(ring, tally, polled).read(0) == 2
    assert (tally.read().frames, tally.read().block) == (3, 2)


def test_killed_after_its_commit_the_block_is_handed_back_uncounted(polled, monkeypatch):
    """Killed between committing block 0 and handing it back: the next worker hands it back and
    counts only block 1."""
    ring, tally = bytearray(GEOMETRY.size), Tally()
    put_block(ring, 0, [(148, 148)] * 3, seq=1)
    put_block(ring, 1, [(148, 148)], seq=2)

    def die(self, block):
        raise Killed

    release = rxring.Reader._release
    monkeypatch.setattr(rxring.Reader, "_release", die)
    with pytest.raises(Killed):
        reader(ring, tally, polled).read(0)
    monkeypatch.setattr(rxring.Reader, "_release", release)
    assert status(ring, 0) == TP_STATUS_USER and tally.read().frames == 3
    assert reader(ring, tally, polled).read(0) == 1
    assert status(ring, 0) == status(ring, 1) == TP_STATUS_KERNEL
    assert (tally.read().frames, tally.read().block) == (4, 2)


def test_a_fresh_reader_hands_back_nothing(polled):
    ring, tally = bytearray(GEOMETRY.size), Tally()
    put_block(ring, 3, [(148, 148)], seq=1)  # not how the kernel starts, but no commit names it
    reader(ring, tally, polled)
    assert status(ring, 3) == TP_STATUS_USER


def test_a_commit_half_written_does_not_count():
    tally = Tally()
    tally.publish(10, 1480, 0, block=1, block_seq=1)
    # Killed while writing the next commit: the other copy is half new, the sequence not moved.
    half = tally.commit[(tally.seq + 1) & 1]
    half.frames, half.bytes = 99, 99
    latest = tally.read()
    assert (latest.frames, latest.bytes, latest.block, latest.block_seq) == (10, 1480, 1, 1)


def test_geometry_for_a_size():
    assert Geometry.for_bytes(4 << 20) == Geometry(1 << 14, 256)
    small = Geometry.for_bytes(96 << 10)
    assert small.block_size % 4096 == 0 and small.blocks >= 4 and small.size <= 96 << 10


def test_walk_cost_per_frame():
    """About 0.3 us a frame on a 2 vCPU Intel Xeon Firecracker guest: a worker walks ~3 Mpps."""
    geometry = Geometry(1 << 16, 1)
    ring = bytearray(geometry.size)
    put_block(ring, 0, [(148, 148)] * 270, seq=1, geometry=geometry)
    rounds = 500
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(rounds):
            rxring.walk(ring, 0)
        best = min(best, (time.perf_counter() - started) / rounds / 270)
    print(f"walk: {best * 1e9:.0f} ns a frame")
    assert best < 5e-6, f"{best * 1e9:.0f} ns a frame: the Python walk would cap a worker"
