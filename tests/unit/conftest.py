"""Unit-test machinery that several data planes' tests share: two CPUs creating the same new flows.

``two_cpus`` runs an XDP program through the flow rotator (``bpf/flowmon/flowmon_bench.bpf.c``) on
both CPUs at once: one thread pinned to each, a barrier before every batch, each batch one
test_run of ``repeat`` runs that steps a 16-bit field of the frame through ``flows`` values, so the
two CPUs meet the same new flows in the same order. They stay in step by themselves: the CPU that
falls behind finds the entries the other created, a cheaper path than creating them, and catches
up; from there the two miss the same new flow together and race to insert it. Not for anything a
single CPU can show.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

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
