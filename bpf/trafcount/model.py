"""The reference model of the traffic counter (``trafcount.bpf.c``), in plain Python, written from its
specification.

Given frames, the hook that sees them and the configuration, ``Model`` predicts the table (per IP
address and protocol: packets and bytes), the frames not parsed by status and the entries created.
The rules:

- a frame is parsed by ``bpf.parse`` (the reference of ``parse.h``); one that does not parse to IP
  is counted by its status and nothing else;
- the key is the source or the destination address (``Config.key``) and the IP protocol number
  (after IPv6 extension headers); IPv4 and IPv6 are separate tables of ``entries`` each;
- bytes are the IP bytes (``ByteCount.L3``, the seed's: the IPv4 total length, the IPv6 header plus
  payload length; Ethernet padding is not counted) or the wire bytes (``ByteCount.WIRE``: the frame
  at XDP, the skb at TC with a VLAN tag the stack took out); at TC a GSO/GRO packet of ``gso_segs``
  TCP or UDP segments counts as that many packets, each after the first with its own copy of the
  headers (``counter.h``);
- the tables are LRUs: a new address beyond ``entries`` evicts one, in an order the kernel does not
  promise; the model keeps every address, and tests of eviction check what the kernel must keep.

The model runs on one CPU. Not for: talking to the kernel (``bpf.trafcount.trafcount``), or speed.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bpf.build import c_define
from bpf.flowmon.model import Hook
from bpf.parse import ETH_P_IPV6, FlowFlags, parse_flow

SOURCE = Path(__file__).with_name("trafcount.bpf.c")
DEFAULT_ENTRIES = c_define(SOURCE, "TRAF_ENTRIES")  # the seed's 2048
MAX_ENTRIES = 1 << 24
VLAN_TAG_LEN = 4
IPPROTO_TCP, IPPROTO_UDP = 6, 17

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["ByteCount", "Config", "Hook", "Key", "Model", "TrafKey", "classify", "default_key"]


class Key(enum.Enum):
    """Which address of a packet it is counted under."""

    SRC = "src"
    DST = "dst"


class ByteCount(enum.Enum):
    L3 = "l3"  # the IP packet, as the seed counts (the IPv4 total length)
    WIRE = "wire"  # the Ethernet frame as it is on the wire


def default_key(hook: Hook) -> Key:
    """The seed's: the source address at ingress (XDP, TC ingress), the destination at egress."""
    return Key.DST if hook is Hook.TC_EGRESS else Key.SRC


@dataclass(frozen=True)
class Config:
    key: Key = Key.SRC
    bytes: ByteCount = ByteCount.L3
    entries: int = DEFAULT_ENTRIES  # of each table (IPv4, IPv6)

    def __post_init__(self) -> None:
        if not 1 <= self.entries <= MAX_ENTRIES:
            raise ValueError(f"--entries {self.entries}: must be 1..{MAX_ENTRIES}")


@dataclass(frozen=True, order=True)
class TrafKey:
    """An address and a protocol as the data plane keys them; IPv4 sorts before IPv6."""

    version: int
    packed: bytes  # the address's bytes, as on the wire
    proto: int

    @property
    def address(self) -> Address:
        return ipaddress.ip_address(self.packed)

    def __str__(self) -> str:
        return f"{self.address} proto {self.proto}"


@dataclass(frozen=True)
class Packet:
    key: TrafKey
    packets: int
    bytes: int


def classify(
    frame: bytes,
    hook: Hook,
    config: Config,
    gso_segs: int = 0,
    vlan_present: bool = False,
) -> tuple[str, Packet | None]:
    """The parse status of ``frame`` and, if it is IP, what it counts."""
    parsed = parse_flow(frame)
    if parsed.status != "PARSE_OK":
        return parsed.status, None
    f = parsed.flow
    v6 = f.l3_proto == ETH_P_IPV6
    raw = f.daddr if config.key is Key.DST else f.saddr
    key = TrafKey(6 if v6 else 4, bytes(raw if v6 else raw[:4]), f.l4_proto)
    segmented = not hook.xdp and gso_segs > 1 and FlowFlags.FLOW_F_PORTS in f.flags
    packets = gso_segs if segmented else 1
    headers = parsed.payload_off  # the headers end where the payload starts
    if config.bytes is ByteCount.WIRE:
        octets = len(frame)
        if segmented:
            octets += (packets - 1) * headers
        if not hook.xdp and vlan_present:
            octets += packets * VLAN_TAG_LEN
    else:
        octets = f.ip_end - f.l3_off
        if segmented:
            octets += (packets - 1) * (headers - f.l3_off)
    return "PARSE_OK", Packet(key, packets, octets)


@dataclass
class Model:
    """The data plane's state after the frames fed so far."""

    config: Config
    counts: dict[TrafKey, list[int]] = field(default_factory=dict)  # key -> [packets, bytes]
    unparsed: Counter[str] = field(default_factory=Counter)  # parse status -> frames

    def feed(
        self,
        frame: bytes,
        hook: Hook = Hook.XDP,
        gso_segs: int = 0,
        vlan_present: bool = False,
    ) -> Packet | None:
        """Count one frame; the Packet it counted as, or None if it did not parse."""
        status, packet = classify(frame, hook, self.config, gso_segs, vlan_present)
        if packet is None:
            self.unparsed[status] += 1
            return None
        entry = self.counts.setdefault(packet.key, [0, 0])
        entry[0] += packet.packets
        entry[1] += packet.bytes
        return packet

    @property
    def created(self) -> int:
        """Entries created, if the tables never evicted."""
        return len(self.counts)

    def table(self) -> dict[TrafKey, tuple[int, int]]:
        return {k: (p, b) for k, (p, b) in self.counts.items()}
