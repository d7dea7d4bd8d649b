"""``flowmon --ipfix`` on ``two_host``: the export captured by tcpdump and decoded by tshark.

flowmon runs in the dut's namespace (``ip netns exec``), counting at XDP on ens5, and exports to a
collector at the injector's 10.0.0.1:4739 (a bound UDP socket there, so no ICMP comes back), across
the same veth: XDP sees ens5's ingress only, so the export is not counted. tcpdump captures the
export on the injector's veth0; tshark's IPFIX dissector decodes it.

- Every storage: flows injected (IPv4 and IPv6) stop, are exported once the idle timeout passes
  (flowEndReason 1) and leave the table (the array kinds keep their slots); the IPv4 flows sent
  again are new flows, exported when flowmon stops (4). Per flow, the records add up to what was
  sent (the model), their times are the sending's, sequence numbers count the data records.
- A TCP flow that sends its FIN is exported as ended (3) at the next read, and leaves the table.
- A flow that keeps going is re-exported every active timeout with the packets since its previous
  record (2), and its rest at the stop (4); the records add up to what was sent.
- Real UDP both ways at TC ingress and egress: each flow's records name its interface as the
  ingress or the egress one.
- Bad ``--ipfix`` arguments are refused by name, before anything loads.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpf import netns
from bpf.attach import ifindex, pin_name
from bpf.flowmon import Config, FlowMon, Hook, Model, Storage
from bpf.flowmon.ipfix import IPFIX_PORT, MAX_MESSAGE_BYTES, tshark_messages
from bpf.flowmon.model import Direction, EndReason, FlowRecord, export_problems
from harness.stack import ping_pong, udp_socket
from injector import templates
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

FLOWMON = Path(sys.executable).with_name("flowmon")
ADDRESSED = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
COLLECTOR = ("10.0.0.1", IPFIX_PORT)
V4 = TrafficSpec(
    templates.udp4(**ADDRESSED, payload=b"4" * 64),
    vary=(Vary("UDP.sport", Range(4000, 4019)),),
    flows=20,
    count=400,
)
V6 = TrafficSpec(
    templates.udp6(**ADDRESSED, payload=b"6" * 200),
    vary=(Vary("UDP.sport", Range(6000, 6009)),),
    flows=10,
    count=100,
)
V4_PORTS = range(4000, 4020)
LONG = TrafficSpec(templates.udp4(**ADDRESSED, sport=7000, payload=b"L" * 100), count=40)


class Flowmon:
    """``flowmon`` in the dut's namespace, its JSON lines and its stderr in files."""

    def __init__(self, dut: str, args: list[str], directory: Path, attach: str = "xdp") -> None:
        self.out, self.err = directory / "flowmon.out", directory / "flowmon.err"
        argv = ["ip", "netns", "exec", dut, str(FLOWMON), "-i", "ens5", "-a", attach, *args]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err)
        try:
            self._wait(lambda: "counting on" in self.err.read_text(), "flowmon started")
        except BaseException:
            self.close()
            raise

    def line_after(self, when: float, ok=lambda line: True) -> dict:
        """The first JSON line printed after wall time ``when`` for which ``ok`` holds."""
        found: list[dict] = []

        def look() -> bool:
            complete = self.out.read_text().split("\n")[:-1]  # the last may be half written
            lines = [json.loads(text) for text in complete]
            found[:] = [line for line in lines if line["time"] > when and ok(line)][:1]
            return bool(found)

        self._wait(look, f"a JSON line after {when:.3f}")
        return found[0]

    def _wait(self, done, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{what}: not within {timeout} s; exit {self.proc.poll()}:\n{self.err.read_text()}"
        )

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=30) == 0, self.err.read_text()
        return self.err.read_text()

    def close(self) -> None:
        """Kill it if it still runs (a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Collector:
    """A UDP socket at the collector's address and tcpdump capturing what arrives there."""

    def __init__(self, injector: str, directory: Path) -> None:
        self.pcap = directory / "ipfix.pcap"
        with netns.entered(injector):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(COLLECTOR)
        argv = [
            "ip",
            "netns",
            "exec",
            injector,
            "tcpdump",
            "-i",
            "veth0",
            "-n",
            "-U",
            "--immediate-mode",
        ]
        argv += ["-w", str(self.pcap), f"udp dst port {IPFIX_PORT}"]
        self.tcpdump = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert "listening on" in self.tcpdump.stderr.readline(), "tcpdump started"

    def messages(self):
        """Stop the capture; tshark's reading of it."""
        time.sleep(0.3)  # the last datagram lands
        self.tcpdump.send_signal(signal.SIGINT)
        self.tcpdump.wait(timeout=10)
        self.sock.close()
        return tshark_messages(self.pcap)

    def close(self) -> None:
        if self.tcpdump.poll() is None:
            self.tcpdump.kill()
            self.tcpdump.wait()
        self.sock.close()


@pytest.fixture
def collector(two_host, tmp_path):
    c = Collector(two_host[0], tmp_path)
    yield c
    c.close()


def send(injector: str, spec: TrafficSpec, count: int | None = None) -> list[bytes]:
    """``count`` of ``spec``'s frames (all by default) into veth0; the frames sent."""
    program = spec.resolve()
    frames = list(program.packets())[:count]
    with XdpSender(program, "veth0", injector) as sender:
        assert sender.send(count=len(frames), rate_pps=20_000).packets == len(frames)
    return frames


def ours(messages, ports: range) -> list[FlowRecord]:
    return [r for m in messages for r in m.records if r.key.sport in ports]


def check_messages(messages) -> None:
    """Templates first, every message within the size limit and decoded, sequence numbers."""
    assert messages and messages[0].templates, "the first message carries the templates"
    before = 0
    for m in messages:
        assert m.version == 10 and m.length <= MAX_MESSAGE_BYTES, m
        assert m.undecoded == 0, f"frame {m.frame}: a data set tshark has no template for"
        assert m.sequence == before, f"frame {m.frame}: sequence {m.sequence}, {before} sent before"
        before += len(m.records)


def in_table(line: dict, ports: range) -> dict[int, int]:
    return {f["sport"]: f["packets"] for f in line["flows"] if f["sport"] in ports}


@pytest.mark.parametrize("storage", list(Storage), ids=lambda s: s.value)
def test_idle_flows_exported_and_gone_then_the_rest_at_stop(two_host, collector, tmp_path, storage):
    injector, dut = two_host
    idle = 2.0
    args = ["--storage", storage.value, "--entries", "4096", "-s", "0.2", "--json"]
    args += ["--ipfix", ":".join(map(str, COLLECTOR)), "--idle-timeout", f"{idle}"]
    model = Model(Config(storage=storage, entries=4096))
    ens5 = ifindex("ens5", dut)
    ports = range(4000, 7000)
    run = Flowmon(dut, args, tmp_path)
    try:
        began = time.time()
        first = send(injector, V4) + send(injector, V6)
        sent = time.time()
        counted = run.line_after(sent, lambda line: len(in_table(line, ports)) == 30)
        assert sum(in_table(counted, ports).values()) == 500, "every frame counted"
        after_idle = run.line_after(sent + idle + 0.5)
        assert in_table(after_idle, ports) == (
            {} if not storage.array else in_table(counted, ports)
        ), "idle flows leave the table (an array's slots keep them)"
        again = send(injector, V4)
        total = 800 if storage.array else 400  # a slot goes on counting; an entry starts anew
        run.line_after(time.time(), lambda line: sum(in_table(line, V4_PORTS).values()) == total)
        err = run.stop()
        assert "exported" in err and "flow records" in err, err
        with FlowMon.reopen(pin_name("ens5", dut)) as left:
            assert left.flows() == [], "the exit's export empties the table"
    finally:
        run.close()
        FlowMon.unpin(pin_name("ens5", dut))
    for frame in first + again:
        model.feed(frame, Hook.XDP, ens5)
    model.drain()

    messages = collector.messages()
    check_messages(messages)
    records = ours(messages, ports)
    problems = export_problems(records, model.flows, finished=True)
    assert not problems, "\n".join(problems)
    by_port: dict[int, list[tuple[EndReason, int]]] = {}
    for r in records:
        by_port.setdefault(r.key.sport, []).append((r.reason, r.packets))
    want = {p: [(EndReason.IDLE_TIMEOUT, 20), (EndReason.FORCED_END, 20)] for p in V4_PORTS}
    want.update({p: [(EndReason.IDLE_TIMEOUT, 10)] for p in range(6000, 6010)})
    assert by_port == want, "(reason, packets) per flow: idle after the first sending, then stop"
    for r in records:
        assert began - 0.1 <= r.start_ms / 1000 <= r.end_ms / 1000 <= time.time(), (
            f"{r.key}: {r.start_ms}..{r.end_ms} ms, sent from {began:.3f} s"
        )
        if r.reason is EndReason.IDLE_TIMEOUT:
            assert r.end_ms / 1000 <= sent + 0.1, f"{r.key}: ends after the first sending"


@pytest.mark.parametrize("storage", [Storage.HASH, Storage.PERCPU_ARRAY], ids=lambda s: s.value)
def test_a_long_flow_reexported_every_active_timeout(two_host, collector, tmp_path, storage):
    injector, dut = two_host
    args = [
        "--storage",
        storage.value,
        "-s",
        "0.2",
        "--json",
        "--ipfix",
        ":".join(map(str, COLLECTOR)),
    ]
    args += ["--active-timeout", "1", "--idle-timeout", "5"]
    model = Model(Config(storage=storage))
    ens5 = ifindex("ens5", dut)
    run = Flowmon(dut, args, tmp_path)
    try:
        program = LONG.resolve()
        chunk = list(program.packets())
        frames: list[bytes] = []
        # One sender for the whole flow (making one takes a while under load): a chunk every
        # 0.2 s for 3.3 s from the first, so that the flow lives 3.3 s whatever the set-up took.
        with XdpSender(program, "veth0", injector) as sender:
            started = None
            while started is None or time.monotonic() - started < 3.3:
                assert sender.send(count=len(chunk), rate_pps=20_000).packets == len(chunk)
                frames += chunk
                started = started or time.monotonic()
                time.sleep(0.2)
        run.line_after(
            time.time(), lambda line: sum(in_table(line, range(7000, 7001)).values()) == len(frames)
        )
        run.stop()
    finally:
        run.close()
        FlowMon.unpin(pin_name("ens5", dut))
    for frame in frames:
        model.feed(frame, Hook.XDP, ens5)
    model.drain()

    messages = collector.messages()
    check_messages(messages)
    records = ours(messages, range(7000, 7001))
    problems = export_problems(records, model.flows, finished=True)
    assert not problems, "\n".join(problems)
    reasons = [r.reason for r in records]
    assert reasons[-1] is EndReason.FORCED_END and reasons.count(EndReason.FORCED_END) == 1
    assert 2 <= reasons.count(EndReason.ACTIVE_TIMEOUT) <= 4, (
        f"3.3 s of a flow with a 1 s active timeout: {[(r.reason.name, r.packets) for r in records]}"
    )
    assert len({r.start_ms for r in records}) == 1, "every record starts at the flow's start"


def test_a_tcp_flow_ends_at_its_fin(two_host, collector, tmp_path):
    """SYN, data, FIN: exported as ended (flowEndReason 3) a read after its last packet, long
    before the idle timeout, and gone from the table."""
    injector, dut = two_host
    idle = 20.0
    args = ["-s", "0.2", "--json", "--ipfix", ":".join(map(str, COLLECTOR))]
    args += ["--idle-timeout", f"{idle}"]
    model = Model(Config())
    ens5 = ifindex("ens5", dut)
    segment = {**ADDRESSED, "sport": 7100, "dport": 443}
    run = Flowmon(dut, args, tmp_path)
    try:
        # Seen in a line printed after the SYN went: a line stamped before the FIN's send returned
        # may be the last to show the flow (a FIN and one read with nothing new end it).
        started = time.time()
        frames = send(injector, TrafficSpec(templates.tcp4(**segment, flags="S"), count=1))
        data = templates.tcp4(**segment, flags="PA", payload=b"d" * 500)
        frames += send(injector, TrafficSpec(data, count=20))
        frames += send(injector, TrafficSpec(templates.tcp4(**segment, flags="FA"), count=1))
        sent = time.time()
        seen = run.line_after(started, lambda line: 7100 in in_table(line, range(7100, 7101)))
        gone = run.line_after(seen["time"], lambda line: not in_table(line, range(7100, 7101)))
        assert gone["time"] - sent < idle / 4, "ended at its FIN, not at the idle timeout"
        run.stop()
    finally:
        run.close()
        FlowMon.unpin(pin_name("ens5", dut))
    for frame in frames:
        model.feed(frame, Hook.XDP, ens5)

    messages = collector.messages()
    check_messages(messages)
    records = ours(messages, range(7100, 7101))
    assert not export_problems(records, model.flows, finished=True)
    assert [(r.reason, r.packets, r.tcp_flags) for r in records] == [
        (EndReason.END_OF_FLOW, 22, 0x02 | 0x08 | 0x10 | 0x01)  # SYN PSH ACK FIN
    ]


def test_tc_both_ways_exported_with_their_interface(two_host, collector, tmp_path):
    """Real UDP both ways through the stacks, counted at TC ingress and egress: the ingress flow's
    records carry ingressInterface, the egress flow's egressInterface (their own templates)."""
    injector, dut = two_host
    args = ["--direction", "both", "-s", "0.2", "--json", "--ipfix", ":".join(map(str, COLLECTOR))]
    ens5 = ifindex("ens5", dut)
    run = Flowmon(dut, args, tmp_path, attach="tc")
    try:
        with (
            udp_socket(dut, "10.0.0.2", 7777) as server,
            udp_socket(injector, "10.0.0.1", 7778) as client,
        ):
            ping_pong(client, server, rounds=5)
        run.line_after(time.time(), lambda line: len(in_table(line, range(7777, 7779))) == 2)
        run.stop()
    finally:
        run.close()
        FlowMon.unpin(pin_name("ens5", dut))

    messages = collector.messages()
    check_messages(messages)
    frame = 14 + 20 + 8 + 4
    got = {
        (r.key.sport, r.key.direction, r.key.ifindex, r.reason, r.packets, r.bytes)
        for r in ours(messages, range(7777, 7779))
    }
    assert got == {
        (7778, Direction.INGRESS, ens5, EndReason.FORCED_END, 5, 5 * frame),
        (7777, Direction.EGRESS, ens5, EndReason.FORCED_END, 5, 5 * frame),
    }
    sets = {set_id for m in messages for set_id, _ in m.sets}
    assert {256, 257} <= sets, f"both IPv4 templates' data sets: {sets}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ipfix", "10.0.0.1"], "--ipfix '10.0.0.1': give HOST:PORT"),
        (["--ipfix", "10.0.0.1:99999"], "port 99999 must be 1..65535"),
        (["--ipfix", "fd00::1:4739"], "put an IPv6 address in brackets"),
        (["--ipfix", "no-such-host.invalid:4739"], "cannot resolve 'no-such-host.invalid'"),
        (["--idle-timeout", "3"], "--idle-timeout: only with --ipfix HOST:PORT"),
        (["--ipfix", "127.0.0.1:4739", "--active-timeout", "0"], "0.0 s: must be more than 0"),
        (["-u", "--ipfix", "127.0.0.1:4739"], "-u: takes -i only"),
    ],
)
def test_bad_ipfix_arguments_refused_before_anything_loads(args, message):
    command = [str(FLOWMON), "-i", "lo", *([] if "-u" in args else ["-a", "tc"]), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, f"expected {message!r} in:\n{done.stderr}"
    assert not FlowMon.pin_path("lo").exists(), "nothing pinned"
