"""Jenkins hash as Linux's include/linux/jhash.h computes it (and ``bpf/include/jhash.h``), in Python.

A control plane or a test predicts with it what a BPF program hashed: ``jhash`` of bytes (read as
little-endian words, as the kernel does on x86 and arm64), ``jhash2`` of 32-bit words and the
``jhash_1word`` / ``jhash_2words`` / ``jhash_3words`` forms (``jhash_nwords``).

Not for: hashing at speed (it is a reference, one Python operation at a time).
"""

from __future__ import annotations

import struct

MASK = 0xFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF


def _rol32(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (32 - shift))) & MASK


A, B, C = 0, 1, 2
# __jhash_mix: x -= z; x ^= rol32(z, r); z += y, for each (x, z, y, r) in turn
_MIX = [(A, C, B, 4), (B, A, C, 6), (C, B, A, 8), (A, C, B, 16), (B, A, C, 19), (C, B, A, 4)]
# __jhash_final: x ^= y; x -= rol32(y, r)
_FINAL = [(C, B, 14), (A, C, 11), (B, A, 25), (C, B, 16), (A, C, 4), (B, A, 14), (C, B, 24)]


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    s = [a, b, c]
    for x, z, y, r in _MIX:
        s[x] = ((s[x] - s[z]) & MASK) ^ _rol32(s[z], r)
        s[z] = (s[z] + s[y]) & MASK
    return s[A], s[B], s[C]


def _final(a: int, b: int, c: int) -> int:
    s = [a, b, c]
    for x, y, r in _FINAL:
        s[x] = ((s[x] ^ s[y]) - _rol32(s[y], r)) & MASK
    return s[C]


def jhash(key: bytes, initval: int) -> int:
    """``jhash(key, len(key), initval)`` on a little-endian CPU."""
    a = b = c = (JHASH_INITVAL + len(key) + initval) & MASK
    k = key
    while len(k) > 12:
        x, y, z = struct.unpack_from("<III", k)
        a, b, c = _mix((a + x) & MASK, (b + y) & MASK, (c + z) & MASK)
        k = k[12:]
    if not k:
        return c
    tail = k.ljust(12, b"\0")  # the switch's fall-through adds the missing bytes as zeros
    x, y, z = struct.unpack("<III", tail)
    return _final((a + x) & MASK, (b + y) & MASK, (c + z) & MASK)


def jhash2(words: list[int], initval: int) -> int:
    a = b = c = (JHASH_INITVAL + (len(words) << 2) + initval) & MASK
    while len(words) > 3:
        a, b, c = _mix((a + words[0]) & MASK, (b + words[1]) & MASK, (c + words[2]) & MASK)
        words = words[3:]
    if not words:
        return c
    x, y, z = [*words, 0, 0][:3]
    return _final((a + x) & MASK, (b + y) & MASK, (c + z) & MASK)


def jhash_nwords(words: list[int], initval: int) -> int:
    """jhash_1word / jhash_2words / jhash_3words."""
    iv = (initval + JHASH_INITVAL + (len(words) << 2)) & MASK
    a, b, c = [(w + iv) & MASK for w in [*words, 0, 0][:3]]
    return _final(a, b, c)
