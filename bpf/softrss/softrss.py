"""The soft RSS control plane: load ``softrss.bpf.c``, attach it, steer its buckets, read what it saw.

```python
from bpf.softrss import Action, Config, SoftRss

with SoftRss(Config(buckets=4, action=Action.COUNT)) as rss:
    rss.attach("ens5", netns="bl-3fa2c1-dut")
    ...
    report = rss.bucket_stats()      # per bucket: packets, bytes, flows, share; stddev, max/mean
    rss.flows()                      # the flow table, biggest first
    rss.elephants()                  # events since the last call, each flow's once
    rss.set_reta([0, 1] * 64)        # any time; rss.equal(2) is `ethtool -X equal 2`
    rss.save(path)                   # config, RETA, targets, counters and flows as JSON
with SoftRss.restore(path) as again: ...
```

Every struct (flow key, flow, bucket, event) and enum comes from the object's BTF. Timestamps are the
kernel's CLOCK_MONOTONIC_COARSE (``time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)``, one jiffy's
resolution): a restored state keeps them, so ages only mean something on the boot that saved them.

Not for: a command line or Argus export (they build on this), or the model (``bpf.softrss.model``).
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bpf import POSSIBLE_CPUS, BpfObject, RingBuffer, XdpMode, files, parse
from bpf import netns as bpf_netns
from bpf.attach import XdpLink, ifindex
from bpf.btf import be16, be32, fields_of, from_be16, from_be32
from bpf.softrss.model import (
    RETA_SIZE,
    Action,
    Config,
    FlowKey,
    HashKind,
    cache_set,
    equal_reta,
)
from bpf.toeplitz import fill_table

SOURCE = Path(__file__).with_name("softrss.bpf.c")
CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; Python's time module does not name it
FLOW_TABLES = ("flows4", "flows6")  # one per IP version, each Config.max_flows entries
STATE_VERSION = 1
CPUMAP_QSIZE = 2048  # frames queued per CPU before the redirect drops (the kernel counts them)


@dataclass(frozen=True)
class Bucket:
    index: int
    packets: int
    bytes: int
    flows: int  # flows that entered the flow table in this bucket
    share: float  # of all packets counted in buckets


@dataclass(frozen=True)
class Balance:
    """How evenly a quantity spreads over the buckets."""

    mean: float
    stddev: float  # population standard deviation over buckets
    max_over_mean: float  # 1.0 is perfect; N (the bucket count) is everything in one bucket

    @classmethod
    def of(cls, values: list[int]) -> Balance:
        mean = sum(values) / len(values)
        if mean == 0:
            return cls(0.0, 0.0, 0.0)
        stddev = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return cls(mean, stddev, max(values) / mean)


@dataclass(frozen=True)
class BucketReport:
    buckets: list[Bucket]
    packets: Balance
    flows: Balance

    @property
    def total_packets(self) -> int:
        return sum(b.packets for b in self.buckets)


@dataclass(frozen=True)
class Flow:
    key: FlowKey
    hash: int
    bucket: int  # the bucket of its first packet
    packets: int
    bytes: int
    first_seen_ns: int  # CLOCK_MONOTONIC_COARSE
    last_seen_ns: int  # up to 4 jiffies (16 ms at HZ=250) before the last packet: see the cache
    elephant: bool  # its event went out


@dataclass(frozen=True)
class Elephant:
    key: FlowKey
    hash: int
    bucket: int
    packets: int  # when it crossed the threshold
    bytes: int
    first_seen_ns: int
    last_seen_ns: int


class StateError(ValueError):
    """A saved state file that cannot be restored: the file and what is wrong in it."""


def _problem(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"field {err.args[0]!r} missing"
    return (
        f"{type(err).__name__}: {err}" if isinstance(err, TypeError | AttributeError) else str(err)
    )


class SoftRss:
    """The loaded data plane. Use as a context manager: leaving detaches and frees everything."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.obj = BpfObject.open(SOURCE)
        self.link: XdpLink | None = None
        self._ring: RingBuffer | None = None
        self._ifaces: list[str] | None = None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        c, obj = self.config, self.obj
        hashes, actions = obj.enum("softrss_hash"), obj.enum("softrss_action")
        obj.rodata["n_buckets"] = c.buckets
        obj.rodata["hash_kind"] = hashes[f"SOFTRSS_HASH_{c.hash.name}"]
        obj.rodata["symmetric"] = c.symmetric
        obj.rodata["action"] = actions[f"SOFTRSS_ACTION_{c.action.name}"]
        obj.rodata["jhash_initval"] = c.jhash_initval
        obj.rodata["threshold_packets"] = c.threshold_packets
        obj.rodata["threshold_bytes"] = c.threshold_bytes
        obj.rodata["n_cpus"] = POSSIBLE_CPUS
        for table in FLOW_TABLES:
            obj.maps[table].max_entries = c.max_flows
        obj.maps["flow_cache"].max_entries *= POSSIBLE_CPUS  # one region of slots per CPU
        obj.load()
        self.program = obj.programs["softrss_xdp"]
        if c.hash is HashKind.TOEPLITZ:
            table = obj.maps["toeplitz"]
            table[0] = fill_table(table.value_type(), c.key)
        self.equal()
        self.set_cpus([b % POSSIBLE_CPUS for b in range(c.buckets)])
        self._ring = RingBuffer(obj.maps["elephants"], obj.struct("softrss_elephant"))

    # --- attach ---

    def attach(self, ifname: str, netns: str | None = None, mode: XdpMode = XdpMode.NATIVE) -> None:
        """Run on ``ifname`` (in namespace ``netns``); one interface per SoftRss."""
        if self.link is not None:
            raise RuntimeError(f"soft RSS already attached to {self.link.ifname}: detach() first")
        self.link = self.program.attach_xdp(ifname, mode, netns)

    def detach(self) -> None:
        if self.link is not None:
            self.link.detach()
            self.link = None

    def close(self) -> None:
        self.detach()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self.obj.close()

    def __enter__(self) -> SoftRss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- steering ---

    @property
    def reta(self) -> list[int]:
        table = self.obj.maps["reta"]
        return [table[i] for i in range(RETA_SIZE)]

    def set_reta(self, reta: list[int]) -> None:
        """Replace the indirection table (128 bucket numbers); takes effect with the next frame."""
        if len(reta) != RETA_SIZE:
            raise ValueError(f"RETA: {len(reta)} entries given, {RETA_SIZE} expected")
        bad = [(i, b) for i, b in enumerate(reta) if not 0 <= b < self.config.buckets]
        if bad:
            raise ValueError(
                f"RETA entries {bad[:5]} name buckets outside 0..{self.config.buckets - 1}"
            )
        self.obj.maps["reta"].update_batch(enumerate(reta))

    def equal(self, buckets: int | None = None) -> None:
        """Spread the RETA evenly over the first ``buckets`` (default: all), like ``ethtool -X equal``."""
        self.set_reta(equal_reta(buckets or self.config.buckets))

    @property
    def cpus(self) -> list[int]:
        table = self.obj.maps["bucket_cpu"]
        return [table[b] for b in range(self.config.buckets)]

    def set_cpus(self, cpus: list[int]) -> None:
        """The CPU of each bucket, for the ``cpu`` action (default: bucket % CPUs)."""
        if len(cpus) != self.config.buckets:
            raise ValueError(f"{len(cpus)} CPUs given for {self.config.buckets} buckets")
        bad = [c for c in cpus if not 0 <= c < POSSIBLE_CPUS]
        if bad:
            raise ValueError(f"CPUs {bad} do not exist (0..{POSSIBLE_CPUS - 1})")
        if self.config.action is Action.CPU:
            cpumap = self.obj.maps["cpus"]
            for cpu in sorted(set(cpus)):
                cpumap[cpu] = CPUMAP_QSIZE
        self.obj.maps["bucket_cpu"].update_batch(enumerate(cpus))

    def set_ifaces(self, ifnames: list[str], netns: str | None = None) -> None:
        """The interface of each bucket, for the ``ifaces`` action (in namespace ``netns``).

        A veth receiving redirected frames needs an XDP program or GRO on its peer, else the kernel
        drops them silently.
        """
        if len(ifnames) != self.config.buckets:
            raise ValueError(f"{len(ifnames)} interfaces given for {self.config.buckets} buckets")
        devmap = self.obj.maps["ifaces"]
        # The kernel resolves a DEVMAP's ifindex in the namespace of the thread that writes it.
        with bpf_netns.entered(netns):
            for bucket, name in enumerate(ifnames):
                devmap[bucket] = ifindex(name)
        self._ifaces = list(ifnames)

    # --- reading ---

    def bucket_stats(self) -> BucketReport:
        table = self.obj.maps["buckets"]
        sums = [table.lookup_sum(b) for b in range(self.config.buckets)]
        total = sum(s.packets for s in sums)
        buckets = [
            Bucket(b, s.packets, s.bytes, s.flows, s.packets / total if total else 0.0)
            for b, s in enumerate(sums)
        ]
        return BucketReport(
            buckets,
            Balance.of([b.packets for b in buckets]),
            Balance.of([b.flows for b in buckets]),
        )

    def flows(self) -> list[Flow]:
        """The flow tables, IPv4 and IPv6, most packets first.

        Each entry's counts include what the per-CPU flow cache holds for it; the tables are read
        first, so a flush racing the read can hide packets from it, never count them twice.
        """
        entries = [
            (self._key(k, version), v)
            for version, table in zip((4, 6), FLOW_TABLES, strict=True)
            for k, v in self.obj.maps[table].items()
        ]
        cached = self._cached()
        found = [_flow(key, v, *cached.get(key, (0, 0))) for key, v in entries]
        return sorted(found, key=lambda f: (-f.packets, f.key))

    def flow(self, key: FlowKey) -> Flow | None:
        """One flow's entry, if the table holds it (with its cached counts, as in flows())."""
        v = self._flow_table(key).lookup(self._kernel_key(key))
        if v is None:
            return None
        cache = self.obj.maps["flow_cache"]
        packets = octets = 0
        first = cache_set(key)  # the key's set on every CPU, not the whole cache flows() reads
        for region in range(0, cache.max_entries, cache.max_entries // POSSIBLE_CPUS):
            for index in (region + first, region + first + 1):
                slot = cache[index]
                if slot.ip_version and slot.packets and self._slot_key(slot) == key:
                    packets, octets = packets + slot.packets, octets + slot.bytes
        return _flow(key, v, packets, octets)

    def forget_flows(self) -> None:
        """Empty the flow tables and the flow cache (bucket counters stay)."""
        for table in (*FLOW_TABLES, "flow_cache"):
            self.obj.maps[table].clear()

    def _cached(self) -> dict[FlowKey, tuple[int, int]]:
        """Packets and bytes in the per-CPU flow cache, not yet in the tables, by flow."""
        counts: dict[FlowKey, tuple[int, int]] = {}
        for _, slot in self.obj.maps["flow_cache"].items():
            if slot.ip_version and slot.packets:
                key = self._slot_key(slot)
                packets, octets = counts.get(key, (0, 0))
                counts[key] = (packets + slot.packets, octets + slot.bytes)
        return counts

    @classmethod
    def _slot_key(cls, slot: Any) -> FlowKey:
        """The FlowKey of a union softrss_flow_key with its IP version (cache slots, events)."""
        v = slot.ip_version
        return cls._key(slot.key.v4 if v == 4 else slot.key.v6, v)

    def elephants(self, timeout_ms: int = 0) -> list[Elephant]:
        """Elephant events not yet read, waiting up to ``timeout_ms`` for the first."""
        events = self._ring.poll(timeout_ms) if timeout_ms else self._ring.drain()
        return [
            Elephant(
                self._slot_key(e),
                e.hash,
                e.bucket,
                e.packets,
                e.bytes,
                e.first_seen_ns,
                e.last_seen_ns,
            )
            for e in events
        ]

    def unparsed(self) -> dict[str, int]:
        """Frames passed without a bucket, by parse status (``bpf.parse.unparsed``)."""
        return parse.unparsed(self.obj)

    def misses(self) -> dict[str, int]:
        """What the data plane could not do: ring full, flow entry evicted at once, bad RETA entry."""
        return fields_of(self.obj.maps["misses"].lookup_sum(0))

    @staticmethod
    def _key(k: Any, version: int) -> FlowKey:
        """A FlowKey from a kernel key: struct softrss_flow_key4 or softrss_flow_key6."""
        return FlowKey(
            _address(k.saddr, version),
            _address(k.daddr, version),
            from_be16(k.sport),
            from_be16(k.dport),
            k.l4_proto,
        )

    def _flow_table(self, key: FlowKey) -> Any:
        return self.obj.maps[FLOW_TABLES[key.src.version == 6]]

    def _kernel_key(self, key: FlowKey) -> Any:
        k = self._flow_table(key).key_type()
        if key.src.version == 4:
            k.saddr, k.daddr = be32(key.src), be32(key.dst)
        else:
            k.saddr.bytes[:] = key.src.packed
            k.daddr.bytes[:] = key.dst.packed
        k.sport, k.dport = be16(key.sport), be16(key.dport)
        k.l4_proto = key.proto
        return k

    # --- state ---

    def state(self) -> dict[str, Any]:
        """Everything needed to continue elsewhere: config, steering, counters, flows (JSON-ready)."""
        c = self.config
        config = {**asdict(c), "hash": c.hash.value, "action": c.action.value, "key": c.key.hex()}
        return {
            "version": STATE_VERSION,
            "config": config,
            "reta": self.reta,
            "cpus": self.cpus,
            "ifaces": self._ifaces,
            "buckets": [asdict(b) for b in self.bucket_stats().buckets],
            "unparsed": self.unparsed(),
            "flows": [{**asdict(f), "key": _key_dict(f.key)} for f in self.flows()],
        }

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.state(), indent=1) + "\n")

    @classmethod
    def restore(cls, path: Path | str, ifaces_netns: str | None = None) -> SoftRss:
        """A new SoftRss loaded from a saved state, counters and flows included (not attached).

        The ``ifaces`` action's interfaces are looked up by name in ``ifaces_netns``. Counters land on
        CPU 0: sums, shares and flows read back as saved.
        """
        where = Path(path)
        try:
            state = files.load_json(where)
        except files.FileError as err:
            raise StateError(str(err)) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise StateError(f"{where}: state version {version!r}, {STATE_VERSION} known")
        try:
            raw = state["config"]
            config = Config(
                **{
                    **raw,
                    "hash": HashKind(raw["hash"]),
                    "action": Action(raw["action"]),
                    "key": bytes.fromhex(raw["key"]),
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise StateError(f"{where}: config: {_problem(err)}") from None
        rss = cls(config)
        try:
            rss._apply_state(state, ifaces_netns)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            rss.close()  # nothing loaded stays behind
            raise StateError(f"{where}: {_problem(err)}") from None
        except BaseException:
            rss.close()
            raise
        return rss

    def _apply_state(self, state: dict[str, Any], ifaces_netns: str | None) -> None:
        self.set_reta(state["reta"])
        self.set_cpus(state["cpus"])
        if state["ifaces"] is not None:
            self.set_ifaces(state["ifaces"], ifaces_netns)
        zero = [0] * (POSSIBLE_CPUS - 1)
        buckets = self.obj.maps["buckets"]
        for b in state["buckets"]:
            value = buckets.value_type(packets=b["packets"], bytes=b["bytes"], flows=b["flows"])
            buckets[b["index"]] = [value, *(buckets.value_type() for _ in zero)]
        statuses = self.obj.enum("parse_status")
        for name, n in state["unparsed"].items():
            self.obj.maps["unparsed"][statuses[name]] = [n, *zero]
        for version, name in zip((4, 6), FLOW_TABLES, strict=True):
            table = self.obj.maps[name]
            keyed = ((_key_of(f["key"]), f) for f in state["flows"])
            table.update_batch(
                (
                    self._kernel_key(key),
                    table.value_type(
                        packets=f["packets"],
                        bytes=f["bytes"],
                        first_seen_ns=f["first_seen_ns"],
                        last_seen_ns=f["last_seen_ns"],
                        hash=f["hash"],
                        bucket=f["bucket"],
                        announced=int(f["elephant"]),
                    ),
                )
                for key, f in keyed
                if key.src.version == version
            )


def _address(field: Any, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address from a key field: a __be32 (IPv4 keys) or a union flow_addr."""
    if isinstance(field, int):
        return from_be32(field)
    return ipaddress.ip_address(bytes(field.bytes[: 4 if version == 4 else 16]))


def _flow(key: FlowKey, v: Any, cached_packets: int = 0, cached_bytes: int = 0) -> Flow:
    return Flow(
        key,
        v.hash,
        v.bucket,
        v.packets + cached_packets,
        v.bytes + cached_bytes,
        v.first_seen_ns,
        v.last_seen_ns,
        bool(v.announced),
    )


def _key_dict(key: FlowKey) -> dict[str, Any]:
    return {**asdict(key), "src": str(key.src), "dst": str(key.dst)}


def _key_of(d: dict[str, Any]) -> FlowKey:
    return FlowKey(
        ipaddress.ip_address(d["src"]),
        ipaddress.ip_address(d["dst"]),
        d["sport"],
        d["dport"],
        d["proto"],
    )
