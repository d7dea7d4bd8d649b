"""Benchmarks: figures are ratios against a baseline from the same run (``harness.measure``)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import bpf


@pytest.fixture(scope="session")
def quick(request) -> bool:
    """Smoke mode (``tox -e perf-smoke`` passes --benchmark-disable): every benchmark, at a tiny size."""
    return bool(request.config.getoption("benchmark_disable"))


@pytest.fixture(scope="module")
def xdp_pass() -> bpf.Program:
    """``bpf/selftest/trivial.bpf.c``'s ``xdp_pass``: the bare program a benchmark's figure is set
    against (its object's other programs, such as ``xdp_drop``, through ``.object``)."""
    with bpf.BpfObject.open(Path(bpf.__file__).parent / "selftest" / "trivial.bpf.c") as obj:
        obj.load()
        yield obj.programs["xdp_pass"]


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """The test on one CPU (the lowest it may use, yielded): a per-CPU table stays one table, and
    the figures one CPU's."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield min(before)
    os.sched_setaffinity(0, before)
