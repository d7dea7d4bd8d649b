"""The traffic counter's control plane: load ``trafcount.bpf.c``, attach it, pin it, read the counts.

```python
from bpf.trafcount import Config, Hook, Key, TrafCount

with TrafCount(Config(key=Key.SRC, entries=4096)) as tc:
    tc.attach("ens5", Hook.TC_INGRESS, netns="bl-3fa2c1-dut")
    tc.pin("ens5")            # maps under bpf.pin_dir("trafcount")/ens5/, for bpftool, until close
    tc.counts()               # {TrafKey: (packets, bytes)}, IPv4 and IPv6
    tc.totals()               # entries created and evicted, packets lost by reason
```

Leaving detaches and unpins: a TrafCount leaves nothing behind, unless its process is killed, when
the journal lets ``harness clean`` remove its TC filter and pins.

``snapshot()`` reads both tables for ``counts()``, ``totals()`` and the Prometheus scrape: the raw
keys and values through ``BPF_MAP_LOOKUP_BATCH`` into buffers allocated once, unpacked with
``struct`` (no ctypes object per entry), keyed by the raw key (``key_of`` makes it a TrafKey). The
time series, which reads the tables a thousand times a second, has its reader in C
(``bpf.trafcount.series``). Every struct comes from the object's BTF.

Not for: the command line (``bpf.trafcount.cli``), the time series (``bpf.trafcount.series``) or
the model (``bpf.trafcount.model``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf import BpfObject, LibbpfError, XdpMode, parse
from bpf.attach import TcDirection, pin_dir, pin_object, unpin_present
from bpf.btf import fields_of
from bpf.flowmon.flowmon import read_pinned_struct
from bpf.libbpf import MapBatchOpts, lib
from bpf.trafcount.model import ByteCount, Config, Hook, Key, TrafKey, key_of

SOURCE = Path(__file__).with_name("trafcount.bpf.c")
PIN_OWNER = "trafcount"
TABLES = {4: "addrs4", 6: "addrs6"}
BATCH = 4096  # entries per BPF_MAP_LOOKUP_BATCH call
_COUNTS = struct.Struct("=QQ")  # struct traf_counts
KEY4_SIZE, KEY6_SIZE = 8, 20  # struct traf_key4, traf_key6 (checked against BTF at load)


@dataclass(frozen=True)
class Totals:
    """What happened to the tables beyond their counts (struct traf_totals, summed over CPUs)."""

    created: int  # entries created
    present: int  # entries in the tables now
    entry_gone: int  # packets lost: their entry went between -EEXIST and the lookup
    no_room: int  # packets lost: the LRU found no entry to take

    @property
    def evicted(self) -> int:
        """Entries the LRU evicted to make room (created, less those still there)."""
        return self.created - self.present


class _BatchReader:
    """One table's raw (key, value) bytes, read in batches into buffers allocated once."""

    def __init__(self, bpf_map: Any) -> None:
        self.map = bpf_map
        self.key_size, self.value_size = bpf_map.key_size, bpf_map.value_size
        n = min(BATCH, bpf_map.max_entries)
        self.batch = n
        self.keys = (ctypes.c_uint8 * (self.key_size * n))()
        self.values = (ctypes.c_uint8 * (self.value_size * n))()
        self._in, self._out = ctypes.c_uint64(), ctypes.c_uint64()
        self._count = ctypes.c_uint32()
        self._opts = MapBatchOpts()

    def read_into(self, found: dict[bytes, tuple[int, int]]) -> None:
        """Add every (raw key: (packets, bytes)) to ``found``."""
        fd, ks, vs = self.map.fd, self.key_size, self.value_size
        first = True
        while True:
            self._count.value = self.batch
            ret = lib.bpf_map_lookup_batch(
                fd,
                None if first else ctypes.byref(self._in),
                ctypes.byref(self._out),
                self.keys,
                self.values,
                ctypes.byref(self._count),
                ctypes.byref(self._opts),
            )
            if ret < 0 and ret != -errno.ENOENT:
                raise LibbpfError(-ret, f"map {self.map.name!r}: lookup batch")
            n = self._count.value
            if n:
                keys = bytes(memoryview(self.keys)[: n * ks])
                values = _COUNTS.iter_unpack(bytes(memoryview(self.values)[: n * vs]))
                found.update(
                    zip([keys[i : i + ks] for i in range(0, n * ks, ks)], values, strict=True)
                )
            if ret == -errno.ENOENT:
                return
            self._in.value, first = self._out.value, False


class TrafCount:
    """The loaded data plane. Use as a context manager: leaving detaches it, removes the pins made
    by ``pin`` and closes it."""

    PINNED = ("addrs4", "addrs6", "totals", "unparsed", "config")

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.obj = BpfObject.open(SOURCE)
        self.attachments: list[Any] = []
        self.pinned: Path | None = None
        self._closed = False
        try:
            self.obj.rodata["key_dst"] = self.config.key is Key.DST
            self.obj.rodata["count_wire"] = self.config.bytes is ByteCount.WIRE
            for name in TABLES.values():
                self.obj.maps[name].max_entries = self.config.entries
            self.obj.load()
            self.obj.maps["config"][0] = {
                "entries": self.config.entries,
                "key_dst": int(self.config.key is Key.DST),
                "count_wire": int(self.config.bytes is ByteCount.WIRE),
                "owner_pid": os.getpid(),
            }
            self._readers = {v: _BatchReader(self.obj.maps[n]) for v, n in TABLES.items()}
            sizes = (self._readers[4].key_size, self._readers[6].key_size)
            if sizes != (KEY4_SIZE, KEY6_SIZE):
                raise RuntimeError(f"struct traf_key4/traf_key6 are {sizes} bytes, not 8 and 20")
            self._reading = (
                threading.Lock()
            )  # the command's printer and the metrics server share them
        except BaseException:
            self.obj.close()
            raise

    # --- attach ---

    def program(self, hook: Hook) -> Any:
        return self.obj.programs["trafcount_xdp" if hook.xdp else "trafcount_tc"]

    def attach(
        self,
        ifname: str,
        hook: Hook,
        netns: str | None = None,
        mode: XdpMode = XdpMode.NATIVE,
    ) -> None:
        """Count at ``hook`` on ``ifname`` (in namespace ``netns``)."""
        program = self.program(hook)
        if hook.xdp:
            self.attachments.append(program.attach_xdp(ifname, mode, netns))
        else:
            direction = TcDirection.INGRESS if hook is Hook.TC_INGRESS else TcDirection.EGRESS
            self.attachments.append(program.attach_tc(ifname, direction, netns))

    def detach(self) -> None:
        while self.attachments:
            self.attachments.pop().detach()

    # --- pins ---

    @staticmethod
    def pin_path(ifname: str) -> Path:
        return pin_dir(PIN_OWNER) / ifname

    def pin(self, ifname: str) -> Path:
        """Pin every map under ``pin_dir("trafcount")/IFNAME/`` until ``close`` (journaled:
        ``harness clean`` removes them if this process is killed)."""
        directory = self.pin_path(ifname)
        for name in self.PINNED:  # not Map.pin: these pins outlive the object
            pin_object(self.obj.maps[name].fd, directory / name)
        self.pinned = directory
        self._pinned_as = ifname
        return directory

    @classmethod
    def unpin(cls, ifname: str) -> list[Path]:
        """Remove the pins of ``ifname`` (whoever made them); the paths removed."""
        return unpin_present(cls.pin_path(ifname), cls.PINNED)

    @classmethod
    def pinned_config(cls, ifname: str) -> tuple[Config, int] | None:
        """The configuration pinned for ``ifname`` and the pid counting with it, or None. A pid that
        no longer runs was killed: it could not remove its pins."""
        where = cls.pin_path(ifname) / "config"
        if not where.exists():
            return None
        with BpfObject.open(SOURCE) as obj:
            raw = read_pinned_struct(where, obj.struct("traf_config"))
        config = Config(
            key=Key.DST if raw.key_dst else Key.SRC,
            bytes=ByteCount.WIRE if raw.count_wire else ByteCount.L3,
            entries=raw.entries,
        )
        return config, raw.owner_pid

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.detach()
        if self.pinned is not None:
            self.unpin(self._pinned_as)
            self.pinned = None
        self.obj.close()

    def __enter__(self) -> TrafCount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---

    def snapshot(self) -> dict[bytes, tuple[int, int]]:
        """Both tables as {raw key: (packets, bytes)}, the key's length telling IPv4 (8 bytes) from
        IPv6 (20), in the order read (addrs4 then addrs6, each in the kernel's bucket order).
        ``key_of`` makes a key a TrafKey."""
        found: dict[bytes, tuple[int, int]] = {}
        with self._reading:
            for reader in self._readers.values():
                reader.read_into(found)
        return found

    def counts(self) -> dict[TrafKey, tuple[int, int]]:
        """Packets and bytes per address and protocol."""
        return {key_of(raw): c for raw, c in self.snapshot().items()}

    def totals(self) -> Totals:
        t = fields_of(self.obj.maps["totals"].lookup_sum(0))
        present = len(self.snapshot())
        return Totals(t["created"], present, t["entry_gone"], t["no_room"])

    def unparsed(self) -> dict[str, int]:
        """Frames not counted, by parse status (``bpf.parse.unparsed``)."""
        return parse.unparsed(self.obj)
