"""The ``flowmon`` command as a user runs it (the console script beside ``sys.executable``).

- ``flowmon -i ens5 -a xdp --json`` on ``two_host`` (with ``--netns``, and under ``ip netns exec``)
  prints the injected flows with the model's packets and bytes; stopped and started again, it
  reopens the pinned maps and the counts go on; ``bpftool map dump pinned`` shows named fields.
- ``-a tc --direction both`` counts real traffic both ways; the table has the seed's columns.
- ``flowmon -i ens5 -u`` stops the running flowmon (it prints its last table and detaches) and
  removes every pin: the leak check sees nothing left.
- Bad arguments are refused by name, before anything is loaded or pinned.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpf.attach import ifindex, pin_name
from bpf.flowmon import Config, FlowMon, Hook, Model, Storage
from harness.stack import ping_pong, udp_socket
from injector import templates
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

FLOWMON = Path(sys.executable).with_name("flowmon")
ADDRESSED = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
SPEC = TrafficSpec(
    templates.udp4(**ADDRESSED, payload=b"c" * 64),
    vary=(Vary("UDP.sport", Range(4000, 4019)),),
    flows=20,
    count=400,
)


def flowmon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLOWMON), *args], capture_output=True, text=True, timeout=30)


class Running:
    """A ``flowmon`` process (run by ``prefix``, ``ip netns exec NS`` say) writing to files."""

    def __init__(self, args: list[str], directory: Path, prefix: tuple[str, ...] = ()) -> None:
        self.out, self.err = directory / "stdout", directory / "stderr"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([*prefix, str(FLOWMON), *args], stdout=out, stderr=err)

    def wait_for(self, file: Path, contains: str, timeout: float = 15.0) -> str:
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

    def stop(self, sig: signal.Signals = signal.SIGINT) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        assert self.proc.wait(timeout=15) == 0, self.err.read_text()
        return self.out.read_text(), self.err.read_text()


def inject(injector: str) -> list[bytes]:
    program = SPEC.resolve()
    frames = list(program.packets())
    with XdpSender(program, "veth0", injector) as sender:
        assert sender.send(count=len(frames), rate_pps=20_000).packets == len(frames)
    time.sleep(0.3)  # the last frames land
    return frames


def last_table(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def injected(table: dict) -> dict[int, tuple[int, int]]:
    return {f["sport"]: (f["packets"], f["bytes"]) for f in table["flows"] if f["sport"] >= 4000}


@pytest.mark.parametrize("inside", ["--netns", "ip netns exec"])
def test_run_restart_and_unload(two_host, tmp_path, inside):
    injector, dut = two_host
    prefix, where = (
        (("ip", "netns", "exec", dut), []) if inside != "--netns" else ((), ["--netns", dut])
    )
    args = ["-i", "ens5", *where, "-a", "xdp", "--storage", "percpu_hash", "-s", "0.5", "--json"]
    model = Model(Config(storage=Storage.PERCPU_HASH))
    ens5 = ifindex("ens5", dut)
    try:
        first_dir = tmp_path / "first"
        first_dir.mkdir()
        first = Running(args, first_dir, prefix)
        first.wait_for(first.err, "counting on")
        for frame in inject(injector):
            model.feed(frame, Hook.XDP, ens5)
        first.wait_for(first.out, '"sport": 4019')
        out, err = first.stop(signal.SIGINT)
        assert "the counts stay pinned" in err
        want = {k.sport: (c.packets, c.bytes) for k, c in model.flows.items()}
        assert injected(last_table(out)) == want, "the last table printed on SIGINT"

        dump = subprocess.run(
            [
                "bpftool",
                "-j",
                "map",
                "dump",
                "pinned",
                str(FlowMon.pin_path(pin_name("ens5", dut)) / "flows4"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        fields = json.loads(dump.stdout)[0]["formatted"]
        assert {"ifindex", "saddr", "sport", "proto", "direction"} <= fields["key"].keys()
        assert {"packets", "bytes", "first_seen_ns"} <= fields["values"][0]["value"].keys()

        second_dir = tmp_path / "second"
        second_dir.mkdir()
        second = Running(
            ["-i", "ens5", *where, "-a", "xdp", "-s", "0.5", "--json"], second_dir, prefix
        )
        assert "reopened" in second.wait_for(second.err, "counting on")
        for frame in inject(injector):
            model.feed(frame, Hook.XDP, ens5)
        second.wait_for(second.out, '"packets": 40')
        unload = flowmon("-i", "ens5", "--netns", dut, "-u")
        assert unload.returncode == 0 and "removed 10 pins" in unload.stderr, unload.stderr
        out, err = second.stop()  # -u stopped it already: it exited 0
        want = {k.sport: (c.packets, c.bytes) for k, c in model.flows.items()}
        assert injected(last_table(out)) == want, "the restarted run went on from the pinned counts"
        assert "detached from" in err
    finally:
        FlowMon.unpin(pin_name("ens5", dut))
    assert not FlowMon.pin_path(pin_name("ens5", dut)).exists()


def test_tc_both_directions_table_has_the_seeds_columns(two_host, tmp_path):
    injector, dut = two_host
    run = Running(
        ["-i", "ens5", "--netns", dut, "-a", "tc", "--direction", "both", "-s", "0.5"], tmp_path
    )
    try:
        run.wait_for(run.err, "counting on")
        with (
            udp_socket(dut, "10.0.0.2", 7777) as server,
            udp_socket(injector, "10.0.0.1", 7778) as client,
        ):
            ping_pong(client, server, rounds=5)
        run.wait_for(run.out, "10.0.0.2:7777")
        run.wait_for(run.out, "10.0.0.1:7778")
        unload = flowmon("-i", "ens5", "--netns", dut, "-u")
        assert unload.returncode == 0, unload.stderr
        out, _ = run.stop()
    finally:
        FlowMon.unpin(pin_name("ens5", dut))
    table = out.strip().split("\n\n")[-1].splitlines()
    header = table[0]
    for column in (
        "flow start",
        "flow end",
        "protocol",
        "source",
        "destination",
        "packets",
        "bytes",
    ):
        assert column in header, f"{column!r} missing from {header!r}"
    rows = [r.split() for r in table[1:-1]]
    # time, time, dir, protocol, source, destination, packets, bytes (with thousands commas)
    ping = [r for r in rows if r[4] == "10.0.0.1:7778" and r[5] == "10.0.0.2:7777"]
    pong = [r for r in rows if r[4] == "10.0.0.2:7777" and r[5] == "10.0.0.1:7778"]
    frame = 14 + 20 + 8 + 4
    assert [r[2:4] + r[6:] for r in ping] == [["in", "udp", "5", f"{5 * frame}"]]
    assert [r[2:4] + r[6:] for r in pong] == [["out", "udp", "5", f"{5 * frame}"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-i", "lo", "-a", "xdp", "--direction", "egress"],
            "--direction egress: XDP sees ingress",
        ),
        (["-i", "lo", "-a", "tc", "--storage", "lru_hash", "--full", "drop"], "--full drop"),
        (["-i", "lo", "-a", "tc", "--full", "evict"], "--full evict"),
        (["-i", "lo", "-a", "tc", "--storage", "ringbuf", "--full", "spill"], "--full spill"),
        (["-i", "lo", "-a", "tc", "--ring-bytes", "5000"], "ring size 5000"),
        (["-i", "lo", "-a", "tc", "--entries", "0"], "--entries: 0: must be at least 1"),
        (["-i", "lo", "-a", "tc", "--storage", "btree"], "invalid choice: 'btree'"),
        (["-i", "lo", "-a", "tc", "-s", "0"], "must be more than 0"),
        (["-i", "no-such-if", "-a", "tc"], "no interface 'no-such-if'"),
        (["-i", "lo", "-a", "tc", "--netns", "bl-000000-none"], "'bl-000000-none' does not exist"),
        (["-i", "lo"], "-a/--attach: required"),
        (["-i", "lo", "-u", "-a", "tc"], "-u: takes -i only"),
    ],
)
def test_bad_arguments_refused_before_anything_loads(args, message):
    done = flowmon(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, f"expected {message!r} in:\n{done.stderr}"
    assert not FlowMon.pin_path("lo").exists(), "nothing pinned"


RING_BYTES, FRAMES = 1 << 18, 10_000


def test_ringbuf_records_are_read_as_they_arrive_not_only_at_each_print(two_host, tmp_path):
    """A 256 KiB ring holds 3,640 records (0.18 s at 20 kpps: room for a reading thread kept
    waiting on a loaded machine, where 16 KiB's 227 records, 11 ms, once lost 186); 10,000 frames
    at 20 kpps come between two prints 10 s apart. The command's reading thread adds them up as they
    arrive: none is lost to a full ring, and the last table has every frame."""
    injector, dut = two_host
    args = ["-i", "ens5", "--netns", dut, "-a", "xdp", "--storage", "ringbuf"]
    run = Running([*args, "--ring-bytes", str(RING_BYTES), "-s", "10", "--json"], tmp_path)
    spec = dataclasses.replace(SPEC, count=FRAMES)
    try:
        run.wait_for(run.err, "counting on")
        with XdpSender(spec.resolve(), "veth0", injector) as sender:
            assert sender.send(count=FRAMES, rate_pps=20_000).packets == FRAMES
        time.sleep(0.3)  # the last frames land
        out, _ = run.stop(signal.SIGINT)
    finally:
        FlowMon.unpin(pin_name("ens5", dut))
    table = last_table(out)
    assert table["misses"]["ring_full"] == 0, table["misses"]
    assert sum(p for p, _ in injected(table).values()) == FRAMES, injected(table)
