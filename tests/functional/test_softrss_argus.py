"""``softrss-argus`` on ``two_host``: one real Argus per bucket, read back with Argus's own ``ra``.

- Every injected flow (UDP/IPv4 and TCP/IPv6) is in exactly one bucket's Argus file, the bucket the
  model predicts, with the packets injected; the saved configuration is the one that steered them.
- An instance killed with SIGKILL is restarted by the health monitor, writes a new file, and the
  traffic sent after the restart is in it. After SIGTERM nothing is left: no argus process, no link.
- A bad ``-c`` config file is refused with the file and field named, before anything is created.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from bpf import netns
from bpf.softrss import Config
from bpf.softrss.model import Model, equal_reta
from injector import templates
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

SOFTRSS_ARGUS = Path(sys.executable).with_name("softrss-argus")
ADDRESSED = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
RA_FIELDS = (
    "stime",
    "proto",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "spkts",
    "dpkts",
    "sbytes",
    "dbytes",
    "state",
)


class Supervisor:
    """A running ``softrss-argus`` (told ``--netns``, or run by ``ip netns exec``); its output goes
    to files in the output directory's parent."""

    def __init__(self, dut: str, out: Path, buckets: int, ip_netns_exec: bool = False) -> None:
        self.out, self.log = out, out.parent / "supervisor.log"
        args = ["-i", "ens5", "-b", str(buckets), "-o", str(out), "-s", "1"]
        command = [str(SOFTRSS_ARGUS), *args]
        command = (
            ["ip", "netns", "exec", dut, *command] if ip_netns_exec else [*command, "--netns", dut]
        )
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        self.wait_for(lambda config: True, "the instances to be ready")

    def config(self) -> dict | None:
        path = self.out / "softrss-argus.json"
        return json.loads(path.read_text()) if path.exists() else None

    def wait_for(self, condition, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            config = self.config()
            if config is not None and condition(config):
                return config
            assert self.proc.poll() is None, f"softrss-argus exited:\n{self.log.read_text()}"
            time.sleep(0.1)
        raise AssertionError(f"waited {timeout} s for {what}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def inject(spec: TrafficSpec, injector: str) -> list[bytes]:
    program = spec.resolve()
    frames = list(program.packets())
    with XdpSender(program, "veth0", injector) as sender:
        assert sender.send(count=len(frames), rate_pps=20_000).packets == len(frames)
    return frames


def argus_flows(path: Path) -> Counter:
    """Source packets per (proto, saddr, sport, daddr, dport) in an Argus file, read by ``ra``."""
    done = subprocess.run(
        [
            "ra",
            "-nn",
            "-u",
            "-L",
            "-1",
            "-c",
            ",",
            "-r",
            str(path),
            "-s",
            *RA_FIELDS,
            "-",
            "udp or tcp",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    flows = Counter()
    for line in done.stdout.splitlines():
        record = dict(zip(RA_FIELDS, line.split(","), strict=True))
        if record["proto"] == "man":  # Argus's own status records
            continue
        key = (int(record["proto"]), record["saddr"], int(record["sport"]))
        flows[(*key, record["daddr"], int(record["dport"]))] += int(record["spkts"])
    return flows


def expected_flows(frames: list[bytes], config: Config) -> dict[int, Counter]:
    """Per bucket, the packets of each flow, as the model sends them."""
    model = Model(config)
    for frame in frames:
        model.feed(frame)
    per_bucket: dict[int, Counter] = {b: Counter() for b in range(config.buckets)}
    for key, counts in model.flows.items():
        flow = (key.proto, str(key.src), key.sport, str(key.dst), key.dport)
        per_bucket[counts.bucket][flow] = counts.packets
    return per_bucket


def argus_processes(out: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
            continue
        if cmdline.startswith(b"argus\0") and str(out).encode() in cmdline:
            found.append(int(entry.name))
    return found


def links(dut: str) -> list[str]:
    with netns.entered(dut), IPRoute() as ipr:
        return sorted(link.get("ifname") for link in ipr.link("dump"))


def test_each_flow_is_in_exactly_its_buckets_argus_file(two_host, tmp_path):
    injector, dut = two_host
    out, buckets = tmp_path / "argus", 4
    config = Config(buckets=buckets)
    specs = [
        TrafficSpec(
            templates.udp4(**ADDRESSED),
            vary=(Vary("IP.src", Range("10.0.9.1", "10.0.9.24")),),
            count=24 * 10,
        ),
        TrafficSpec(
            templates.tcp6(**ADDRESSED),
            vary=(Vary("TCP.sport", Range(41000, 41011)),),
            count=12 * 5,
        ),
        # A burst of in-order data segments of one connection: what GRO would merge into one
        # packet before Argus counted it. Each must be counted.
        TrafficSpec(
            templates.tcp4(flags="PA", payload=bytes(100), sport=42000, **ADDRESSED),
            vary=(Vary("TCP.seq", Range(1000, 1000 + 99 * 100, step=100)),),
            count=100,
        ),
    ]
    before = links(dut)
    supervisor = Supervisor(dut, out, buckets)
    try:
        frames = [frame for spec in specs for frame in inject(spec, injector)]
        time.sleep(0.5)
    finally:
        supervisor.stop()
    assert supervisor.proc.returncode == 0, supervisor.log.read_text()
    saved = supervisor.config()
    assert saved["reta"] == equal_reta(buckets) and saved["hash"] == "toeplitz"

    expected = expected_flows(frames, config)
    assert all(expected.values()), f"each bucket should get flows: {expected}"
    seen = {i["bucket"]: argus_flows(out / i["files"][0]) for i in saved["instances"]}
    for bucket, flows in expected.items():
        for flow, packets in flows.items():
            holders = {b: got[flow] for b, got in seen.items() if flow in got}
            assert holders == {bucket: packets}, (
                f"flow {flow}: model says bucket {bucket} with {packets} packets; "
                f"Argus files have it in {holders or 'none'}"
            )
    assert links(dut) == before, "the bucket interfaces must be gone"
    assert argus_processes(out) == []


@pytest.mark.parametrize("inside", ["--netns", "ip netns exec"])
def test_killed_instance_is_restarted_and_nothing_is_left(two_host, tmp_path, inside):
    injector, dut = two_host
    out, buckets, victim = tmp_path / "argus", 2, 1
    before = links(dut)
    supervisor = Supervisor(dut, out, buckets, ip_netns_exec=inside == "ip netns exec")
    try:
        first = supervisor.config()["instances"][victim]
        os.kill(first["pid"], signal.SIGKILL)
        restarted = supervisor.wait_for(
            lambda config: config["instances"][victim]["restarts"] == 1, "the restart"
        )["instances"][victim]
        assert restarted["pid"] != first["pid"]
        assert restarted["files"] == [f"bucket-{victim}.argus", f"bucket-{victim}.1.argus"]
        spec = TrafficSpec(
            templates.udp4(**ADDRESSED),
            vary=(Vary("UDP.sport", Range(9000, 9015)),),
            count=16 * 8,
        )
        frames = inject(spec, injector)
        time.sleep(0.5)
        assert len(argus_processes(out)) == buckets
    finally:
        supervisor.stop()
    assert supervisor.proc.returncode == 0, supervisor.log.read_text()
    assert "exited with -9: restarted" in supervisor.log.read_text()

    expected = expected_flows(frames, Config(buckets=buckets))[victim]
    got = argus_flows(out / restarted["files"][-1])
    assert {flow: got[flow] for flow in expected} == dict(expected), (
        f"after the restart, bucket {victim}'s new file should hold its flows: got {got}"
    )
    assert argus_processes(out) == [], "argus instances left running"
    assert links(dut) == before, "bucket interfaces left behind"
    assert list((out.parent).glob("*.tmp")) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "interface: lo\noutput_dir: OUT\nbuckets: 0\n",
            "field 'buckets': 0 buckets: must be 1..128",
        ),
        (
            '{"interface": "lo", "output_dir": "OUT", "key": "abcd"}',
            "field 'key': the Toeplitz key",
        ),
        (
            "interface: lo\noutput_dir: OUT\nhash: crc\n",
            "field 'hash': 'crc', one of toeplitz, jhash",
        ),
        ("interface: lo\noutput_dir: OUT\nbucket: 4\n", "unknown field(s) 'bucket'"),
        ("interface: lo\noutput_dir: OUT\nsymmetric: maybe\n", "field 'symmetric': 'maybe' is not"),
        ("output_dir: OUT\n", "-i/--interface (or field 'interface'): required"),
        ("- lo\n", "a mapping of settings expected"),
        ("interface: lo\noutput_dir: OUT\nnetns: bl-000000-none\n", "'bl-000000-none' does not"),
    ],
)
def test_config_file_errors_name_the_file_and_field(tmp_path, content, message):
    out = tmp_path / "out"
    config = tmp_path / "argus.yaml"
    config.write_text(content.replace("OUT", str(out)))
    done = subprocess.run(
        [str(SOFTRSS_ARGUS), "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and str(config) in done.stderr, (
        f"expected {message!r} naming {config} in:\n{done.stderr}"
    )
    assert not out.exists(), "nothing may be created before the settings are valid"
