"""The VXLAN pipeline's control plane: load ``vxlan.bpf.c``, attach it to the mirror target, set the
egress, and change the allowlist and NAT rules while it runs; read its counters and its ring.

```python
from bpf.vxlan import Allowlist, Config, Mode, NatTarget, VxlanPipeline

with VxlanPipeline(Config(mode=Mode.REDIRECT, vni=42)) as vx:
    vx.attach("ens5", netns="dut")                     # XDP (redirect, ringbuf) or TC ingress (tc)
    vx.set_egress("ens6", next_hop_mac="02:00:00:00:03:02", netns="dut")
    vx.set_allowlist(Allowlist.load("allowlist.json"))  # validated whole before any map changes
    vx.add_nat(80, "10.2.0.2", 8080)
    vx.stats()                                         # summed per CPU; .balanced is the invariant
    vx.frames()                                        # ringbuf mode: what the rings hold now
    vx.pin("mirror")                                   # maps under bpf.pin_dir("vxlan-mirror")

with VxlanPipeline.open_pinned("mirror") as running:   # another process: the same maps
    running.add_nat(53, "10.2.0.2")
```

Every struct and enum comes from the object's BTF. Not for: the re-injector or a command line (they
build on this), or the model (``bpf.vxlan.model``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import bpf
from bpf import BpfObject, Map, RingBuffer, TcDirection, XdpMode
from bpf import netns as bpf_netns
from bpf.attach import TcFilter, XdpLink, host_path, ifindex
from bpf.btf import be32, from_be32
from bpf.vxlan.allowlist import Address, Allowlist, Network
from bpf.vxlan.model import Config, DropReason, Egress, Mode, NatTarget

SOURCE = Path(__file__).with_name("vxlan.bpf.c")
RING_SOURCE = Path(__file__).with_name("vxlan_ring.bpf.c")
ALLOW_MAPS = {4: ("allow_hosts", "allow_prefixes"), 6: ("allow_hosts6", "allow_prefixes6")}
PINNED_MAPS = (*ALLOW_MAPS[4], *ALLOW_MAPS[6], "nat", "egress", "egress_dev", "stats", "rings")
_SIOCGIFHWADDR = 0x8927
_COUNTERS = (
    "total",
    "bytes",
    "passed",
    "vxlan",
    "inner",
    "nat",
    "df_cleared",
    "forwarded",
    "forwarded_bytes",
    "redirected",
    "queued",
)


def parse_mac(mac: str | bytes) -> bytes:
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError(f"MAC address of {len(mac)} bytes, 6 expected")
        return mac
    try:
        raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address (like 02:00:00:00:03:02)")
    return raw


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def interface_mac(ifname: str, netns: str | None = None) -> bytes:
    """The hardware address of ``ifname`` (in namespace ``netns``)."""
    with bpf_netns.entered(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            info = fcntl.ioctl(sock, _SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError as err:
            raise OSError(err.errno, f"MAC address of {ifname!r}: {err.strerror}") from None
    return info[18:24]


@dataclass(frozen=True)
class Stats:
    """The counters summed over CPUs. Every frame is passed, forwarded, or dropped for a reason."""

    total: int
    bytes: int
    passed: int
    vxlan: int
    inner: int
    nat: int
    df_cleared: int
    forwarded: int
    forwarded_bytes: int
    redirected: int
    queued: int
    drops: dict[str, int]  # DropReason value -> frames

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def balanced(self) -> bool:
        """The invariant: total == passed + forwarded + dropped."""
        return self.total == self.passed + self.forwarded + self.dropped

    def counts(self) -> dict[str, int]:
        """Non-zero counters as one flat dict, drops as ``drop:<reason>`` (the model's shape)."""
        flat = {name: getattr(self, name) for name in _COUNTERS}
        flat.update({f"drop:{reason}": n for reason, n in self.drops.items()})
        return {k: v for k, v in flat.items() if v}


class VxlanPipeline:
    """The loaded data plane. Use as a context manager: leaving detaches, unpins and frees it all."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.obj = BpfObject.open(SOURCE)
        self.attachment: XdpLink | TcFilter | None = None
        self.pin_path: Path | None = None
        self._rings: list[BpfObject] = []
        self._readers: list[RingBuffer] = []
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open_pinned(cls, name: str) -> VxlanPipeline:
        """The pipeline another process runs and pinned as ``name`` (``pin``): its allowlist, NAT
        rules, egress and counters to read and change. Nothing is loaded or attached here, and its
        configuration is not known (``config`` is the default); closing this leaves the pins.
        """
        directory = bpf.pin_dir(f"vxlan-{name}")
        missing = [m for m in PINNED_MAPS if not (directory / m).exists()]
        if missing:
            raise FileNotFoundError(
                f"no VXLAN pipeline pinned as {name!r}: {host_path(directory)} lacks {', '.join(missing)} "
                f"(is `vxlan-pipeline run --name {name}` running?)"
            )
        vx = cls.__new__(cls)
        vx.config, vx.attachment, vx.pin_path, vx._rings, vx._readers = Config(), None, None, [], []
        vx.obj = BpfObject.open(SOURCE)
        try:
            for map_name in PINNED_MAPS:
                vx.obj.maps[map_name].reuse_pinned(directory / map_name)
            vx._drops = vx._drop_indexes()
        except BaseException:
            vx.close()
            raise
        return vx

    def _drop_indexes(self) -> dict[str, int]:
        drops = self.obj.enum("vxlan_drop")
        return {r.value: drops[f"VXLAN_DROP_{r.name}"] for r in DropReason}

    def _load(self) -> None:
        c, obj = self.config, self.obj
        obj.rodata["mode"] = obj.enum("vxlan_mode")[f"VXLAN_MODE_{c.mode.name}"]
        obj.rodata["vxlan_port"] = c.port
        obj.rodata["ring_count"] = c.rings
        obj.maps["rings"].max_entries = c.rings
        obj.rodata["vni_filter"] = c.vni is not None
        obj.rodata["vni_id"] = c.vni or 0
        obj.rodata["match_on"] = obj.enum("vxlan_match")[f"VXLAN_MATCH_{c.match.name}"]
        if c.default_nat is not None:
            obj.rodata["default_nat_addr"] = be32(c.default_nat.addr)
            obj.rodata["default_nat_port"] = c.default_nat.port
        obj.load()
        self._drops = self._drop_indexes()
        self.program = obj.programs["vxlan_tc" if c.mode is Mode.TC else "vxlan_xdp"]
        if c.mode is Mode.RINGBUF:
            for index in range(c.rings):
                ring = BpfObject.open(RING_SOURCE)
                self._rings.append(ring)
                ring.maps["frames"].max_entries = c.ring_size
                ring.load()
                obj.maps["rings"][index] = ring.maps["frames"].fd
        self._frame_data = obj.struct("vxlan_frame").data.offset

    # --- attach ---

    def attach(
        self, ifname: str, netns: str | None = None, xdp_mode: XdpMode = XdpMode.NATIVE
    ) -> None:
        """Run on the mirror target ``ifname``: XDP (redirect, ringbuf modes) or TC ingress (tc)."""
        if self.attachment is not None:
            raise RuntimeError(f"already attached to {self.attachment.ifname}: detach() first")
        egress = self.egress().ifindex
        if egress and egress == ifindex(ifname, netns):
            raise ValueError(f"{ifname} is the egress: mirrored frames must never go back out")
        if self.config.mode is Mode.TC:
            self.attachment = self.program.attach_tc(ifname, TcDirection.INGRESS, netns)
        else:
            self.attachment = self.program.attach_xdp(ifname, xdp_mode, netns)

    def detach(self) -> None:
        if self.attachment is not None:
            self.attachment.detach()
            self.attachment = None

    # --- egress ---

    def set_egress(
        self,
        ifname: str,
        next_hop_mac: str | bytes,
        netns: str | None = None,
        src_mac: str | bytes | None = None,
    ) -> Egress:
        """Forward out of ``ifname`` to ``next_hop_mac``; the source MAC is ``ifname``'s own unless
        given. Takes effect with the next frame.
        """
        index = ifindex(ifname, netns)
        if self.attachment is not None and self.attachment.ifindex == index:
            raise ValueError(
                f"{ifname} is the mirror target: mirrored frames must never go back out"
            )
        egress = Egress(
            parse_mac(src_mac) if src_mac is not None else interface_mac(ifname, netns),
            parse_mac(next_hop_mac),
            index,
        )
        if self.config.mode is Mode.REDIRECT:
            # The kernel resolves a DEVMAP's ifindex in the namespace of the thread writing it.
            with bpf_netns.entered(netns):
                self.obj.maps["egress_dev"][0] = index
        value = self.obj.maps["egress"].value_type()
        value.src_mac[:] = egress.src_mac
        value.dst_mac[:] = egress.dst_mac
        value.ifindex = index
        self.obj.maps["egress"][0] = value
        return egress

    def egress(self) -> Egress:
        value = self.obj.maps["egress"][0]
        return Egress(bytes(value.src_mac), bytes(value.dst_mac), value.ifindex)

    # --- allowlist ---

    def set_allowlist(self, allowlist: Allowlist) -> None:
        """Make the maps hold exactly ``allowlist``: new entries first, then the stale ones go, so an
        entry in both the old and new lists is never missing in between.
        """
        for version, (hosts_map, prefixes_map) in ALLOW_MAPS.items():
            for what, name, count in (
                (f"IPv{version} addresses", hosts_map, _of(allowlist.hosts, version)),
                (f"IPv{version} prefixes", prefixes_map, _of(allowlist.prefixes, version)),
            ):
                size = self.obj.maps[name].max_entries
                if len(count) > size:
                    raise ValueError(f"{len(count)} {what} do not fit in {size}: none loaded")
        current = self.allowlist()
        for version, (hosts_map, _) in ALLOW_MAPS.items():
            new = _of(allowlist.hosts - current.hosts, version)
            self.obj.maps[hosts_map].update_batch((self._host_key(h), 1) for h in new)
        for net in allowlist.prefixes - current.prefixes:
            self._prefixes(net)[self._prefix_key(net)] = 1
        for host in current.hosts - allowlist.hosts:
            self._hosts(host).delete(self._host_key(host))
        for net in current.prefixes - allowlist.prefixes:
            self._prefixes(net).delete(self._prefix_key(net))

    def allowlist(self) -> Allowlist:
        """What the maps hold now (organizations are not kept in the kernel)."""
        maps = self.obj.maps
        hosts = frozenset(
            [from_be32(k) for k in maps["allow_hosts"]]
            + [ipaddress.IPv6Address(bytes(k.bytes)) for k in maps["allow_hosts6"]]
        )
        prefixes = frozenset(
            [
                ipaddress.IPv4Network((from_be32(k.addr), k.prefixlen))
                for k in maps["allow_prefixes"]
            ]
            + [
                ipaddress.IPv6Network((bytes(k.addr.bytes), k.prefixlen))
                for k in maps["allow_prefixes6"]
            ]
        )
        return Allowlist(hosts, prefixes)

    def clear_allowlist(self) -> None:
        """Drop every entry: from now on nothing is forwarded."""
        for names in ALLOW_MAPS.values():
            for name in names:
                self.obj.maps[name].clear()

    def _hosts(self, host: Address) -> Map:
        return self.obj.maps[ALLOW_MAPS[host.version][0]]

    def _prefixes(self, net: Network) -> Map:
        return self.obj.maps[ALLOW_MAPS[net.version][1]]

    def _host_key(self, host: Address):
        if host.version == 4:
            return be32(host)
        key = self._hosts(host).key_type()
        key.bytes[:] = host.packed
        return key

    def _prefix_key(self, net: Network):
        key = self._prefixes(net).key_type()
        key.prefixlen = net.prefixlen
        if net.version == 4:
            key.addr = be32(net.network_address)
        else:
            key.addr.bytes[:] = net.network_address.packed
        return key

    # --- NAT ---

    def add_nat(self, port: int, addr: str | ipaddress.IPv4Address, new_port: int = 0) -> None:
        """Inner TCP/UDP to destination ``port`` goes to ``addr`` (and ``new_port``, 0: unchanged)."""
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"NAT rule port {port} is not 0..65535")
        target = NatTarget(ipaddress.IPv4Address(addr), new_port)
        rules = self.obj.maps["nat"]
        rules[port] = rules.value_type(addr=be32(target.addr), port=target.port, active=1)

    def nat_rules(self) -> dict[int, NatTarget]:
        """The rules by port (the map is an array over all ports: inactive slots are skipped)."""
        return {
            port: NatTarget(from_be32(v.addr), v.port)
            for port, v in self.obj.maps["nat"].items()
            if v.active
        }

    def del_nat(self, port: int) -> bool:
        """Remove the rule for ``port``; False if there was none."""
        rules = self.obj.maps["nat"]
        if not 0 <= port <= 0xFFFF or not rules[port].active:
            return False
        rules[port] = rules.value_type()
        return True

    # --- reading ---

    def stats(self) -> Stats:
        total = self.obj.maps["stats"].lookup_sum(0)
        drops = {reason: total.drops[index] for reason, index in self._drops.items()}
        return Stats(**{name: getattr(total, name) for name in _COUNTERS}, drops=drops)

    def queued_per_ring(self) -> list[int]:
        """Ringbuf mode: the frames queued to each ring, from the per-CPU counters (vxlan.bpf.c:
        CPU c's frames go to ring c % rings)."""
        rings = self.config.rings
        queued = [0] * rings
        for cpu, per_cpu in enumerate(self.obj.maps["stats"][0]):
            queued[cpu % rings] += per_cpu.queued
        return queued

    def reset_stats(self) -> None:
        self.obj.maps["stats"].clear()

    def frames(self) -> list[bytes]:
        """Ringbuf mode: every frame the rings hold now, ring by ring, each a complete Ethernet
        frame to send out of the egress (for tests and inspection; the re-injector reads the rings
        itself)."""
        if not self._readers:
            self._readers = [RingBuffer(ring) for ring in self.rings]
        start = self._frame_data
        return [
            r[start : start + int.from_bytes(r[:4], "little")]
            for reader in self._readers
            for r in reader.drain()
        ]

    @property
    def rings(self) -> list[Map]:
        """Ringbuf mode: the rings, ring ``i`` taking the frames of CPUs ``i``, ``i + rings``...;
        each for one consumer (``bpf.vxlan.reinjector``), and then not ``frames()``."""
        if self.config.mode is not Mode.RINGBUF:
            raise RuntimeError(f"mode {self.config.mode.value}: frames go out in the kernel")
        return [ring.maps["frames"] for ring in self._rings]

    # --- pins ---

    def pin(self, name: str) -> Path:
        """Pin the maps under ``bpf.pin_dir("vxlan-NAME")`` for other processes (CLI, re-injector)."""
        directory = bpf.pin_dir(f"vxlan-{name}")
        for map_name in PINNED_MAPS:
            self.obj.maps[map_name].pin(directory / map_name)
        self.pin_path = directory
        return directory

    def close(self) -> None:
        """Detach, unpin, free."""
        self.detach()
        for reader in self._readers:
            reader.close()
        self._readers = []
        self.obj.close()
        for ring in self._rings:
            ring.close()
        self._rings = []
        self.pin_path = None

    def __enter__(self) -> VxlanPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _of(entries: frozenset, version: int) -> list:
    return [e for e in entries if e.version == version]
