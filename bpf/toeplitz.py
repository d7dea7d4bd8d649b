"""Toeplitz hashing as NICs do it for RSS (Microsoft RSS specification), and its BPF lookup table.

``toeplitz_hash`` is the reference: a loop over the input bits, XORing the 32-bit window of the key
that starts at each set bit. ``build_table`` folds the key into the per-byte table that
``bpf/include/toeplitz.h`` reads (``struct toeplitz_table``: one lookup per input byte instead of a
loop over bits); ``fill_table`` writes it into the ctypes value of a map whose layout comes from BTF.
``rss_input`` lays out addresses and ports in the order NICs hash them. ``MICROSOFT_VECTORS``: the
specification's test flows and their hashes, for the tests of every implementation.

Not for: choosing RSS queues or programming a NIC's key (that is ethtool's job).
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

KEY_LEN = 40
MAX_INPUT = 36  # IPv6 source and destination addresses, source and destination ports

# The key of the Microsoft RSS specification's verification suite, the default of many drivers.
MICROSOFT_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)


class RssVector(NamedTuple):
    """A flow of the Microsoft RSS verification suite and its hashes under ``MICROSOFT_KEY``."""

    src: str
    sport: int
    dst: str
    dport: int
    hash_l3: int  # over the addresses
    hash_l4: int  # over the addresses and the ports


# Microsoft, "Verifying the RSS Hash Calculation" (Windows driver documentation, RSS),
# https://learn.microsoft.com/windows-hardware/drivers/network/verifying-the-rss-hash-calculation
MICROSOFT_VECTORS = (
    RssVector("66.9.149.187", 2794, "161.142.100.80", 1766, 0x323E8FC2, 0x51CCC178),
    RssVector("199.92.111.2", 14230, "65.69.140.83", 4739, 0xD718262A, 0xC626B0EA),
    RssVector("24.19.198.95", 12898, "12.22.207.184", 38024, 0xD2D0A5DE, 0x5C2B394A),
    RssVector("38.27.205.30", 48228, "209.142.163.6", 2217, 0x82989176, 0xAFC7327F),
    RssVector("153.39.163.191", 44251, "202.188.127.2", 1303, 0x5D1809C5, 0x10E828A2),
    RssVector("3ffe:2501:200:1fff::7", 2794, "3ffe:2501:200:3::1", 1766, 0x2CC18CD5, 0x40207D3D),
    RssVector("3ffe:501:8::260:97ff:fe40:efab", 14230, "ff02::1", 4739, 0x0F0C461C, 0xDDE51BBF),
    RssVector(
        "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
        44251,
        "fe80::200:f8ff:fe21:67cf",
        38024,
        0x4B61E985,
        0x02D1FEEF,
    ),
)

# 0x6d5a repeated: the hash of (a, b) equals the hash of (b, a) for addresses and for ports (Woo and
# Park, "Scalable TCP Session Monitoring with Symmetric Receive-side Scaling", 2012), so both
# directions of a connection land on the same queue.
SYMMETRIC_KEY = bytes.fromhex("6d5a") * (KEY_LEN // 2)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address | str


def _check_key(key: bytes) -> int:
    if len(key) != KEY_LEN:
        raise ValueError(f"Toeplitz key: {len(key)} bytes given, {KEY_LEN} expected")
    return int.from_bytes(key, "big")


def _window(key_bits: int, bit: int) -> int:
    """The 32 key bits starting at input bit ``bit`` (bit 0: the key's most significant bit)."""
    return (key_bits >> (KEY_LEN * 8 - 32 - bit)) & 0xFFFFFFFF


def toeplitz_hash(key: bytes, data: bytes) -> int:
    """The 32-bit Toeplitz hash of ``data`` under the 40-byte ``key``, one input bit at a time."""
    key_bits = _check_key(key)
    if len(data) > MAX_INPUT:
        raise ValueError(
            f"Toeplitz input: {len(data)} bytes, at most {MAX_INPUT} with a 40-byte key"
        )
    result = 0
    for i, byte in enumerate(data):
        for j in range(8):
            if byte & (0x80 >> j):
                result ^= _window(key_bits, i * 8 + j)
    return result


def build_table(key: bytes) -> list[list[int]]:
    """``t[i][b]``: the hash contribution of byte value ``b`` at input position ``i``."""
    key_bits = _check_key(key)
    table = []
    for i in range(MAX_INPUT):
        windows = [_window(key_bits, i * 8 + j) for j in range(8)]
        row = [0] * 256
        for b in range(1, 256):
            low = b & -b  # lowest set bit: b's row entry is that of b without it, XOR its window
            row[b] = row[b ^ low] ^ windows[8 - low.bit_length()]
        table.append(row)
    return table


def fill_table(value: object, key: bytes) -> object:
    """Write ``build_table(key)`` into ``value.t``, a ``struct toeplitz_table`` read from BTF."""
    for i, row in enumerate(build_table(key)):
        value.t[i][:] = row
    return value


def rss_input(
    src: Address, dst: Address, sport: int | None = None, dport: int | None = None
) -> bytes:
    """The hash input for a flow: source, destination address, then ports when given, big endian."""
    src_addr, dst_addr = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if src_addr.version != dst_addr.version:
        raise ValueError(f"RSS input: {src} and {dst} are not of one IP version")
    data = src_addr.packed + dst_addr.packed
    if (sport is None) != (dport is None):
        raise ValueError("RSS input: give both ports or neither")
    if sport is not None:
        data += sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return data
