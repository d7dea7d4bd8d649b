"""The flow-metrics control plane: load ``flowmon.bpf.c`` with a storage, attach it, read the flows.

```python
from bpf.flowmon import Config, FlowMon, Hook, Storage

with FlowMon(Config(storage=Storage.PERCPU_HASH, entries=4096)) as fm:
    fm.attach("veth0", [Hook.TC_INGRESS, Hook.TC_EGRESS], netns="bl-3fa2c1-dut")
    fm.pin("veth0")                   # maps under bpf.pin_dir("flowmon")/veth0/
    ...
    fm.flows()                        # the flow table: per-CPU values summed, ring records added
    fm.misses(), fm.unparsed()        # packets not counted by reason, frames not parsed by status
with FlowMon.reopen("veth0") as again: ...   # another process: the same maps, the same counts
```

``FlowTable`` is the storage layer alone (flowtable.h's maps in any object that includes it):
configured before load, read after, pinned and reopened. Data planes that count flows share it.
Every struct comes from the object's BTF. Times are CLOCK_MONOTONIC_COARSE nanoseconds; ``wall_time``
turns them into the epoch. The ring's records (the RINGBUF storage, the SPILL policy) are added up
per flow by the C reader of ``bpf.flowmon.ringdrain``; the table a reader shows is the kernel's
entries with those flows merged in.

Threads: ``drain`` may run in a thread of its own (it releases the GIL for its records) while
another calls ``flows``, ``take``, ``clear`` or ``drain``; the reader's table is locked for each
call. ``close`` (and leaving ``FlowMon``) only once that thread has stopped.

Not for: the command line (``bpf.flowmon.cli``) or the model (``bpf.flowmon.model``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf import BpfObject, LibbpfError, MapType, XdpMode, parse
from bpf.attach import TcDirection, keep_pin, pin_dir, pin_object, unpin_present
from bpf.btf import fields_of
from bpf.flowmon.model import Config, Direction, FlowKey, Full, Hook, Storage
from bpf.flowmon.ringdrain import RingDrain
from bpf.libbpf import call, lib

SOURCE = Path(__file__).with_name("flowmon.bpf.c")
PIN_OWNER = "flowmon"
CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; Python's time module does not name it
MIN_RING_BYTES = 4096  # the ring of a storage that never writes to it: one page
READER_IDLE_S = (
    0.002  # the reading thread's wait on an empty ring: a 16 MiB ring takes 0.2 s to fill at 1 Mpps
)

_HASH_TYPES = {
    Storage.HASH: MapType.HASH,
    Storage.PERCPU_HASH: MapType.PERCPU_HASH,
    Storage.LRU_HASH: MapType.LRU_HASH,
    Storage.LRU_PERCPU_HASH: MapType.LRU_PERCPU_HASH,
}
_ARRAY_TYPES = {Storage.ARRAY: MapType.ARRAY, Storage.PERCPU_ARRAY: MapType.PERCPU_ARRAY}
_PROGRAMS = {
    Hook.XDP: "flowmon_xdp",
    Hook.TC_INGRESS: "flowmon_tc_ingress",
    Hook.TC_EGRESS: "flowmon_tc_egress",
}
_TABLES = {4: ("flows4", "slots4"), 6: ("flows6", "slots6")}


@dataclass(frozen=True)
class Flow:
    key: FlowKey
    packets: int
    bytes: int
    first_seen_ns: int
    last_seen_ns: int
    tcp_flags: int  # OR of every packet's
    syn_ns: int  # the first SYN, 0 if none
    fin_ns: int  # the first FIN, 0 if none


def now_coarse_ns() -> int:
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


def wall_time(coarse_ns: int) -> float:
    """A CLOCK_MONOTONIC_COARSE time of this boot as seconds since the epoch."""
    return time.time() - (now_coarse_ns() - coarse_ns) / 1e9


class _Stats:
    """A flow's counters as they are merged: per CPU, or table entry with the ring's flow."""

    __slots__ = ("bytes", "fin", "first", "flags", "last", "packets", "syn")

    def __init__(self) -> None:
        self.packets = self.bytes = self.flags = 0
        self.first = self.last = self.syn = self.fin = 0

    def add(
        self, packets: int, octets: int, first: int, last: int, flags: int, syn: int, fin: int
    ) -> None:
        if not packets:
            return  # a CPU that never saw the flow: its value is zero
        self.packets += packets
        self.bytes += octets
        self.flags |= flags
        self.first = min(self.first, first) if self.first else first
        self.last = max(self.last, last)
        self.syn = min(self.syn, syn) if self.syn and syn else self.syn or syn
        self.fin = min(self.fin, fin) if self.fin and fin else self.fin or fin

    def add_value(self, v: Any) -> None:
        """Add a struct flow_stats (or a ring reader's flow, which has its names)."""
        self.add(
            v.packets, v.bytes, v.first_seen_ns, v.last_seen_ns, v.tcp_flags, v.syn_ns, v.fin_ns
        )


class FlowTable:
    """The maps of ``flowtable.h`` in ``obj``: configure before load, read after."""

    MAPS = ("flows4", "flows6", "slots4", "slots6", "slot_locks", "records", "misses", "activity")

    def __init__(self, obj: BpfObject, config: Config) -> None:
        self.obj, self.config = obj, config
        # The ring's records read so far, added up per flow: the reader's part of the table.
        self._ring: RingDrain | None = None
        self._key_type = {4: obj.struct("flow_key4"), 6: obj.struct("flow_key6")}

    def configure(self) -> None:
        """Before load: the storage's map types and sizes, the rest at one entry."""
        c, maps, rodata = self.config, self.obj.maps, self.obj.rodata
        rodata["flow_storage"] = self.obj.enum("flow_storage")[f"FLOW_STORAGE_{c.storage.name}"]
        rodata["flow_full"] = self.obj.enum("flow_full")[f"FLOW_FULL_{c.full.name}"]
        if c.storage in _HASH_TYPES:
            for name in ("flows4", "flows6"):
                maps[name].set_type(_HASH_TYPES[c.storage])
                maps[name].max_entries = c.entries
        if c.storage in _ARRAY_TYPES:
            rodata["flow_slots"] = c.entries
            for name in ("slots4", "slots6"):
                maps[name].set_type(_ARRAY_TYPES[c.storage])
                maps[name].max_entries = c.entries
            if c.storage is Storage.ARRAY:
                maps["slot_locks"].max_entries = c.entries
        uses_ring = c.storage is Storage.RINGBUF or c.full is Full.SPILL
        maps["records"].max_entries = c.ring_bytes if uses_ring else MIN_RING_BYTES

    def opened(self) -> None:
        """After load."""
        if self.uses_ring:
            record = self.obj.struct("flow_record")
            self._ring = RingDrain(self.obj.maps["records"], record, self._key_type)

    @property
    def uses_ring(self) -> bool:
        return self.config.storage is Storage.RINGBUF or self.config.full is Full.SPILL

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    # --- reading ---

    def drain(self, budget: int | None = None) -> int:
        """Add up to ``budget`` of the ring's records to the table (None: every record committed
        when the call began; a producer faster than the reader cannot keep it from returning); the
        number read. The GIL is released while it reads."""
        return 0 if self._ring is None else self._ring.drain(budget)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """The ring drained by a thread of its own while the block runs (nothing to do without a
        ring): records are added up as they arrive instead of waiting in a ring that may fill
        between two reads of the table (what a full ring refuses is ``ring_full``, counted). The
        thread waits ``READER_IDLE_S`` when the ring is empty, and drains once more at the end."""
        if self._ring is None:
            yield
            return
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                if not self.drain():
                    stop.wait(READER_IDLE_S)

        reader = threading.Thread(target=drain, name="flowmon ring reader", daemon=True)
        reader.start()
        try:
            yield
        finally:
            stop.set()
            reader.join()
            self.drain()

    def flows(self) -> list[Flow]:
        """The flow table, most packets first: the kernel's entries (per-CPU values merged: sums,
        earliest first seen, latest last seen) with the ring's records added (drained first)."""
        self.drain()
        merged: dict[tuple[int, bytes], _Stats] = {}
        for found in [] if self._ring is None else self._ring.flows():
            stats = merged[(found.ip_version, self._ring.raw_key(found))] = _Stats()
            stats.add_value(found)
        storage = self.config.storage
        for version, (hash_name, slots_name) in _TABLES.items():
            if storage in _HASH_TYPES:
                for key, value in self.obj.maps[hash_name].items():
                    stats = merged.setdefault((version, bytes(key)), _Stats())
                    for v in value if isinstance(value, list) else [value]:
                        stats.add_value(v)
            elif storage in _ARRAY_TYPES:
                for _, value in self.obj.maps[slots_name].items():
                    for slot in value if isinstance(value, list) else [value]:
                        if slot.claimed:
                            stats = merged.setdefault((version, bytes(slot.key)), _Stats())
                            stats.add_value(slot.stats)
        flows = [self._flow(version, raw, s) for (version, raw), s in merged.items()]
        return sorted(flows, key=lambda f: (-f.packets, f.key))

    def _flow(self, version: int, raw: bytes, s: _Stats) -> Flow:
        k = self._key_type[version].from_buffer_copy(raw)
        size = 4 if version == 4 else 16
        src = bytes(k.saddr.to_bytes(4, "little")) if version == 4 else bytes(k.saddr.bytes)
        dst = bytes(k.daddr.to_bytes(4, "little")) if version == 4 else bytes(k.daddr.bytes)
        key = FlowKey(
            version,
            k.ifindex,
            Direction(k.direction),
            ipaddress.ip_address(src[:size]),
            ipaddress.ip_address(dst[:size]),
            int.from_bytes(k.sport.to_bytes(2, "little"), "big"),
            int.from_bytes(k.dport.to_bytes(2, "little"), "big"),
            k.proto,
        )
        return Flow(key, s.packets, s.bytes, s.first, s.last, s.flags, s.syn, s.fin)

    def misses(self) -> dict[str, int]:
        """Packets not counted, by reason (struct flow_misses), summed over CPUs, and the reader's
        own: ``reader_full``, ring records of new flows its table could not grow for."""
        misses = fields_of(self.obj.maps["misses"].lookup_sum(0))
        misses["reader_full"] = 0 if self._ring is None else self._ring.refused()
        return misses

    def activity(self) -> dict[str, int]:
        """Flows created and packets spilled (struct flow_activity), summed over CPUs."""
        return fields_of(self.obj.maps["activity"].lookup_sum(0))

    @property
    def removable(self) -> bool:
        """True if a flow can leave the table while the program counts (``take``): a hash entry
        is read and deleted by one syscall, the ring's flows are the reader's own. An array slot
        cannot: it keeps its key for the table's life, because the program counts into a claimed
        slot without a lock that a reader could take."""
        return not self.config.storage.array

    def take(self, keys: Iterable[FlowKey]) -> dict[FlowKey, Flow]:
        """Remove the flows of ``keys`` from the table and return each as its removal found it
        (a key not in the table is not in the answer). The ring is drained first; a hash entry is
        read and deleted in one BPF_MAP_LOOKUP_AND_DELETE_ELEM, so a packet the program counted
        before it is in the flow returned and one after it makes a new entry: none is lost
        between a read and a delete. Not for the array kinds (``removable``)."""
        if not self.removable:
            raise ValueError(f"{self.config.storage.value}: a slot cannot leave the table")
        self.drain()
        hashed = self.config.storage in _HASH_TYPES
        taken = {}
        for key in keys:
            raw = key.raw()
            stats = _Stats()
            found = None if self._ring is None else self._ring.take(key.version, raw)
            if found is not None:
                stats.add_value(found)
            if hashed:
                value = self.obj.maps[_TABLES[key.version][0]].lookup_and_delete(raw)
                for v in [] if value is None else value if isinstance(value, list) else [value]:
                    stats.add_value(v)
            if stats.packets:
                taken[key] = self._flow(key.version, raw, stats)
        return taken

    def clear(self) -> None:
        """Empty the flow table: the kernel's entries or slots, and the ring's flows (drained
        first). A program counting meanwhile may count into an array slot being zeroed: clear an
        array table once detached."""
        self._clear(counts=False)

    def forget(self) -> None:
        """Empty the table, the ring and the counters."""
        self._clear(counts=True)

    def _clear(self, counts: bool) -> None:
        self.drain()
        if self._ring is not None:
            self._ring.clear(counts)
        for name in ("flows4", "flows6", "slots4", "slots6"):
            self.obj.maps[name].clear()
        if counts:
            for name in ("misses", "activity"):
                self.obj.maps[name].clear()


def read_pinned_struct(path: Path, ctype: type, key: int = 0) -> Any:
    """Element ``key`` of the pinned ARRAY map at ``path``, as ``ctype``: what a loader must read
    before it can load (the configuration its object needs)."""
    fd = call(lib.bpf_obj_get, str(path).encode(), what=f"open pinned map {path}")
    try:
        value, index = ctype(), ctypes.c_uint32(key)
        call(
            lib.bpf_map_lookup_elem,
            fd,
            ctypes.byref(index),
            ctypes.byref(value),
            what=f"read {path}[{key}]",
        )
        return value
    finally:
        os.close(fd)


class FlowMon:
    """The loaded data plane. Use as a context manager: leaving detaches and closes it (pins made by
    ``pin`` stay: they are the counts a later process reopens, until ``unpin``)."""

    PINNED = (*FlowTable.MAPS, "unparsed", "config")

    def __init__(self, config: Config | None = None, reuse: Path | None = None) -> None:
        self.config = config or Config()
        self.obj = BpfObject.open(SOURCE)
        self.table = FlowTable(self.obj, self.config)
        self.attachments: list[Any] = []
        self.pinned: Path | None = reuse
        try:
            self.table.configure()
            if reuse is not None:
                for name in self.PINNED:
                    self.obj.maps[name].reuse_pinned(reuse / name)
            self.obj.load()
            self.table.opened()
            if reuse is None:
                self._write_config()
        except BaseException:
            self.close()
            raise

    def _write_config(self) -> None:
        c = self.config
        self.obj.maps["config"][0] = {
            "storage": self.obj.enum("flow_storage")[f"FLOW_STORAGE_{c.storage.name}"],
            "full": self.obj.enum("flow_full")[f"FLOW_FULL_{c.full.name}"],
            "entries": c.entries,
            "ring_bytes": c.ring_bytes,
            "owner_pid": os.getpid(),
        }

    # --- pins ---

    @staticmethod
    def pin_path(ifname: str) -> Path:
        return pin_dir(PIN_OWNER) / ifname

    @classmethod
    def pinned_config(cls, ifname: str) -> tuple[Config, int] | None:
        """The configuration pinned for ``ifname`` and the pid that loaded it, or None."""
        where = cls.pin_path(ifname) / "config"
        if not where.exists():
            return None
        with BpfObject.open(SOURCE) as obj:
            raw = read_pinned_struct(where, obj.struct("flowmon_config"))
            storages = {v: k for k, v in obj.enum("flow_storage").items()}
            fulls = {v: k for k, v in obj.enum("flow_full").items()}
        config = Config(
            storage=Storage[storages[raw.storage].removeprefix("FLOW_STORAGE_")],
            full=Full[fulls[raw.full].removeprefix("FLOW_FULL_")],
            entries=raw.entries,
            ring_bytes=raw.ring_bytes,
        )
        return config, raw.owner_pid

    @classmethod
    def reopen(cls, ifname: str) -> FlowMon:
        """The data plane whose maps are pinned for ``ifname`` (by this process or another): its
        counts, its configuration. Attach it to go on counting where the other left off."""
        found = cls.pinned_config(ifname)
        if found is None:
            raise LibbpfError(2, f"no flowmon maps pinned at {cls.pin_path(ifname)}")
        fm = cls(found[0], reuse=cls.pin_path(ifname))
        fm.obj.maps["config"][0] = {**fields_of(fm.obj.maps["config"][0]), "owner_pid": os.getpid()}
        return fm

    def pin(self, ifname: str) -> Path:
        """Pin every map under ``pin_dir("flowmon")/IFNAME/``: journaled while this object lives
        (a killed process's pins are ``harness clean``'s), kept on ``close``, until ``unpin``."""
        directory = self.pin_path(ifname)
        for name in self.PINNED:  # not Map.pin: these pins outlive the object
            pin_object(self.obj.maps[name].fd, directory / name)
        self.pinned = directory
        return directory

    @classmethod
    def unpin(cls, ifname: str) -> list[Path]:
        """Remove the pins of ``ifname``; the paths removed."""
        return unpin_present(cls.pin_path(ifname), cls.PINNED)

    # --- attach ---

    def attach(
        self,
        ifname: str,
        hooks: Iterable[Hook],
        netns: str | None = None,
        mode: XdpMode = XdpMode.NATIVE,
    ) -> None:
        """Count at each of ``hooks`` on ``ifname`` (in namespace ``netns``)."""
        for hook in hooks:
            program = self.obj.programs[_PROGRAMS[hook]]
            if hook is Hook.XDP:
                self.attachments.append(program.attach_xdp(ifname, mode, netns))
            else:
                direction = TcDirection.INGRESS if hook is Hook.TC_INGRESS else TcDirection.EGRESS
                self.attachments.append(program.attach_tc(ifname, direction, netns))

    def detach(self) -> None:
        while self.attachments:
            self.attachments.pop().detach()

    def program(self, hook: Hook) -> Any:
        return self.obj.programs[_PROGRAMS[hook]]

    def close(self) -> None:
        self.detach()
        self.table.close()
        if self.pinned is not None:
            config = self.obj.maps["config"]
            if config.lookup(0) is not None and config[0].owner_pid == os.getpid():
                config[0] = {**fields_of(config[0]), "owner_pid": 0}
            for name in self.PINNED:  # left for the next run: no longer this run's to clean up
                keep_pin(self.pinned / name)
        self.obj.close()

    def __enter__(self) -> FlowMon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---

    def flows(self) -> list[Flow]:
        return self.table.flows()

    def misses(self) -> dict[str, int]:
        return self.table.misses()

    def activity(self) -> dict[str, int]:
        return self.table.activity()

    def unparsed(self) -> dict[str, int]:
        """Frames not counted in a flow, by parse status (``bpf.parse.unparsed``)."""
        return parse.unparsed(self.obj)
