"""The reference model of the VXLAN pipeline (``vxlan.bpf.c``), in plain Python.

Frame in, ``Outcome`` out: the verdict (pass, forward, drop and why) and, for a forwarded frame, its
exact bytes: decapsulated, NATed with the same RFC 1624 incremental checksum steps as
``bpf/include/csum.h`` (so even a checksum's 0x0000/0xffff spelling matches the kernel's), DF cleared,
MACs rewritten. ``Model`` also keeps the counters the kernel keeps. Parsing is ``bpf.parse``, the
reference of ``bpf/include/parse.h``.

The configuration types (``Config``, ``Mode``, ``Match``, ``NatTarget``, ``Egress``) are the control
plane's too (``bpf.vxlan.pipeline``). Not for: talking to the kernel, or speed.
"""

from __future__ import annotations

import enum
import ipaddress
import mmap
from dataclasses import dataclass, field
from pathlib import Path

from bpf.build import c_define
from bpf.parse import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    VXLAN_PORT,
    Flow,
    FlowFlags,
    parse_flow,
    parse_vxlan,
)
from bpf.vxlan.allowlist import Address, Network

_SOURCE = Path(__file__).with_name("vxlan.bpf.c")
FRAME_MAX = c_define(_SOURCE, "VXLAN_FRAME_MAX")
RING_SIZE = c_define(_SOURCE, "VXLAN_RING_SIZE")
RING_SIZE_MAX = 1 << 30

IPV4_DF = 0x4000


class Mode(enum.Enum):
    """How forwarded frames leave: the value names the C enum member (``VXLAN_MODE_*``)."""

    REDIRECT = "redirect"  # XDP on ens5, XDP_REDIRECT through a DEVMAP
    TC = "tc"  # TC ingress on ens5, bpf_redirect(): any driver
    RINGBUF = "ringbuf"  # XDP on ens5, copied to a ring buffer and dropped; userspace re-injects


class Match(enum.Enum):
    """Which inner address must be allowlisted."""

    SRC = "src"
    DST = "dst"
    EITHER = "either"


class Verdict(enum.Enum):
    PASS = "pass"  # not VXLAN to us: to the stack, untouched
    FORWARD = "forward"  # redirected (redirect, tc) or queued to the ring (ringbuf)
    DROP = "drop"


# enum vxlan_drop, as ``DropReason.value`` names: VXLAN_DROP_<VALUE.upper()>
class DropReason(enum.Enum):
    MALFORMED = "malformed"
    VNI = "vni"
    NOT_ALLOWED = "not_allowed"
    RING_FULL = "ring_full"
    TOO_BIG = "too_big"
    REDIRECT_FAILED = "redirect_failed"


@dataclass(frozen=True)
class NatTarget:
    """Where a NAT rule sends a packet: ``port`` 0 keeps the destination port."""

    addr: ipaddress.IPv4Address
    port: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.addr, ipaddress.IPv4Address):
            object.__setattr__(self, "addr", ipaddress.IPv4Address(self.addr))
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"NAT target port {self.port} is not 0..65535")

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}" if self.port else str(self.addr)


@dataclass(frozen=True)
class Config:
    """What the data plane is loaded with. ``vni`` None turns the VNI filter off."""

    mode: Mode = Mode.REDIRECT
    vni: int | None = None
    match: Match = Match.EITHER
    default_nat: NatTarget | None = None
    port: int = VXLAN_PORT  # UDP destination port of VXLAN; Linux's own default is 8472
    ring_size: int = (
        RING_SIZE  # bytes of each of the ringbuf mode's rings: a power of 2, at least a page
    )
    rings: int = (
        1  # ringbuf mode: rings, one per re-injector worker; CPU c's frames go to c % rings
    )

    def __post_init__(self) -> None:
        if self.vni is not None and not 0 <= self.vni < 1 << 24:
            raise ValueError(f"VNI {self.vni} is not a 24-bit value")
        if not 1 <= self.port <= 0xFFFF:
            raise ValueError(f"VXLAN port {self.port} is not 1..65535")
        if self.rings < 1:
            raise ValueError(f"{self.rings} rings: at least 1")
        size = self.ring_size
        if size < mmap.PAGESIZE or size & (size - 1) or size > RING_SIZE_MAX:
            raise ValueError(
                f"ring size {size}: a power of 2 from {mmap.PAGESIZE} to {RING_SIZE_MAX} bytes"
            )


@dataclass(frozen=True)
class Egress:
    """The egress side: its own MAC and the next hop's; ``ifindex`` 0 means not configured."""

    src_mac: bytes = bytes(6)
    dst_mac: bytes = bytes(6)
    ifindex: int = 0


# --- csum.h ----------------------------------------------------------------------------------------
# Computed on network-order words: a one's complement sum does not depend on byte order, so these
# give the bytes the kernel's little-endian arithmetic stores.


def csum_fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_replace2(check: int, old: int, new: int) -> int:
    return csum_fold((~check & 0xFFFF) + (~old & 0xFFFF) + new)


def csum_replace4(check: int, old: int, new: int) -> int:
    s = (~check & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
    return csum_fold(s + (new >> 16) + (new & 0xFFFF))


def udp_csum_replace(check: int, replace, old: int, new: int) -> int:
    """RFC 768: 0 means no checksum and stays 0; a computed 0 is sent as 0xffff."""
    if check == 0:
        return 0
    return replace(check, old, new) or 0xFFFF


# --- the pipeline ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: DropReason | None = None
    frame: bytes | None = None  # the forwarded frame
    vxlan: bool = False  # UDP to the VXLAN port
    inner: bool = False  # decapsulated, inner frame parsed
    nat: bool = False
    df_cleared: bool = False

    def __str__(self) -> str:
        return self.verdict.value + (f" ({self.reason.value})" if self.reason else "")


def _drop(reason: DropReason, **done: bool) -> Outcome:
    return Outcome(Verdict.DROP, reason, **done)


@dataclass
class Model:
    """The data plane with its maps, frame by frame; ``stats`` are the kernel's counters, summed."""

    config: Config = field(default_factory=Config)
    hosts: set[Address] = field(default_factory=set)  # IPv4 and IPv6
    prefixes: set[Network] = field(default_factory=set)
    nat: dict[int, NatTarget] = field(default_factory=dict)
    egress: Egress = field(default_factory=Egress)
    stats: dict[str, int] = field(default_factory=dict)  # non-zero counters, ``Stats.counts()``

    def allowed(self, ip: Address) -> bool:
        return ip in self.hosts or any(ip in net for net in self.prefixes)

    def _flow_allowed(self, f: Flow) -> bool:
        if self.config.match is Match.SRC:
            return self.allowed(f.src)
        if self.config.match is Match.DST:
            return self.allowed(f.dst)
        return self.allowed(f.src) or self.allowed(f.dst)

    def feed(self, frame: bytes) -> Outcome:
        """What the data plane does with ``frame``; the counters move as the kernel's do."""
        out = self.predict(frame)
        forwarded = out.verdict is Verdict.FORWARD
        for name, amount in (
            ("total", 1),
            ("bytes", len(frame)),
            ("passed", out.verdict is Verdict.PASS),
            ("vxlan", out.vxlan),
            ("inner", out.inner),
            ("nat", out.nat),
            ("df_cleared", out.df_cleared),
            ("forwarded", forwarded),
            ("forwarded_bytes", len(out.frame) if forwarded else 0),
            ("queued" if self.config.mode is Mode.RINGBUF else "redirected", forwarded),
            (f"drop:{out.reason.value}" if out.reason else "", out.reason is not None),
        ):
            if amount:
                self.stats[name] = self.stats.get(name, 0) + amount
        return out

    def predict(self, frame: bytes) -> Outcome:
        """``feed`` without counting."""
        outer = parse_flow(frame)
        if (
            outer.status != "PARSE_OK"
            or outer.flow.l4_proto != IPPROTO_UDP
            or FlowFlags.FLOW_F_PORTS not in outer.flow.flags
            or FlowFlags.FLOW_F_FRAGMENT in outer.flow.flags
            or outer.flow.dport != self.config.port
        ):
            return Outcome(Verdict.PASS)
        vxlan = parse_vxlan(frame, outer)
        if vxlan.status != "PARSE_OK":
            return _drop(DropReason.MALFORMED, vxlan=True)
        if self.config.vni is not None and vxlan.vni != self.config.vni:
            return _drop(DropReason.VNI, vxlan=True)
        if len(frame) - vxlan.inner_off < self._decap_minimum(frame, vxlan.inner_off):
            return _drop(DropReason.MALFORMED, vxlan=True)
        # The inner frame ends with the outer IP packet; what follows it is carried along.
        buf = bytearray(frame[vxlan.inner_off :])
        inner = parse_flow(vxlan.inner)
        if inner.status not in ("PARSE_OK", "PARSE_NOT_IP"):
            return _drop(DropReason.MALFORMED, vxlan=True)
        f = inner.flow
        if (
            inner.status != "PARSE_OK"
            or f.l3_proto not in (ETH_P_IP, ETH_P_IPV6)
            or not self._flow_allowed(f)
        ):
            return _drop(DropReason.NOT_ALLOWED, vxlan=True, inner=True)
        # NAT targets are IPv4: inner IPv6 leaves as it came, MACs aside.
        nat, df = self._rewrite_ipv4(buf, f) if f.l3_proto == ETH_P_IP else (False, False)
        buf[0:6], buf[6:12] = self.egress.dst_mac, self.egress.src_mac
        done = {"vxlan": True, "inner": True, "nat": nat, "df_cleared": df}
        mode = self.config.mode
        if mode is Mode.RINGBUF and len(buf) > FRAME_MAX:
            return _drop(DropReason.TOO_BIG, **done)
        if mode is not Mode.RINGBUF and not self.egress.ifindex:
            return _drop(DropReason.REDIRECT_FAILED, **done)
        return Outcome(Verdict.FORWARD, None, bytes(buf), **done)

    def _decap_minimum(self, frame: bytes, inner_off: int) -> int:
        """The shortest inner frame the head adjustment takes (shorter ones are malformed).

        XDP: an Ethernet header. TC (bpf_skb_adjust_room()): also an L3 header. ctx.h passes the
        BPF_F_ADJ_ROOM_DECAP_L3 flag of the inner frame's protocol, which sets that header's size
        (IPv4 20, IPv6 40); for any other inner protocol no flag goes, and the size is that of the
        skb's protocol, the outer ethertype. Whatever the flags, an skb whose protocol is neither
        IPv4 nor IPv6 is refused (VLAN tags are out of the data at real TC ingress, not here).
        """
        if self.config.mode is not Mode.TC:
            return ETH_HLEN
        l3_size = {ETH_P_IP: 20, ETH_P_IPV6: 40}
        outer = int.from_bytes(frame[12:14], "big")
        if outer not in l3_size:
            return len(frame) + 1
        inner = int.from_bytes(frame[inner_off + 12 : inner_off + 14], "big")
        return ETH_HLEN + l3_size.get(inner, l3_size[outer])

    def _rewrite_ipv4(self, buf: bytearray, f: Flow) -> tuple[bool, bool]:
        """NAT and DF in place, checksum step by checksum step as the kernel does them."""
        ip = f.l3_off

        def word(off: int) -> int:
            return int.from_bytes(buf[off : off + 2], "big")

        def put(off: int, value: int, size: int = 2) -> None:
            buf[off : off + size] = value.to_bytes(size, "big")

        ports = FlowFlags.FLOW_F_PORTS in f.flags and FlowFlags.FLOW_F_FRAGMENT not in f.flags
        target = self.nat.get(f.dport) if ports else None
        if target is None:
            target = self.config.default_nat
        if target is not None:
            old_addr = int.from_bytes(buf[ip + 16 : ip + 20], "big")
            new_addr = int(target.addr)
            new_port = target.port if ports and target.port else f.dport
            put(ip + 10, csum_replace4(word(ip + 10), old_addr, new_addr))
            put(ip + 16, new_addr, 4)
            l4 = FlowFlags.FLOW_F_LATER_FRAGMENT not in f.flags
            if l4 and f.l4_proto == IPPROTO_TCP:
                check = csum_replace4(word(f.l4_off + 16), old_addr, new_addr)
                put(f.l4_off + 16, csum_replace2(check, f.dport, new_port))
                put(f.l4_off + 2, new_port)
            elif l4 and f.l4_proto == IPPROTO_UDP:
                check = udp_csum_replace(word(f.l4_off + 6), csum_replace4, old_addr, new_addr)
                put(f.l4_off + 6, udp_csum_replace(check, csum_replace2, f.dport, new_port))
                put(f.l4_off + 2, new_port)
        frag = word(ip + 6)
        if frag & IPV4_DF:
            put(ip + 6, frag & ~IPV4_DF)
            put(ip + 10, csum_replace2(word(ip + 10), frag, frag & ~IPV4_DF))
        return target is not None, bool(frag & IPV4_DF)
