"""The ``xdp`` backend: a field program sent at Mpps by BPF_PROG_TEST_RUN with live frames.

``xdp_gen.bpf.c`` is the field engine; this module configures it from a ``FieldProgram``
(``injector.program``) and drives it. What the kernel does with live frames, and what it costs
(``../shared/PLATFORM.md``), shapes the sender:

- A program that is attached nowhere costs ~24 ms per ``test_run`` call with ``repeat > 1``
  (``synchronize_rcu`` in the XDP dispatcher); so the engine is attached, in generic mode, to a spare
  veth pair that stays down and never carries traffic.
- ``batch`` is 1..256 frames; a frame is 14..3408 bytes; the ingress interface must be in the
  namespace of the calling thread, so sending happens inside ``bpf.netns.entered``.
- Frames transmitted with XDP_TX into a veth whose peer has neither an XDP program nor GRO are lost
  silently: the topology must give such a peer GRO (or an XDP program).
- Each worker is pinned to one CPU: the packet index is a per-CPU counter, so a worker that migrated
  would continue another CPU's sequence.
Not for: exact small packet lists checked one by one (the scapy backend), or receiving.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from bpf import POSSIBLE_CPUS, BpfObject, XdpAction, XdpMode, journal, netns
from bpf.attach import ifindex
from injector.program import ChecksumKind, FieldProgram, OpKind, internet_checksum, l4_end

SOURCE = Path(__file__).with_name("xdp_gen.bpf.c")
MAX_OPS, MAX_CSUMS, MAX_LENGTHS, MAX_SIZES, FIELD_MAX, OFFSET_MAX = 8, 4, 4, 16, 16, 1024
MIN_FRAME, MAX_FRAME, MAX_BATCH, PACED_BATCH = 14, 3408, 256, 64
START_TIMEOUT = 10.0  # seconds the workers may take to be ready to start together
FLAT_OUT_CHUNK = 1 << 16  # frames per test_run call flat out: long enough to hide Python's cost
_KIND = {OpKind.RANGE: 0, OpKind.RANDOM: 1, OpKind.LIST: 2}


class EngineError(ValueError):
    """A field program the in-kernel engine cannot run; the message names the field and the limit."""


def _sum16(data: bytes) -> int:
    """The folded ones'-complement sum of ``data`` (not complemented), from its first byte."""
    return ~internet_checksum(data) & 0xFFFF


def _base_frames(program: FieldProgram) -> list[bytes]:
    """Per frame size: the template trimmed, lengths written, checksums fixed, fields untouched."""
    frames = []
    for size in program.frame_sizes:
        stripped = FieldProgram(
            description=program.description,
            template=program.template,
            flows=1,
            schedule=(0,),
            frame_sizes=program.frame_sizes,
            length_fields=program.length_fields,
            checksums=program.checksums,
        )
        frames.append(stripped.render(0, size))
    return frames


@dataclass(frozen=True)
class _Region:
    """The bytes one checksum sums: [start, end) of the frame, and the pseudo-header addresses."""

    start: int
    end: int
    addresses: tuple[int, int] | None

    def parity_of(self, offset: int, size: int, what: str) -> int | None:
        """None if the field is outside the sum; else 1 if it starts at an odd distance into it."""
        for start, end in ((self.start, self.end), self.addresses or (0, 0)):
            if start <= offset and offset + size <= end:
                return (offset - start) % 2
            if offset < end and start < offset + size:
                raise EngineError(
                    f"{what} straddles the edge of a checksummed region [{start}, {end})"
                )
        return None


def _region(frame: bytes, fix) -> _Region:
    if fix.kind is ChecksumKind.IPV4_HEADER:
        ihl = (frame[fix.ip_offset] & 0x0F) * 4
        return _Region(fix.ip_offset, fix.ip_offset + ihl, None)
    end = l4_end(frame, fix.ip_offset, fix.ip_version)
    addresses = None
    if fix.pseudo_header:
        first = fix.ip_offset + (12 if fix.ip_version == 4 else 8)
        addresses = (first, first + (8 if fix.ip_version == 4 else 32))
    return _Region(fix.l4_offset, end, addresses)


def _region_sum(frame: bytes, fix, region: _Region) -> int:
    """Sum of a checksum's region (checksum field as zero), pseudo-header included."""
    buf = bytearray(frame)
    buf[fix.csum_offset : fix.csum_offset + 2] = b"\x00\x00"
    total = _sum16(bytes(buf[region.start : region.end]))
    if fix.pseudo_header:
        length = region.end - region.start
        proto = {ChecksumKind.TCP: 6, ChecksumKind.UDP: 17, ChecksumKind.ICMPV6: 58}[fix.kind]
        addr_start, addr_end = region.addresses
        extra = (
            bytes(buf[addr_start:addr_end]) + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])
        )
        total = _sum16(total.to_bytes(2, "big") + extra)
    return total


def configure(obj: BpfObject, program: FieldProgram) -> None:
    """Fill the engine's maps from ``program`` (object loaded with ``sized_for(program)``)."""
    _check_limits(program)
    config_type = obj.maps["config"].value_type
    cfg = config_type()
    cfg.template_len = len(program.template)
    cfg.nsizes = len(program.frame_sizes)
    cfg.nschedule = len(program.schedule)
    cfg.nops, cfg.ncsums = len(program.ops), len(program.checksums)
    cfg.nlengths = len(program.length_fields) if len(program.frame_sizes) > 1 else 0
    for k, size in enumerate(program.frame_sizes):
        cfg.sizes[k] = size
    bases = _base_frames(program)
    smallest = bases[program.frame_sizes.index(min(program.frame_sizes))]
    regions = [_region(smallest, fix) for fix in program.checksums]
    protected = [(f.csum_offset, 2, "a checksum field") for f in program.checksums]
    protected += [(lf.offset, 2, f"length field {lf.path}") for lf in program.length_fields]

    for c, fix in enumerate(program.checksums):
        cfg.csums[c].offset = fix.csum_offset
        cfg.csums[c].udp = fix.kind is ChecksumKind.UDP
        for k, frame in enumerate(bases):
            cfg.csums[c].base_sum[k] = _region_sum(frame, fix, _region(frame, fix))
    for n, lf in enumerate(program.length_fields):
        cfg.lengths[n].offset = lf.offset
        for k, size in enumerate(program.frame_sizes):
            cfg.lengths[n].value[k] = size - lf.base

    list_values: list[bytes] = []
    for i, op in enumerate(program.ops):
        what = f"field {op.path} (bytes {op.offset}..{op.offset + op.size - 1})"
        if op.offset + op.size > min(program.frame_sizes):
            raise EngineError(
                f"{what} lies beyond the smallest frame ({min(program.frame_sizes)} bytes)"
            )
        for start, size, name in protected:
            if op.offset < start + size and start < op.offset + op.size:
                raise EngineError(f"{what} overlaps {name} at byte {start}")
        g = cfg.ops[i]
        g.offset, g.size, g.kind = op.offset, op.size, _KIND[op.kind]
        g.old_sum = _sum16(program.template[op.offset : op.offset + op.size])
        for c, region in enumerate(regions):
            parity = region.parity_of(op.offset, op.size, what)
            if parity is not None:
                g.csum_mask |= 1 << c
                g.odd_mask |= parity << c
        if op.kind is OpKind.LIST:
            g.list_start, g.list_len = len(list_values), len(op.values)
            list_values += [v.to_bytes(FIELD_MAX, "big") for v in op.values]
        else:
            g.count = op.count & (
                2**64 - 1
            )  # 2^64 is written as 0, which BPF's modulo treats right
            g.span = (op.max - op.min + 1) & (2**64 - 1)
            g.step, g.seed = op.step, op.seed
            ctypes.memmove(g.min, op.min.to_bytes(FIELD_MAX, "big"), FIELD_MAX)
    obj.maps["config"][0] = cfg
    obj.maps["schedule"].update_batch(enumerate(program.schedule))
    if list_values:
        obj.maps["list_values"].update_batch(enumerate(list_values))


def _check_limits(program: FieldProgram) -> None:
    limits = [
        (len(program.ops), MAX_OPS, "varied fields"),
        (len(program.checksums), MAX_CSUMS, "checksums to fix"),
        (len(program.length_fields), MAX_LENGTHS, "length fields"),
        (len(program.frame_sizes), MAX_SIZES, "frame sizes"),
    ]
    for count, limit, what in limits:
        if count > limit:
            raise EngineError(
                f"{program.description}: {count} {what}, the xdp engine takes {limit}"
            )
    if not MIN_FRAME <= min(program.frame_sizes) <= max(program.frame_sizes) <= MAX_FRAME:
        raise EngineError(f"{program.description}: frames must be {MIN_FRAME}..{MAX_FRAME} bytes")
    offsets = [op.offset + op.size for op in program.ops] + [
        f.csum_offset + 2 for f in program.checksums
    ]
    if max(offsets, default=0) > OFFSET_MAX:
        raise EngineError(f"{program.description}: fields must lie in the first {OFFSET_MAX} bytes")


class FieldEngine:
    """``xdp_gen`` loaded and configured for one field program."""

    def __init__(self, program: FieldProgram) -> None:
        self.program = program
        self.obj = BpfObject.open(SOURCE)
        try:
            self.obj.maps["schedule"].max_entries = len(program.schedule)
            values = sum(len(op.values) for op in program.ops if op.kind is OpKind.LIST)
            self.obj.maps["list_values"].max_entries = max(1, values)
            self.obj.load()
            configure(self.obj, program)
        except BaseException:
            self.obj.close()
            raise
        self.prog = self.obj.programs["xdp_gen"]

    def start_at(self, index: int) -> None:
        """Make ``index`` the next packet on every CPU."""
        self.obj.maps["state"][0] = [dict(next_index=index)] * POSSIBLE_CPUS

    def aborted(self) -> int:
        """Frames the engine refused so far (its configuration did not fit them)."""
        return sum(cpu.errors for cpu in self.obj.maps["state"][0])

    def render(self, index: int) -> bytes:
        """Packet ``index`` as the engine makes it (one run, not live): to check against Python."""
        self.start_at(index)
        run = self.prog.test_run(self.program.template)
        if run.verdict is not XdpAction.TX:
            raise EngineError(f"the engine aborted packet {index} (verdict {run.verdict!r})")
        return run.packet

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> FieldEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@journal.undoes("veth")
def _delete_veth(namespace: str | None, ifname: str) -> None:
    if namespace is not None and not netns.exists(namespace):
        return
    with netns.entered(namespace), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])


_spares = itertools.count()


def _split(count: int, parts: int) -> list[int]:
    return [count // parts + (1 if k < count % parts else 0) for k in range(parts)]


@dataclass(frozen=True)
class SendReport:
    """What one send handed to the kernel: ``packets`` frames in ``seconds``."""

    packets: int
    seconds: float
    workers: int
    aborted: int

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


Progress = Callable[[int, int | None, float], None]


class XdpSender:
    """Sends a field program's packets out of ``ifname`` (in namespace ``netns``) with XDP_TX."""

    def __init__(self, program: FieldProgram, ifname: str, namespace: str | None = None) -> None:
        self.program, self.ifname, self.netns = program, ifname, namespace
        self.engine = FieldEngine(program)
        # Named like every host link of a run (bl<run id>-...), so clean-up and leak checks know it.
        self._spare = f"bl{journal.current().run_id}-g{next(_spares):03d}"
        self._spare_entry: int | None = None
        try:
            self._create_spare()
            self.ifindex = ifindex(ifname, namespace)
        except BaseException:
            self.close()
            raise

    def _create_spare(self) -> None:
        with netns.entered(self.netns), IPRoute() as ipr:
            ipr.link("add", ifname=self._spare + "a", kind="veth", peer=self._spare + "b")
        self._spare_entry = journal.current().record(
            "veth", namespace=self.netns, ifname=self._spare + "a"
        )
        self.engine.prog.attach_xdp(self._spare + "a", XdpMode.GENERIC, self.netns)

    def close(self) -> None:
        self.engine.close()
        if self._spare_entry is not None:
            journal.current().undo(self._spare_entry)
            self._spare_entry = None

    def __enter__(self) -> XdpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        count: int | None = None,
        rate_pps: float | None = None,
        duration: float | None = None,
        workers: int = 1,
        batch: int | None = None,
        progress: Progress | None = None,
    ) -> SendReport:
        """Send ``count`` packets (or for ``duration`` seconds), at ``rate_pps`` in total if given.

        Without ``count`` or ``duration`` the program's own (``packet_count()``) applies. The packet
        sequence starts at index 0 on every call. With ``workers > 1`` each worker is a forked process
        pinned to its own CPU, sending a contiguous share of the indices (progress comes from the
        first worker only, scaled to the whole).

        ``batch`` (frames the kernel hands over at a time) defaults to 64 when paced and 256 flat
        out. Measured into a veth: 64 loses nothing (4.8 Mpps flat out); 256 is faster (6.3 Mpps) but
        bursts past the receiving veth's 256-frame XDP ring now and then, which the sender's
        ``tx_dropped`` counts. A paced burst of 256 overflows it far more often (~1%).
        """
        if batch is None:
            batch = PACED_BATCH if rate_pps else MAX_BATCH
        if count is None and duration is None:
            count = self.program.packet_count()
        cpus = sorted(os.sched_getaffinity(0))
        if not 1 <= workers <= len(cpus):
            raise ValueError(f"workers must be 1..{len(cpus)} (the CPUs this process may use)")
        shares = [None] * workers if count is None else _split(count, workers)
        starts = [0] * workers if count is None else [sum(shares[:w]) for w in range(workers)]
        next_index = [0] * POSSIBLE_CPUS
        for worker, start in enumerate(starts):
            next_index[cpus[worker]] = start
        self.engine.obj.maps["state"][0] = [dict(next_index=i) for i in next_index]
        aborted_before = self.engine.aborted()
        rate = rate_pps / workers if rate_pps else None
        # The workers start together: each, pinned and in its namespace, says it is ready and
        # waits for the end of ``go``, which the parent closes once all are (or at START_TIMEOUT).
        (ready, ready_end), (go_end, go) = os.pipe(), os.pipe()
        parent_fds = {ready, ready_end, go_end, go}

        def close(fd: int) -> None:
            if fd in parent_fds:
                parent_fds.remove(fd)
                os.close(fd)

        def start_together() -> None:
            os.close(go)
            os.write(ready_end, b".")
            os.read(go_end, 1)

        def start_all() -> None:
            waiting = len(children)
            while waiting and select.select([ready], [], [], START_TIMEOUT)[0]:
                got = len(os.read(ready, waiting))
                if not got:
                    break  # every worker gone: their exit status says why, below
                waiting -= got
            close(go)

        children: list[tuple[int, int]] = []
        try:
            for w in range(1, workers):
                children.append(
                    self._fork(cpus[w], shares[w], rate, duration, batch, start_together)
                )
            close(ready_end)
            sent, seconds = self._pinned(
                cpus[0], shares[0], rate, duration, batch, progress, workers, start_all
            )
        finally:
            for fd in list(
                parent_fds
            ):  # ``go`` too, if the parent failed: no worker waits for ever
                close(fd)
        for pid, reader in children:
            with os.fdopen(reader) as pipe:
                child_sent, child_seconds = pipe.read().split()
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"xdp sender worker {pid} failed (exit {status})")
            sent += int(child_sent)
            seconds = max(seconds, float(child_seconds))
        return SendReport(sent, seconds, workers, self.engine.aborted() - aborted_before)

    def _pinned(
        self, cpu, count, rate, duration, batch, progress, scale=1, start=None
    ) -> tuple[int, float]:
        """Send from ``cpu``; ``start()``, if given, is called once pinned, just before."""
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        try:
            with netns.entered(self.netns):
                if start is not None:
                    start()
                return self._loop(count, rate, duration, batch, progress, scale)
        finally:
            os.sched_setaffinity(0, saved)

    def _fork(self, cpu, count, rate, duration, batch, start) -> tuple[int, int]:
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: send, report, and leave without running the parent's clean-ups
            code = 1
            try:
                os.close(reader)
                sent, seconds = self._pinned(cpu, count, rate, duration, batch, None, 1, start)
                os.write(writer, f"{sent} {seconds}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(writer)
        return pid, reader

    def _loop(
        self,
        count: int | None,
        rate_pps: float | None,
        duration: float | None,
        batch: int,
        progress: Progress | None,
        scale: int = 1,
    ) -> tuple[int, float]:
        run = self.engine.prog.test_run_live
        template, ifidx = self.program.template, self.ifindex
        # Paced: a millisecond's worth per call; flat out: FLAT_OUT_CHUNK.
        chunk = max(1, int(rate_pps / 1000)) if rate_pps else FLAT_OUT_CHUNK
        start = time.perf_counter()
        sent, last_report = 0, start
        while True:
            now = time.perf_counter()
            if count is not None and sent >= count:
                break
            if duration is not None and now - start >= duration:
                break
            if rate_pps:
                ahead = sent / rate_pps - (now - start)
                if ahead > 0:
                    time.sleep(ahead)
            n = chunk if count is None else min(chunk, count - sent)
            run(template, n, ifidx, min(batch, n, MAX_BATCH))
            sent += n
            if progress is not None and now - last_report >= 0.5:
                progress(sent * scale, None if count is None else count * scale, now - start)
                last_report = now
        return sent, time.perf_counter() - start
