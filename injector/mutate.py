"""A structure-aware mutator of valid frames: what the fuzz campaigns feed each data plane.

``injector.malformed`` makes every single-fault variant of a template; this module makes random
combinations, the shapes a parser meets in the wild and a hand-written list misses: VLAN, QinQ and
PPPoE session headers inserted under the IP packet, IPv4 options, IPv6 extension chains, fragments,
lengths that disagree with the frame (often with Ethernet padding that makes the frame long enough
for what a length claims), then byte damage: flipped bits, a byte set to 0x00 or 0xff, truncation,
extension. Every mutant carries the names of its mutations, so a disagreement says what was done.

Mutations work on bytes at offsets found once per template (scapy builds the templates, not the
mutants: a fuzz run makes 10^5 frames), from the inside out, so no mutation moves a header a later
one needs. The IPv4 header checksum is recomputed after each structural change: the frame is wrong
only in the ways its name says. The same seed gives the same mutants.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, raw
from scapy.utils import checksum

from injector.templates import layers_with_offsets

ETH_HLEN = 14
MIN_FRAME = ETH_HLEN  # BPF_PROG_TEST_RUN refuses anything shorter
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PPP_IP, PPP_IPV6 = 0x0021, 0x0057
IPV6_EXT = (0, 43, 60, 51)  # hop-by-hop, routing, destination options, AH
IPPROTO_FRAGMENT = 44


@dataclass(frozen=True)
class Mutant:
    name: str  # the template's name, then each mutation: "tcp6+ext:0,60+vlan+flip:37"
    frame: bytes


@dataclass(frozen=True)
class Template:
    name: str
    frame: bytes
    l3: int  # offset of the (outermost) IP header; -1 when the template is not IP
    l4: int  # offset of the TCP or UDP header after it; -1 when there is none
    l4_kind: str  # "tcp", "udp" or ""

    @classmethod
    def of(cls, name: str, pkt: Packet) -> Template:
        l3 = l4 = -1
        kind = ""
        for layer, offset in layers_with_offsets(pkt):
            if isinstance(layer, IP | IPv6) and l3 < 0:
                l3 = offset
            elif isinstance(layer, TCP | UDP) and l3 >= 0 and l4 < 0:
                l4, kind = offset, "tcp" if isinstance(layer, TCP) else "udp"
        return cls(name, raw(pkt), l3, l4, kind)


def _u16(buf: bytearray, at: int) -> int:
    return int.from_bytes(buf[at : at + 2], "big")


def _put16(buf: bytearray, at: int, value: int) -> None:
    buf[at : at + 2] = (value & 0xFFFF).to_bytes(2, "big")


def _ipv4_checksum(buf: bytearray, l3: int) -> None:
    ihl = (buf[l3] & 0x0F) * 4
    if ihl < 20 or l3 + ihl > len(buf):
        return
    _put16(buf, l3 + 10, 0)
    _put16(buf, l3 + 10, checksum(bytes(buf[l3 : l3 + ihl])))


class Mutator:
    """Mutants of ``templates`` (name -> a valid scapy packet), reproducible from ``seed``."""

    def __init__(self, templates: dict[str, Packet], seed: int) -> None:
        if not templates:
            raise ValueError("a mutator needs at least one template")
        self.templates = [Template.of(name, pkt) for name, pkt in templates.items()]
        self.rng = random.Random(seed)

    def mutants(self, count: int) -> Iterator[Mutant]:
        for _ in range(count):
            yield self.mutate(self.rng.choice(self.templates))

    def mutate(self, template: Template) -> Mutant:
        r = self.rng
        buf, names = bytearray(template.frame), [template.name]
        if r.random() < 0.15:  # some frames stay valid: flows must exist for counters to count
            return Mutant(template.name, bytes(buf))
        ip = template.l3 >= 0
        v6 = ip and buf[template.l3] >> 4 == 6
        if template.l4 >= 0 and r.random() < 0.25:
            names.append(self._l4_length(buf, template))
        if ip and r.random() < 0.25:
            names.append(self._fragment(buf, template.l3, v6))
        if ip and r.random() < 0.3:
            names.append(
                self._ipv6_extensions(buf, template.l3)
                if v6
                else self._ipv4_options(buf, template.l3)
            )
        if ip and r.random() < 0.25:
            names.append(self._l3_length(buf, template.l3, v6))
        if r.random() < 0.3:
            names.append(self._l2_tags(buf, template.l3, v6))
        if r.random() < 0.3:
            extra = r.randrange(1, 65)
            buf += bytes(extra) if r.random() < 0.7 else r.randbytes(extra)
            names.append(f"pad:{extra}")
        names.extend(self._damage(buf) for _ in range(r.choice((0, 0, 1, 1, 2, 3))))
        if r.random() < 0.15:
            cut = r.randrange(MIN_FRAME, len(buf) + 1)
            del buf[cut:]
            names.append(f"cut:{cut}")
        return Mutant("+".join(names), bytes(buf))

    def encapsulated(self, outer: Template, inner: Mutant) -> Mutant:
        """``inner`` carried by ``outer`` (a tunnel's headers, ending in UDP: VXLAN), its lengths
        and IPv4 checksum set for it; then, at times, mutated itself, so the tunnel's own headers
        are damaged too."""
        buf = bytearray(outer.frame + inner.frame)
        v6 = buf[outer.l3] >> 4 == 6
        _put16(buf, outer.l3 + 4 if v6 else outer.l3 + 2, len(buf) - outer.l3 - (40 if v6 else 0))
        _put16(buf, outer.l4 + 4, len(buf) - outer.l4)
        if not v6:
            _ipv4_checksum(buf, outer.l3)
        carried = Template(f"{outer.name}[{inner.name}]", bytes(buf), outer.l3, outer.l4, "udp")
        if self.rng.random() < 0.3:
            return self.mutate(carried)
        return Mutant(carried.name, carried.frame)

    # --- structural mutations, innermost first ---------------------------------------------------

    def _l4_length(self, buf: bytearray, t: Template) -> str:
        """A TCP data offset or UDP length that need not fit what follows."""
        r = self.rng
        if t.l4_kind == "tcp":
            doff = r.randrange(16)
            buf[t.l4 + 12] = doff << 4 | buf[t.l4 + 12] & 0x0F
            return f"tcp.doff:{doff}"
        length = r.choice(
            (0, 7, 8, r.randrange(9, 64), 0xFFFF, _u16(buf, t.l4 + 4) + r.randrange(1, 64))
        )
        _put16(buf, t.l4 + 4, length)
        return f"udp.len:{length}"

    def _fragment(self, buf: bytearray, l3: int, v6: bool) -> str:
        r = self.rng
        offset = 0 if r.random() < 0.4 else r.randrange(1, 8192)
        more = r.random() < 0.7 or offset == 0
        if not v6:
            _put16(buf, l3 + 6, (0x2000 if more else 0) | offset)
            _ipv4_checksum(buf, l3)
            return f"frag:{offset}{'+MF' if more else ''}"
        header = bytes([buf[l3 + 6], 0]) + (offset << 3 | more).to_bytes(2, "big") + r.randbytes(4)
        self._insert_ipv6_header(buf, l3, IPPROTO_FRAGMENT, header)
        return f"frag6:{offset}{'+M' if more else ''}"

    def _ipv4_options(self, buf: bytearray, l3: int) -> str:
        r = self.rng
        ihl = buf[l3] & 0x0F
        words = r.randrange(1, 16 - ihl) if ihl < 15 else 0
        if not words:
            return "opts:none"
        choice = r.randrange(3)
        if choice == 0:
            options = b"\x01" * (words * 4 - 1) + b"\x00"  # NOPs, then end of list
        elif choice == 1:
            options = b"\x94\x04\x00\x00" * words  # router alert, as IGMP and RSVP send
        else:
            options = r.randbytes(words * 4)  # option lengths that run past the header
        at = l3 + ihl * 4
        buf[at:at] = options
        buf[l3] = 0x40 | (ihl + words)
        _put16(buf, l3 + 2, _u16(buf, l3 + 2) + len(options))
        _ipv4_checksum(buf, l3)
        return f"opts:{('nop', 'ra', 'random')[choice]}:{words * 4}"

    def _ipv6_extensions(self, buf: bytearray, l3: int) -> str:
        """One to three extension headers after the fixed header (hop-by-hop only first)."""
        r = self.rng
        kinds = r.sample([k for k in IPV6_EXT if k != 0], r.randrange(0, 3))
        if r.random() < 0.4:
            kinds.insert(0, 0)
        if not kinds:
            kinds = [60]
        for kind in reversed(
            kinds
        ):  # each goes right after the fixed header, so insert the last first
            if kind == 51:  # AH counts in 4-octet units, less 2
                units = r.randrange(1, 5)
                header = bytes([buf[l3 + 6], units]) + bytes((units + 2) * 4 - 2)
            else:
                units = r.randrange(0, 3)
                header = bytes([buf[l3 + 6], units]) + bytes((units + 1) * 8 - 2)  # Pad1 options
            self._insert_ipv6_header(buf, l3, kind, header)
        return "ext:" + ",".join(map(str, kinds))

    @staticmethod
    def _insert_ipv6_header(buf: bytearray, l3: int, kind: int, header: bytes) -> None:
        buf[l3 + 40 : l3 + 40] = header
        buf[l3 + 6] = kind
        _put16(buf, l3 + 4, _u16(buf, l3 + 4) + len(header))

    def _l3_length(self, buf: bytearray, l3: int, v6: bool) -> str:
        """An IPv4 total length or IPv6 payload length off from what the frame holds."""
        r = self.rng
        field = l3 + 4 if v6 else l3 + 2
        now = _u16(buf, field)
        length = r.choice(
            (0, 1, 19, 20, now - r.randrange(1, 16), now + r.randrange(1, 64), 0xFFFF)
        )
        _put16(buf, field, max(length, 0))
        if not v6:
            _ipv4_checksum(buf, l3)
        return f"{'ip6.plen' if v6 else 'ip.len'}:{max(length, 0)}"

    def _l2_tags(self, buf: bytearray, l3: int, v6: bool) -> str:
        """802.1Q, QinQ (802.1ad over 802.1Q) or a PPPoE session header under the packet. Tags go
        in at the ethertype; PPPoE replaces the innermost one and so needs an IP packet."""
        r = self.rng
        kind = r.choice(("vlan", "qinq", "pppoe") if l3 >= 0 else ("vlan", "qinq"))
        tci = r.choice((0, 1, 4095, r.randrange(4096))) | r.randrange(8) << 13
        if kind == "pppoe":
            ethertype = 12 if l3 == ETH_HLEN else l3 - 2
            session = r.choice((0, 1, 0xFFFF, r.randrange(0x10000)))
            length = _u16(buf, l3 + 4) + 42 if v6 else _u16(buf, l3 + 2) + 2
            header = (
                b"\x88\x64\x11\x00"
                + session.to_bytes(2, "big")
                + (length & 0xFFFF).to_bytes(2, "big")
            )
            header += (PPP_IPV6 if v6 else PPP_IP).to_bytes(2, "big")
            buf[ethertype : ethertype + 2] = header
            return f"pppoe:{session:#x}"
        tags = b"\x81\x00" + tci.to_bytes(2, "big")
        if kind == "qinq":
            tags = b"\x88\xa8" + r.randrange(0x10000).to_bytes(2, "big") + tags
        buf[12:12] = tags
        return f"{kind}:{tci & 0xFFF}"

    # --- damage -----------------------------------------------------------------------------

    def _damage(self, buf: bytearray) -> str:
        r = self.rng
        at = r.randrange(len(buf))
        if r.random() < 0.6:
            bit = r.randrange(8)
            buf[at] ^= 1 << bit
            return f"flip:{at}.{bit}"
        buf[at] = r.choice((0x00, 0xFF))
        return f"set:{at}={buf[at]:#04x}"
