"""The reference model of the flow-metrics data plane (``flowmon.bpf.c`` and ``flowtable.h``), in
plain Python, written from their specification.

Given frames, the hook that sees them and the configuration, ``Model`` predicts the flow table
(per flow: packets, bytes, the OR of TCP flags, whether a SYN and a FIN were seen), the packets not
counted by reason, the frames not parsed by status, the flows created and the packets spilled. The
rules:

- a frame is parsed by ``bpf.parse`` (the reference of ``parse.h``); one that does not parse to IP
  is counted by its status and nothing else;
- the key is the interface, the direction (XDP and TC ingress: ingress), the addresses, the protocol
  and the TCP/UDP ports, which are 0 for other protocols and for every fragment;
- bytes are the wire length: the frame at XDP, at TC the skb's length plus, for a GSO/GRO packet of
  ``gso_segs`` segments, a copy of the headers for each segment after the first (it counts as
  ``gso_segs`` packets), plus a VLAN tag per segment that the stack moved out of the frame;
- a hash table holds ``entries`` flows per IP version; a new flow beyond that is full. An array
  holds ``entries`` slots per IP version, a flow goes to slot ``jhash2(key words) * entries >> 32``
  and a slot holding another flow is full (a collision). The ring holds ``ring_bytes //
  RING_RECORD_BYTES`` records until the reader drains it; a record that does not fit is a miss;
- a full table drops (a miss: ``table_full`` or ``collision``) or spills (a ring record). The LRU
  kinds evict instead, in an order the kernel does not promise: the model keeps every flow, and
  tests of eviction check what the kernel must keep, not which flows it chose.

Kernel timestamps are not predicted. The model runs on one CPU: tests that hold per-CPU storage to it
pin themselves to one CPU. Not for: talking to the kernel (``bpf.flowmon.flowmon``), or speed.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bpf.build import c_define
from bpf.jhash import jhash2
from bpf.parse import ETH_P_IPV6, FlowFlags, parse_flow

FLOWTABLE_H = Path(__file__).resolve().parents[1] / "include" / "flowtable.h"
SLOT_HASH_INITVAL = c_define(FLOWTABLE_H, "FLOW_SLOT_HASH_INITVAL")
RING_BYTES = c_define(FLOWTABLE_H, "FLOW_RING_BYTES")
TCP_FLAG_FIN = c_define(FLOWTABLE_H, "TCP_FLAG_FIN")
TCP_FLAG_SYN = c_define(FLOWTABLE_H, "TCP_FLAG_SYN")
TCP_FLAG_RST = 0x04  # the TCP header's byte 13, as tcp_flags holds it
# struct flow_record (64 bytes) and the ring's 8-byte record header, rounded up to 8 as the kernel
# rounds every record; the unit tests check the size against the object's BTF.
RING_RECORD_BYTES = 64 + 8
VLAN_TAG_LEN = 4
DEFAULT_ENTRIES = 65536
# The seed's zero-loss rates as ratios to its "Native" (no program: 4.77 Mpps, about 40 UDP flows,
# its own testbed), by storage and flow count ("many" flows taken as its 40); the report sets
# flowmon's own ratios beside them.
SEED_NATIVE_MPPS = 4.77
SEED_RATIOS = {
    (storage, flows): mpps / SEED_NATIVE_MPPS
    for storage, flows, mpps in (
        ("percpu_array", 40, 4.61),
        ("array", 40, 4.18),
        ("percpu_hash", 1, 2.54),
        ("percpu_hash", 40, 4.3),
        ("ringbuf", 40, 1.74),
        ("hash", 1, 1.4),
        ("hash", 40, 3.88),
    )
}


class Storage(enum.Enum):
    HASH = "hash"
    PERCPU_HASH = "percpu_hash"
    LRU_HASH = "lru_hash"
    LRU_PERCPU_HASH = "lru_percpu_hash"
    ARRAY = "array"
    PERCPU_ARRAY = "percpu_array"
    RINGBUF = "ringbuf"

    @property
    def lru(self) -> bool:
        return self in (Storage.LRU_HASH, Storage.LRU_PERCPU_HASH)

    @property
    def array(self) -> bool:
        return self in (Storage.ARRAY, Storage.PERCPU_ARRAY)

    @property
    def percpu(self) -> bool:
        return self in (Storage.PERCPU_HASH, Storage.LRU_PERCPU_HASH, Storage.PERCPU_ARRAY)


class Full(enum.Enum):
    """What a full table does with a new flow's packet."""

    DROP = "drop"  # count it as a miss
    EVICT = "evict"  # LRU kinds: the kernel evicts the least recently used flow
    SPILL = "spill"  # send it to the ring buffer, where the reader adds it to the table


class Hook(enum.Enum):
    XDP = "xdp"
    TC_INGRESS = "tc-ingress"
    TC_EGRESS = "tc-egress"

    @property
    def direction(self) -> Direction:
        return Direction.EGRESS if self is Hook.TC_EGRESS else Direction.INGRESS

    @property
    def xdp(self) -> bool:
        return self is Hook.XDP


class Direction(enum.IntEnum):
    """``enum flow_direction``."""

    INGRESS = 0
    EGRESS = 1


@dataclass(frozen=True)
class Config:
    """What the data plane is loaded with. ``full`` None: EVICT for the LRU kinds, else DROP."""

    storage: Storage = Storage.HASH
    full: Full | None = None
    entries: int = DEFAULT_ENTRIES  # flows per IP version (hash kinds), or slots (array kinds)
    ring_bytes: int = RING_BYTES  # a power of 2, at least a page

    def __post_init__(self) -> None:
        if self.full is None:
            object.__setattr__(self, "full", Full.EVICT if self.storage.lru else Full.DROP)
        if self.storage.lru and self.full is not Full.EVICT:
            raise ValueError(
                f"--full {self.full.value}: an LRU table ({self.storage.value}) always evicts; "
                "use --full evict or a hash/array storage"
            )
        if not self.storage.lru and self.full is Full.EVICT:
            raise ValueError(
                f"--full evict: {self.storage.value} cannot evict; use an LRU storage "
                "(lru_hash, lru_percpu_hash), or --full drop|spill"
            )
        if self.storage is Storage.RINGBUF and self.full is not Full.DROP:
            raise ValueError(
                f"--full {self.full.value}: the ringbuf storage has no table to fill "
                "(a full ring drops, counted)"
            )
        if not 1 <= self.entries <= 1 << 24:
            raise ValueError(f"--entries {self.entries}: must be 1..{1 << 24}")
        size = self.ring_bytes
        if size < 4096 or size & (size - 1):
            raise ValueError(f"ring size {size} bytes: must be a power of 2, at least 4096")


@dataclass(frozen=True)
class FlowKey:
    """A flow as the data plane keys it. Keys sort IPv4 before IPv6, then field by field."""

    version: int  # 4 or 6
    ifindex: int
    direction: Direction
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int
    proto: int

    def __lt__(self, other: FlowKey) -> bool:
        return self._order() < other._order()

    def _order(self) -> tuple:
        return (
            self.version,
            self.ifindex,
            self.direction,
            self.src.packed,
            self.dst.packed,
            self.sport,
            self.dport,
            self.proto,
        )

    def raw(self) -> bytes:
        """``struct flow_key4``/``flow_key6`` as the kernel holds it (a map key)."""
        return (
            self.ifindex.to_bytes(4, "little")
            + self.src.packed
            + self.dst.packed
            + self.sport.to_bytes(2, "big")
            + self.dport.to_bytes(2, "big")
            + bytes((self.proto, self.direction, 0, 0))
        )

    def words(self) -> list[int]:
        """The key as the CPU-order (little-endian) words jhash2 reads."""
        raw = self.raw()
        return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]

    def __str__(self) -> str:
        where = f"if{self.ifindex} {self.direction.name.lower()}"
        if self.sport or self.dport:
            return f"{where} {self.proto} [{self.src}]:{self.sport} -> [{self.dst}]:{self.dport}"
        return f"{where} {self.proto} {self.src} -> {self.dst}"


def slot_of(key: FlowKey, slots: int) -> int:
    """The array slot of ``key``: flow_slot_index()."""
    return jhash2(key.words(), SLOT_HASH_INITVAL) * slots >> 32


@dataclass
class Counts:
    """A flow's counters, less the kernel's timestamps."""

    packets: int = 0
    bytes: int = 0
    tcp_flags: int = 0
    syn: bool = False
    fin: bool = False

    def add(self, packets: int, octets: int, tcp_flags: int) -> None:
        self.packets += packets
        self.bytes += octets
        self.tcp_flags |= tcp_flags
        self.syn |= bool(tcp_flags & TCP_FLAG_SYN)
        self.fin |= bool(tcp_flags & TCP_FLAG_FIN)


@dataclass(frozen=True)
class Packet:
    """What one frame counts: its flow, its segments on the wire, their bytes and its TCP flags."""

    key: FlowKey
    packets: int
    bytes: int
    tcp_flags: int


def classify(
    frame: bytes,
    hook: Hook,
    ifindex: int,
    gso_segs: int = 0,
    vlan_present: bool = False,
) -> tuple[str, Packet | None]:
    """The parse status of ``frame`` and, if it is IP, what it counts."""
    parsed = parse_flow(frame)
    if parsed.status != "PARSE_OK":
        return parsed.status, None
    f = parsed.flow
    ports = FlowFlags.FLOW_F_PORTS in f.flags and FlowFlags.FLOW_F_FRAGMENT not in f.flags
    key = FlowKey(
        6 if f.l3_proto == ETH_P_IPV6 else 4,
        ifindex,
        hook.direction,
        f.src,
        f.dst,
        f.sport if ports else 0,
        f.dport if ports else 0,
        f.l4_proto,
    )
    packets, octets = 1, len(frame)
    if not hook.xdp:
        if gso_segs > 1 and FlowFlags.FLOW_F_PORTS in f.flags:
            packets = gso_segs
            octets += (gso_segs - 1) * parsed.payload_off  # the headers end at the payload
        if vlan_present:
            octets += packets * VLAN_TAG_LEN
    tcp_flags = 0
    if f.l4_proto == 6 and FlowFlags.FLOW_F_PORTS in f.flags:
        tcp_flags = frame[f.l4_off + 13]
    return "PARSE_OK", Packet(key, packets, octets, tcp_flags)


@dataclass
class Model:
    """The data plane's state after the frames fed so far."""

    config: Config
    flows: dict[FlowKey, Counts] = field(default_factory=dict)  # the table a reader shows
    misses: Counter[str] = field(default_factory=Counter)  # struct flow_misses field -> packets
    unparsed: Counter[str] = field(default_factory=Counter)  # parse status -> frames
    created: int = 0
    spilled: int = 0
    ring: list[Packet] = field(default_factory=list)  # records the reader has not drained
    _in_table: dict[FlowKey, Counts] = field(default_factory=dict)  # the kernel's table
    _slots: dict[tuple[int, int], FlowKey] = field(default_factory=dict)  # (version, slot) -> key

    def feed(
        self,
        frame: bytes,
        hook: Hook = Hook.XDP,
        ifindex: int = 1,
        gso_segs: int = 0,
        vlan_present: bool = False,
    ) -> Packet | None:
        """Count one frame; the Packet it counted as, or None if it did not parse."""
        status, packet = classify(frame, hook, ifindex, gso_segs, vlan_present)
        if packet is None:
            self.unparsed[status] += 1
            return None
        storage = self.config.storage
        if storage is Storage.RINGBUF:
            self._to_ring(packet)
        elif storage.array:
            self._to_slot(packet)
        else:
            self._to_table(packet)
        return packet

    def drain(self) -> None:
        """The reader empties the ring into the table."""
        for p in self.ring:
            self.flows.setdefault(p.key, Counts()).add(p.packets, p.bytes, p.tcp_flags)
        self.ring.clear()

    def _to_ring(self, packet: Packet) -> bool:
        if len(self.ring) >= self.config.ring_bytes // RING_RECORD_BYTES:
            self.misses["ring_full"] += packet.packets
            return False
        self.ring.append(packet)
        return True

    def _count(self, packet: Packet) -> None:
        for table in (self._in_table, self.flows):
            table.setdefault(packet.key, Counts()).add(
                packet.packets, packet.bytes, packet.tcp_flags
            )

    def _to_table(self, packet: Packet) -> None:
        key = packet.key
        if key not in self._in_table:
            held = sum(1 for k in self._in_table if k.version == key.version)
            if held >= self.config.entries and not self.config.storage.lru:
                self._full(packet, "table_full")
                return
            self.created += 1
        self._count(packet)

    def _to_slot(self, packet: Packet) -> None:
        where = (packet.key.version, slot_of(packet.key, self.config.entries))
        holder = self._slots.setdefault(where, packet.key)
        if holder != packet.key:
            self._full(packet, "collision")
            return
        if packet.key not in self._in_table:
            self.created += 1
        self._count(packet)

    def _full(self, packet: Packet, reason: str) -> None:
        if self.config.full is Full.SPILL:
            if self._to_ring(packet):
                self.spilled += packet.packets
            return
        self.misses[reason] += packet.packets


# --- what an IPFIX export of the table must be (bpf.flowmon.ipfix) ---


class EndReason(enum.IntEnum):
    """flowEndReason (IANA information element 136, RFC 5102 section 5.11.3)."""

    IDLE_TIMEOUT = 1  # no packet for the idle timeout: the flow has ended
    ACTIVE_TIMEOUT = 2  # the flow goes on: its counts since its previous record
    END_OF_FLOW = 3  # TCP FIN or RST seen, then no packet for a read of the table
    FORCED_END = 4  # the exporter stopped

    @property
    def ends(self) -> bool:
        return self is not EndReason.ACTIVE_TIMEOUT


@dataclass(frozen=True)
class FlowRecord:
    """One exported flow record: a flow's packets and bytes since its previous record (delta
    counts), the flow's first and last packet (epoch milliseconds), its TCP flags so far."""

    key: FlowKey
    packets: int
    bytes: int
    start_ms: int
    end_ms: int
    tcp_flags: int
    reason: EndReason


def export_problems(
    records: Iterable[FlowRecord], flows: Mapping[FlowKey, Counts], finished: bool
) -> list[str]:
    """What is wrong with ``records`` (in the order sent) as the export of ``flows``: empty if
    nothing is. The rules, per flow:

    - its records' packets and bytes add up to its counts (delta counts: nothing lost, nothing
      twice), and no record is of a flow not in ``flows``;
    - its records are runs of ACTIVE_TIMEOUT records, each with packets, closed by one ending record
      (IDLE_TIMEOUT, END_OF_FLOW or FORCED_END); a flow that starts again after its end (its entry
      deleted and made anew) starts a new run; once the exporter has ``finished``, every run is
      closed, and FORCED_END, if there, is the last record;
    - within a run the start is the same and the ends do not go back; no record starts after it
      ends; no record carries a TCP flag the flow never had.
    """
    problems: list[str] = []
    by_key: dict[FlowKey, list[FlowRecord]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    for key in sorted(by_key.keys() - flows.keys()):
        problems.append(f"{key}: {len(by_key[key])} records of a flow the table does not have")
    for key, counts in sorted(flows.items()):
        got = by_key.get(key, [])
        packets, octets = sum(r.packets for r in got), sum(r.bytes for r in got)
        if (packets, octets) != (counts.packets, counts.bytes):
            problems.append(
                f"{key}: records add up to {packets} packets, {octets} bytes; the flow has "
                f"{counts.packets} packets, {counts.bytes} bytes ({[r.reason.name for r in got]})"
            )
        run_start: int | None = None
        last_end = 0
        for i, r in enumerate(got):
            where = f"{key}: record {i + 1} of {len(got)} ({r.reason.name})"
            if r.reason is EndReason.ACTIVE_TIMEOUT and not r.packets:
                problems.append(f"{where}: an active-timeout record without packets")
            if r.start_ms > r.end_ms:
                problems.append(f"{where}: starts at {r.start_ms} ms, after its end {r.end_ms} ms")
            if run_start is not None and (r.start_ms != run_start or r.end_ms < last_end):
                problems.append(
                    f"{where}: in a run that started at {run_start} ms and got to {last_end} ms, "
                    f"it spans {r.start_ms}..{r.end_ms} ms"
                )
            if r.tcp_flags & ~counts.tcp_flags:
                problems.append(
                    f"{where}: TCP flags {r.tcp_flags:#x}, the flow {counts.tcp_flags:#x}"
                )
            if r.reason is EndReason.FORCED_END and i != len(got) - 1:
                problems.append(f"{where}: records after the exporter's forced end")
            run_start, last_end = (None, 0) if r.reason.ends else (r.start_ms, r.end_ms)
        if finished and got and not got[-1].reason.ends:
            problems.append(f"{key}: the exporter has finished, its last record does not end it")
    return problems
