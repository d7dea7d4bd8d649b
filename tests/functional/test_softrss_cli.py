"""The ``softrss`` command as a user runs it (the console script beside ``sys.executable``).

- ``softrss hash`` answers what ``bpf.softrss.model`` predicts, for IPv4 and IPv6, with and without
  ports, for both hashes; its JSON has a fixed shape.
- ``softrss -i ens5 --netns <dut> -s 1`` on ``two_host`` counts injected traffic, prints it each
  interval (JSON lines or a table), and on SIGTERM/SIGINT saves a state that ``SoftRss.restore`` reads.
- Bad arguments are refused with a message naming them, before anything is attached (the leak check
  would see an attachment left behind).
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpf.softrss import Config, HashKind, SoftRss
from bpf.softrss.model import Model, ParsedFlow, bucket_of, equal_reta, flow_hash
from injector import templates
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

SOFTRSS = Path(sys.executable).with_name("softrss")
ADDRESSED = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
KEY = bytes(range(40))
PROTO = {"udp": 17, "tcp": 6}


def softrss(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SOFTRSS), *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("src", "dst", "ports", "proto"),
    [
        ("10.0.0.1", "10.0.0.2", (1024, 5001), "udp"),
        ("192.168.7.9", "172.16.0.1", (443, 61000), "tcp"),
        ("10.0.0.1", "10.0.0.2", None, "udp"),
        ("fd00::1", "fd00::2", (1024, 5001), "udp"),
        ("2001:db8::17", "2001:db8:ffff::1", (22, 40000), "tcp"),
        ("fd00::1", "fd00::2", None, "tcp"),
    ],
)
@pytest.mark.parametrize(
    ("kind", "buckets", "key"),
    [(HashKind.TOEPLITZ, 8, None), (HashKind.TOEPLITZ, 5, KEY), (HashKind.JHASH, 16, None)],
    ids=["toeplitz-8", "toeplitz-5-key", "jhash-16"],
)
def test_hash_answers_as_the_model(src, dst, ports, proto, kind, buckets, key):
    args = ["hash", "--src", src, "--dst", dst, "--proto", proto, "-b", str(buckets), "--json"]
    args += ["--hash", kind.value]
    if ports:
        args += ["--sport", str(ports[0]), "--dport", str(ports[1])]
    if key:
        args += ["--key", key.hex()]
    done = softrss(*args)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)

    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    flow = ParsedFlow(
        s.version, s.packed, d.packed, PROTO[proto], *(ports or (0, 0)), bool(ports), False
    )
    config = Config(buckets=buckets, hash=kind, key=key or Config().key)
    expected = flow_hash(flow, config)
    assert answer == {
        "src": src,
        "dst": dst,
        "sport": ports[0] if ports else 0,
        "dport": ports[1] if ports else 0,
        "proto": proto,
        "ports_hashed": ports is not None,
        "hash_kind": kind.value,
        "symmetric": False,
        "hash": expected,
        "slot": expected & 127,
        "bucket": bucket_of(expected, equal_reta(buckets)),
        "buckets": buckets,
    }, f"the program's answer (left) differs from the model's hash {expected:#010x}"


def test_hash_symmetric_and_text_output():
    forward = softrss(
        "hash",
        "--src",
        "10.1.1.1",
        "--dst",
        "10.2.2.2",
        "--sport",
        "1",
        "--dport",
        "2",
        "--symmetric",
    )
    back = softrss(
        "hash",
        "--src",
        "10.2.2.2",
        "--dst",
        "10.1.1.1",
        "--sport",
        "2",
        "--dport",
        "1",
        "--symmetric",
    )
    assert forward.returncode == back.returncode == 0, forward.stderr + back.stderr
    assert "toeplitz hash 0x" in forward.stdout and "bucket " in forward.stdout
    assert forward.stdout.split(": ", 1)[1] == back.stdout.split(": ", 1)[1], (
        f"symmetric: both directions must hash alike:\n{forward.stdout}{back.stdout}"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["hash", "--src", "10.0.0.300", "--dst", "10.0.0.1"],
            "'10.0.0.300' is not an IPv4 or IPv6",
        ),
        (["hash", "--src", "10.0.0.1", "--dst", "fd00::1"], "not the same IP version"),
        (
            ["hash", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--key", "ab" * 39],
            "40 bytes, 39 given",
        ),
        (["hash", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--key", "xyz"], "'xyz' is not hex"),
        (["hash", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--sport", "5"], "give both"),
        (
            ["hash", "--src", "10.0.0.1", "--dst", "10.0.0.2", "-b", "0"],
            "0 buckets: must be 1..128",
        ),
        (["-i", "lo", "-b", "129"], "129 buckets: must be 1..128"),
        (["-i", "lo", "-s", "0"], "must be more than 0"),
        (["-i", "no-such-if"], "no interface 'no-such-if'"),
        (["-i", "lo", "--netns", "bl-000000-none"], "'bl-000000-none' does not exist"),
        (["-i", "lo", "--action", "ifaces", "-b", "2", "--ifaces", "lo"], "must name 2 interfaces"),
        (["-i", "lo", "--cpus", "0,1"], "--cpus: only with --action cpu"),
        ([], "-i/--interface: required"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(args, message):
    done = softrss(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, f"expected {message!r} in:\n{done.stderr}"


class Running:
    """A ``softrss`` process (run by ``prefix``, ``ip netns exec NS`` say) whose output goes to
    files, read as it grows."""

    def __init__(self, args: list[str], directory: Path, prefix: tuple[str, ...] = ()) -> None:
        self.out, self.err = directory / "stdout", directory / "stderr"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [*prefix, str(SOFTRSS), *args], stdout=out, stderr=err, text=True
            )

    def wait_for(self, file: Path, contains: str, timeout: float = 15.0) -> str:
        """The last line of ``file`` holding ``contains``, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in file.read_text().splitlines() if contains in line]
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no line with {contains!r} in {file.name} ({timeout} s); exit {self.proc.poll()}:\n"
            f"{file.read_text()}{self.err.read_text()}"
        )

    def stop(self, sig: signal.Signals) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=15)
        return self.out.read_text(), self.err.read_text()


@pytest.mark.parametrize("inside", ["--netns", "ip netns exec"])
def test_run_counts_injected_traffic_and_saves_its_state(two_host, tmp_path, inside):
    injector, dut = two_host
    state = tmp_path / "state.json"
    config = Config(buckets=4, threshold_packets=0)
    spec = TrafficSpec(
        templates.udp4(**ADDRESSED),
        vary=(Vary("UDP.sport", Range(7000, 7031)),),
        count=640,
    )
    args = ["-i", "ens5", "-s", "1", "-b", "4", "--json", "--threshold", "0", "-o", str(state)]
    if inside == "--netns":
        run = Running([*args, "--netns", dut], tmp_path)
    else:
        run = Running(args, tmp_path, prefix=("ip", "netns", "exec", dut))
    try:
        run.wait_for(run.err, "softrss: attached to ens5")
        program = spec.resolve()
        frames = list(program.packets())
        with XdpSender(program, "veth0", injector) as sender:
            assert sender.send(count=len(frames), rate_pps=20_000).packets == len(frames)
        deadline = time.monotonic() + 10
        while json.loads(run.wait_for(run.out, "total_packets"))["total_packets"] < len(frames):
            assert time.monotonic() < deadline, "softrss never counted the injected frames"
            time.sleep(0.2)
    finally:
        out, err = run.stop(signal.SIGTERM)
    assert run.proc.returncode == 0, err
    last = json.loads(out.splitlines()[-1])
    assert set(last) == {
        "time",
        "interval_s",
        "total_packets",
        "buckets",
        "packets_balance",
        "flows_balance",
        "elephants",
    }

    model = Model(config)
    for frame in frames:
        model.feed(frame)
    with SoftRss.restore(state) as restored:
        report, flows = restored.bucket_stats(), {f.key: f for f in restored.flows()}
    assert [b.packets for b in report.buckets] == [b["packets"] for b in last["buckets"]], (
        "the saved state's counters differ from the last figures printed"
    )
    for key, counts in model.flows.items():
        assert (flows[key].bucket, flows[key].packets) == (counts.bucket, counts.packets), (
            f"flow {key}: saved (bucket, packets) {(flows[key].bucket, flows[key].packets)}, "
            f"model {(counts.bucket, counts.packets)}"
        )


def test_run_prints_a_table_and_stops_on_sigint(two_host, tmp_path):
    _, dut = two_host
    run = Running(
        ["-i", "ens5", "--netns", dut, "-s", "0.2", "-b", "2", "--action", "cpu"], tmp_path
    )
    try:
        run.wait_for(run.err, "action cpu")
        run.wait_for(run.out, "balance: packets max/mean")
    finally:
        out, err = run.stop(signal.SIGINT)
    assert run.proc.returncode == 0, err
    assert "bucket" in out and "share" in out
