"""The VXLAN pipeline's ring-buffer re-injectors: frames the XDP program queued to its CPU's ring
(ringbuf mode) go out of the egress interface from user space, for NICs that cannot redirect.

```python
with VxlanPipeline(Config(mode=Mode.RINGBUF, rings=2)) as vx:
    with Reinjectors(vx.rings, "ens6", "dut") as out:   # one worker process per ring
        vx.attach("ens5", netns="dut")
        vx.set_egress("ens6", next_hop_mac, netns="dut")
        out.start()
        ...                                             # out.counts(): per ring
        out.supervise()                                 # restart a worker that died
        vx.detach()
        out.stop()          # each worker forwards what its ring still holds, then exits
```

``Reinjector`` empties one ring through the compiled core ``forward.c`` (``libvxlan_forward.so``,
built ahead of time by ``bpf.build``): each record is copied once, from the ring's memory into a
slot of an AF_PACKET TX ring, and a batch of up to ``BATCH`` goes out with one ``send()``. The
core also sleeps, in ``poll()`` on the ring's fd (readable when the kernel commits a record to an
empty ring), so Python makes one call per wake-up and a frame waits for no interpreter: a loop
over the records in Python cost about as much as the kernel's whole send of each frame (the
README's profile).

``Reinjectors`` runs one ``Reinjector`` per ring in a forked process pinned to the CPUs whose frames
the ring takes (ring ``i``: CPUs ``c`` with ``c % rings == i``), so a CPU's frames are forwarded on
that CPU, in order, and the workers share nothing but their counters, which the C core writes
straight into memory shared with the parent.

Accounting: every record read is ``forwarded`` (taken by the kernel from the TX ring) or
``failed`` (longer than a TX slot or the egress's MTU, refused by the kernel past an MTU that fell
while it was queued, or not taken by an egress that was down), so each ring's ``queued``
(``VxlanPipeline.queued_per_ring()``) equals its ``forwarded + failed`` once the ring is empty. The
counts and the ring's position are committed twice a batch as one record (forward.c says how), so a
worker killed at any point, even SIGKILL, is restarted by ``supervise()`` from its last commit:
nothing it read is lost or sent twice. The egress's ``tx_dropped`` are not losses: a veth that
drops a frame from the TX ring frees it at once, and the kernel marks its slot for sending again
(ENOBUFS), so it goes out with the next send. Not for: reading frames to look at them
(``VxlanPipeline.frames``).
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
from ctypes import POINTER, c_char_p, c_int, c_long, c_uint32, c_uint64, c_void_p
from dataclasses import dataclass
from pathlib import Path

from bpf import netns as bpf_netns
from bpf.build import c_define, require_native
from bpf.object import Map

LIBRARY = "bpf/vxlan/libvxlan_forward.so"
BATCH = c_define(Path(__file__).with_name("forward.h"), "VXLAN_FORWARD_BATCH")
POLL_INTERVAL = 0.1  # seconds a worker sleeps at most before looking at its stop flag


class ForwardCommit(ctypes.Structure):
    """``struct vxlan_forward_commit`` (forward.h): what a re-injector has done, as one record."""

    _fields_ = [
        *((name, c_uint64) for name in ("queued", "too_big", "rejected", "refused", "position")),
        *((name, c_uint32) for name in ("first", "next", "sending", "move_from", "move_to", "pad")),
    ]

    @property
    def forwarded(self) -> int:
        """Frames handed to the egress (the kernel took them from the TX ring)."""
        return self.queued - self.rejected - self.refused

    @property
    def failed(self) -> int:
        """Frames read from the ring that did not go out: too long for a TX slot or the egress's
        MTU, refused by the kernel (past an MTU that fell), or not taken by a link that was down."""
        return self.too_big + self.rejected + self.refused


class ForwardCounts(ctypes.Structure):
    """``struct vxlan_forward_counts`` (forward.h): the latest of two commits, which a killed writer
    leaves whole; ``read()`` it."""

    _fields_ = [("seq", c_uint64), ("commit", ForwardCommit * 2)]

    def read(self) -> ForwardCommit:
        latest = ForwardCommit()
        _core().vxlan_forward_read(ctypes.byref(self), ctypes.byref(latest))
        return latest


@functools.cache
def _core() -> ctypes.CDLL:
    core = ctypes.CDLL(str(require_native(LIBRARY)), use_errno=True)
    core.vxlan_forward_open.restype = c_void_p
    core.vxlan_forward_open.argtypes = [c_int, c_uint32, c_char_p, POINTER(ForwardCounts)]
    core.vxlan_forward_recover.restype = c_long
    core.vxlan_forward_recover.argtypes = [c_void_p]
    core.vxlan_forward_batch.restype = c_long
    core.vxlan_forward_batch.argtypes = [c_void_p, c_uint32]
    core.vxlan_forward_poll.restype = c_long
    core.vxlan_forward_poll.argtypes = [c_void_p, c_int]
    core.vxlan_forward_read.restype = None
    core.vxlan_forward_read.argtypes = [POINTER(ForwardCounts), POINTER(ForwardCommit)]
    core.vxlan_forward_close.restype = None
    core.vxlan_forward_close.argtypes = [c_void_p]
    return core


class Reinjector:
    """Forwards the records of a RINGBUF map of ``struct vxlan_frame`` out of ``ifname``, counting
    in ``counts`` (its own unless given: shared memory, say)."""

    def __init__(
        self,
        ring: Map,
        ifname: str,
        netns: str | None = None,
        counts: ForwardCounts | None = None,
    ) -> None:
        self.ring, self.ifname = ring, ifname
        self.counts = counts if counts is not None else ForwardCounts()
        self._core = _core()
        with bpf_netns.entered(netns):  # the TX socket belongs to the egress's namespace
            self._handle = self._core.vxlan_forward_open(
                ring.fd, ring.max_entries, ifname.encode(), ctypes.byref(self.counts)
            )
        if not self._handle:
            err = ctypes.get_errno()
            where = f"{ifname} in namespace {netns}" if netns else ifname
            raise OSError(err, f"re-injector on {where}: {os.strerror(err)}")

    def _done(self, records: int) -> int:
        if records < 0:
            raise OSError(-records, f"re-injector: send on {self.ifname}: {os.strerror(-records)}")
        return records

    def recover(self) -> None:
        """Go on from the last commit of a worker that died (in a new process forked from the one
        that opened this): what it queued but did not commit is read again, what it committed is
        sent."""
        self._done(self._core.vxlan_forward_recover(self._handle))

    def forward(self, timeout: float = 0.0) -> int:
        """Forward a batch of what waits, sleeping up to ``timeout`` seconds for the first record
        (in C, with the GIL released); returns the records read, 0 if none came."""
        if timeout:
            return self._done(self._core.vxlan_forward_poll(self._handle, round(timeout * 1e3)))
        return self._done(self._core.vxlan_forward_batch(self._handle, BATCH))

    def drain(self) -> None:
        """Forward everything left, once the producer has stopped (the program detached)."""
        while self.forward() == BATCH:
            pass

    def close(self) -> None:
        if self._handle:
            self._core.vxlan_forward_close(self._handle)
            self._handle = None

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


def _work(out: Reinjector, cpus: set[int], stop) -> None:
    """A worker on ``cpus``: go on from the last commit of the ring's worker before, if one died;
    forward until ``stop``, then what the ring still holds (the producer is detached by then). The
    ring's fd stays readable while records wait, so a full batch is followed at once by the next."""
    os.sched_setaffinity(0, cpus)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers through ``stop``
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out.recover()
    while not stop.value:
        out.forward(POLL_INTERVAL)
    out.drain()


def _ended(worker: multiprocessing.process.BaseProcess) -> str:
    return f"{worker.name} (pid {worker.pid}) exited with {worker.exitcode}"


class Reinjectors:
    """One ``Reinjector`` per ring, each in a forked worker process pinned to its ring's CPUs. The
    TX rings are opened here, before ``start()``, so a bad egress fails in the caller's process."""

    def __init__(self, rings: list[Map], ifname: str, netns: str | None = None) -> None:
        self._context = multiprocessing.get_context("fork")  # a worker inherits its maps and socket
        self._counts = self._context.RawArray(ForwardCounts, len(rings))  # written by the workers
        # A flag, not an Event: a worker killed while it held an Event's lock would hang the parent.
        self._stop = self._context.RawValue(ctypes.c_bool, False)
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._reinjectors: list[Reinjector] = []
        try:
            for ring, counts in zip(rings, self._counts, strict=True):
                self._reinjectors.append(Reinjector(ring, ifname, netns, counts))
        except BaseException:
            self.close()
            raise
        allowed = os.sched_getaffinity(0)
        self.cpus = [ring_cpus(i, len(rings), allowed) for i in range(len(rings))]
        self.restarts = [0] * len(rings)

    def _spawn(self, index: int) -> multiprocessing.process.BaseProcess:
        worker = self._context.Process(
            target=_work,
            args=(self._reinjectors[index], self.cpus[index], self._stop),
            name=f"vxlan-reinjector-{index}",
            daemon=True,
        )
        worker.start()
        return worker

    def start(self) -> None:
        self._workers = [self._spawn(index) for index in range(len(self._reinjectors))]

    def counts(self) -> list[RingCount]:
        return [RingCount(c.forwarded, c.failed) for c in map(ForwardCounts.read, self._counts)]

    @property
    def pids(self) -> list[int | None]:
        return [worker.pid for worker in self._workers]

    def supervise(self) -> list[str]:
        """Restart every worker that exited before ``stop()``, on its ring, from its last commit
        (``Reinjector.recover``): frames it had read and not committed are read again, none is
        lost or sent twice. What each restarted worker was and how it ended."""
        ended = []
        for index, worker in enumerate(self._workers):
            if worker.exitcode is not None and not self._stop.value:
                ended.append(_ended(worker))
                self._workers[index] = self._spawn(index)
                self.restarts[index] += 1
        return ended

    def stop(self, timeout: float = 30.0) -> None:
        """Let every worker forward what its ring holds and exit (call after detaching the
        program); one still running after ``timeout`` is killed. A worker that died before it
        emptied its ring is followed by one that does. Raises if that one fails too."""
        self._stop.value = True
        failed = []
        for index, worker in enumerate(self._workers):
            for attempt in range(2):
                worker.join(timeout)
                if worker.exitcode is None:
                    worker.kill()
                    worker.join()
                if not worker.exitcode:
                    break
                if attempt:
                    failed.append(_ended(worker))
                else:
                    worker = self._spawn(index)
                    self.restarts[index] += 1
        self._workers = []
        if failed:
            raise RuntimeError(f"re-injector workers failed: {'; '.join(failed)}")

    def close(self) -> None:
        if self._workers:
            self._stop.value = True
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
