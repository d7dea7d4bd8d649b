"""jhash.h in the kernel against a Python port of Linux include/linux/jhash.h.

The port is checked first against published values of Bob Jenkins' lookup3.c ``hashlittle()``
(which the kernel's ``jhash()`` is, on a little-endian CPU) and against the identities that tie
``jhash2()`` and ``jhash_Nwords()`` to ``jhash()``; then ``bpf/selftest/hash.bpf.c`` must agree with
it on every key length for hypothesis-drawn keys and initvals.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpf

SELFTEST = Path(bpf.__file__).parent / "selftest"
MASK = 0xFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF
TEST_BYTES = 32  # JHASH_TEST_BYTES of hash.bpf.c


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


# lookup3.c's driver5(): hashlittle() of these strings and initvals.
LOOKUP3 = [
    (b"", 0, 0xDEADBEEF),
    (b"", 0xDEADBEEF, 0xBD5B7DDE),
    (b"Four score and seven years ago", 0, 0x17770551),
    (b"Four score and seven years ago", 1, 0xCD628161),
]


@pytest.mark.parametrize("key,initval,expected", LOOKUP3)
def test_port_matches_lookup3(key, initval, expected):
    assert jhash(key, initval) == expected


@given(words=st.lists(st.integers(0, MASK), max_size=9), initval=st.integers(0, MASK))
def test_port_identities(words, initval):
    packed = struct.pack(f"<{len(words)}I", *words)
    assert jhash2(words, initval) == jhash(packed, initval), "jhash2 is jhash of LE words"
    if 1 <= len(words) <= 3:
        assert jhash_nwords(words, initval) == jhash2(words, initval)


@pytest.fixture(scope="module")
def hasher():
    with bpf.BpfObject.open(SELFTEST / "hash.bpf.c") as obj:
        yield obj.load()


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=TEST_BYTES, max_size=TEST_BYTES), initval=st.integers(0, MASK))
def test_kernel_matches_port(hasher, key, initval):
    run = hasher.programs["jhash_xdp"].test_run(struct.pack("<I", initval) + key)
    assert run.verdict is bpf.XdpAction.PASS
    got = hasher.maps["results"][0]
    words = list(struct.unpack(f"<{TEST_BYTES // 4}I", key))
    for n in range(TEST_BYTES + 1):
        assert got.bytes[n] == jhash(key[:n], initval), f"jhash of {n} bytes of {key.hex()}"
    for n in range(len(words) + 1):
        assert got.words[n] == jhash2(words[:n], initval), f"jhash2 of {n} words"
    assert got.three_words == jhash_nwords(words[:3], initval)
    assert got.two_words == jhash_nwords(words[:2], initval)
    assert got.one_word == jhash_nwords(words[:1], initval)


def test_kernel_lookup3_value(hasher):
    key = b"Four score and seven years ago".ljust(TEST_BYTES, b"\0")
    hasher.programs["jhash_xdp"].test_run(struct.pack("<I", 1) + key)
    assert hasher.maps["results"][0].bytes[30] == 0xCD628161
