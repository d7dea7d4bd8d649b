"""The reference model of PF_PACKET receive packet steering (``pfrps.bpf.c``), in plain Python.

MAC in, worker out: the seed's three hashes bit-exact (``mac_hash``, ``mac_jhash``, ``jhash_oaat``),
``worker_of`` (``hash % workers``, what the data plane does) and ``seed_worker_of`` (the seed's
``hash & (workers - 1)``, kept to reproduce its figures: right for powers of two only). The seed's
injector is here too, so that a test sends the very MACs whose spread the seed measured:
``SeedRandom`` is glibc's ``rand_r`` and ``seed_macs`` the walk of ``inject/main.c``. ``seed_line``
prints counts as the seed's node does.

Not for: talking to the kernel (``bpf.pfrps.pfrps``), or speed.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable, Iterable, Iterator

from bpf.jhash import JHASH_INITVAL, MASK, jhash_nwords

ETH_ALEN = 6
ETH_P_PPP_DISC, ETH_P_PPP_SES = 0x8863, 0x8864
SEED_SOURCE_MAC = bytes.fromhex("020001010101")  # inject/main.c's first source MAC


class HashAlg(enum.IntEnum):
    """The seed's ``-a`` numbers."""

    MAC_HASH = 0
    MAC_JHASH = 1
    JHASH_OAAT = 2


class MacSide(enum.Enum):
    SRC = "src"  # the seed: frames from subscribers
    DST = "dst"  # GTP-Guard: frames towards subscribers


class Protocols(enum.Flag):
    DISCOVERY = 1  # 0x8863
    SESSION = 2  # 0x8864
    BOTH = DISCOVERY | SESSION

    @property
    def ethertype(self) -> int:
        """What a socket binds to: one PPPoE ethertype, or ETH_P_ALL (3) for both."""
        return {Protocols.DISCOVERY: ETH_P_PPP_DISC, Protocols.SESSION: ETH_P_PPP_SES}.get(self, 3)


def mac_hash(mac: bytes) -> int:
    """``h = (h << 8) | byte`` over the six bytes, in a u32: the last four bytes, big endian."""
    hash_ = 0
    for byte in mac:
        hash_ = ((hash_ << 8) | byte) & MASK
    return hash_


def mac_jhash(mac: bytes) -> int:
    """``jhash_2words(*(u32 *)mac, *(u16 *)(mac + 4), 0)`` on a little-endian CPU."""
    high, low = struct.unpack("<IH", mac)
    return jhash_nwords([high, low], 0)


def jhash_oaat(mac: bytes) -> int:
    """Bob Jenkins' one-at-a-time hash, started at 0xdeadbeef as the seed does."""
    hash_ = JHASH_INITVAL
    for byte in mac:
        hash_ = (hash_ + byte) & MASK
        hash_ = (hash_ + (hash_ << 10)) & MASK
        hash_ ^= hash_ >> 6
    hash_ = (hash_ + (hash_ << 3)) & MASK
    hash_ ^= hash_ >> 11
    return (hash_ + (hash_ << 15)) & MASK


HASHES: dict[HashAlg, Callable[[bytes], int]] = {
    HashAlg.MAC_HASH: mac_hash,
    HashAlg.MAC_JHASH: mac_jhash,
    HashAlg.JHASH_OAAT: jhash_oaat,
}


def worker_of(mac: bytes, workers: int, alg: HashAlg) -> int:
    """The worker the data plane gives ``mac`` to (filters and fanout-ebpf alike)."""
    return HASHES[alg](mac) % workers


def seed_worker_of(mac: bytes, workers: int, alg: HashAlg) -> int:
    """The worker the seed's filter gives ``mac`` to: ``hash & (workers - 1)``. For a count that is
    not a power of two some workers never match (6 workers: 2 and 3 get nothing)."""
    return HASHES[alg](mac) & (workers - 1)


def seed_frame(src: bytes, dst: bytes, ethertype: int = ETH_P_PPP_DISC) -> bytes:
    """The seed injector's 148-byte frame: PPPoE ver/type 0x11, code 0, session 0xcafe, length 128,
    then 128 bytes of 0xff."""
    header = bytes([0x11, 0x00, 0xCA, 0xFE, 0x00, 0x80])
    return dst + src + ethertype.to_bytes(2, "big") + header + b"\xff" * 128


def frame_mac(frame: bytes, side: MacSide) -> bytes:
    start = 0 if side is MacSide.DST else ETH_ALEN
    return frame[start : start + ETH_ALEN]


class SeedRandom:
    """glibc's ``rand_r``: three steps of the ANSI C LCG, 11 + 10 + 10 bits of their high halves."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK

    def rand_r(self) -> int:
        state = self.state
        state = (state * 1103515245 + 12345) & MASK
        result = (state >> 16) % 2048
        state = (state * 1103515245 + 12345) & MASK
        result = (result << 10) ^ ((state >> 16) % 1024)
        state = (state * 1103515245 + 12345) & MASK
        result = (result << 10) ^ ((state >> 16) % 1024)
        self.state = state
        return result

    def poor_prng(self) -> int:
        """inject/main.c's ``poor_prng``: the low bytes of four rand_r calls."""
        return sum((self.rand_r() & 0xFF) << shift for shift in (0, 8, 16, 24))


def seed_macs(count: int, seed: int) -> Iterator[bytes]:
    """The source MACs of ``inject -p COUNT`` run with ``rand_r`` seeded ``seed`` (the seed used
    ``time(NULL)``): each frame adds a ``poor_prng()`` to bytes 1-5 of the previous MAC, a u8 keeping
    the low byte."""
    rng = SeedRandom(seed)
    mac = bytearray(SEED_SOURCE_MAC)
    for _ in range(count):
        for i in range(1, ETH_ALEN):
            mac[i] = (mac[i] + rng.poor_prng()) & 0xFF
        yield bytes(mac)


def spread(
    macs: Iterable[bytes],
    workers: int,
    alg: HashAlg,
    place: Callable[[bytes, int, HashAlg], int] = worker_of,
) -> list[int]:
    """Frames per worker, each MAC placed by ``place``."""
    counts = [0] * workers
    for mac in macs:
        counts[place(mac, workers, alg)] += 1
    return counts


def std_dev(counts: list[int]) -> float:
    """The seed's ``std_deviation()``: the population standard deviation of the counts."""
    mean = sum(counts) / len(counts)
    return math.sqrt(sum((mean - c) ** 2 for c in counts) / len(counts))


def seed_line(counts: list[int]) -> str:
    """The seed's stats line, ``#0:0232 #1:0237 ... (total:1922 std_dev:9.959292)``."""
    workers = " ".join(f"#{i}:{count:04d}" for i, count in enumerate(counts))
    return f"{workers} (total:{sum(counts)} std_dev:{std_dev(counts):f})"


def chi_square(counts: list[int]) -> float:
    """Pearson's statistic of the counts against an even spread (``len(counts) - 1`` degrees of
    freedom)."""
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)
