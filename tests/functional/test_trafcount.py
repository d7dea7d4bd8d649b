"""The traffic counter on ``two_host``: injected mixes, real iperf3 traffic, the command as a user runs
it (the console script beside ``sys.executable``), and what it leaves behind.

- Injected mixes (the xdp injector: TCP, UDP and ICMP from 20 IPv4 and 20 IPv6 sources) counted at
  XDP on the dut's ens5 exactly as the model says, with two generator workers sending the same
  addresses into ens5's two rx queues, so both CPUs count (and create) the same addresses at once.
- Debian's iperf3, TCP and UDP from the injector to the dut, counted at TC egress on veth0 (by
  destination) and TC ingress on ens5 (by source) in wire bytes: both ends count the same, and
  against veth0's own counters the only difference is the one the README explains: a GSO packet is
  one skb to the interface and gso_segs packets here, each extra segment with its 66 bytes of
  Ethernet, IP and TCP (timestamps) headers. The link is quiet (no IPv6, no ARP) so that nothing
  else crosses it.
- ``trafcount ... --hz 1000``: the time series' bins add up exactly to the totals it printed last,
  and the seed's line is printed; ``--prometheus`` is scraped with urllib and parsed with the
  Prometheus text parser.
- ``--detach`` stops a running trafcount and leaves no pin, filter, qdisc or XDP program; a
  trafcount killed with SIGKILL leaves its TC filter, qdisc and pins (a new run and ``--detach``
  refuse, naming ``harness clean``), and ``harness clean`` removes them all.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import IPRoute

from bpf import netns
from bpf.attach import pin_name
from bpf.netns import silence_ipv6
from bpf.trafcount import ByteCount, Config, Hook, Key, Model, TrafCount, TrafKey
from bpf.trafcount.demo import check_trafcount
from bpf.trafcount.series import parse_json_line, read_binary
from harness.counters import delta, interface_stats, pin_neighbour, settled
from harness.demo import flows_spec
from injector import templates
from injector.spec import Range, TrafficSpec, Vary
from injector.xdp import XdpSender

BIN = Path(sys.executable).parent
TRAFCOUNT = BIN / "trafcount"
MACS = {"eth_src": "02:00:00:00:01:01", "eth_dst": "02:00:00:00:01:02"}
ADDRESSES, FRAMES = 20, 1200
TCP_HEADERS = 14 + 20 + 32  # Ethernet, IPv4, TCP with timestamps: repeated by each GSO segment
_TC_INGRESS, _TC_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3  # clsact's parents


def specs() -> list[TrafficSpec]:
    """TCP, UDP and ICMP from 20 IPv4 and 20 IPv6 sources, round-robin."""
    v4 = Vary("IP.src", Range("10.0.6.1", f"10.0.6.{ADDRESSES}"))
    v6 = Vary("IPv6.src", Range("fd00::6:1", f"fd00::6:{ADDRESSES:x}"))
    templates_and_vary = [
        (templates.udp4(**MACS, payload=b"u" * 100), v4),
        (templates.tcp4(**MACS, flags="PA", payload=b"t" * 300), v4),
        (templates.icmp4(**MACS, payload=b"i" * 20), v4),
        (templates.udp6(**MACS, payload=b"U" * 200), v6),
        (templates.tcp6(**MACS, flags="A"), v6),
        (templates.icmp6(**MACS, payload=b"I" * 8), v6),
    ]
    return [
        TrafficSpec(t, vary=(vary,), flows=ADDRESSES, count=FRAMES)
        for t, vary in templates_and_vary
    ]


def inject(injector: str, workers: int) -> list[bytes]:
    sent = []
    for spec in specs():
        program = spec.resolve()
        frames = list(program.packets())
        with XdpSender(program, "veth0", injector) as sender:
            report = sender.send(count=len(frames), rate_pps=40_000, workers=workers)
        assert report.packets == len(frames) and report.aborted == 0, report
        sent += frames
    return sent


def injected(counts: dict[TrafKey, tuple[int, int]]) -> dict[TrafKey, tuple[int, int]]:
    """The injected sources' entries (10.0.6.0/24, fd00::6:0/112), not the kernel's own."""
    return {
        k: v
        for k, v in counts.items()
        if (k.version == 4 and k.packed[:3] == bytes([10, 0, 6]))
        or (k.version == 6 and k.packed[:14] == bytes.fromhex("fd00" + "00" * 10 + "0006"))
    }


@pytest.mark.parametrize("count", list(ByteCount), ids=lambda c: c.value)
def test_injected_mix_exact_with_two_workers_on_two_queues(two_host, count):
    injector, dut = two_host
    config = Config(key=Key.SRC, bytes=count)
    with TrafCount(config) as tc:
        tc.attach("ens5", Hook.XDP, dut)
        frames = inject(injector, workers=2)
        got = settled(lambda: injected(tc.counts()), still=0.1)
        totals = tc.totals()
    model = Model(config)
    for frame in frames:
        model.feed(frame, Hook.XDP)
    want = model.table()
    assert got == want, (
        f"(packets, bytes) per source and protocol differ from the {len(frames)} frames sent: "
        f"kernel {dict(sorted((str(k), v) for k, v in got.items()))}, "
        f"model {dict(sorted((str(k), v) for k, v in want.items()))}"
    )
    assert len(want) == 2 * ADDRESSES * 3, "20 IPv4 and 20 IPv6 sources x TCP, UDP, ICMP"
    assert totals.evicted == totals.entry_gone == totals.no_room == 0, totals


# --- iperf3 ---------------------------------------------------------------------------------------


def quiet_link(injector: str, dut: str) -> None:
    """No IPv6 and no ARP on the link: what crosses it is the test's traffic alone."""
    silence_ipv6("veth0", injector)
    silence_ipv6("ens5", dut)
    pin_neighbour("veth0", "10.0.0.2", MACS["eth_dst"], injector)
    pin_neighbour("ens5", "10.0.0.1", MACS["eth_src"], dut)


def iperf3(injector: str, dut: str, *client_args: str) -> dict:
    server = subprocess.Popen(
        ["ip", "netns", "exec", dut, "iperf3", "-s", "-1", "-B", "10.0.0.2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(50):
            client = subprocess.run(
                ["ip", "netns", "exec", injector, "iperf3", "-c", "10.0.0.2", "-J", *client_args],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if "Connection refused" not in client.stdout + client.stderr:
                break
            time.sleep(0.1)  # the server is not listening yet
        assert client.returncode == 0, client.stdout + client.stderr
        return json.loads(client.stdout)
    finally:
        server.wait(timeout=10)


def summed(counts: dict[TrafKey, tuple[int, int]], proto: int | None = None) -> tuple[int, int]:
    rows = [v for k, v in counts.items() if proto is None or k.proto == proto]
    return sum(p for p, _ in rows), sum(b for _, b in rows)


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs Debian's iperf3 (apt-get)")
@pytest.mark.parametrize("mode", ["tcp", "udp"])
def test_iperf3_counts_agree_with_the_interface_counters(two_host, mode):
    injector, dut = two_host
    quiet_link(injector, dut)
    args = ["-t", "1"] if mode == "tcp" else ["-u", "-b", "20M", "-l", "1000", "-t", "1"]
    with (
        TrafCount(Config(key=Key.DST, bytes=ByteCount.WIRE)) as out,
        TrafCount(Config(key=Key.SRC, bytes=ByteCount.WIRE)) as into,
    ):
        out.attach("veth0", Hook.TC_EGRESS, injector)
        into.attach("ens5", Hook.TC_INGRESS, dut)
        before = interface_stats("veth0", injector)
        report = iperf3(injector, dut, *args)
        time.sleep(0.2)
        link = delta(before, interface_stats("veth0", injector))
        sent, received = out.counts(), into.counts()
        assert out.unparsed() == {} == into.unparsed(), "a quiet link: IP only"
    assert set(sent) == {TrafKey(4, bytes([10, 0, 0, 2]), 6)} | (
        {TrafKey(4, bytes([10, 0, 0, 2]), 17)} if mode == "udp" else set()
    ), f"veth0 egress by destination: {sent}"
    assert {k.packed for k in received} == {bytes([10, 0, 0, 1])}
    packets, octets = summed(sent)
    assert (packets, octets) == summed(received), "one wire: what veth0 sent, ens5 received"
    extra = packets - link["tx_packets"]
    assert octets - link["tx_bytes"] == extra * TCP_HEADERS, (
        f"veth0 sent {link['tx_packets']} skbs, {link['tx_bytes']} bytes; trafcount counted "
        f"{packets} packets, {octets} bytes: each of the {extra} extra segments must add its "
        f"{TCP_HEADERS} bytes of headers, nothing else"
    )
    if mode == "tcp":
        assert extra > 0, "TCP through veth is GSO: more segments than skbs"
        sent_bytes = report["end"]["sum_sent"]["bytes"]
        assert summed(sent, 6)[1] > sent_bytes, "every payload byte iperf3 sent, with headers"
    else:
        # iperf3 opens a UDP test with one datagram of 4 bytes (its "connect" message), then
        # sends the datagrams its report counts.
        udp_packets = report["end"]["sum"]["packets"]
        frame = 14 + 20 + 8
        want = (udp_packets + 1, udp_packets * (frame + 1000) + frame + 4)
        assert summed(sent, 17) == want, (
            f"iperf3 sent {udp_packets} datagrams of 1000 bytes after its 4-byte one: "
            f"{summed(sent, 17)}"
        )


# --- the command -----------------------------------------------------------------------------------


class Running:
    """A ``trafcount`` process writing to files."""

    def __init__(self, args: list[str], directory: Path, prefix: tuple[str, ...] = ()) -> None:
        self.out, self.err = directory / "stdout", directory / "stderr"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([*prefix, str(TRAFCOUNT), *args], stdout=out, stderr=err)
        inside = prefix[3] if prefix[:3] == ("ip", "netns", "exec") else None
        namespace = args[args.index("--netns") + 1] if "--netns" in args else inside
        self.pins = pin_name(args[args.index("-i") + 1], namespace)

    def wait_for(self, contains: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.err.read_text().splitlines() if contains in line]
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no line with {contains!r} in stderr ({timeout} s); exit {self.proc.poll()}:\n"
            f"{self.out.read_text()}{self.err.read_text()}"
        )

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=15) == 0, self.err.read_text()
        return self.out.read_text(), self.err.read_text()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        """A test that failed before stopping it: the process goes, its pins with it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)
        TrafCount.unpin(self.pins)


def trafcount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRAFCOUNT), *args], capture_output=True, text=True, timeout=30)


def tc_state(ifname: str, namespace: str) -> set[str]:
    """The clsact qdiscs and TC filters on ``ifname``, and its XDP program."""
    found = set()
    with netns.entered(namespace), IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=ifname)
        if link.get_nested("IFLA_XDP", "IFLA_XDP_PROG_ID"):
            found.add("xdp")
        for qdisc in ipr.get_qdiscs(index=link["index"]):
            if qdisc.get("TCA_KIND") == "clsact":
                found.add("clsact")
                for parent, side in ((_TC_INGRESS, "ingress"), (_TC_EGRESS, "egress")):
                    if ipr.get_filters(index=link["index"], parent=parent):
                        found.add(f"{side} filter")
    return found


def left_behind(ifname: str, namespace: str) -> set[str]:
    pins = TrafCount.pin_path(pin_name(ifname, namespace))
    return tc_state(ifname, namespace) | ({f"pins {pins}"} if pins.exists() else set())


def last_totals(stream: str) -> dict[tuple[str, int], tuple[int, int]]:
    """The last JSON totals line as {(address, protocol): (packets, bytes)} (TCP, UDP, other)."""
    item = json.loads([line for line in stream.splitlines() if line.startswith("{")][-1])
    found = {}
    for row in item["addresses"]:
        for proto, kind in ((6, "tcp"), (17, "udp"), (0, "other")):
            if row[f"{kind}_packets"]:
                found[(row["ip"], proto)] = (row[f"{kind}_packets"], row[f"{kind}_bytes"])
    return found


@pytest.mark.parametrize("form", ["json", "binary"])
def test_time_series_bins_sum_to_the_totals_then_detach_leaves_nothing(two_host, tmp_path, form):
    injector, dut = two_host
    binary = tmp_path / "series.bin"
    args = ["-i", "ens5", "--netns", dut, "-a", "xdp", "-s", "0.5", "--json", "--hz", "1000"]
    with Running(args + (["--binary", str(binary)] if form == "binary" else []), tmp_path) as run:
        run.wait_for("counting on")
        frames = inject(injector, workers=1)
        time.sleep(0.5)
        assert left_behind("ens5", dut) == {"xdp", f"pins {TrafCount.pin_path(run.pins)}"}
        detached = trafcount("-i", "ens5", "--netns", dut, "--detach")
        assert detached.returncode == 0 and "nothing of trafcount is left" in detached.stderr, (
            detached.stderr
        )
        out, err = run.stop()  # --detach stopped it: it exited 0
    assert left_behind("ens5", dut) == set(), "--detach: nothing of trafcount is left"
    if form == "binary":
        hz, bins = read_binary(binary.read_bytes())
        bins = list(bins)
        assert hz == 1000
    else:
        bins = [parse_json_line(line) for line in out.splitlines()]
    assert [b.index for b in bins] == list(range(len(bins))), "every bin, in order"
    sums: dict[tuple[str, int], list[int]] = {}
    for b in bins:
        for k, p, n in b.deltas:
            entry = sums.setdefault((str(k.address), k.proto if k.proto in (6, 17) else 0), [0, 0])
            entry[0] += p
            entry[1] += n
    assert {k: tuple(v) for k, v in sums.items()} == last_totals(err), (
        "the bins add up to the totals printed last, per address and protocol"
    )
    model = Model(Config())
    for frame in frames:
        model.feed(frame, Hook.XDP)
    ours = {k: v for k, v in last_totals(err).items() if k[0].startswith(("10.0.6.", "fd00::6:"))}
    want: dict[tuple[str, int], tuple[int, int]] = {}
    for k, (p, n) in model.table().items():
        key = (str(k.address), k.proto if k.proto in (6, 17) else 0)
        want[key] = (want.get(key, (0, 0))[0] + p, want.get(key, (0, 0))[1] + n)
    assert ours == want, "the totals are the model's"


def test_seed_line_and_prometheus_scrape(two_host, tmp_path):
    injector, dut = two_host
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Running(
        [
            "-i",
            "ens5",
            "--netns",
            dut,
            "-a",
            "tc",
            "-s",
            "0.3",
            "--prometheus",
            f"127.0.0.1:{port}",
        ],
        tmp_path,
    ) as run:
        run.wait_for("metrics at")
        spec = TrafficSpec(templates.udp4(**MACS, src="10.0.7.1", payload=bytes(12)), count=3)
        program = spec.resolve()
        with XdpSender(program, "veth0", injector) as sender:
            sender.send(count=3)
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["trafcount_packets"].type == "counter"
        samples = {
            (s.name, s.labels["address"], s.labels["protocol"]): s.value
            for s in families["trafcount_packets"].samples + families["trafcount_bytes"].samples
        }
        assert samples[("trafcount_packets_total", "10.0.7.1", "udp")] == 3
        assert samples[("trafcount_bytes_total", "10.0.7.1", "udp")] == 3 * 40
        labels = families["trafcount_packets"].samples[0].labels
        assert (labels["interface"], labels["direction"], labels["key"]) == (
            "ens5",
            "tc-ingress",
            "src",
        )
        assert "trafcount_entries_evicted" in families
        out, _ = run.stop()
    line = "IP: 10.0.7.1 - TCP Packets: 0, TCP Bytes: 0 | UDP Packets: 3, UDP Bytes: 120"
    assert line in out.splitlines(), out[-500:]
    assert left_behind("ens5", dut) == set()


def test_under_ip_netns_exec_detached_from_the_host(two_host, tmp_path):
    """``ip netns exec`` gives the command a /sys of its own: its pins must still be the host's,
    for bpftool and for ``--detach`` run from another shell."""
    injector, dut = two_host
    with Running(
        ["-i", "ens5", "-a", "xdp", "-s", "0.3"], tmp_path, ("ip", "netns", "exec", dut)
    ) as run:
        run.wait_for("counting on")
        spec = TrafficSpec(templates.tcp4(**MACS, src="10.0.8.1", flags="A"), count=12)
        with XdpSender(spec.resolve(), "veth0", injector) as sender:
            sender.send(count=12)
        time.sleep(0.5)
        assert (TrafCount.pin_path(run.pins) / "addrs4").exists(), "pinned on the host's bpffs"
        detached = trafcount("-i", "ens5", "--netns", dut, "--detach")
        assert detached.returncode == 0 and "nothing of trafcount is left" in detached.stderr, (
            detached.stderr
        )
        out, _ = run.stop()
    line = "IP: 10.0.8.1 - TCP Packets: 12, TCP Bytes: 480 | UDP Packets: 0, UDP Bytes: 0"
    assert line in out.splitlines(), out[-500:]
    assert left_behind("ens5", dut) == set()


@pytest.mark.dead_run
def test_killed_run_is_undone_by_harness_clean(two_host, tmp_path):
    _, dut = two_host
    run = Running(["-i", "ens5", "--netns", dut, "-a", "tc", "--direction", "egress"], tmp_path)
    run.wait_for("counting on")
    pins = f"pins {TrafCount.pin_path(run.pins)}"
    assert left_behind("ens5", dut) == {"clsact", "egress filter", pins}
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(timeout=10)
    assert left_behind("ens5", dut) == {"clsact", "egress filter", pins}, "killed: nothing undone"
    detach = trafcount("-i", "ens5", "--netns", dut, "--detach")
    again = trafcount("-i", "ens5", "--netns", dut, "-a", "xdp")
    for done in (detach, again):
        assert done.returncode != 0 and "was killed" in done.stderr, done.stderr
        assert "`harness clean` removes them" in done.stderr
    clean = subprocess.run(
        [str(BIN / "harness"), "clean"], capture_output=True, text=True, timeout=60
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert left_behind("ens5", dut) == set(), f"harness clean left: {clean.stdout}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-i", "lo", "-a", "xdp", "--direction", "egress"],
            "--direction egress: XDP sees ingress",
        ),
        (["-i", "lo", "-a", "tc", "--entries", "0"], "--entries: 0: must be at least 1"),
        (["-i", "lo", "-a", "tc", "--entries", str((1 << 24) + 1)], "must be 1..16777216"),
        (["-i", "lo", "-a", "tc", "--key", "both"], "invalid choice: 'both'"),
        (["-i", "lo", "-a", "tc", "--hz", "20000"], "--hz 20000: must be 1..10000"),
        (["-i", "lo", "-a", "tc", "--binary", "/tmp/x"], "--binary: writes the time series"),
        (["-i", "lo", "-a", "tc", "--prometheus", "nine"], "--prometheus 'nine'"),
        (["-i", "lo", "-a", "tc", "-s", "0"], "must be more than 0"),
        (["-i", "no-such-if", "-a", "tc"], "no interface 'no-such-if'"),
        (["-i", "lo", "-a", "tc", "--netns", "bl-000000-none"], "'bl-000000-none' does not exist"),
        (["-i", "lo"], "-a/--attach: required"),
        (["-i", "lo", "--detach", "-a", "tc"], "--detach: takes -i only"),
    ],
)
def test_bad_arguments_refused_before_anything_loads(args, message):
    done = trafcount(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, f"expected {message!r} in:\n{done.stderr}"
    assert not TrafCount.pin_path("lo").exists(), "nothing pinned"


@pytest.mark.parametrize("which", ["1000 sources", "the demo's IMIX spec"])
def test_demo_check_passes_on_two_host(two_host, which):
    injector, dut = two_host
    if which == "1000 sources":
        spec = TrafficSpec(
            templates.udp4(**MACS),
            vary=(Vary("IP.src", Range("10.1.0.1", "10.1.3.232")),),
            flows=1000,
            count=1000,
        )
    else:
        spec = flows_spec({"injector": MACS["eth_src"], "dut": MACS["eth_dst"]})
    passed, detail, figures = check_trafcount(injector, dut, spec)
    assert passed, detail
    assert figures["addresses"] == 1000 and figures["packets"] == spec.resolve().period
