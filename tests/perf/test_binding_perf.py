"""Costs of the libbpf binding itself: kernel ns/packet of test_run, and Python's cost per call.

Baselines from the same run: the trivial XDP_PASS program for kernel time (both parked:
``harness.testrun``); a bare ctypes call of
``bpf_prog_test_run_opts`` with prebuilt options for the binding's Python overhead.
"""

import ctypes
import time
from pathlib import Path

import pytest

import bpf
from bpf.libbpf import TestRunOpts, lib
from harness.measure import Comparison, check_linear, sample
from harness.testrun import parked

SELFTEST = Path(bpf.__file__).parent / "selftest"
FRAME = bytes(14) + bytes.fromhex("45000026000100004011") + bytes(36)


@pytest.fixture(scope="module")
def programs():
    with (
        bpf.BpfObject.open(SELFTEST / "trivial.bpf.c") as trivial,
        bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as sample_obj,
    ):
        trivial.load()
        sample_obj.load()
        yield trivial.programs["xdp_pass"], sample_obj.programs["xdp_sample"]


def kernel_ns(program: bpf.Program, repeat: int) -> float:
    return float(program.test_run(FRAME, repeat=repeat).duration_ns)


def test_test_run_ns_per_packet(benchmark, results, programs, quick):
    trivial, sample_prog = programs
    repeat = 10_000 if quick else 1_000_000
    with parked(trivial, sample_prog):
        baseline = sample(
            lambda: kernel_ns(trivial, repeat), "ns/packet", repeats=3 if quick else 7
        )
        subject = benchmark.pedantic(
            lambda: sample(
                lambda: kernel_ns(sample_prog, repeat), "ns/packet", repeats=3 if quick else 7
            ),
            rounds=1,
            iterations=1,
        )
    result = Comparison("test_run xdp_sample (5 map updates)", subject, baseline, "xdp_pass")
    benchmark.extra_info.update(result.as_dict())
    results.record(result)
    assert baseline.median > 0 and subject.median > baseline.median, (
        f"a program doing map updates ({subject}) cannot be cheaper than XDP_PASS ({baseline})"
    )


def test_python_cost_of_one_test_run_call(benchmark, results, programs, quick):
    trivial, _ = programs
    calls = 2_000 if quick else 50_000
    data = ctypes.create_string_buffer(FRAME, len(FRAME))
    out = ctypes.create_string_buffer(len(FRAME) + 4096)
    opts = TestRunOpts(
        data_in=ctypes.addressof(data),
        data_size_in=len(FRAME),
        data_out=ctypes.addressof(out),
        data_size_out=len(out),
        repeat=1,
    )
    fd = trivial.fd

    def bare(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
        return time.perf_counter() - start

    def binding(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            trivial.test_run(FRAME)
        return time.perf_counter() - start

    linearity = check_linear(binding, calls)
    baseline = sample(lambda: bare(calls) / calls * 1e6, "us/call", repeats=5)
    subject = benchmark.pedantic(
        lambda: sample(lambda: binding(calls) / calls * 1e6, "us/call", repeats=5),
        rounds=1,
        iterations=1,
    )
    result = Comparison("python test_run call", subject, baseline, "bare ctypes call")
    benchmark.extra_info.update(result.as_dict(), linearity=linearity)
    results.record(result)
    assert subject.median >= baseline.median * 0.8, "the binding cannot beat the bare call it wraps"
