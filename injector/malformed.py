"""Malformed and unusual variants of a template, each with the reason it is malformed.

A data plane's parser must drop or pass these without reading out of bounds; tests feed every
variant to ``BPF_PROG_TEST_RUN``. Variants are raw bytes (scapy would "repair" many of them on
build), named so a failing test says which one broke: ``truncated:UDP:4``, ``ipv4:bad_checksum``.

Checksums and lengths a variant does not break on purpose are left correct, so that each variant is
wrong in exactly one way. This module does not vary fields across packets (``injector.spec`` does);
a variant can still be a ``TrafficSpec`` template, sent at its own length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw, raw

from injector.program import ChecksumFix, ChecksumKind, checksum_of
from injector.templates import layers_with_offsets


@dataclass(frozen=True)
class Variant:
    name: str
    reason: str
    packet: bytes


def _header_length(layer: Packet) -> int:
    return len(raw(layer)) - len(raw(layer.payload))


def truncated_at(pkt: Packet, layer_index: int, keep: int = 0) -> Variant:
    """``pkt`` cut ``keep`` bytes into its ``layer_index``-th header (0: the header is missing)."""
    layers = layers_with_offsets(pkt)
    layer, offset = layers[layer_index]
    name = type(layer).__name__
    nth = sum(type(other) is type(layer) for other, _ in layers[:layer_index])
    name = f"{name}:{nth}" if nth else name
    header = _header_length(layer)
    if not 0 <= keep < header:
        raise ValueError(f"keep={keep} is not inside the {header}-byte {name} header")
    what = f"{name} header missing" if keep == 0 else f"{keep} of the {header} bytes of {name}"
    return Variant(
        f"truncated:{name}:{keep}", f"frame ends after {what}", raw(pkt)[: offset + keep]
    )


def truncations(pkt: Packet) -> Iterator[Variant]:
    """For every header after the first: the frame ending before it and in its middle."""
    layers = layers_with_offsets(pkt)
    for index in range(1, len(layers)):
        header = _header_length(layers[index][0])
        yield truncated_at(pkt, index, 0)
        if header > 1:
            yield truncated_at(pkt, index, header // 2)


def _first(pkt: Packet, cls: type[Packet]) -> tuple[Packet, int] | None:
    for layer, offset in layers_with_offsets(pkt):
        if type(layer) is cls:
            return layer, offset
    return None


def _fix_ipv4(buf: bytearray, ip_offset: int) -> None:
    fix = ChecksumFix(ChecksumKind.IPV4_HEADER, ip_offset, ip_offset, 4)
    buf[fix.csum_offset : fix.csum_offset + 2] = checksum_of(buf, fix).to_bytes(2, "big")


def _ipv4_variants(pkt: Packet) -> Iterator[Variant]:
    found = _first(pkt, IP)
    if found is None:
        return
    ip, o = found
    frame = raw(pkt)
    ip_len = ip.len

    def edited(pos: int, value: bytes) -> bytes:
        buf = bytearray(frame)
        buf[pos : pos + len(value)] = value
        _fix_ipv4(buf, o)
        return bytes(buf)

    yield Variant(
        "ipv4:ihl_below_5", "IPv4 ihl 4 (16 bytes) is below the minimum 5", edited(o, b"\x44")
    )
    yield Variant(
        "ipv4:ihl_beyond_packet",
        "IPv4 ihl 15 (60 bytes) claims options the packet does not have",
        edited(o, b"\x4f"),
    )
    yield Variant(
        "ipv4:total_length_beyond_frame",
        f"IPv4 total length {ip_len + 100} exceeds the {ip_len} bytes present",
        edited(o + 2, (ip_len + 100).to_bytes(2, "big")),
    )
    yield Variant(
        "ipv4:total_length_below_header",
        "IPv4 total length 19 is shorter than the 20-byte header",
        edited(o + 2, (19).to_bytes(2, "big")),
    )
    yield Variant(
        "ipv4:version_6_in_ipv4",
        "IPv4 header with version 6 (Ethernet type says IPv4)",
        edited(o, bytes([0x60 | (frame[o] & 0x0F)])),
    )
    bad = bytearray(frame)
    bad[o + 10 : o + 12] = ((ip.chksum + 1) & 0xFFFF).to_bytes(2, "big")
    yield Variant("ipv4:bad_checksum", "IPv4 header checksum off by one", bytes(bad))

    with_options = pkt.copy()
    opt_ip = with_options.getlayer(IP)
    opt_ip.options = [IPOption_Router_Alert()]
    del opt_ip.ihl, opt_ip.len, opt_ip.chksum
    yield Variant(
        "ipv4:options",
        "IPv4 with a Router Alert option (ihl 6): legal, rarely seen",
        raw(with_options),
    )

    l4 = ip.payload
    l4_bytes = raw(l4)
    if len(l4_bytes) > 8:
        first = pkt.copy()
        first_ip = first.getlayer(IP)
        first_ip.flags = "MF"
        first_ip.remove_payload()
        first_ip.add_payload(Raw(l4_bytes[:8]))
        del first_ip.len, first_ip.chksum
        yield Variant(
            "ipv4:first_fragment",
            "first fragment (MF, offset 0) holding only the first 8 bytes of the L4 header",
            raw(first),
        )
    later = pkt.copy()
    later_ip = later.getlayer(IP)
    later_ip.frag = 1
    later_ip.flags = 0
    later_ip.remove_payload()
    later_ip.add_payload(Raw(l4_bytes[8:] or b"\x00" * 8))
    del later_ip.len, later_ip.chksum
    yield Variant(
        "ipv4:non_first_fragment",
        "last fragment at offset 8 bytes: no L4 header, ports must not be read",
        raw(later),
    )


def _l4_variants(pkt: Packet) -> Iterator[Variant]:
    frame = raw(pkt)
    for cls, csum_at in ((UDP, 6), (TCP, 16), (ICMP, 2)):
        found = _first(pkt, cls)
        if found is None:
            continue
        layer, o = found
        name = cls.__name__
        bad = bytearray(frame)
        bad[o + csum_at : o + csum_at + 2] = ((layer.chksum + 1) & 0xFFFF).to_bytes(2, "big")
        yield Variant(f"{name.lower()}:bad_checksum", f"{name} checksum off by one", bytes(bad))
    found = _first(pkt, UDP)
    if found is not None:
        udp, o = found
        for value, why in (
            (7, "below the 8-byte header"),
            (udp.len + 100, "beyond the IP payload"),
        ):
            buf = bytearray(frame)
            buf[o + 4 : o + 6] = value.to_bytes(2, "big")
            yield Variant(f"udp:length_{value}", f"UDP length {value} is {why}", bytes(buf))
    found = _first(pkt, TCP)
    if found is not None:
        _tcp, o = found
        buf = bytearray(frame)
        buf[o + 12] = (4 << 4) | (buf[o + 12] & 0x0F)
        yield Variant(
            "tcp:data_offset_4", "TCP data offset 4 (16 bytes) is below the minimum 5", bytes(buf)
        )


def _ipv6_variants(pkt: Packet) -> Iterator[Variant]:
    found = _first(pkt, IPv6)
    if found is None:
        return
    ip6, o = found
    buf = bytearray(raw(pkt))
    buf[o + 4 : o + 6] = (ip6.plen + 100).to_bytes(2, "big")
    yield Variant(
        "ipv6:payload_length_beyond_frame",
        f"IPv6 payload length {ip6.plen + 100} exceeds the {ip6.plen} bytes present",
        bytes(buf),
    )


def variants(pkt: Packet) -> list[Variant]:
    """Every malformed or unusual variant that applies to ``pkt``, each named and explained."""
    return [
        *truncations(pkt),
        *_ipv4_variants(pkt),
        *_ipv6_variants(pkt),
        *_l4_variants(pkt),
    ]


def variant(pkt: Packet, name: str) -> Variant:
    """The variant of ``pkt`` called ``name``; the error lists the names that exist."""
    found = {v.name: v for v in variants(pkt)}
    if name not in found:
        raise KeyError(f"no malformed variant {name!r} of {pkt.summary()}; known: {sorted(found)}")
    return found[name]
