"""Unit-test machinery that several test files share: two CPUs creating the same new flows, and UDP
packets whose checksum computes to exactly 0.

``two_cpus`` runs an XDP program through the flow rotator (``bpf/flowmon/flowmon_bench.bpf.c``) on
both CPUs at once: one thread pinned to each, a barrier before every batch, each batch one
test_run of ``repeat`` runs that steps a 16-bit field of the frame through ``flows`` values, so the
two CPUs meet the same new flows in the same order. They stay in step by themselves: the CPU that
falls behind finds the entries the other created, a cheaper path than creating them, and catches
up; from there the two miss the same new flow together and race to insert it. Not for anything a
single CPU can show.

``udp_checksum`` solves for the 16-bit word of a UDP packet that makes its checksum compute to
0, which RFC 768 sends as 0xffff (0 means "no checksum"): a case random tests almost never hit.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.l2 import Ether

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
