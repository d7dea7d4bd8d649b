"""jhash.h in the kernel against the Python port of Linux include/linux/jhash.h (``bpf.jhash``).

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
from bpf.jhash import MASK, jhash, jhash2, jhash_nwords

SELFTEST = Path(bpf.__file__).parent / "selftest"
TEST_BYTES = 32  # JHASH_TEST_BYTES of hash.bpf.c


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
