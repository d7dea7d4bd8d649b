"""The failure bundle (``harness.bundle``): tests that fail on purpose, in a child pytest run, leave
a directory holding what a person needs to see why.

The child's first test has a program loaded and attached in a topology's namespace by a fixture
(what a test body holds in a ``with`` block is gone by the time pytest sees the failure; fixtures
are torn down after the bundle is written), captures a frame sent through it, writes a pcap as a tcpdump oracle would, and fails; its second test fails on the
verifier's refusal. The bundle must hold the failure and its seeds, the capture as a pcap, the
bpftool view of the program and a dump of its map, each namespace's links, addresses, routes and
neighbours, the kernel log, and the verifier's log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

FAILING = textwrap.dedent(
    """
    from pathlib import Path

    import pytest

    import bpf
    from harness.capture import Capture, write_pcap
    from injector import templates
    from injector.scapy_backend import send_packets

    SELFTEST = Path(bpf.__file__).parent / "selftest"


    @pytest.fixture
    def sampler(two_host):
        # loaded and attached by a fixture, as the data plane tests do: alive when the test fails
        injector, dut = two_host
        with bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as obj:
            obj.load()
            with obj.programs["xdp_sample"].attach_xdp("ens5", bpf.XdpMode.NATIVE, dut):
                yield injector, dut


    def test_fails_with_traffic(sampler, tmp_path):
        injector, dut = sampler
        frame = bytes(templates.udp4(dst="10.0.0.2", payload=b"bundle"))
        with Capture("ens5", netns=dut, match=lambda f: b"bundle" in f) as capture:
            send_packets([frame], "veth0", netns=injector)
            seen = capture.frames(1, timeout=2.0)
        write_pcap(tmp_path / "oracle.pcap", [frame])
        assert not seen, "this test fails on purpose once its frame has arrived"


    def test_fails_on_the_verifier():
        with bpf.BpfObject.open(SELFTEST / "unsafe.bpf.c") as obj:
            obj.load()
    """
)


def test_a_failing_test_leaves_its_bundle(tmp_path):
    (tmp_path / "test_fails.py").write_text(FAILING)
    bundles = tmp_path / "bundles"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "test_fails.py",
            "-q",
            "-p",
            "harness.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "--bundle-dir",
            str(bundles),
            "--fuzz-seed",
            "7",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 failed" in done.stdout, done.stdout
    assert "failure bundle" in done.stdout, "the report names the bundle"

    traffic = bundles / "test_fails.py_test_fails_with_traffic"
    report = (traffic / "report.txt").read_text()
    assert "fuzz seed: 7" in report and "fails on purpose" in report, report
    assert not (traffic / "errors.txt").exists(), (traffic / "errors.txt").read_text()

    (capture,) = (traffic / "captures").glob("0-*ens5.pcap")
    assert [b"bundle" in bytes(p) for p in rdpcap(str(capture))] == [True]
    oracle = rdpcap(str(traffic / "captures" / "tmp-oracle.pcap"))
    assert Ether(bytes(oracle[0])).dst == "02:00:00:00:00:02"

    programs = json.loads((traffic / "bpf" / "programs.json").read_text())
    assert "xdp_sample" in {p["name"] for p in programs}, programs
    attached = json.loads((traffic / "bpf" / "attached.json").read_text())
    assert any(name.endswith("-dut") for name in attached), attached
    dumps = list((traffic / "bpf").glob("map-*.json"))
    assert dumps, "the program's maps are dumped"

    states = {p.stem: json.loads(p.read_text()) for p in (traffic / "netns").glob("*.json")}
    (dut,) = (state for name, state in states.items() if name.endswith("-dut"))
    ens5 = next(link for link in dut["links"] if link["ifname"] == "ens5")
    assert ens5["xdp_prog_id"] in {p["id"] for p in programs}, ens5
    assert {"address": "10.0.0.2/24", "ifname": "ens5"} in dut["addresses"]
    assert any(route["dev"] == "ens5" for route in dut["routes"])
    assert "neighbours" in dut
    assert (traffic / "dmesg.txt").read_text().strip()

    verifier = bundles / "test_fails.py_test_fails_on_the_verifier"
    log = (verifier / "bpf" / "verifier.log").read_text()
    assert log.startswith("xdp_unchecked_read") and "invalid access to packet" in log, log
