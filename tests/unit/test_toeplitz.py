"""Toeplitz/RSS: bpf/toeplitz.py and the per-byte table of bpf/include/toeplitz.h in the kernel.

The vectors are those of Microsoft's "Verifying the RSS Hash Calculation" (the key is
``MICROSOFT_KEY``): each flow's hash over addresses only and over addresses and ports. The kernel
side hashes the flow that ``parse_flow()`` extracted from a TCP packet, through the table the
control plane built (``bpf/selftest/parse.bpf.c`` leaves ``rss`` and ``rss_l3`` in its results).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

import bpf
from bpf.toeplitz import (
    MICROSOFT_KEY,
    MICROSOFT_VECTORS,
    SYMMETRIC_KEY,
    build_table,
    fill_table,
    rss_input,
    toeplitz_hash,
)

SELFTEST = Path(bpf.__file__).parent / "selftest"


@pytest.mark.parametrize("src,sport,dst,dport,l3,l4", MICROSOFT_VECTORS)
def test_reference_reproduces_microsoft_vectors(src, sport, dst, dport, l3, l4):
    assert toeplitz_hash(MICROSOFT_KEY, rss_input(src, dst)) == l3
    assert toeplitz_hash(MICROSOFT_KEY, rss_input(src, dst, sport, dport)) == l4


def table_hash(table: list[list[int]], data: bytes) -> int:
    h = 0
    for i, byte in enumerate(data):
        h ^= table[i][byte]
    return h


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=40, max_size=40), data=st.binary(max_size=36))
def test_table_equals_bit_loop(key, data):
    assert table_hash(build_table(key), data) == toeplitz_hash(key, data)


def test_symmetric_key_hashes_both_directions_alike():
    forward = rss_input("192.0.2.1", "198.51.100.7", 40000, 443)
    backward = rss_input("198.51.100.7", "192.0.2.1", 443, 40000)
    assert toeplitz_hash(SYMMETRIC_KEY, forward) == toeplitz_hash(SYMMETRIC_KEY, backward)
    assert toeplitz_hash(MICROSOFT_KEY, forward) != toeplitz_hash(MICROSOFT_KEY, backward)


def test_bad_key_and_input_are_refused():
    with pytest.raises(ValueError, match="40 expected"):
        toeplitz_hash(b"short", b"")
    with pytest.raises(ValueError, match="one IP version"):
        rss_input("192.0.2.1", "2001:db8::1")


@pytest.fixture(scope="module")
def parser():
    with bpf.BpfObject.open(SELFTEST / "parse.bpf.c") as obj:
        obj.load()
        table = obj.maps["rss_table"]
        table[0] = fill_table(table.value_type(), MICROSOFT_KEY)
        yield obj


def kernel_hashes(obj, packet) -> tuple[int, int]:
    obj.programs["parse_xdp"].test_run(packet)
    result = obj.maps["results"][0]
    assert result.status == 0, f"parse status {result.status} for {packet!r}"
    return result.rss_l3, result.rss


@pytest.mark.parametrize("src,sport,dst,dport,l3,l4", MICROSOFT_VECTORS)
def test_kernel_table_reproduces_microsoft_vectors(parser, src, sport, dst, dport, l3, l4):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    packet = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / TCP(sport=sport, dport=dport)
    )
    assert kernel_hashes(parser, packet) == (l3, l4), "kernel (addresses, with ports)"


def test_kernel_hashes_fragments_without_ports(parser):
    src, sport, dst, dport, l3, _ = MICROSOFT_VECTORS[0]
    packet = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=dst, flags="MF")
        / UDP(sport=sport, dport=dport)
    )
    assert kernel_hashes(parser, packet)[1] != l3, "a first fragment still has its ports"
    later = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=dst, frag=100, proto=17)
        / b"12345678"
    )
    assert kernel_hashes(parser, later) == (l3, l3), "a later fragment hashes addresses only"
