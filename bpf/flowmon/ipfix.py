"""IPFIX export of flowmon's flow table: RFC 7011 messages over UDP carrying RFC 5102 information
elements (the IANA registry's numbers), with active and idle timeouts.

```python
from bpf.flowmon.ipfix import Collector, FlowExporter, IpfixSender, Timeouts

with FlowMon(config) as fm:
    fm.attach("ens5", [Hook.XDP])
    sender = IpfixSender(Collector.parse("192.0.2.9:4739"))
    exporter = FlowExporter(fm.table, sender, Timeouts(active_s=60, idle_s=15))
    exporter.start()                  # the templates, before any data
    while running:
        exporter.cycle()              # each read of the table: ended flows out, long ones re-exported
    fm.detach()
    exporter.finish()                 # what is left, flowEndReason 4; the table emptied
```

Three layers, each testable alone:

- ``Template`` and ``Encoder``: the bytes. A message is the 16-byte header (version 10, length, export
  time, sequence number: the data records sent before it, observation domain), then sets: the
  template set (set id 2) when it is due, then one data set per template. Four templates, IPv4 and
  IPv6 by ingress and egress (``ingressInterface`` or ``egressInterface``: the one the key's ifindex
  is). Records are split over messages of at most ``max_message_bytes`` (1400: an Ethernet MTU's
  datagram with room for tunnels); sets are padded to 4 bytes (RFC 7011 section 3.3.1), which these
  templates' records (52 and 76 bytes) never need.
- ``IpfixSender``: a UDP socket, not connected (an unreachable collector's ICMP errors do not stop
  the export), and the template refresh: at start and every ``template_refresh_s`` (UDP loses
  messages and a collector may start late: RFC 7011 section 8.4 and 10.3.6).
- ``FlowExporter``: which records, when. Counts are delta counts (``packetDeltaCount``,
  ``octetDeltaCount``): a record carries what the flow counted since its previous record, so a
  collector adds them up; total counts (85/86) would make a collector subtract, and go back to 0
  whenever an entry is deleted and made anew. The rules and the race with the program are in
  ``FlowExporter``'s docstring.

Times: the kernel stamps with CLOCK_MONOTONIC_COARSE; a record's ``flowStartMilliseconds`` and
``flowEndMilliseconds`` add CLOCK_REALTIME - CLOCK_MONOTONIC, measured at each read (a stepped
real-time clock moves later records, never the table).

``tshark_messages`` reads a capture of the export back through tshark's IPFIX dissector (``cflow``),
an implementation independent of this one: what a collector sees. Not for: reading the table
(``bpf.flowmon.flowmon``), or collecting at scale.
"""

from __future__ import annotations

import calendar
import enum
import functools
import ipaddress
import json
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bpf.flowmon.flowmon import Flow, FlowTable, now_coarse_ns
from bpf.flowmon.model import (
    TCP_FLAG_FIN,
    TCP_FLAG_RST,
    Direction,
    EndReason,
    FlowKey,
    FlowRecord,
)

IPFIX_VERSION = 10
IPFIX_PORT = 4739  # IANA's, for IPFIX over UDP
TEMPLATE_SET_ID = 2
MESSAGE_HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence, domain
SET_HEADER = struct.Struct("!HH")  # set id, length
TEMPLATE_HEADER = struct.Struct("!HH")  # template id, field count
FIELD_SPECIFIER = struct.Struct("!HH")  # information element id, length
MAX_MESSAGE_BYTES = 1400
MAX_UDP_PAYLOAD = 65507  # an IPv4 datagram's most (IPv6's is 65527)
TEMPLATE_REFRESH_S = 30.0
SET_ALIGN = 4


class Element(enum.IntEnum):
    """The information elements exported (IANA "IPFIX Information Elements", RFC 5102)."""

    OCTET_DELTA_COUNT = 1
    PACKET_DELTA_COUNT = 2
    PROTOCOL_IDENTIFIER = 4
    TCP_CONTROL_BITS = 6  # unsigned8 in RFC 5102 (the header's byte 13, CWR..FIN)
    SOURCE_TRANSPORT_PORT = 7
    SOURCE_IPV4_ADDRESS = 8
    INGRESS_INTERFACE = 10
    DESTINATION_TRANSPORT_PORT = 11
    DESTINATION_IPV4_ADDRESS = 12
    EGRESS_INTERFACE = 14
    SOURCE_IPV6_ADDRESS = 27
    DESTINATION_IPV6_ADDRESS = 28
    FLOW_DIRECTION = 61  # 0 ingress, 1 egress: enum flow_direction's values
    FLOW_END_REASON = 136
    FLOW_START_MILLISECONDS = 152
    FLOW_END_MILLISECONDS = 153


_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True)
class Template:
    """A template: its id (256 or more) and its fields, (element, length) in record order."""

    id: int
    fields: tuple[tuple[Element, int], ...]

    @functools.cached_property
    def _struct(self) -> struct.Struct:
        return struct.Struct("!" + "".join(_field_code(e, n) for e, n in self.fields))

    @property
    def record_bytes(self) -> int:
        return self._struct.size

    def definition(self) -> bytes:
        """The template record of a template set."""
        head = TEMPLATE_HEADER.pack(self.id, len(self.fields))
        return head + b"".join(FIELD_SPECIFIER.pack(e, n) for e, n in self.fields)

    def record(self, values: Sequence[int | bytes]) -> bytes:
        """A data record: ``values`` in field order (addresses as bytes, the rest as integers)."""
        return self._struct.pack(*values)


def _field_code(element: Element, length: int) -> str:
    if element.name.endswith("_ADDRESS"):
        return f"{length}s"
    return _CODES[length]


def flow_template(template_id: int, version: int, direction: Direction) -> Template:
    """The template of flows of IP ``version`` seen in ``direction``."""
    size = 4 if version == 4 else 16
    src, dst = (
        (Element.SOURCE_IPV4_ADDRESS, Element.DESTINATION_IPV4_ADDRESS)
        if version == 4
        else (Element.SOURCE_IPV6_ADDRESS, Element.DESTINATION_IPV6_ADDRESS)
    )
    interface = (
        Element.INGRESS_INTERFACE if direction is Direction.INGRESS else Element.EGRESS_INTERFACE
    )
    return Template(
        template_id,
        (
            (src, size),
            (dst, size),
            (Element.SOURCE_TRANSPORT_PORT, 2),
            (Element.DESTINATION_TRANSPORT_PORT, 2),
            (Element.PROTOCOL_IDENTIFIER, 1),
            (Element.TCP_CONTROL_BITS, 1),
            (Element.FLOW_DIRECTION, 1),
            (Element.FLOW_END_REASON, 1),
            (interface, 4),
            (Element.PACKET_DELTA_COUNT, 8),
            (Element.OCTET_DELTA_COUNT, 8),
            (Element.FLOW_START_MILLISECONDS, 8),
            (Element.FLOW_END_MILLISECONDS, 8),
        ),
    )


FLOW_TEMPLATES = {
    (4, Direction.INGRESS): flow_template(256, 4, Direction.INGRESS),
    (4, Direction.EGRESS): flow_template(257, 4, Direction.EGRESS),
    (6, Direction.INGRESS): flow_template(258, 6, Direction.INGRESS),
    (6, Direction.EGRESS): flow_template(259, 6, Direction.EGRESS),
}


def flow_values(r: FlowRecord) -> tuple[int | bytes, ...]:
    """A record's values in the order of ``flow_template``'s fields."""
    k = r.key
    return (
        k.src.packed,
        k.dst.packed,
        k.sport,
        k.dport,
        k.proto,
        r.tcp_flags & 0xFF,
        int(k.direction),
        int(r.reason),
        k.ifindex,
        r.packets,
        r.bytes,
        r.start_ms,
        r.end_ms,
    )


def _padded(length: int) -> int:
    return length + -length % SET_ALIGN


class Encoder:
    """IPFIX messages of one observation domain. ``sequence`` is the number of data records sent
    before the next message (modulo 2**32), as its header will say."""

    def __init__(
        self,
        observation_domain: int = 1,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        templates: dict[tuple[int, Direction], Template] | None = None,
    ) -> None:
        self.observation_domain = observation_domain
        self.max_message_bytes = max_message_bytes
        self.templates = templates or FLOW_TEMPLATES
        self.sequence = 0
        ordered = sorted(self.templates.values(), key=lambda t: t.id)
        definitions = b"".join(t.definition() for t in ordered)
        self.template_set = _set(TEMPLATE_SET_ID, [definitions])
        smallest = MESSAGE_HEADER.size + max(
            len(self.template_set),
            _padded(SET_HEADER.size + max(t.record_bytes for t in ordered)),
        )
        if not smallest <= max_message_bytes <= MAX_UDP_PAYLOAD:
            raise ValueError(
                f"IPFIX message size {max_message_bytes} bytes: must be {smallest}.."
                f"{MAX_UDP_PAYLOAD} (at least the header with the template set, or with a set of "
                "the longest record; at most a UDP datagram)"
            )

    def messages(
        self, records: Sequence[FlowRecord], export_time: int, templates: bool = False
    ) -> list[bytes]:
        """``records`` as messages of at most ``max_message_bytes``, the first led by the template
        set if ``templates`` (alone, if there are no records). Records are grouped by template."""
        by_template: dict[int, list[bytes]] = {}
        lookup = self.templates
        for r in records:
            template = lookup[(r.key.version, r.key.direction)]
            by_template.setdefault(template.id, []).append(template.record(flow_values(r)))
        out: list[bytes] = []
        sets: list[bytes] = [self.template_set] if templates else []
        size = MESSAGE_HEADER.size + sum(len(s) for s in sets)
        count = 0
        for set_id in sorted(by_template):
            pending: list[bytes] = []
            for data in by_template[set_id]:
                grown = _padded(SET_HEADER.size + sum(map(len, pending)) + len(data))
                if size + grown > self.max_message_bytes:
                    if pending:
                        sets.append(_set(set_id, pending))
                    out.append(self._message(sets, export_time, count))
                    sets, pending, count = [], [], 0
                    size = MESSAGE_HEADER.size
                pending.append(data)
                count += 1
            sets.append(_set(set_id, pending))
            size += len(sets[-1])
        if sets:
            out.append(self._message(sets, export_time, count))
        return out

    def _message(self, sets: list[bytes], export_time: int, records: int) -> bytes:
        body = b"".join(sets)
        header = MESSAGE_HEADER.pack(
            IPFIX_VERSION,
            MESSAGE_HEADER.size + len(body),
            export_time & 0xFFFFFFFF,
            self.sequence,
            self.observation_domain,
        )
        self.sequence = (self.sequence + records) & 0xFFFFFFFF
        return header + body


def _set(set_id: int, records: list[bytes]) -> bytes:
    body = b"".join(records)
    length = _padded(SET_HEADER.size + len(body))
    return SET_HEADER.pack(set_id, length) + body + bytes(length - SET_HEADER.size - len(body))


@dataclass(frozen=True)
class Collector:
    """Where the messages go: a host (an address or a name) and a UDP port."""

    host: str
    port: int
    family: int
    address: tuple  # the socket address, as getaddrinfo gives it

    @classmethod
    def parse(cls, text: str) -> Collector:
        """``HOST:PORT`` or ``[IPV6]:PORT``, resolved; ValueError saying what is wrong."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or not port_text:
            raise ValueError(
                f"{text!r}: give HOST:PORT, the collector's UDP port ({IPFIX_PORT} for IPFIX); "
                "an IPv6 address in brackets, [2001:db8::1]:4739"
            )
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, [{host}]:{port_text}")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
        if not 1 <= port <= 0xFFFF:
            raise ValueError(f"{text!r}: port {port} must be 1..65535")
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as err:
            raise ValueError(f"{text!r}: cannot resolve {host!r}: {err.strerror}") from None
        family, _, _, _, address = found[0]
        return cls(host, port, family, address)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class IpfixSender:
    """Sends records to a collector over UDP, with the templates at start and every
    ``template_refresh_s``. A failed send is counted (``errors``, ``last_error``), not raised: the
    flow table goes on being read and exported, as UDP goes on losing what it loses."""

    def __init__(
        self,
        collector: Collector,
        encoder: Encoder | None = None,
        template_refresh_s: float = TEMPLATE_REFRESH_S,
    ) -> None:
        self.collector = collector
        self.encoder = encoder or Encoder()
        self.template_refresh_s = template_refresh_s
        self.sock = socket.socket(collector.family, socket.SOCK_DGRAM)
        self.messages = self.records = self.octets = self.errors = 0
        self.last_error = ""
        self._templates_at: float | None = None

    def send(self, records: Sequence[FlowRecord], now: float | None = None) -> None:
        """Send ``records`` (none: only the templates, if they are due)."""
        now = time.time() if now is None else now
        due = self._templates_at is None or now - self._templates_at >= self.template_refresh_s
        if not records and not due:
            return
        for message in self.encoder.messages(records, int(now), templates=due):
            try:
                self.sock.sendto(message, self.collector.address)
            except OSError as err:
                self.errors += 1
                self.last_error = f"{self.collector}: {err.strerror or err}"
                continue
            self.messages += 1
            self.octets += len(message)
        self.records += len(records)
        if due:
            self._templates_at = now

    def counts(self) -> dict[str, int]:
        """Records given to send (in messages sent or failed), messages and bytes sent, and
        sends failed."""
        return {
            "records": self.records,
            "messages": self.messages,
            "bytes": self.octets,
            "send_errors": self.errors,
        }

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Timeouts:
    active_s: float = 60.0  # a flow still going is re-exported this often
    idle_s: float = 15.0  # a flow without a packet for this long has ended

    def __post_init__(self) -> None:
        for name, value in (("active", self.active_s), ("idle", self.idle_s)):
            if not value > 0:
                raise ValueError(f"--{name}-timeout {value}: must be more than 0 seconds")


def epoch_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns: added to a kernel stamp (CLOCK_MONOTONIC_COARSE,
    the same clock at a tick's resolution) it gives the epoch."""
    before = time.monotonic_ns()
    real = time.time_ns()
    after = time.monotonic_ns()
    return real - (before + after) // 2


@dataclass
class _Exported:
    """What the exporter has sent of one flow."""

    start_ns: int  # the flow's first packet: every record's flowStart
    since_ns: int  # the active timeout runs from here: the start, then each record
    packets: int = 0  # exported so far, of the counts the table holds
    bytes: int = 0
    last_seen_ns: int = 0  # as the previous read found it (0: not read before)
    ended: bool = False  # exported as ended, its counts still in the table (an array slot)


class FlowExporter:
    """Exports a ``FlowTable`` through an ``IpfixSender``, one read of the table at a time.

    On each ``cycle`` (the caller's read interval bounds how late a timeout is seen):

    - a flow with no packet for ``idle_s`` has ended: exported with flowEndReason 1 (idle timeout),
      or 3 (end of flow detected) if it saw a TCP FIN or RST; a flow that saw one ends sooner,
      as soon as a read finds no packet since the previous read (the last ACK counted);
    - a flow still going whose last record (or start) is ``active_s`` old is exported with reason 2
      (active timeout) and its counts since then;
    - ``finish`` exports every flow left with reason 4 (forced end) and empties the table.

    An ended flow leaves the table (``FlowTable.take``): a hash entry is read and deleted in one
    syscall, so a packet counted between this read and the delete is in the record, and one after
    it starts a new entry and a new flow (its first packet its start): none is lost or counted
    twice. Limits the kernel sets: a program running on another CPU at the instant of the delete,
    between its lookup and its add, adds to the deleted entry (prealloc'd maps reuse it at once),
    a window of one program's run after a flow has been idle for ``idle_s``; an LRU table evicts
    without telling, and an evicted flow's counts not yet exported are lost (the exporter sees an
    entry gone, or made anew with fewer packets, and starts over).

    The array kinds cannot delete (``FlowTable.removable``): an ended flow stays in its slot, and
    the exporter remembers what it sent; if the slot's counts move again, that is a new flow, its
    start the previous read (the first packet came after it), its counts the growth. ``finish``
    runs once the program is detached and zeroes the slots then. The ring buffer's flows are the
    reader's own: they leave exactly.
    """

    def __init__(self, table: FlowTable, sender: IpfixSender, timeouts: Timeouts) -> None:
        self.table, self.sender, self.timeouts = table, sender, timeouts
        self._flows: dict[FlowKey, _Exported] = {}
        self._last_read_ns = now_coarse_ns()
        self._offset_ns = epoch_offset_ns()

    def start(self) -> None:
        """Send the templates (before any data, so that a collector can decode the first)."""
        self.sender.send([])

    def cycle(self, now_ns: int | None = None) -> list[FlowRecord]:
        """Read the table once, export what the timeouts say; the records sent."""
        now = now_coarse_ns() if now_ns is None else now_ns
        self._offset_ns = epoch_offset_ns()
        active_ns, idle_ns = int(self.timeouts.active_s * 1e9), int(self.timeouts.idle_s * 1e9)
        records: list[FlowRecord] = []
        ending: list[tuple[Flow, EndReason]] = []
        present = set()
        for f in self.table.flows():
            present.add(f.key)
            t = self._tracked(f)
            if t is None:
                continue
            finished = f.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)
            if now - f.last_seen_ns >= idle_ns or (finished and f.last_seen_ns == t.last_seen_ns):
                ending.append((f, EndReason.END_OF_FLOW if finished else EndReason.IDLE_TIMEOUT))
            elif now - t.since_ns >= active_ns and f.packets > t.packets:
                records.append(self._record(f, t, EndReason.ACTIVE_TIMEOUT))
                t.packets, t.bytes, t.since_ns = f.packets, f.bytes, now
            t.last_seen_ns = f.last_seen_ns
        for key in self._flows.keys() - present:
            del self._flows[key]  # gone without us: an LRU evicted it, or someone emptied the table
        records += self._end(ending)
        self._last_read_ns = now
        self.sender.send(records)
        return records

    def finish(self) -> list[FlowRecord]:
        """Export every flow left, flowEndReason 4, and empty the table; the records sent. Call it
        once the program is detached (an array is zeroed slot by slot)."""
        self._offset_ns = epoch_offset_ns()
        if self.table.removable:
            finals = list(self.table.take([f.key for f in self.table.flows()]).values())
        else:
            finals = self.table.flows()
            self.table.clear()
        records = []
        for f in finals:
            t = self._tracked(f)
            if t is not None:
                records.append(self._record(f, t, EndReason.FORCED_END))
        self._flows.clear()
        self.sender.send(records)
        return records

    def _tracked(self, f: Flow) -> _Exported | None:
        """What was sent of ``f``'s flow; None for an ended flow whose slot has not moved."""
        t = self._flows.get(f.key)
        if t is None or f.packets < t.packets:  # a new flow, or a new entry for it
            t = self._flows[f.key] = _Exported(f.first_seen_ns, f.first_seen_ns)
        elif t.ended:
            if f.packets == t.packets:
                return None
            start = min(self._last_read_ns, f.last_seen_ns)  # it came back after that read
            t.start_ns, t.since_ns, t.last_seen_ns, t.ended = start, start, 0, False
        return t

    def _end(self, ending: list[tuple[Flow, EndReason]]) -> list[FlowRecord]:
        if not ending:
            return []
        if not self.table.removable:
            records = []
            for f, reason in ending:
                t = self._flows[f.key]
                records.append(self._record(f, t, reason))
                t.packets, t.bytes, t.ended = f.packets, f.bytes, True
            return records
        taken = self.table.take([f.key for f, _ in ending])
        records = []
        for f, reason in ending:
            t = self._flows.pop(f.key)
            final = taken.get(f.key)
            if final is None:
                continue  # evicted between the read and the take: nothing left to send
            if final.packets < t.packets:  # evicted and made anew in between: a new flow
                t = _Exported(final.first_seen_ns, final.first_seen_ns)
            records.append(self._record(final, t, reason))
        return records

    def _record(self, f: Flow, t: _Exported, reason: EndReason) -> FlowRecord:
        return FlowRecord(
            f.key,
            f.packets - t.packets,
            f.bytes - t.bytes,
            (t.start_ns + self._offset_ns) // 1_000_000,
            (f.last_seen_ns + self._offset_ns) // 1_000_000,
            f.tcp_flags,
            reason,
        )


# --- reading an export back: tshark's dissector ---


@dataclass(frozen=True)
class DecodedMessage:
    """One IPFIX message as tshark's ``cflow`` dissector decodes it."""

    frame: int  # in the capture, from 1
    version: int
    length: int
    export_time: int
    sequence: int
    domain: int
    sets: tuple[tuple[int, int], ...]  # (set id, set length), in order
    templates: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]  # (id, ((element, length), ...))
    records: tuple[FlowRecord, ...]
    undecoded: int  # data sets tshark had no template for


def tshark_messages(pcap: Path, port: int = IPFIX_PORT) -> list[DecodedMessage]:
    """The IPFIX messages to UDP ``port`` in ``pcap``, decoded by tshark (which keeps the templates
    it has seen, as a collector does). RuntimeError if tshark fails or calls a message malformed."""
    done = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},cflow", "-T", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tshark -r {pcap}: exit {done.returncode}: {done.stderr.strip()}")
    messages = []
    for packet in json.loads(done.stdout or "[]", object_pairs_hook=lambda pairs: pairs):
        layers = _one(_one(packet, "_source"), "layers")
        frame = int(_one(_one(layers, "frame"), "frame.number"))
        if _all(layers, "_ws.malformed"):
            raise RuntimeError(f"{pcap}: frame {frame}: tshark calls the IPFIX message malformed")
        for cflow in _all(layers, "cflow"):
            messages.append(_message(frame, cflow))
    return messages


def _all(pairs: list, name: str) -> list:
    return [value for key, value in pairs if key == name]


def _one(pairs: list, name: str) -> object:
    (value,) = _all(pairs, name)
    return value


def _message(frame: int, cflow: list) -> DecodedMessage:
    sets, templates, records, undecoded = [], [], [], 0
    for key, value in cflow:
        if not key.startswith("Set "):
            continue
        set_id = int(_one(value, "cflow.flowset_id"))
        sets.append((set_id, int(_one(value, "cflow.flowset_length"))))
        for name, item in value:
            if name.startswith("Template ("):
                fields = tuple(
                    (
                        int(_one(spec, "cflow.template_ipfix_field_type")),
                        int(_one(spec, "cflow.template_field_length")),
                    )
                    for field, spec in item
                    if field.startswith("Field (")
                )
                templates.append((int(_one(item, "cflow.template_id")), fields))
            elif name.startswith("Flow "):
                records.append(_record(dict(item)))
        if set_id > 255 and not _all(value, "cflow.template_frame"):
            undecoded += 1
    return DecodedMessage(
        frame,
        int(_one(cflow, "cflow.version")),
        int(_one(cflow, "cflow.len")),
        int(_one(_one(cflow, "cflow.timestamp_tree"), "cflow.exporttime")),
        int(_one(cflow, "cflow.sequence")),
        int(_one(cflow, "cflow.od_id")),
        tuple(sets),
        tuple(templates),
        tuple(records),
        undecoded,
    )


def _record(flow: dict) -> FlowRecord:
    v6 = "cflow.srcaddrv6" in flow
    direction = Direction(int(flow["cflow.direction"]))
    times = dict(flow["cflow.timedelta_tree"])
    key = FlowKey(
        6 if v6 else 4,
        int(flow["cflow.inputint" if direction is Direction.INGRESS else "cflow.outputint"]),
        direction,
        ipaddress.ip_address(flow["cflow.srcaddrv6" if v6 else "cflow.srcaddr"]),
        ipaddress.ip_address(flow["cflow.dstaddrv6" if v6 else "cflow.dstaddr"]),
        int(flow["cflow.srcport"]),
        int(flow["cflow.dstport"]),
        int(flow["cflow.protocol"]),
    )
    return FlowRecord(
        key,
        int(flow["cflow.packets"]),
        int(flow["cflow.octets"]),
        _epoch_ms(times["cflow.abstimestart"]),
        _epoch_ms(times["cflow.abstimeend"]),
        int(flow["cflow.tcpflags"], 16),
        EndReason(int(flow["cflow.flow_end_reason"])),
    )


def _epoch_ms(text: str) -> int:
    """tshark's absolute time, ``Nov 24, 2025 16:00:01.234000000 UTC``, as epoch milliseconds."""
    whole, _, fraction = text.removesuffix(" UTC").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%b %d, %Y %H:%M:%S"))
    return seconds * 1000 + int(fraction[:3].ljust(3, "0"))
