"""IPFIX export of the flow table (``bpf.flowmon.ipfix``), decoded by tshark's ``cflow`` dissector.

- The encoder, byte for byte: the message header (version 10, length, export time, sequence
  number, observation domain), the template set and its records, a data record's fields, set
  lengths and padding to 4 bytes (a template of an odd record length), messages split at the
  size limit, sequence numbers counting the data records sent before. tshark decodes every message
  of a pcap written with scapy into the records given.
- ``Collector.parse`` and the sender's template refresh; Debian's nfdump collector (nfcapd) takes
  the messages without a sequence error and prints the records given.
- The model's rules for an export (``model.export_problems``): each broken rule is found.
- The exporter against the kernel's table (BPF_PROG_TEST_RUN frames, every storage): a TCP flow
  ends at its FIN (reason 3), long flows are re-exported at the active timeout with their deltas
  (2), idle ones end (1) and leave the table (the array kinds keep their slots), a flow back after
  its end is a new flow, and the exporter's exit sends the rest (4) and empties the table. The
  datagrams, caught on a UDP socket and decoded by tshark, are the records the exporter returned,
  and the records add up to the model's table (``model.export_problems``).
- No count is lost between a read and a delete: frames fed from another thread while the exporter
  ends every flow on each read add up exactly.
"""

from __future__ import annotations

import calendar
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpf.flowmon import Config, FlowMon, Hook, Model, Storage
from bpf.flowmon.flowmon import now_coarse_ns
from bpf.flowmon.ipfix import (
    FLOW_TEMPLATES,
    IPFIX_PORT,
    MESSAGE_HEADER,
    Collector,
    Element,
    Encoder,
    FlowExporter,
    IpfixSender,
    Template,
    Timeouts,
    flow_template,
    tshark_messages,
)
from bpf.flowmon.model import (
    Counts,
    Direction,
    EndReason,
    FlowKey,
    FlowRecord,
    export_problems,
)
from harness.capture import write_pcap

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:0:1::2"}
LOOPBACK = 1  # test_run's device
EXPORT_TIME = 1_796_000_000
S = 1_000_000_000  # ns
TICK_S = (
    0.011  # the longest a CLOCK_MONOTONIC_COARSE stamp lags the clock (a jiffy at HZ=100), and 1 ms
)


def key4(sport: int = 1234, ifindex: int = 7, direction: Direction = Direction.INGRESS) -> FlowKey:
    return FlowKey(
        4,
        ifindex,
        direction,
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("10.0.0.2"),
        sport,
        80,
        6,
    )


def key6(sport: int = 1, direction: Direction = Direction.EGRESS) -> FlowKey:
    return FlowKey(
        6,
        8,
        direction,
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_address("2001:db8::2"),
        sport,
        53,
        17,
    )


def record(key: FlowKey, packets: int = 10, reason: EndReason = EndReason.IDLE_TIMEOUT):
    return FlowRecord(
        key, packets, packets * 100, 1_796_000_000_123, 1_796_000_001_456, 0x12, reason
    )


def decoded(tmp_path, messages: list[bytes], name: str = "export.pcap"):
    """tshark's reading of ``messages`` sent as UDP datagrams to the IPFIX port."""
    pcap = tmp_path / name
    write_pcap(
        pcap,
        [
            bytes(
                Ether(**MACS)
                / IP(src="10.0.0.2", dst="10.0.0.1")
                / UDP(sport=40000, dport=IPFIX_PORT)
                / Raw(m)
            )
            for m in messages
        ],
    )
    return tshark_messages(pcap)


# --- the encoder ---


def test_header_template_set_and_data_record_byte_for_byte(tmp_path):
    encoder = Encoder(observation_domain=0x01020304)
    r = record(key4())
    (message,) = encoder.messages([r], EXPORT_TIME, templates=True)
    template = FLOW_TEMPLATES[(4, Direction.INGRESS)]
    definitions = b"".join(
        t.definition() for t in sorted(FLOW_TEMPLATES.values(), key=lambda t: t.id)
    )
    data = (
        bytes([10, 0, 0, 1, 10, 0, 0, 2])
        + struct.pack("!HHBBBB", 1234, 80, 6, 0x12, 0, 1)
        + struct.pack("!IQQQQ", 7, 10, 1000, 1_796_000_000_123, 1_796_000_001_456)
    )
    assert len(data) == template.record_bytes == 52
    want = (
        struct.pack("!HHIII", 10, 16 + 4 + len(definitions) + 4 + 52, EXPORT_TIME, 0, 0x01020304)
        + struct.pack("!HH", 2, 4 + len(definitions))
        + definitions
        + struct.pack("!HH", 256, 4 + 52)
        + data
    )
    assert message == want, f"message bytes:\n got {message.hex()}\nwant {want.hex()}"
    # Template 256: id, 13 fields, then (element, length) pairs in record order.
    assert template.definition()[:4] == struct.pack("!HH", 256, 13)
    assert template.definition()[4:12] == struct.pack("!HHHH", 8, 4, 12, 4)
    assert len(definitions) == 4 * (4 + 13 * 4)

    (m,) = decoded(tmp_path, [message])
    assert (m.version, m.length, m.export_time, m.sequence, m.domain) == (
        10,
        len(message),
        EXPORT_TIME,
        0,
        0x01020304,
    )
    assert m.sets == ((2, 4 + len(definitions)), (256, 56))
    assert dict(m.templates) == {
        t.id: tuple((int(e), n) for e, n in t.fields) for t in FLOW_TEMPLATES.values()
    }
    assert m.records == (r,), "tshark decodes the record given"
    assert m.undecoded == 0


def test_every_template_decoded_by_tshark_with_extreme_values(tmp_path):
    big = 2**64 - 1
    records = [
        FlowRecord(
            key4(0, 2**32 - 1), big, big, 0, 4_102_444_800_000, 0xFF, EndReason.ACTIVE_TIMEOUT
        ),
        FlowRecord(key4(65535, 1, Direction.EGRESS), 1, 60, 1, 1, 0, EndReason.END_OF_FLOW),
        record(key6(7, Direction.INGRESS), reason=EndReason.FORCED_END),
        record(key6(65535, Direction.EGRESS)),
    ]
    messages = Encoder().messages(records, EXPORT_TIME, templates=True)
    (m,) = decoded(tmp_path, messages)
    assert sorted(m.records, key=lambda r: r.key) == sorted(records, key=lambda r: r.key)
    assert [set_id for set_id, _ in m.sets] == [2, 256, 257, 258, 259]


def test_sets_padded_to_four_bytes_for_a_record_of_odd_length(tmp_path):
    """tcpControlBits as RFC 7125's unsigned16: a 53-byte record, sets padded with zeros."""
    fields = tuple(
        (e, 2 if e is Element.TCP_CONTROL_BITS else n)
        for e, n in flow_template(300, 4, Direction.INGRESS).fields
    )
    odd = Template(300, fields)
    assert odd.record_bytes == 53
    templates = {**FLOW_TEMPLATES, (4, Direction.INGRESS): odd}
    encoder = Encoder(templates=templates)
    for count, set_length in ((1, 60), (2, 112), (3, 164), (4, 216)):
        records = [record(key4(sport)) for sport in range(count)]
        (message,) = encoder.messages(records, EXPORT_TIME, templates=True)
        template_set = len(encoder.template_set)
        (set_id, length) = struct.unpack_from("!HH", message, 16 + template_set)
        assert (set_id, length) == (300, set_length), f"{count} records"
        assert len(message) == 16 + template_set + set_length
        pad = set_length - 4 - 53 * count
        assert 0 <= pad < 4 and message[len(message) - pad :] == bytes(pad), "zero padding"
        (m,) = decoded(tmp_path, [message], f"odd{count}.pcap")
        assert list(m.records) == records, f"{count} records: tshark skips the padding"


@pytest.mark.parametrize("limit", [1400, 512, 244])
def test_records_split_over_messages_within_the_size_limit(tmp_path, limit):
    encoder = Encoder(max_message_bytes=limit)
    records = [record(key4(p)) for p in range(70)] + [record(key6(p)) for p in range(30)]
    first = encoder.messages(records, EXPORT_TIME, templates=True)
    second = encoder.messages(records[:5], EXPORT_TIME + 1)
    messages = first + second
    assert all(len(m) <= limit for m in messages), [len(m) for m in messages]
    for m in messages:
        assert struct.unpack_from("!H", m, 2)[0] == len(m), "the header's length"
    for m in first[:-1]:
        assert len(m) + 4 + 76 > limit, "a message is split only when the next record is too big"
    got = decoded(tmp_path, messages)
    assert len(got) == len(messages)
    assert [r for m in got for r in m.records] == records + records[:5], "every record, in order"
    before = 0
    for m in got:
        assert m.sequence == before, "the sequence number counts the data records sent before"
        assert m.undecoded == 0
        before += len(m.records)
        assert all(length % 4 == 0 for _, length in m.sets)
    assert encoder.sequence == 105


def test_template_only_message_keeps_the_sequence_and_it_wraps():
    encoder = Encoder()
    encoder.sequence = 2**32 - 1
    (templates_only,) = encoder.messages([], EXPORT_TIME, templates=True)
    assert MESSAGE_HEADER.unpack_from(templates_only)[3] == 2**32 - 1
    assert len(templates_only) == 16 + len(encoder.template_set)
    (one,) = encoder.messages([record(key4()), record(key4(2))], EXPORT_TIME)
    assert MESSAGE_HEADER.unpack_from(one)[3] == 2**32 - 1
    assert encoder.sequence == 1, "modulo 2**32"
    assert encoder.messages([], EXPORT_TIME) == []


def test_a_size_limit_outside_what_fits_is_refused():
    with pytest.raises(ValueError, match=r"must be 244\.\.65507"):
        Encoder(max_message_bytes=243)
    with pytest.raises(ValueError, match=r"must be 244\.\.65507"):
        Encoder(max_message_bytes=65508)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("127.0.0.1:4739", ("127.0.0.1", 4739, socket.AF_INET)),
        ("[::1]:9995", ("::1", 9995, socket.AF_INET6)),
        ("localhost:2055", ("localhost", 2055, None)),
    ],
)
def test_collector_parsed(text, found):
    c = Collector.parse(text)
    assert (c.host, c.port) == found[:2]
    assert found[2] is None or c.family == found[2]
    assert str(c) == text.replace("localhost", "localhost")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "give HOST:PORT"),
        (":4739", "give HOST:PORT"),
        ("127.0.0.1:", "give HOST:PORT"),
        ("::1:4739", "put an IPv6 address in brackets, [::1]:4739"),
        ("127.0.0.1:ipfix", "port 'ipfix' is not a number"),
        ("127.0.0.1:0", "port 0 must be 1..65535"),
        ("127.0.0.1:65536", "port 65536 must be 1..65535"),
        ("no-such-host.invalid:4739", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_bad_collector_refused(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Collector.parse(text)


class Receiver:
    """A UDP socket on loopback standing in for a collector: the datagrams it got, as a pcap."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.collector = Collector.parse(f"127.0.0.1:{self.sock.getsockname()[1]}")
        self.datagrams: list[bytes] = []

    def receive(self) -> list[bytes]:
        self.sock.setblocking(False)
        try:
            while True:
                self.datagrams.append(self.sock.recv(65536))
        except BlockingIOError:
            pass
        return self.datagrams

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_templates_at_start_and_refreshed(receiver):
    sender = IpfixSender(receiver.collector, template_refresh_s=10)
    sender.send([], now=100.0)
    sender.send([], now=105.0)  # not due: nothing sent
    sender.send([record(key4())], now=106.0)
    sender.send([record(key4())], now=110.0)
    sets = []
    for datagram in receiver.receive():
        sets.append(struct.unpack_from("!H", datagram, 16)[0])
    assert sets == [2, 256, 2], "templates alone at start, then data, then the refresh first"
    assert sender.counts() == {
        "records": 2,
        "messages": 3,
        "bytes": sum(map(len, receiver.datagrams)),
        "send_errors": 0,
    }
    sender.close()


def test_a_collector_not_listening_or_refused_does_not_stop_the_export():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    quiet = IpfixSender(Collector.parse(f"127.0.0.1:{port}"))  # ICMP port unreachable comes back
    for _ in range(3):
        quiet.send([record(key4())])
    assert (quiet.messages, quiet.errors) == (3, 0), "an unconnected socket hears no ICMP error"
    quiet.close()
    refused = IpfixSender(Collector.parse(f"255.255.255.255:{IPFIX_PORT}"))  # no SO_BROADCAST
    refused.send([record(key4())])
    refused.send([record(key4())])
    assert (refused.messages, refused.errors, refused.records) == (0, 2, 2)
    assert "255.255.255.255:4739: Permission denied" in refused.last_error
    refused.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nfdump_time_ms(text: str) -> int:
    """nfdump's ``2026-12-03 12:30:53.108`` (UTC) as epoch milliseconds."""
    whole, _, ms = text.strip().partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) * 1000 + int(ms)


def test_nfdump_collects_the_export(tmp_path):
    """Debian's nfcapd, a collector independent of tshark, takes the messages (split, both IP
    versions, the templates first) without a sequence error, and nfdump prints the records."""
    assert shutil.which("nfcapd"), "nfdump's collector nfcapd is not installed: run ci/bootstrap"
    port = free_udp_port()
    log = tmp_path / "nfcapd.log"
    with log.open("w") as out:
        nfcapd = subprocess.Popen(
            ["nfcapd", "-w", str(tmp_path), "-b", "127.0.0.1", "-p", str(port), "-t", "3600"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while "Startup" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        sender = IpfixSender(Collector.parse(f"127.0.0.1:{port}"))
        records = [record(key4(p)) for p in range(60)] + [record(key6(p)) for p in range(40)]
        sender.send(records[:50])
        sender.send(records[50:])
        assert sender.messages >= 5 and sender.errors == 0
        sender.close()
        time.sleep(0.3)
    finally:
        nfcapd.send_signal(signal.SIGTERM)
        nfcapd.wait(timeout=10)
    text = log.read_text()
    assert "Flows: 100," in text and "Sequence Errors: 0," in text, text
    (written,) = tmp_path.glob("nfcapd.2*")
    fields = "%sa,%sp,%da,%dp,%pr,%pkt,%byt,%ts,%te,%in,%out"
    done = subprocess.run(
        ["nfdump", "-r", str(written), "-q", "-N", "-o", f"fmt:{fields}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    got = set()
    for row in done.stdout.splitlines():
        sa, sp, da, dp, pr, pkt, byt, ts, te, ingress, egress = (c.strip() for c in row.split(","))
        got.add((sa, int(sp), da, int(dp), int(pr), int(pkt), int(byt)))
        assert (nfdump_time_ms(ts), nfdump_time_ms(te)) == (1_796_000_000_123, 1_796_000_001_456)
        assert (ingress, egress) in (("7", "0"), ("0", "8")), "the ifindex, in or out"
    want = {
        (str(r.key.src), r.key.sport, str(r.key.dst), r.key.dport, r.key.proto, r.packets, r.bytes)
        for r in records
    }
    assert got == want


# --- the model's rules for an export ---


def test_export_problems_finds_each_broken_rule():
    k = key4()
    table = {k: Counts(packets=30, bytes=3000, tcp_flags=0x12)}

    def rec(packets, reason, start=1000, end=2000, flags=0x10, key=k):
        return FlowRecord(key, packets, packets * 100, start, end, flags, reason)

    good = [rec(10, EndReason.ACTIVE_TIMEOUT), rec(10, EndReason.IDLE_TIMEOUT, end=3000)]
    good.append(rec(10, EndReason.FORCED_END, start=5000, end=6000))
    assert export_problems(good, table, finished=True) == []
    still_going = [*good[:2], rec(10, EndReason.ACTIVE_TIMEOUT, 5000, 6000)]
    assert export_problems(still_going, table, finished=False) == [], "an exporter still running"
    broken = {
        "records add up to 20 packets": good[:2],
        "an active-timeout record without packets": [
            *good,
            rec(0, EndReason.ACTIVE_TIMEOUT, 7000, 7000),
        ],
        "starts at 2500 ms, after its end 2000": [
            good[0],
            rec(10, EndReason.END_OF_FLOW, 2500),
            good[2],
        ],
        "in a run that started at 1000 ms": [
            good[0],
            rec(10, EndReason.IDLE_TIMEOUT, 900),
            good[2],
        ],
        "TCP flags 0x1": [good[0], good[1], rec(10, EndReason.FORCED_END, 5000, 6000, flags=0x01)],
        "records after the exporter's forced end": [good[2], good[0], good[1]],
        "its last record does not end it": [*good[:2], rec(10, EndReason.ACTIVE_TIMEOUT, 5000)],
        "a flow the table does not have": [*good, rec(1, EndReason.IDLE_TIMEOUT, key=key4(9))],
    }
    for expected, records in broken.items():
        problems = export_problems(records, table, finished=True)
        assert any(expected in p for p in problems), f"{expected!r} not in {problems}"


# --- the exporter against the kernel's table ---


def udp4(sport: int, payload: bytes = b"") -> bytes:
    return bytes(Ether(**MACS) / IP(**V4) / UDP(sport=sport, dport=53) / payload)


def udp6(sport: int) -> bytes:
    return bytes(Ether(**MACS) / IPv6(**V6) / UDP(sport=sport, dport=53) / b"six")


def tcp4(flags: str) -> bytes:
    return bytes(Ether(**MACS) / IP(**V4) / TCP(sport=40000, dport=443, flags=flags))


class Fed:
    """Frames through the kernel (XDP test_run) and the model; the model keeps every packet ever
    fed (its table is what the export must add up to)."""

    def __init__(self, fm: FlowMon, config: Config) -> None:
        self.fm, self.model = fm, Model(config)

    def __call__(self, *frames: bytes) -> None:
        for frame in frames:
            self.fm.program(Hook.XDP).test_run(frame)
            self.model.feed(frame, Hook.XDP, LOOPBACK)

    def flows(self):
        self.model.drain()
        return self.model.flows


def reasons(records: list[FlowRecord]) -> dict[int, list[tuple[str, int]]]:
    """Per source port: (reason, packets) of each record, in order."""
    out: dict[int, list[tuple[str, int]]] = {}
    for r in records:
        out.setdefault(r.key.sport, []).append((r.reason.name, r.packets))
    return out


@pytest.mark.usefixtures("one_cpu")
@pytest.mark.parametrize("storage", list(Storage), ids=lambda s: s.value)
def test_exporter_timeouts_against_the_kernels_table(storage, receiver, tmp_path):
    config = Config(storage=storage, entries=256)
    with FlowMon(config) as fm:
        feed = Fed(fm, config)
        sender = IpfixSender(receiver.collector)
        exporter = FlowExporter(fm.table, sender, Timeouts(active_s=1, idle_s=100))
        exporter.start()
        sent: list[FlowRecord] = []

        before = time.time()
        feed(udp4(1000), udp4(1000), udp4(1000), udp6(2000), udp6(2000))
        after = time.time()
        feed(tcp4("S"), tcp4("A"), tcp4("FA"))
        t0 = now_coarse_ns()
        sent += exporter.cycle(t0)
        assert sent == [], "nothing timed out yet, and the FIN's flow has not been read twice"
        sent += exporter.cycle(t0)
        assert reasons(sent) == {40000: [("END_OF_FLOW", 3)]}, "FIN seen, no packet since"
        tcp = [f for f in fm.flows() if f.key.proto == 6]
        assert len(tcp) == (1 if storage.array else 0), "an ended flow leaves (a slot stays)"

        feed(udp4(1000), udp4(1000))
        sent += exporter.cycle(t0 + 3 * S // 2)
        assert reasons(sent[1:]) == {1000: [("ACTIVE_TIMEOUT", 5)], 2000: [("ACTIVE_TIMEOUT", 2)]}
        feed(udp4(1000))
        sent += exporter.cycle(t0 + 2 * S)  # 0.5 s after the last: not yet
        assert len(sent) == 3
        sent += exporter.cycle(t0 + 3 * S)
        assert reasons(sent[3:]) == {1000: [("ACTIVE_TIMEOUT", 1)]}, "the delta since the last"

        sent += exporter.cycle(t0 + 200 * S)
        assert reasons(sent[4:]) == {1000: [("IDLE_TIMEOUT", 0)], 2000: [("IDLE_TIMEOUT", 0)]}
        left = {f.key.sport for f in fm.flows()}
        assert left == ({1000, 2000, 40000} if storage.array else set()), "idle flows leave"
        sent += exporter.cycle(t0 + 300 * S)
        assert len(sent) == 6, "an ended flow is exported once"

        feed(udp4(1000, b"again"), udp4(1000, b"again"))
        sent += exporter.cycle()
        assert len(sent) == 6
        sent += exporter.finish()
        assert reasons(sent[6:]) == {1000: [("FORCED_END", 2)]}, "back after its end: a new flow"
        assert fm.flows() == [], "the exporter's exit empties the table"

        problems = export_problems(sent, feed.flows(), finished=True)
        assert not problems, "\n".join(problems)
        again = [r for r in sent if r.key.sport == 1000 and r.reason is EndReason.FORCED_END]
        assert again[0].bytes == 2 * len(udp4(1000, b"again"))

    got = decoded(tmp_path, receiver.receive())
    assert [r for m in got for r in m.records] == sent, "tshark reads what the exporter sent"
    assert got[0].records == () and got[0].templates, "the templates come first, alone"
    assert all(m.undecoded == 0 for m in got)
    assert [m.sequence for m in got] == [
        sum(len(m.records) for m in got[:i]) for i in range(len(got))
    ]
    first = next(r for r in sent if r.key.sport == 1000)
    # The kernel's coarse clock lags by up to a tick (10 ms at HZ=100); milliseconds round down.
    assert before - TICK_S <= first.start_ms / 1000 <= after + 0.001, (
        f"the flow's first packet at {first.start_ms / 1000:.3f} s since the epoch, fed from "
        f"{before:.3f} to {after:.3f}"
    )


@pytest.mark.parametrize(
    "storage", [Storage.HASH, Storage.LRU_PERCPU_HASH, Storage.RINGBUF], ids=lambda s: s.value
)
def test_no_count_lost_between_a_read_and_a_delete(storage, receiver):
    """One thread feeds frames while the exporter ends every flow on each read: every packet is
    in exactly one record."""
    config = Config(storage=storage, ring_bytes=1 << 22)
    frames = [udp4(3000 + i % 4) for i in range(4)]
    rounds = 3000
    with FlowMon(config) as fm:
        exporter = FlowExporter(fm.table, IpfixSender(receiver.collector), Timeouts(1, 1))
        sent: list[FlowRecord] = []
        done = threading.Event()

        def feeder() -> None:
            program = fm.program(Hook.XDP)
            for _ in range(rounds):
                for frame in frames:
                    program.test_run(frame)
            done.set()

        thread = threading.Thread(target=feeder)
        thread.start()
        cycles = 0
        while not done.is_set():
            sent += exporter.cycle(now_coarse_ns() + 10 * S)  # every flow idle: taken
            cycles += 1
        thread.join()
        sent += exporter.finish()
    assert cycles > 10, f"the exporter read the table {cycles} times only: no race tested"
    assert sum(r.packets for r in sent) == rounds * len(frames), (
        f"{storage.value}: {sum(r.packets for r in sent)} packets in {len(sent)} records, "
        f"{rounds * len(frames)} fed"
    )
    assert sum(r.bytes for r in sent) == rounds * sum(map(len, frames))
