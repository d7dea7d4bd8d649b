"""The bench's TRex source and receiver, to the TRex client's boundary: the real client (lbr-trex-client
in the worker process) against a server that is not there, one worker serving request after
request, the streams a trial asks for, and the latency report read from what ``get_pgid_stats()``
returns. No TRex server can run on this machine;
the zero-loss search through a server runs only with ``--trex-server`` (and a testbed whose NIC it
feeds: ``--testbed bluefield --trex-server HOST``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.bench import LATENCY_PG_ID, TrexPort, TrexReceiver, TrexSource, _trex_ends
from harness.latency import trex_latency
from harness.testbed import bind, find_testbed, load_testbed
from injector.program import FieldProgram
from injector.spec import TrafficSpec
from injector.trex_backend import Latency, TrexError, TrexSession, burst, trex_streams

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lbr_trex_client") is None,
    reason="needs the TRex client: pip install 'bpflab[trex]'",
)

SPEC = {
    "template": {"kind": "udp4", "args": {"eth_dst": "02:00:00:00:00:02"}},
    "vary": [{"field": "UDP.sport", "range": {"start": 1024, "end": 1087}}],
    "duration": 10,  # a trial's burst takes the place of the spec's own length
}
TREX_RPC_PORT = 4501  # STLClient's sync_port


def _program() -> FieldProgram:
    return TrafficSpec.from_dict(SPEC, "benchmark spec").resolve()


def _closed_here() -> str:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", TREX_RPC_PORT)) == 0:
            pytest.skip(f"something listens on 127.0.0.1:{TREX_RPC_PORT}: no absent server there")
    return "127.0.0.1"


def _fails_naming(server: str, connect) -> None:
    start = time.monotonic()
    with pytest.raises(TrexError) as raised:
        connect()
    took = time.monotonic() - start
    message = str(raised.value)
    assert message.startswith(f"TRex server {server}: connecting: "), message
    assert f"Failed to get server response from tcp://{server}:{TREX_RPC_PORT}" in message, message
    assert "Traceback" not in message, message
    assert took < 15, f"{took:.1f} s to give up on {server}: the client's RPC timeout is 3 s"


def test_an_absent_server_is_named_when_its_ports_are_looked_up():
    server = _closed_here()
    _fails_naming(server, lambda: TrexPort.of(server, (0, 1)))


def test_an_unroutable_server_is_named_as_quickly():
    server = "192.0.2.1"  # TEST-NET-1 (RFC 5737): no host answers there
    _fails_naming(server, lambda: TrexPort.of(server, (0,)))


def test_the_sender_and_the_receiver_name_an_absent_server():
    server = _closed_here()
    port = TrexPort(server, 0, "02:00:00:00:00:01")

    def send() -> None:
        with TrexSource(port).sender(SPEC) as sender:
            sender.send(10)

    def count() -> None:
        with TrexReceiver(dataclasses.replace(port, index=1)).counting() as counting:
            counting.frames()

    _fails_naming(server, send)
    _fails_naming(server, count)
    _fails_naming(server, lambda: TrexSource(port).latency(SPEC, 100))


def test_a_forwarding_topology_needs_a_second_trex_port():
    bed = bind(load_testbed(find_testbed("bluefield")), trex_server=_closed_here())
    assert bed.source.ports == (0, 1)
    one_port = dataclasses.replace(bed, source=dataclasses.replace(bed.source, ports=(0,)))
    with pytest.raises(RuntimeError, match=r"testbed bluefield: .*no second port.*ports: \[0, 1\]"):
        _trex_ends(one_port, receiving=True)
    _fails_naming("127.0.0.1", lambda: _trex_ends(bed, receiving=True))


def test_one_worker_serves_request_after_request():
    program = _program()
    with TrexSession() as session:
        first = session.streams(program)
        with pytest.raises(TrexError, match="no TRex server: send a connect request first"):
            session.stats((1,))
        assert session.streams(program) == first, "a failed request leaves the worker serving"


def test_a_worker_that_died_is_reported_not_waited_for():
    with TrexSession() as session:
        worker = session._process
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        with pytest.raises(TrexError, match=r"TRex worker ended \(-9\)"):
            session.streams(_program())


def test_a_trial_asks_trex_for_its_count_at_its_rate():
    program = _program()
    paced, flat_out = (trex_streams(burst(program, 25_000, rate)) for rate in (50_000.0, None))
    assert paced[0]["mode"] == {
        "type": "single_burst",
        "total_pkts": 25_000,
        "rate": {"type": "pps", "value": 50_000.0},
    }
    assert flat_out[0]["mode"] == {
        "type": "single_burst",
        "total_pkts": 25_000,
        "rate": {"type": "percentage", "value": 100},
    }, "flat out: 100% of the port's line rate"
    for (stream,) in (paced, flat_out):
        assert stream["flags"] == 0b011, "the frames carry the spec's MACs, not the TRex port's"


def test_a_latency_trial_sends_as_many_timed_packets_beside_the_flow():
    """TrexSource.latency's request: the flow's burst and a latency stream of the same count and
    rate, the spec's first frame with STLFlowLatencyStats of the bench's pg_id."""
    flow, timed = trex_streams(burst(_program(), 500, 1000.0), Latency(LATENCY_PG_ID, 1000.0))
    assert flow["mode"]["total_pkts"] == timed["mode"]["total_pkts"] == 500
    assert timed["mode"]["rate"] == {"type": "pps", "value": 1000.0}
    assert timed["flow_stats"]["stream_id"] == LATENCY_PG_ID, timed["flow_stats"]
    assert timed["flow_stats"]["rule_type"] == "latency", timed["flow_stats"]


# What STLClient.get_pgid_stats([7]) returns, in the shape its code builds (lbr-trex-client 3.4.0,
# trex/stl/trex_stl_stats.py, CPgIdStats.get_stats: 'flow_stats' per pg_id and port with a 'total',
# 'latency' per pg_id with 'err_cntrs' and 'latency', whose 'histogram' TRex's server keys by each
# bucket's lower edge in us, src/time_histogram.cpp), then through JSON as the worker replies.
PGID_STATS = {
    "ver_id": {"7": 1},
    "flow_stats": {
        7: {
            "rx_pkts": {1: 998, "total": 998},
            "tx_pkts": {0: 1000, "total": 1000},
            "rx_bytes": {1: 63872, "total": 63872},
            "tx_bytes": {0: 64000, "total": 64000},
            "rx_bps": {1: 0.0, "total": 0.0},
            "tx_bps": {0: 0.0, "total": 0.0},
            "rx_pps": {1: 0.0, "total": 0.0},
            "tx_pps": {0: 0.0, "total": 0.0},
            "rx_bps_l1": {1: 0.0, "total": 0.0},
            "tx_bps_l1": {0: 0.0, "total": 0.0},
        },
        "global": {"rx_err": {0: 0, 1: 0}, "tx_err": {0: 0, 1: 0}},
    },
    "latency": {
        7: {
            "err_cntrs": {
                "dropped": 2,
                "dup": 1,
                "out_of_order": 4,
                "seq_too_high": 1,
                "seq_too_low": 0,
            },
            "latency": {
                "jitter": 1,
                "average": 14.25,
                "total_max": 253,
                "total_min": 7,
                "last_max": 31,
                "histogram": {0: 5, 10: 900, 20: 80, 100: 10, 200: 2},
            },
        },
        "global": {"old_flow": 0, "bad_hdr": 0},
    },
}


def test_latency_report_from_trex_pgid_stats():
    report = trex_latency(json.loads(json.dumps(PGID_STATS)), pg_id=7)
    assert (report.sent, report.received, report.lost) == (1000, 997, 3), "998 arrived, one twice"
    assert (report.duplicated, report.reordered) == (1, 4)
    # 997 timed: the 499th is in the 10-19 us bucket, the 988th in 100-199 us (5, 905, 985, 995).
    assert (report.p50_us, report.p99_us) == (20.0, 200.0), "the upper edges of their buckets"
    assert (report.max_us, report.min_us) == (253.0, 7.0)
    assert (report.average_us, report.jitter_us) == (14.25, 1.0)
    assert "p50 <= 20 us, p99 <= 200 us, max 253 us" in str(report)


def test_latency_report_when_nothing_arrived():
    stats = json.loads(json.dumps(PGID_STATS))
    stats["flow_stats"]["7"]["rx_pkts"] = {"total": 0}
    stats["latency"]["7"]["err_cntrs"]["dup"] = 0
    stats["latency"]["7"]["latency"]["histogram"] = {}
    report = trex_latency(stats, pg_id=7)
    assert (report.sent, report.received, report.lost) == (1000, 0, 1000)
    assert (report.p50_us, report.max_us, report.average_us) == (None, None, None)
    assert str(report) == "0/1000 latency packets, 1000 lost, 0 duplicated, 4 reordered"


@pytest.mark.trex
def test_zero_loss_search_through_trex(trex_server, bench):
    """The bench's search on a TRex testbed (``--testbed bluefield --trex-server HOST``): every
    trial is one burst of exactly ``count`` frames, counted by TRex's port."""
    link = bench("two_host")
    assert isinstance(link.source, TrexSource), link.source
    count, totals = 100_000, Counter()
    with link.source.sender(link.addressed(SPEC)) as sender:
        pps = link.zero_loss_pps(sender, count, totals)
    assert pps > 0
    assert totals["sent"] % count == 0 and totals["source_dropped"] == 0, totals


def test_the_injector_command_names_an_absent_server_without_a_traceback(tmp_path):
    server = _closed_here()
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({**SPEC, "count": 10}))  # JSON is YAML
    injector = Path(sys.executable).with_name("injector")
    argv = [str(injector), "send", "-i", "lo", "-b", "trex", "--trex-server", server]
    done = subprocess.run([*argv, "--spec", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"TRex server {server}" in done.stderr and "Traceback" not in done.stderr, done.stderr
