"""Unit-test machinery that several test files share: two CPUs creating the same new flows, and UDP
packets whose checksum computes to exactly 0.

``two_cpus`` runs an XDP program through the flow rotator (``bpf/flowmon/flowmon_bench.bpf.c``) on
both CPUs at once: one thread pinned to each, a barrier before every batch, each batch one
test_run of ``flows`` x ``laps`` runs that steps a 16-bit field of the frame through ``flows``
values, so the two CPUs meet the same new flows in the same order. They stay in step by themselves: the CPU that
falls behind finds the entries the other created, a cheaper path than creating them, and catches
up; from there the two miss the same new flow together and race to insert it. Not for anything a
single CPU can show.

``extreme_frames`` holds frames whose fields sit at the ends of their ranges: a bug that looks only
at the low bits of a field passes tests that use small values.

``disagreeing_lengths`` holds frames whose length fields disagree with each other: a header that
claims more than its IP packet holds, while Ethernet padding after the packet makes the frame long
enough, so a parser that checks against the frame's end instead of the packet's reads the padding.

``udp_checksum`` solves for the 16-bit word of a UDP packet that makes its checksum compute to
0, which RFC 768 sends as 0xffff (0 means "no checksum"): a case random tests almost never hit.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, in6_chksum
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

import bpf
from bpf.libbpf import TestRunOpts, lib

ROTATOR = Path(bpf.__file__).parent / "flowmon" / "flowmon_bench.bpf.c"
ROTATOR_BASE = 1024  # the rotator's first value: the stepped field of every batch's frame holds it


@dataclass
class TwoCpus:
    """Runs of one program on two CPUs in lockstep (see the module docstring)."""

    cpus: tuple[int, int]

    @staticmethod
    def rotated(frame: bytes, field_off: int, flows: int) -> list[bytes]:
        """The ``flows`` frames the rotator turns ``frame`` into, in the order it runs them."""
        values = [*range(ROTATOR_BASE + 1, ROTATOR_BASE + flows), ROTATOR_BASE]
        return [frame[:field_off] + v.to_bytes(2, "big") + frame[field_off + 2 :] for v in values]

    def run(
        self, program: bpf.Program, frames: list[bytes], field_off: int, flows: int, laps: int = 2
    ) -> None:
        """Each of ``frames`` (a batch; its big-endian 16-bit field at ``field_off`` holding
        ROTATOR_BASE) becomes ``flows`` flows (the field ROTATOR_BASE + 1, + 2, ..., then
        ROTATOR_BASE), each run ``laps`` times on both CPUs at once."""
        for frame in frames:
            got = int.from_bytes(frame[field_off : field_off + 2], "big")
            assert got == ROTATOR_BASE, f"the stepped field at {field_off} holds {got}"
        with bpf.BpfObject.open(ROTATOR) as rotator:
            rotator.rodata["n_flows"] = flows
            rotator.rodata["sport_off"] = field_off
            rotator.load()
            rotator.maps["measured"][0] = program.fd
            fd = rotator.programs["flow_rotator"].fd
            barrier = threading.Barrier(2)
            verdicts: dict[int, list[int]] = {cpu: [] for cpu in self.cpus}
            errors: list[BaseException] = []

            def worker(cpu: int) -> None:
                try:
                    os.sched_setaffinity(0, {cpu})  # this thread only
                    buffers = [ctypes.create_string_buffer(f, len(f)) for f in frames]
                    for data in buffers:
                        # A struct of this thread's own: Program.test_run reuses one.
                        opts = TestRunOpts(
                            data_in=ctypes.addressof(data),
                            data_size_in=len(data),
                            repeat=flows * laps,
                        )
                        barrier.wait(timeout=60)
                        ret = lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
                        verdicts[cpu].append(opts.retval if ret == 0 else ret)
                except BaseException as e:
                    errors.append(e)
                    barrier.abort()

            threads = [threading.Thread(target=worker, args=(cpu,)) for cpu in self.cpus]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, f"a worker failed: {errors}"
        xdp_pass = int(bpf.XdpAction.PASS)
        assert all(v == [xdp_pass] * len(frames) for v in verdicts.values()), (
            f"every batch must run and pass on both CPUs (XDP_PASS {xdp_pass}; XDP_ABORTED: the "
            f"rotator's tail call failed; negative: test_run's errno): {verdicts}"
        )


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """The test runs on one CPU: per-CPU storages give a flow a slot on every CPU it runs on, and
    the models count one."""
    before = os.sched_getaffinity(0)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    os.sched_setaffinity(0, {sorted(before)[worker % len(before)]})  # xdist workers: a CPU each
    yield
    os.sched_setaffinity(0, before)


@pytest.fixture
def two_cpus() -> TwoCpus:
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing runs at once")
    return TwoCpus((cpus[0], cpus[1]))


class UdpChecksum:
    """UDP checksums computed from scratch by scapy: the oracle for checksum corner cases."""

    @staticmethod
    def computed(frame: bytes, nb: int = 1) -> int:
        """The checksum of ``frame``'s ``nb``-th UDP header (2: a VXLAN packet's inner one) computed
        from scratch (its field taken as 0), before RFC 768's 0 -> 0xffff: 0 exactly when the sum
        is 0xffff."""
        udp = Ether(frame).getlayer(UDP, nb=nb)
        ip = udp.underlayer
        raw = bytearray(bytes(udp))
        raw[6:8] = b"\0\0"
        if isinstance(ip, IP):
            return in4_chksum(17, ip, bytes(raw))
        assert isinstance(ip, IPv6), f"UDP under {type(ip).__name__}"
        return in6_chksum(17, ip, bytes(raw))

    @classmethod
    def solve_zero(cls, frame: bytes, word_off: int, nb: int = 1) -> bytes:
        """``frame`` with the 16-bit word at ``word_off`` (one the ``nb``-th UDP checksum covers, at
        an even offset from its UDP header: a port, the payload, an address's half) set so that the
        checksum computes to 0, and its field 0xffff, as a sender puts it on the wire. The frame
        must end with that UDP datagram."""
        udp_off = len(frame) - len(Ether(frame).getlayer(UDP, nb=nb))
        zeroed = frame[:word_off] + b"\0\0" + frame[word_off + 2 :]
        word = cls.computed(zeroed, nb) or 0xFFFF  # ~sum without the word: it makes it 0xffff
        solved = bytearray(zeroed[:word_off] + word.to_bytes(2, "big") + zeroed[word_off + 2 :])
        assert cls.computed(bytes(solved), nb) == 0, "the solved word makes the checksum 0"
        solved[udp_off + 6 : udp_off + 8] = b"\xff\xff"
        return bytes(solved)


@pytest.fixture
def udp_checksum() -> UdpChecksum:
    return UdpChecksum()


MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = {"src": "192.0.2.1", "dst": "198.51.100.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8:0:1::2"}
PORT_ENDS = [(0, 0xFFFF), (0xFFFF, 0), (1, 0xFFFE), (0x8000, 0x7FFF), (0xFF, 0x100)]
ADDRESS_ENDS = {
    4: [
        ("0.0.0.0", "255.255.255.255"),
        ("255.255.255.255", "0.0.0.0"),
        ("128.0.0.0", "127.255.255.255"),
        ("0.0.0.128", "0.0.128.0"),
    ],
    6: [
        ("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::"),
        ("8000::", "::8000:0:0"),
        ("::ffff:ffff", "ffff:0:0:0:8000::"),
    ],
}
# Protocols without ports, none of them an IPv6 extension header (0 is hop-by-hop there)
PROTOCOL_ENDS = {4: [0, 1, 2, 132, 253, 254, 255], 6: [58, 59, 132, 253, 254, 255]}
VLAN_ENDS = [0, 1, 0x7FF, 0x800, 4094, 4095]
SESSION_ENDS = [0, 1, 0xFF, 0x100, 0xFFFE, 0xFFFF]
FRAGMENT_ENDS = [1, 0xFF, 0x100, 0x1000, 0x1FFF]  # 13-bit offsets, 8-byte units


@pytest.fixture(scope="session")
def extreme_frames() -> dict[str, bytes]:
    """Frames of every data plane's kinds, each with a field at an end of its range: ports,
    addresses, protocol numbers, VLAN ids (with priority and DEI), PPPoE session ids, fragment
    offsets, and the header fields no data plane reads."""
    frames: dict[str, Any] = {}
    ips = {4: IP(**V4), 6: IPv6(**V6)}
    for v, ip in ips.items():
        for l4 in (TCP, UDP):
            for sport, dport in PORT_ENDS:
                frames[f"ipv{v} {l4.__name__} ports {sport}->{dport}"] = (
                    Ether(**MACS) / ip / l4(sport=sport, dport=dport) / Raw(b"p")
                )
        for src, dst in ADDRESS_ENDS[v]:
            frames[f"ipv{v} {src} -> {dst}"] = (
                Ether(**MACS) / (IP if v == 4 else IPv6)(src=src, dst=dst) / UDP(sport=7, dport=9)
            )
        for proto in PROTOCOL_ENDS[v]:
            header = IP(**V4, proto=proto) if v == 4 else IPv6(**V6, nh=proto)
            frames[f"ipv{v} protocol {proto}"] = Ether(**MACS) / header / Raw(bytes(8))
        for vid in VLAN_ENDS:
            # priority 7 and DEI set: the TCI's top bits beside the id
            frames[f"ipv{v} vlan {vid}"] = (
                Ether(**MACS) / Dot1Q(prio=7, dei=1, vlan=vid) / ip / UDP(sport=vid, dport=5)
            )
        frames[f"ipv{v} qinq 4095/4095"] = (
            Ether(**MACS)
            / Dot1AD(prio=7, dei=1, vlan=4095)
            / Dot1Q(prio=7, dei=1, vlan=4095)
            / ip
            / TCP(sport=0xFFFF, dport=0xFFFF)
        )
        for sid in SESSION_ENDS:
            ppp = PPP(proto=0x21 if v == 4 else 0x57)
            frames[f"ipv{v} pppoe session {sid:#x}"] = (
                Ether(**MACS) / PPPoE(sessionid=sid) / ppp / ip / UDP(sport=sid, dport=6)
            )
    for offset in FRAGMENT_ENDS:
        for more in ("MF", 0):
            frames[f"ipv4 udp fragment at {offset:#x} {more or 'last'}"] = (
                Ether(**MACS)
                / IP(**V4, proto=17, frag=offset, flags=more, id=0xFFFF)
                / Raw(bytes(range(16)))
            )
            frag6 = IPv6ExtHdrFragment(nh=17, offset=offset, m=int(bool(more)), id=0xFFFFFFFF)
            frames[f"ipv6 udp fragment at {offset:#x} {more or 'last'}"] = (
                Ether(**MACS) / IPv6(**V6) / frag6 / Raw(bytes(range(16)))
            )
    frames["ipv4 tos, id, ttl 0xff"] = (
        Ether(**MACS) / IP(**V4, tos=0xFF, id=0xFFFF, ttl=255) / TCP(sport=1, dport=2)
    )
    frames["ipv6 traffic class and flow label at their ends"] = (
        Ether(**MACS) / IPv6(**V6, tc=0xFF, fl=0xFFFFF, hlim=255) / TCP(sport=1, dport=2)
    )
    return {name: bytes(frame) for name, frame in frames.items()}


def _ipv4(l4: bytes, proto: int, tot_len: int | None = None, ihl: int = 5) -> bytes:
    """An IPv4 header (its checksum right) with ``l4`` after it; ``tot_len`` may disagree."""
    options = bytes(4 * (ihl - 5))
    length = tot_len if tot_len is not None else 4 * ihl + len(l4)
    return bytes(IP(**V4, ihl=ihl, len=length, proto=proto, options=options))[: 4 * ihl] + l4


def _ipv6(l4: bytes, nh: int, payload_len: int | None = None) -> bytes:
    length = payload_len if payload_len is not None else len(l4)
    return bytes(IPv6(**V6, nh=nh, plen=length))[:40] + l4


@pytest.fixture(scope="session")
def disagreeing_lengths() -> dict[str, bytes]:
    """Frames whose TCP data offset, UDP length, IPv4 IHL and total length, IPv6 payload length or
    extension header length disagree, under Ethernet, a VLAN tag and PPPoE, padded past the IP
    packet; and IP packets shorter than their frames, for byte counts."""
    pad = bytes(range(64)) * 34  # enough for any header to fit in the frame: 2176 bytes
    tcp = bytes(TCP(sport=1000, dport=80, flags="PA"))  # 20 bytes, doff 5
    tcp_doff = {d: tcp[:12] + bytes([d << 4]) + tcp[13:] for d in (6, 8, 15)}
    udp = bytes(UDP(sport=1000, dport=53, len=8 + 4)) + b"data"
    packets = {
        "tcp offset 15, packet holds 20 bytes of tcp": _ipv4(tcp_doff[15], 6),
        "tcp offset 6, packet holds 20 bytes of tcp": _ipv4(tcp_doff[6], 6),
        "tcp offset 8, packet holds exactly its 32 bytes": _ipv4(tcp_doff[8] + bytes(12), 6),
        "tcp header cut by the total length": _ipv4(tcp, 6, tot_len=20 + 12),
        "udp length 4000 in a 32-byte packet": _ipv4(bytes(UDP(len=4000)) + b"data", 17),
        "udp length 8, 4 bytes of data after it": _ipv4(bytes(UDP(len=8)) + b"data", 17),
        "udp header cut by the total length": _ipv4(udp, 17, tot_len=20 + 4),
        "udp, total length ending at the udp header": _ipv4(udp, 17, tot_len=20 + 8),
        "icmp cut by the total length": _ipv4(bytes(8), 1, tot_len=20 + 4),
        "ihl 15, total length 40": _ipv4(bytes(40), 17, tot_len=40, ihl=15),
        "ihl 15, total length 60: no udp header": _ipv4(udp, 17, tot_len=60, ihl=15),
        "ihl 6, total length 24": _ipv4(udp, 17, tot_len=24, ihl=6),
        "ipv4 total length 19": _ipv4(udp, 17, tot_len=19),
        "ipv6 tcp offset 15, packet holds 20 bytes": _ipv6(tcp_doff[15], 6),
        "ipv6 udp cut by the payload length": _ipv6(udp, 17, payload_len=4),
        "ipv6 hop-by-hop of 2048 bytes in a 16-byte payload": _ipv6(
            bytes([17, 255]) + bytes(6) + udp[:8], 0
        ),
        "ipv6 routing header ending at the payload's end, no udp": _ipv6(
            bytes([17, 0]) + bytes(6), 43
        ),
        "ipv6 ah of 1024 bytes in a 16-byte payload": _ipv6(
            bytes([17, 254]) + bytes(6) + udp[:8], 51
        ),
        "ipv6 fragment header cut by the payload length": _ipv6(
            bytes([17, 0, 0, 1]) + bytes(4) + udp, 44, payload_len=4
        ),
        "ipv6 payload length 0": _ipv6(udp, 17, payload_len=0),
    }
    padded = {  # for byte counts: the IP packet ends before the frame does
        "ipv4 udp, 18 bytes of padding": (_ipv4(udp, 17), 18),
        "ipv4 tcp, 40 bytes of padding": (_ipv4(tcp, 6), 40),
        "ipv6 udp, 30 bytes of padding": (_ipv6(udp, 17), 30),
    }
    frames = {}
    for name, packet in packets.items():
        v6 = packet[0] >> 4 == 6
        ethertype, ppp = (0x86DD, PPP(proto=0x57)) if v6 else (0x0800, PPP(proto=0x21))
        pppoe = PPPoE(sessionid=9, len=2 + len(packet)) / ppp
        frames[name] = bytes(Ether(**MACS, type=ethertype)) + packet + pad
        frames[f"vlan, {name}"] = (
            bytes(Ether(**MACS) / Dot1Q(vlan=7, type=ethertype)) + packet + pad
        )
        frames[f"pppoe, {name}"] = bytes(Ether(**MACS) / pppoe) + packet + pad
    for name, (packet, size) in padded.items():
        ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
        frames[name] = bytes(Ether(**MACS, type=ethertype)) + packet + pad[:size]
    return frames
