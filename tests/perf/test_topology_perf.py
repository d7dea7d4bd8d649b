"""How long a topology takes to build and tear down (up + down).

Baseline from the same run: the two_host network (two namespaces, a veth pair between them, an
address on each end, links up) built and removed the scripted way, one ``ip`` command at a time, as
shell-based harnesses do. The aim for two_host is well under 100 ms (Mininet takes seconds): the
veth testbed's budget.
"""

import subprocess
import time

import pytest

from bpf import journal
from harness.measure import Comparison, sample
from harness.topology import Topology


def scripted_two_host() -> float:
    """Seconds to build and remove two_host's essentials with iproute2 commands."""
    a, b = f"blip-{journal.current().run_id}-a", f"blip-{journal.current().run_id}-b"
    up = [
        ["ip", "netns", "add", a],
        ["ip", "netns", "add", b],
        ["ip", "-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "ens5", "netns", b],
        ["ip", "-n", a, "addr", "add", "10.0.0.1/24", "dev", "veth0"],
        ["ip", "-n", b, "addr", "add", "10.0.0.2/24", "dev", "ens5"],
        ["ip", "-n", a, "link", "set", "veth0", "up"],
        ["ip", "-n", b, "link", "set", "ens5", "up"],
    ]
    down = [["ip", "netns", "del", a], ["ip", "netns", "del", b]]
    start = time.perf_counter()
    try:
        for cmd in up:
            subprocess.run(cmd, check=True)
    finally:
        for cmd in down:
            subprocess.run(cmd, check=False, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


@pytest.mark.parametrize("name", ["two_host", "mirror_vxlan"])
def test_up_down(benchmark, results, quick, name):
    topo = Topology.load(name)

    def up_down() -> float:
        start = time.perf_counter()
        topo.up().down()
        return time.perf_counter() - start

    repeats = 3 if quick else 15
    baseline = sample(lambda: scripted_two_host() * 1e3, "ms", repeats=repeats)
    subject = benchmark.pedantic(
        lambda: sample(lambda: up_down() * 1e3, "ms", repeats=repeats), rounds=1, iterations=1
    )
    result = Comparison(f"{name} up+down", subject, baseline, "two_host scripted with ip(8)")
    benchmark.extra_info.update(result.as_dict())
    results.record(result)
