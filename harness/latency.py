"""One-way latency of timestamped probe frames between two interfaces on the same host clock.

A probe is an untagged Ethernet/IPv4/UDP frame (``injector.templates.udp4``) whose payload starts
with ``MAGIC``, a sequence number and the CLOCK_REALTIME nanoseconds at which user space hands it to
``send()``. Its UDP checksum is 0 ("none", RFC 768), so stamping a probe is one ``pack_into``.

The receiver is an AF_PACKET socket on another interface, usually in another namespace: namespaces
share the host's clocks, so ``latency = receive stamp - send stamp`` needs no synchronisation. The
receive stamp is the kernel's software timestamp of the frame (``SO_TIMESTAMPING``, taken when the
frame enters ``netif_receive_skb``), so when Python gets around to reading it does not matter. A
latency therefore covers the sender's ``send()`` system call, the link and the receiver's queues up
to the stack, not the time until an application reads the frame.

Probes are told from bulk traffic by the magic at a fixed offset, checked by a classic BPF filter on
the receiving socket: bulk frames never reach Python, so probes can be measured while a bulk load
(``injector.xdp.XdpSender`` in another thread or process) fills the same link. An XDP program on the
receiving interface must let probes pass (``harness.sink.Sink(..., verdict=XdpAction.PASS)``).

Counting (after RFC 4737): ``received`` counts distinct sequence numbers, ``duplicated`` the copies
beyond the first, ``lost`` the sequence numbers sent that never arrived, and ``reordered`` the first
copies that arrived after a higher sequence number had. A probe the sending link refused (ENOBUFS
while a flood fills it) is lost too, and ``refused`` says how many of the lost were, by reason.
Latency percentiles are exact (nearest rank) over first copies; no outlier is dropped, since the
tail is what a latency figure is for.

A TRex server times its own latency streams (``STLFlowLatencyStats``, ``injector.trex_backend``)
on its one clock, sending from one port and receiving on another; ``trex_latency`` reads what it
reports into a ``TrexLatencyReport``, in the same field names.

Not for: throughput or frame counts at rate (``harness.sink``), packet contents (``harness.capture``),
hardware timestamps, or probes across VLANs, tunnels or hosts with separate clocks.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import math
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from scapy.layers.inet import UDP

from bpf import netns as bpf_netns
from injector import templates
from injector.scapy_backend import PacketSocket

MAGIC = 0x424C4C50  # "BLLP": bpflab latency probe
HEADER = struct.Struct("!IQQ")  # magic, sequence number, send time (ns, CLOCK_REALTIME)
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_SO_RCVBUFFORCE, _SO_ATTACH_FILTER, _SO_TIMESTAMPING = 33, 26, 37
_SOF_TIMESTAMPING_RX_SOFTWARE, _SOF_TIMESTAMPING_SOFTWARE = 1 << 3, 1 << 4
_TIMESPEC = struct.Struct("qq")
_RECEIVE_BUFFER = 16 << 20
_MAX_FRAME = 2048
# The first socket asking for receive stamps turns them on through a workqueue (net_enable_timestamp):
# a frame received in the meantime has none. Probes start this long after the receiver opened.
_STAMPS_ON_AFTER = 0.05


class LatencyError(RuntimeError):
    """A probe cannot be measured; the message says which and why."""


@dataclass(frozen=True)
class ProbeTemplate:
    """A probe frame with a zeroed header at ``offset``: ``stamped(seq, sent_ns)`` fills it in."""

    frame: bytes
    offset: int

    @classmethod
    def udp4(cls, frame_size: int = 64, **fields: object) -> ProbeTemplate:
        """Probes as ``templates.udp4(**fields)``, padded to ``frame_size`` (no FCS), UDP checksum 0."""
        pkt = templates.pad_to(templates.udp4(payload=bytes(HEADER.size), **fields), frame_size)
        pkt[UDP].chksum = 0
        udp_at = next(
            at for layer, at in templates.layers_with_offsets(pkt) if isinstance(layer, UDP)
        )
        return cls(bytes(pkt), udp_at + 8)

    def stamped(self, seq: int, sent_ns: int) -> bytes:
        frame = bytearray(self.frame)
        HEADER.pack_into(frame, self.offset, MAGIC, seq, sent_ns)
        return bytes(frame)

    def read(self, frame: bytes) -> tuple[int, int] | None:
        """``(seq, sent_ns)`` of a probe frame; None for any other frame."""
        if len(frame) < self.offset + HEADER.size:
            return None
        magic, seq, sent_ns = HEADER.unpack_from(frame, self.offset)
        return (seq, sent_ns) if magic == MAGIC else None

    def socket_filter(self) -> bytes:
        """A ``struct sock_fprog`` body: accept whole frames with the magic at ``offset``, drop others."""
        ld_word, jeq, ret = (
            0x20,
            0x15,
            0x06,
        )  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
        insn = struct.Struct("HBBI")
        return b"".join(
            (
                insn.pack(ld_word, 0, 0, self.offset),
                insn.pack(jeq, 0, 1, MAGIC),
                insn.pack(ret, 0, 0, 0x40000),
                insn.pack(ret, 0, 0, 0),
            )
        )


class ProbeSender:
    """Sends probes out of ``ifname`` (in namespace ``netns``), each stamped just before ``send()``."""

    def __init__(self, probes: ProbeTemplate, ifname: str, netns: str | None = None) -> None:
        self.probes = probes
        self._out = PacketSocket(ifname, netns)

    def send(self, seq: int) -> bool:
        """Stamp and send probe ``seq``; False if the loaded link refused it (see ``refused``)."""
        return self._out.send(self.probes.stamped(seq, time.clock_gettime_ns(time.CLOCK_REALTIME)))

    @property
    def refused(self) -> dict[str, int]:
        """Probes the link refused to send, by errno name (ENOBUFS while a flood fills it)."""
        return dict(self._out.refused)

    def close(self) -> None:
        self._out.sock.close()

    def __enter__(self) -> ProbeSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Arrival:
    """One probe frame as received: its sequence number and both stamps (ns, CLOCK_REALTIME)."""

    seq: int
    sent_ns: int
    received_ns: int

    @property
    def latency_us(self) -> float:
        return (self.received_ns - self.sent_ns) / 1e3


class ProbeReceiver:
    """Probe frames arriving on ``ifname`` (in namespace ``netns``) from the moment it is created."""

    def __init__(self, probes: ProbeTemplate, ifname: str, netns: str | None = None) -> None:
        self.probes, self.ifname = probes, ifname
        # Protocol 0 receives nothing until bound: the filter is in place before the first frame.
        with bpf_netns.entered(netns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            program = probes.socket_filter()
            code = ctypes.create_string_buffer(program, len(program))
            fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(code))
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER)
            self._sock.setsockopt(
                socket.SOL_SOCKET,
                _SO_TIMESTAMPING,
                _SOF_TIMESTAMPING_RX_SOFTWARE | _SOF_TIMESTAMPING_SOFTWARE,
            )
            self._sock.bind((ifname, ETH_P_ALL))
        except OSError as err:
            self._sock.close()
            where = f"namespace {netns}" if netns else "the host namespace"
            raise OSError(
                err.errno, f"cannot receive probes on {ifname} in {where}: {err.strerror}"
            ) from None
        self._ready_at = time.monotonic() + _STAMPS_ON_AFTER

    def wait_ready(self) -> None:
        """Return once the kernel stamps received frames (see ``_STAMPS_ON_AFTER``)."""
        time.sleep(max(0.0, self._ready_at - time.monotonic()))

    def receive(self, wait: float = 0.0, expected: int | None = None) -> list[Arrival]:
        """Probes queued now; with ``wait``, also those arriving until ``expected`` were read or
        ``wait`` seconds passed."""
        deadline = time.monotonic() + wait
        found: list[Arrival] = []
        while expected is None or len(found) < expected:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self._sock], [], [], left)[0]:
                break
            data, ancillary, _, address = self._sock.recvmsg(_MAX_FRAME, socket.CMSG_SPACE(48))
            probe = self.probes.read(data)
            if address[2] == PACKET_OUTGOING or probe is None:
                continue
            found.append(Arrival(probe[0], probe[1], self._stamp(ancillary, probe[0])))
        return found

    def _stamp(self, ancillary: list[tuple[int, int, bytes]], seq: int) -> int:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPING:
                sec, nsec = _TIMESPEC.unpack_from(data)  # ts[0]: the software stamp
                if sec or nsec:
                    return sec * 1_000_000_000 + nsec
        raise LatencyError(
            f"probe {seq} on {self.ifname} carries no kernel receive timestamp: it arrived before "
            "the kernel turned stamping on (call wait_ready() before sending)"
        )

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ProbeReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Latencies:
    """What every latency report says: packets ``sent`` and what arrived (RFC 4737's counts), and
    the latencies in microseconds, None when nothing arrived."""

    sent: int
    received: int
    lost: int
    duplicated: int
    reordered: int
    p50_us: float | None
    p99_us: float | None
    max_us: float | None
    min_us: float | None


@dataclass(frozen=True)
class LatencyReport(Latencies):
    """Probes ``sent`` (sequence numbers 0..sent-1) and what arrived, timed exactly."""

    refused: dict[str, int] = field(default_factory=dict)
    latencies_us: tuple[float, ...] = field(default=(), repr=False)  # sorted, one per probe

    def __str__(self) -> str:
        why = ", ".join(f"{name} {n}" for name, n in sorted(self.refused.items()))
        counts = (
            f"{self.received}/{self.sent} probes, {self.lost} lost"
            + (f" ({why} refused by the sending link)" if why else "")
            + f", {self.duplicated} duplicated, {self.reordered} reordered"
        )
        if self.p50_us is None:
            return counts
        return (
            f"{counts}; latency p50 {self.p50_us:.1f} us, p99 {self.p99_us:.1f} us, "
            f"max {self.max_us:.1f} us, min {self.min_us:.1f} us"
        )


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of an ascending list (an element of it, never a blend)."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def analyze(
    arrivals: list[Arrival], sent: int, refused: dict[str, int] | None = None
) -> LatencyReport:
    """Count and time ``arrivals`` (in arrival order) of a stream of ``sent`` probes, of which the
    sending link ``refused`` some (by reason)."""
    seen: set[int] = set()
    latencies: list[float] = []
    duplicated = reordered = 0
    highest = -1
    for arrival in arrivals:
        if arrival.seq in seen:
            duplicated += 1
            continue
        seen.add(arrival.seq)
        if arrival.seq < highest:
            reordered += 1
        highest = max(highest, arrival.seq)
        latencies.append(arrival.latency_us)
    received = len(seen & set(range(sent)))
    ordered = sorted(latencies)
    stats = (
        [percentile(ordered, 50), percentile(ordered, 99), ordered[-1], ordered[0]]
        if ordered
        else [None] * 4
    )
    return LatencyReport(
        sent,
        received,
        sent - received,
        duplicated,
        reordered,
        *stats,
        dict(refused or {}),
        tuple(ordered),
    )


@dataclass(frozen=True)
class TrexLatencyReport(Latencies):
    """A TRex latency stream as its server counted and timed it, in ``LatencyReport``'s names.

    TRex keeps no single latencies, only a histogram, so ``p50_us`` and ``p99_us`` are bounds: the
    upper edge of the bucket holding the nearest-rank sample. Its buckets are 10 us wide below
    100 us, 100 us wide below 1 ms, and so on, with one for all below 10 us. ``max_us`` and ``min_us`` are
    TRex's exact extremes, except that its maximum skips the stream's first packets (start-up
    spikes); ``average_us`` is its running average (a low-pass filter of each half second's mean),
    ``jitter_us`` its RFC 3550 jitter. None when nothing arrived."""

    average_us: float | None
    jitter_us: float | None

    def __str__(self) -> str:
        counts = (
            f"{self.received}/{self.sent} latency packets, {self.lost} lost, "
            f"{self.duplicated} duplicated, {self.reordered} reordered"
        )
        if self.p50_us is None:
            return counts
        return (
            f"{counts}; latency p50 <= {self.p50_us:.0f} us, p99 <= {self.p99_us:.0f} us, "
            f"max {self.max_us:.0f} us, min {self.min_us:.0f} us, average {self.average_us:.1f} us, "
            f"jitter {self.jitter_us:.0f} us"
        )


def _bucket_top(key: int) -> int:
    """The upper edge of TRex's histogram bucket ``key`` (us): [0, 10), then [k, k + 10^(d-1))
    for a key of d digits. TRex keys a bucket by its lower edge (src/time_histogram.cpp); the
    ranges are those its example trex/examples/stl/stl_flow_latency_stats.py prints."""
    return 10 if key == 0 else key + 10 ** (len(str(key)) - 1)


def _histogram_percentile(buckets: list[tuple[int, int]], p: float) -> float:
    """The nearest-rank ``p``-th percentile's bucket top, of ascending (key, count) buckets."""
    seen = list(itertools.accumulate(count for _, count in buckets))
    rank = max(1, math.ceil(p / 100 * seen[-1]))
    return float(_bucket_top(buckets[bisect.bisect_left(seen, rank)][0]))


def trex_latency(pgid_stats: dict, pg_id: int) -> TrexLatencyReport:
    """The report of latency stream ``pg_id`` from ``STLClient.get_pgid_stats()`` as the TRex
    worker returns it (through JSON: every key is text).

    The shape is the client's (trex/stl/trex_stl_stats.py, ``CPgIdStats.get_stats``):
    ``flow_stats[pg_id]`` counts packets per port and in ``total`` (``tx_pkts``, ``rx_pkts``, every
    copy received); ``latency[pg_id]`` holds ``err_cntrs`` (``dropped``, ``dup``,
    ``out_of_order``, ``seq_too_high``, ``seq_too_low``) and ``latency`` (``total_min``,
    ``total_max``, ``average``, ``jitter``, in us, and ``histogram``: bucket -> packets)."""
    key = str(pg_id)
    flow, stream = pgid_stats["flow_stats"][key], pgid_stats["latency"][key]
    errors, timing = stream["err_cntrs"], stream["latency"]
    sent, duplicated = flow["tx_pkts"]["total"], errors["dup"]
    received = flow["rx_pkts"]["total"] - duplicated
    buckets = sorted((int(k), n) for k, n in timing["histogram"].items() if n)
    if buckets:
        stats = [
            _histogram_percentile(buckets, 50),
            _histogram_percentile(buckets, 99),
            *(float(timing[name]) for name in ("total_max", "total_min", "average", "jitter")),
        ]
    else:
        stats = [None] * 6
    return TrexLatencyReport(
        sent, received, sent - received, duplicated, errors["out_of_order"], *stats
    )


def measure_latency(
    tx_ifname: str,
    tx_netns: str | None,
    rx_ifname: str,
    rx_netns: str | None,
    count: int = 1000,
    rate_pps: float = 1000.0,
    probes: ProbeTemplate | None = None,
    linger: float = 0.5,
) -> LatencyReport:
    """Send ``count`` probes at ``rate_pps`` from one interface, receive them on the other, report.

    The receiving socket is read between sends (its kernel stamps make the delay harmless) and for up
    to ``linger`` seconds after the last send, for probes still on their way.
    """
    probes = probes or ProbeTemplate.udp4()
    arrivals: list[Arrival] = []
    with (
        ProbeReceiver(probes, rx_ifname, rx_netns) as receiver,
        ProbeSender(probes, tx_ifname, tx_netns) as sender,
    ):
        receiver.wait_ready()
        start = time.monotonic()
        for seq in range(count):
            ahead = start + seq / rate_pps - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sender.send(seq)
            arrivals += receiver.receive()
        unsent = sum(sender.refused.values())
        arrivals += receiver.receive(wait=linger, expected=count - unsent - len(arrivals))
    return analyze(arrivals, count, sender.refused)
