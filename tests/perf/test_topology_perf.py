"""How long a topology takes to build and tear down (up + down), against the aim of well under 100 ms
for two_host (Mininet, the usual Python anchor, takes seconds for the same)."""

import pytest

from harness.topology import Topology

AIM_SECONDS = 0.100


@pytest.mark.parametrize("name", ["two_host", "mirror_vxlan"])
def test_up_down(benchmark, quick, name):
    topo = Topology.load(name)
    benchmark.pedantic(lambda: topo.up().down(), rounds=3 if quick else 20, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    median = benchmark.stats.stats.median
    print(f"\nRESULT topology_up_down name={name} median_ms={median * 1e3:.1f}")
    assert median < AIM_SECONDS, (
        f"{name} up+down takes {median * 1e3:.0f} ms (median), over the {AIM_SECONDS * 1e3:.0f} ms aim"
    )
