"""Benchmarks: figures are ratios against a baseline from the same run (``harness.measure``)."""

import pytest


@pytest.fixture(scope="session")
def quick(request) -> bool:
    """Smoke mode (``tox -e perf-smoke`` passes --benchmark-disable): every benchmark, at a tiny size."""
    return bool(request.config.getoption("benchmark_disable"))
