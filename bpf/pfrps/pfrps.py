"""The PF_PACKET RPS node: N worker processes, each receiving on its own AF_PACKET socket, the
frames of one interface spread over them by a hash of a MAC (``pfrps.bpf.c``) or by the kernel.

```python
from bpf.pfrps import Config, Mode, Node

with Node(Config("ens5", workers=8, mode=Mode.FANOUT_EBPF, netns="bl-3fa2c1-bng")) as node:
    node.start()
    ...
    node.supervise()          # restarts a worker that died, on the same socket
    node.counts()             # per worker: frames and bytes it read, frames its queue dropped
    node.stop()               # workers drain their queues, then exit
```

A worker reads its socket through a TPACKET_V3 RX ring (``Rx.RING``, the default: ``rxring``), one
wake-up and no system call per block of frames, or with one ``recv()`` per frame (``Rx.RECV``:
each frame is read the moment it is queued, where the ring holds a frame until its block is full
or retired, ``rxring.Geometry.retire_ms`` at most; and the benchmark's baseline).

The node, not the workers, opens and holds every socket, and a worker inherits its own: a worker
that dies leaves its socket open, so its frames wait in the socket's queue or ring (dropped, and
counted by the kernel, once it is full) for the worker restarted on it, and a fanout group keeps
its members (closing one would renumber the others and move every MAC). A ring worker commits its
counts a block at a time before it hands the block back (``rxring``), so one killed at any point
loses no frame uncounted and counts none twice; a recv worker killed between a ``recv()`` and its
count loses that frame uncounted. Each socket is configured
before it is bound: a filter is on it before it can queue a frame, and a fanout member refuses
everything until it has joined its group.

Modes: ``filters`` (the seed: one filter per socket, every frame runs all N), ``fanout-ebpf`` (one
group, ``pfrps_fanout`` runs once per frame; same placement as the filters), ``fanout-hash`` and
``fanout-cpu`` (the kernel's PACKET_FANOUT_HASH, PACKET_FANOUT_CPU: no MAC affinity).

Not for: the command line (``bpf.pfrps.cli``), or the model (``bpf.pfrps.model``).
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import multiprocessing
import os
import signal
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from bpf import BpfObject
from bpf import netns as bpf_netns
from bpf.attach import FanoutKind, SocketFilter, join_fanout
from bpf.pfrps import rxring
from bpf.pfrps.model import HashAlg, MacSide, Protocols

SOURCE = Path(__file__).with_name("pfrps.bpf.c")
MAX_WORKERS = 256  # PACKET_FANOUT_MAX members of a group
_SOL_PACKET, _PACKET_STATISTICS = 263, 6
_SO_RCVBUFFORCE = 33  # not in Python's socket module; root may exceed net.core.rmem_max
_RECEIVE_BUFFER = 1 << 16  # larger than any frame on an interface of MTU <= 65535
_IDLE_POLL = 0.1  # seconds a worker waits for a frame before it looks at the stop flag


class Mode(enum.Enum):
    FILTERS = "filters"
    FANOUT_EBPF = "fanout-ebpf"
    FANOUT_HASH = "fanout-hash"
    FANOUT_CPU = "fanout-cpu"


class Rx(enum.Enum):
    """How a worker reads its socket."""

    RING = "ring"  # a TPACKET_V3 RX ring: a block of frames per wake-up
    RECV = "recv"  # one recv() per frame


_FANOUT_KINDS = {
    Mode.FANOUT_EBPF: FanoutKind.EBPF,
    Mode.FANOUT_HASH: FanoutKind.HASH,
    Mode.FANOUT_CPU: FanoutKind.CPU,
}


@dataclass(frozen=True)
class Config:
    """What a node runs. ``cpus``: worker i is pinned to ``cpus[i % len(cpus)]``; empty, unpinned."""

    ifname: str
    workers: int = 8
    hash: HashAlg = HashAlg.MAC_HASH
    mode: Mode = Mode.FILTERS
    mac: MacSide = MacSide.SRC
    protocols: Protocols = Protocols.DISCOVERY
    cpus: tuple[int, ...] = ()
    netns: str | None = None
    rx: Rx = Rx.RING
    queue_bytes: int = 4 << 20  # each socket's ring, or SO_RCVBUF: a worker's backlog while away

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers: {self.workers}, must be 1..{MAX_WORKERS}")
        allowed = os.sched_getaffinity(0)
        for cpu in self.cpus:
            if cpu not in allowed:
                raise ValueError(f"cpus: CPU {cpu} is not one this process may run on {allowed}")


@dataclass(frozen=True)
class WorkerCount:
    """``frames``/``bytes``: what the worker read; ``steered``: frames the kernel gave its socket
    (PACKET_STATISTICS tp_packets, read or not); ``dropped``: of those, the frames dropped because
    the queue or ring was full (tp_drops); ``cut``: frames read shorter than they were on the wire
    (a ring says so; a recv worker reads fewer bytes, but cannot tell)."""

    frames: int
    bytes: int
    steered: int
    dropped: int
    cut: int = 0


def _work(
    sock: socket.socket,
    ring: mmap.mmap | None,
    geometry: rxring.Geometry,
    tally: rxring.Tally,
    stop,
    cpu: int | None,
) -> None:
    """A worker: read frames until ``stop`` is set and nothing is left, counting each in ``tally``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops its workers through ``stop``
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if ring is not None:
        reader = rxring.Reader(sock, ring, geometry, tally)
        while reader.read(round(_IDLE_POLL * 1e3)) or not stop.value:
            pass
        return
    # One recv() per frame, counted in place in the latest commit: a recv worker keeps no position.
    latest = tally.commit[tally.seq & 1]
    buffer = bytearray(_RECEIVE_BUFFER)
    sock.settimeout(_IDLE_POLL)
    while True:
        try:
            length = sock.recv_into(buffer)
        except TimeoutError:
            if stop.value:
                return
            continue
        latest.frames += 1
        latest.bytes += length


def load(config: Config, worker_id: int = 0, protocols: Protocols | None = None) -> BpfObject:
    """The data plane's object as worker ``worker_id`` of ``config`` runs it (its fanout program is
    the same in every worker's copy); ``protocols`` in place of the configuration's."""
    obj = BpfObject.open(SOURCE)
    try:
        obj.rodata["n_workers"] = config.workers
        obj.rodata["worker_id"] = worker_id
        obj.rodata["hash_alg"] = obj.enum("pfrps_hash")[f"PFRPS_{config.hash.name}"]
        obj.rodata["mac_side"] = obj.enum("pfrps_mac")[f"PFRPS_MAC_{config.mac.name}"]
        obj.rodata["protocols"] = (config.protocols if protocols is None else protocols).value
        return obj.load()
    except BaseException:
        obj.close()
        raise


class Node:
    """See the module docstring. Workers are forked processes; ``close`` (or ``with``) reaps them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._context = multiprocessing.get_context("fork")  # a worker inherits its socket
        self._tallies = self._context.RawArray(rxring.Tally, config.workers)
        self._geometry = rxring.Geometry.for_bytes(config.queue_bytes)
        self._rings: list[mmap.mmap | None] = []
        self._steered = [0] * config.workers
        self._dropped = [0] * config.workers
        # A flag, not an Event: a worker killed while it held an Event's lock would hang the node.
        self._stop = self._context.RawValue(ctypes.c_bool, False)
        self._objects: list[BpfObject] = []
        self._sockets: list[socket.socket] = []
        self._workers: list[multiprocessing.process.BaseProcess | None] = []
        self.restarts = [0] * config.workers

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self, worker_id: int = 0, protocols: Protocols | None = None) -> BpfObject:
        obj = load(self.config, worker_id, protocols)
        self._objects.append(obj)
        return obj

    def _socket(self) -> socket.socket:
        # Protocol 0: the socket receives nothing until bind() names a protocol and the interface.
        with bpf_netns.entered(self.config.netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._sockets.append(sock)
        if self.config.rx is Rx.RING:
            # First of all: a ring set up on a bound socket would re-hook it (rxring).
            self._rings.append(rxring.set_up(sock, self._geometry))
        else:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self.config.queue_bytes)
            self._rings.append(None)
        return sock

    def _bind(self, sock: socket.socket) -> None:
        sock.bind((self.config.ifname, self.config.protocols.ethertype))

    def start(self) -> None:
        """Open, configure and bind every socket, then fork the workers."""
        config = self.config
        if config.mode is Mode.FILTERS:
            for worker in range(config.workers):
                sock = self._socket()
                self._load(worker).programs["pfrps_filter"].attach_socket(sock)
                self._bind(sock)
        else:
            steering = self._load()
            # Refuses every frame: the member's filter from bind() until it is in the group.
            refuse_all = self._load(protocols=Protocols(0)).programs["pfrps_accept"]
            group = os.getpid() & 0xFFFF  # fanout groups are per network namespace
            kind = _FANOUT_KINDS[config.mode]
            program = steering.programs["pfrps_fanout"] if kind == FanoutKind.EBPF else None
            for _ in range(config.workers):
                sock = self._socket()
                closed = refuse_all.attach_socket(sock)
                self._bind(sock)
                join_fanout(sock, group, program, kind)
                self._open_member(closed, steering)
        for sock in self._sockets:
            self._kernel_stats(sock)  # zero the kernel's counters: they reset on each read
        self._workers = [self._fork(i) for i in range(config.workers)]

    def _open_member(self, closed: SocketFilter, steering: BpfObject) -> None:
        """Let a fanout member take what its group gives it. Bound to ETH_P_ALL (both PPPoE kinds),
        it keeps a filter to PPPoE received frames; bound to one ethertype, it needs none."""
        if self.config.protocols is Protocols.BOTH:
            closed.replace(steering.programs["pfrps_accept"])
        else:
            closed.detach()

    def _fork(self, index: int) -> multiprocessing.process.BaseProcess:
        cpus = self.config.cpus
        cpu = cpus[index % len(cpus)] if cpus else None
        worker = self._context.Process(
            target=_work,
            args=(
                self._sockets[index],
                self._rings[index],
                self._geometry,
                self._tallies[index],
                self._stop,
                cpu,
            ),
            name=f"pfrps-w{index}",
            daemon=True,
        )
        worker.start()
        return worker

    @staticmethod
    def _kernel_stats(sock: socket.socket) -> tuple[int, int]:
        """(frames steered to the socket, frames dropped) since the last call (PACKET_STATISTICS:
        tp_packets counts the dropped ones too)."""
        packets, drops = struct.unpack("II", sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
        return packets, drops

    @property
    def pids(self) -> list[int | None]:
        return [worker.pid if worker else None for worker in self._workers]

    def supervise(self) -> list[int]:
        """Restart every worker that died (on its own socket); the indexes restarted."""
        restarted = []
        for index, worker in enumerate(self._workers):
            if worker is not None and worker.exitcode is not None and not self._stop.value:
                worker.join()
                self._workers[index] = self._fork(index)
                self.restarts[index] += 1
                restarted.append(index)
        return restarted

    def counts(self) -> list[WorkerCount]:
        counts = []
        for index, sock in enumerate(self._sockets):
            steered, dropped = self._kernel_stats(sock)
            self._steered[index] += steered
            self._dropped[index] += dropped
            read = self._tallies[index].read()
            counts.append(
                WorkerCount(
                    read.frames, read.bytes, self._steered[index], self._dropped[index], read.cut
                )
            )
        return counts

    def stop(self, timeout: float = 5.0) -> None:
        """Let every worker drain its queue and exit; kill one that does not within ``timeout``."""
        self._stop.value = True
        for worker in self._workers:
            if worker is None:
                continue
            worker.join(timeout)
            if worker.exitcode is None:
                worker.kill()
                worker.join()

    def close(self) -> None:
        """Stop the workers, then close the sockets and the objects."""
        self.stop()
        self._workers = []
        for ring in self._rings:
            if ring is not None:
                ring.close()
        self._rings = []
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        for obj in self._objects:
            obj.close()
        self._objects = []
