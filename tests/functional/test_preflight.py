"""Preflight on host veths standing in for the DUT's NICs (``nic_standin``): what it reports of a
fit interface, and how it refuses on purpose-broken setups, each with its reason and its fix."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from pyroute2 import IPRoute

from harness.preflight import Status, preflight

EXPECTED = {  # a veth in the host's namespace, on this kind of machine (a VM: no cpufreq)
    "driver": Status.PASS,
    "link": Status.PASS,
    "xdp-features": Status.PASS,
    "native-xdp": Status.PASS,
    "channels": Status.PASS,
    "rss": Status.SKIP,
    "btf": Status.PASS,
    "irq-affinity": Status.SKIP,
    "pps-allowance": Status.SKIP,
}


def _mtu(netns: str | None, ifname: str, mtu: int | None = None) -> int:
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        return ipr.get_links(index)[0].get_attr("IFLA_MTU")


def test_a_fit_veth_passes(nic_standin):
    report = preflight(nic_standin.nic("nic0"), driver="veth")
    statuses = {c.name: c.status for c in report.checks if c.name != "governor"}
    assert statuses == EXPECTED, report.text()
    assert not report.failed
    assert report.check("driver").detail.startswith("veth ")
    assert "basic" in report.check("xdp-features").detail
    # The peer end has GRO on (nic_standin), so a veth can take redirected frames: ndo-xmit.
    assert "ndo-xmit" in report.check("xdp-features").detail
    assert report.check("channels").detail.startswith("rx 2/2, tx 2/2")
    assert report.as_dict()["checks"][0] == {
        "name": "driver",
        "status": "pass",
        "detail": report.check("driver").detail,
        "fix": "",
    }


def test_the_wrong_driver_is_refused(nic_standin):
    check = preflight(nic_standin.nic("nic0"), driver="ena").check("driver")
    assert check.status is Status.FAIL
    assert "the testbed expects ena" in check.detail and "--testbed" in check.fix


def test_an_mtu_over_the_xdp_limit_is_refused_with_the_limit_found(nic_standin):
    """A veth takes a single-buffer XDP program only while its peer's MTU fits a page: the
    limit is found by attaching, the MTU is put back, and the fix it gives works."""
    peer = nic_standin.peer_netns
    _mtu(peer, "eth0", 9000)
    check = preflight(nic_standin.nic("nic0"), driver="veth").check("native-xdp")
    assert check.status is Status.FAIL, check
    assert "its peer eth0's MTU 9000 is over" in check.detail
    (limit,) = map(int, re.fullmatch(r"ip link set eth0 mtu (\d+)", check.fix).groups())
    assert _mtu(peer, "eth0") == 9000, "preflight did not put the MTU back"
    _mtu(peer, "eth0", limit + 1)
    assert preflight(nic_standin.nic("nic0")).check("native-xdp").status is Status.FAIL
    _mtu(peer, "eth0", limit)
    assert preflight(nic_standin.nic("nic0")).check("native-xdp").status is Status.PASS


def test_harness_preflight_command(nic_standin):
    harness = Path(sys.executable).with_name("harness")
    nic = nic_standin.nic("nic0")
    fit = subprocess.run(
        [harness, "preflight", nic, "--testbed", "veth"], capture_output=True, text=True
    )
    assert fit.returncode == 0, fit.stdout + fit.stderr
    assert fit.stdout.startswith(f"preflight of {nic}:\npass  driver ")
    wrong = subprocess.run(
        [harness, "preflight", nic, "--testbed", "ena", "--json"], capture_output=True, text=True
    )
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout)["checks"][0]["status"] == "fail"
