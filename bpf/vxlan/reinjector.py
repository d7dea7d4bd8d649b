"""The VXLAN pipeline's ring-buffer re-injectors: frames the XDP program queued to its CPU's ring
(ringbuf mode) go out of the egress interface from user space, for NICs that cannot redirect.

```python
with VxlanPipeline(Config(mode=Mode.RINGBUF, rings=2)) as vx:
    with Reinjectors(vx.rings, "ens6", "dut") as out:   # one worker process per ring
        vx.attach("ens5", netns="dut")
        vx.set_egress("ens6", next_hop_mac, netns="dut")
        out.start()
        ...                                             # out.counts(): per ring
        vx.detach()
        out.stop()          # each worker forwards what its ring still holds, then exits
```

``Reinjector`` empties one ring: records are read straight from the ring's memory
(``bpf.ringbuf.RingReader``: no callback per record) and copied into an AF_PACKET TX ring
(``bpf.txring.TxRing``: one ``send()`` per batch, not per frame); each frame is copied once, from a
memoryview of the ring into a TX slot, never through Python ``bytes``. A record is
``struct vxlan_frame`` cut to its frame: ``len`` (4 bytes) then exactly ``len`` bytes, so the frame
is the record less its first 4 bytes. The loop sleeps in ``select()`` on the map's fd, which the
kernel makes readable when it commits a record to an empty ring.

``Reinjectors`` runs one ``Reinjector`` per ring in a forked process pinned to the CPUs whose frames
the ring takes (ring ``i``: CPUs ``c`` with ``c % rings == i``), so a CPU's frames are forwarded on
that CPU, in order, and the workers share nothing but their counters.

Accounting: every record read is ``forwarded`` (queued to the TX ring) or ``failed`` (longer than a
TX slot or the egress's MTU, refused by the kernel as malformed, or queued while the egress was
down), so each ring's ``queued`` (``VxlanPipeline.queued_per_ring()``) equals its
``forwarded + failed`` once the ring is empty. A frame the egress drops after the TX ring (a full
veth peer) is the egress's ``tx_dropped``. Not for: reading frames to look at them
(``VxlanPipeline.frames``).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import multiprocessing
import os
import select
import signal
import socket
import struct
from dataclasses import dataclass

from bpf import netns as bpf_netns
from bpf.object import Map
from bpf.ringbuf import RingReader
from bpf.txring import TxRing

FRAME_OFFSET = 4  # offsetof(struct vxlan_frame, data)
SLOT_SIZE = mmap.PAGESIZE  # a TX slot: frames up to 4054 bytes, past any MTU native XDP allows
TX_SLOTS = 2048
BATCH = 1024  # records per TX ring flush: the ring is 8 MiB, thousands of small frames
VLAN_HLEN = 4  # AF_PACKET takes a frame of MTU + Ethernet header + one VLAN tag
POLL_INTERVAL = 0.1  # seconds a worker sleeps at most before looking at its stop event
_SIOCGIFMTU = 0x8921


def interface_mtu(ifname: str, netns: str | None = None) -> int:
    with bpf_netns.entered(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        info = fcntl.ioctl(sock, _SIOCGIFMTU, struct.pack("16si", ifname.encode()[:15], 0))
    return struct.unpack_from("i", info, 16)[0]


class Reinjector:
    """Forwards the records of a RINGBUF map of ``struct vxlan_frame`` out of ``ifname``."""

    def __init__(
        self, ring: Map, ifname: str, netns: str | None = None, batch: int = BATCH
    ) -> None:
        self.ifname, self.batch = ifname, batch
        self.reader = RingReader(ring)
        try:
            self.tx = TxRing(ifname, netns, frame_size=SLOT_SIZE, frames=TX_SLOTS)
        except BaseException:
            self.reader.close()
            raise
        # A longer frame would make the kernel fail the whole send() (EMSGSIZE): count it instead.
        largest = min(self.tx.max_frame, interface_mtu(ifname, netns) + 14 + VLAN_HLEN)
        self._largest_record = FRAME_OFFSET + largest
        self.too_big = 0

    @property
    def forwarded(self) -> int:
        """Frames handed to the egress (the kernel took them from the TX ring)."""
        return self.tx.sent - self.tx.rejected - self.tx.refused.total()

    @property
    def failed(self) -> int:
        """Frames read from the ring that did not go out: too long for a TX slot or the egress's
        MTU, refused by the kernel as malformed, or taken back from a link that was down."""
        return self.too_big + self.tx.rejected + self.tx.refused.total()

    def _frames(self):
        """The frames of the records waiting now (at most ``batch``), as memoryviews of the ring."""
        largest = self._largest_record
        for record in self.reader.records(self.batch):
            if len(record) > largest:
                self.too_big += 1
                continue
            yield record[FRAME_OFFSET:]

    def forward(self) -> int:
        """Forward one batch of what is waiting now, without sleeping; returns the records read."""
        before = self.too_big
        return self.tx.send(self._frames()) + self.too_big - before

    def drain(self) -> None:
        """Forward everything left, once the producer has stopped (the program detached)."""
        while self.forward() == self.batch:
            pass

    def close(self) -> None:
        self.tx.close()
        self.reader.close()

    def __enter__(self) -> Reinjector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RingCount:
    """One ring's re-injector: frames it forwarded and frames it read that did not go out."""

    forwarded: int
    failed: int


def ring_cpus(ring: int, rings: int, allowed: set[int]) -> set[int]:
    """The CPUs ring ``ring`` of ``rings`` takes frames from (vxlan.bpf.c: CPU c to ring c % rings)
    that this process may run on; all of ``allowed`` if it may run on none of them."""
    return {cpu for cpu in allowed if cpu % rings == ring} or set(allowed)


def _work(out: Reinjector, index: int, cpus: set[int], counters, stop) -> None:
    """A worker on ``cpus``: forward until ``stop``, then what the ring still holds (the producer is
    detached by then), publishing its counts after every batch. The map's fd stays readable while
    records wait, so a full batch is followed at once by the next."""
    os.sched_setaffinity(0, cpus)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers through ``stop``
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def publish() -> None:
        counters[2 * index], counters[2 * index + 1] = out.forwarded, out.failed

    fd = out.reader.fileno()
    while not stop.is_set():
        if select.select([fd], [], [], POLL_INTERVAL)[0]:
            out.forward()
            publish()
    out.drain()
    publish()


class Reinjectors:
    """One ``Reinjector`` per ring, each in a forked worker process pinned to its ring's CPUs. The
    TX rings are opened here, before ``start()``, so a bad egress fails in the caller's process."""

    def __init__(self, rings: list[Map], ifname: str, netns: str | None = None) -> None:
        self._context = multiprocessing.get_context("fork")  # a worker inherits its maps and socket
        self._counters = self._context.RawArray(ctypes.c_uint64, 2 * len(rings))
        self._stop = self._context.Event()
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._reinjectors: list[Reinjector] = []
        try:
            for ring in rings:
                self._reinjectors.append(Reinjector(ring, ifname, netns))
        except BaseException:
            self.close()
            raise
        allowed = os.sched_getaffinity(0)
        self.cpus = [ring_cpus(i, len(rings), allowed) for i in range(len(rings))]

    def start(self) -> None:
        for index, (out, cpus) in enumerate(zip(self._reinjectors, self.cpus, strict=True)):
            worker = self._context.Process(
                target=_work,
                args=(out, index, cpus, self._counters, self._stop),
                name=f"vxlan-reinjector-{index}",
                daemon=True,
            )
            worker.start()
            self._workers.append(worker)

    def counts(self) -> list[RingCount]:
        c = self._counters
        return [RingCount(c[2 * i], c[2 * i + 1]) for i in range(len(self._reinjectors))]

    @property
    def forwarded(self) -> int:
        return sum(count.forwarded for count in self.counts())

    @property
    def failed(self) -> int:
        return sum(count.failed for count in self.counts())

    def dead(self) -> list[str]:
        """Workers that exited before ``stop()``: what each was and how it ended."""
        return [
            f"{worker.name} (pid {worker.pid}) exited with {worker.exitcode}"
            for worker in self._workers
            if worker.exitcode is not None and not self._stop.is_set()
        ]

    def stop(self, timeout: float = 30.0) -> None:
        """Let every worker forward what its ring holds and exit (call after detaching the
        program); one still running after ``timeout`` is killed. Raises if a worker failed."""
        self._stop.set()
        failed = []
        for worker in self._workers:
            worker.join(timeout)
            if worker.exitcode is None:
                worker.kill()
                worker.join()
            if worker.exitcode:
                failed.append(f"{worker.name} (pid {worker.pid}) exited with {worker.exitcode}")
        self._workers = []
        if failed:
            raise RuntimeError(f"re-injector workers failed: {'; '.join(failed)}")

    def close(self) -> None:
        if self._workers:
            self._stop.set()
            for worker in self._workers:
                worker.kill()
                worker.join()
            self._workers = []
        for out in self._reinjectors:
            out.close()
        self._reinjectors = []

    def __enter__(self) -> Reinjectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
