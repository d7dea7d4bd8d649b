"""The TRex side of ``injector.trex_backend``, run as its own process: ``python -m injector.trex_worker``.

lbr-trex-client (the official TRex v3.04 client) bundles scapy 2.4.3, which must not share a process
with the project's scapy 2.8; this process imports only the standard library, ``injector.program``
(no scapy) and the TRex client, and builds packets from raw bytes with numeric offsets.

It reads JSON requests on stdin, one a line, and answers each with one JSON line on stdout (the
client's own messages go to stderr), until stdin ends; then it disconnects and exits:
- ``{"action": "streams", "program": FieldProgram.to_dict(), "latency": null | {"pg_id", "rate_pps"}}``
  replies ``{"streams": [STLStream.to_json(), ...]}`` (no server needed);
- ``{"action": "connect", "server": "host"}`` connects an ``STLClient``, held for the process's
  life; the client counts every port from that moment (it baselines them when it connects);
- ``{"action": "ports", "ports": [0, 1]}`` replies ``{"ports": {"0": get_port_info(), ...}}``;
- ``{"action": "run", "program": ..., "latency": ..., "ports": [0]}`` takes the ports, starts the
  streams from each, waits for them to finish and replies ``{"stats": get_stats(ports),
  "seconds": ..., "latency": get_pgid_stats()}`` (``latency`` when asked). ``seconds`` is timed
  here, from ``start()``'s reply to the client seeing the ports stop (their async events), so it
  exceeds the burst by those two messages' latency;
- ``{"action": "stats", "ports": [1]}`` replies ``{"stats": get_stats(ports)}`` without taking
  the ports, so another client may send from them;
- a request that fails replies ``{"error": "..."}``, and the next request is read.

The streams carry the program's own MACs (``mac_src_override_by_pkt``, ``STLStreamDstMAC_PKT``):
by default TRex writes its port's source MAC and configured destination over them.

How the field program maps to the TRex field engine (every var advances once per packet, so all
vars stay in lock-step and packet i gets exactly ``FieldProgram.packet(i)``):
- several frame sizes: a 2-byte value-list var of the sizes, ``STLVmTrimPktSize``, and each length
  field written from it with ``add_value = -base``;
- a varied field whose per-packet sequence is arithmetic (Range over round-robin flows) becomes an
  ``inc`` var (min, max, step) on the field, or on its low 1/2/4/8 bytes when the high bytes stay
  constant (MACs, IPv6 addresses, the 3-byte VNI);
- any other field becomes value-list vars, one per 8/4/2/1-byte chunk of the field that changes,
  each list cut to its shortest period (at most 65535 entries, TRex's limit);
- IPv4 header checksums: ``STLVmFixIpv4``; TCP/UDP: ``STLVmFixChecksumHw`` (the NIC's offload, or
  TRex's software fallback); ICMP checksums, which TRex cannot fix, are precomputed per packet
  into a value-list var.
Random fields are random per flow, as in the expansion, never TRex's per-packet ``random``.
With several TRex cores per port, ``split_to_cores`` (TRex's default) shares each var's sequence
between cores, so the packets are the expansion's but their order across cores interleaves.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from typing import Any

import lbr_trex_client  # noqa: F401  (puts TRex's packages on sys.path)
from trex.stl.api import (
    STLClient,
    STLFlowLatencyStats,
    STLPktBuilder,
    STLStream,
    STLStreamDstMAC_PKT,
    STLTXCont,
    STLTXSingleBurst,
    STLVmFixChecksumHw,
    STLVmFixIpv4,
    STLVmFlowVar,
    STLVmTrimPktSize,
    STLVmWrFlowVar,
)
from trex.stl.trex_stl_packet_builder_scapy import CTRexVmInsFixHwCs

from injector.program import ChecksumKind, FieldOp, FieldProgram

MAX_VALUE_LIST = 65535
VAR_SIZES = (8, 4, 2, 1)
_HW_L4 = {
    ChecksumKind.UDP: CTRexVmInsFixHwCs.L4_TYPE_UDP,
    ChecksumKind.TCP: CTRexVmInsFixHwCs.L4_TYPE_TCP,
}


class TranslationError(ValueError):
    """The field program cannot be expressed in TRex's field engine."""


def shortest_period(seq: list[int]) -> list[int]:
    """The shortest prefix p of ``seq`` (len(p) dividing len(seq)) that ``seq`` repeats."""
    n = len(seq)
    for p in range(1, n + 1):
        if n % p == 0 and all(seq[j] == seq[j % p] for j in range(n)):
            return seq[:p]
    return seq


def _value_list(name: str, values: list[int], size: int, what: str) -> STLVmFlowVar:
    if len(values) > MAX_VALUE_LIST:
        raise TranslationError(
            f"{what} repeats only every {len(values)} packets; TRex value lists hold at most "
            f"{MAX_VALUE_LIST}: use fewer flows or a shorter distribution cycle"
        )
    return STLVmFlowVar(name=name, size=size, op="inc", value_list=values)


def _arithmetic_var(name: str, op: FieldOp, seq: list[int]) -> list[Any] | None:
    """An ``inc`` var and its write for an increasing arithmetic ``seq``, if one fits a var size."""
    step = seq[1] - seq[0] if len(seq) > 1 else 0
    if step <= 0 or any(b - a != step for a, b in itertools.pairwise(seq)):
        return None
    first, last = seq[0], seq[-1]
    sizes = [op.size] if op.size in VAR_SIZES else sorted(s for s in VAR_SIZES if s < op.size)
    for size in sizes:
        mask = (1 << (8 * size)) - 1
        low, high = first & mask, last & mask
        cycle_pad = (-(high - low + 1)) % step
        if first >> (8 * size) == last >> (8 * size) and high + cycle_pad <= mask:
            var = STLVmFlowVar(
                name=name, min_value=low, max_value=high, size=size, step=step, op="inc"
            )
            return [var, STLVmWrFlowVar(fv_name=name, pkt_offset=op.offset + op.size - size)]
    return None


def _chunks(size: int) -> list[tuple[int, int]]:
    """(position, size) pieces of a field, largest TRex var sizes first."""
    out, at = [], 0
    while at < size:
        piece = next(s for s in VAR_SIZES if s <= size - at)
        out.append((at, piece))
        at += piece
    return out


def field_instructions(program: FieldProgram, index: int, op: FieldOp) -> list[Any]:
    seq = shortest_period([op.value_for(f) for f in program.schedule])
    if len(seq) == 1:
        return []
    name = f"f{index}"
    native = _arithmetic_var(name, op, seq)
    if native is not None:
        return native
    out: list[Any] = []
    for at, size in _chunks(op.size):
        shift = 8 * (op.size - at - size)
        chunk = shortest_period([(v >> shift) & ((1 << (8 * size)) - 1) for v in seq])
        if len(chunk) == 1:
            continue
        var = f"{name}_{at}"
        out += [
            _value_list(var, chunk, size, op.path),
            STLVmWrFlowVar(fv_name=var, pkt_offset=op.offset + at),
        ]
    return out


def vm_instructions(program: FieldProgram) -> list[Any]:
    out: list[Any] = []
    if len(program.frame_sizes) > 1:
        sizes = shortest_period(list(program.frame_sizes))
        out += [
            _value_list("frame_size", sizes, 2, "the frame size"),
            STLVmTrimPktSize("frame_size"),
        ]
        out += [
            STLVmWrFlowVar(fv_name="frame_size", pkt_offset=lf.offset, add_val=-lf.base)
            for lf in program.length_fields
        ]
    for index, op in enumerate(program.ops):
        out += field_instructions(program, index, op)
    software = [
        f
        for f in program.checksums
        if f.kind not in _HW_L4 and f.kind is not ChecksumKind.IPV4_HEADER
    ]
    period = [program.packet(i) for i in range(program.period)] if software else []
    for index, fix in enumerate(program.checksums):
        if fix.kind is ChecksumKind.IPV4_HEADER:
            out.append(STLVmFixIpv4(offset=fix.ip_offset))
        elif fix.kind in _HW_L4:
            out.append(
                STLVmFixChecksumHw(
                    l3_offset=fix.ip_offset, l4_offset=fix.l4_offset, l4_type=_HW_L4[fix.kind]
                )
            )
        else:
            at = fix.csum_offset
            values = shortest_period([int.from_bytes(p[at : at + 2], "big") for p in period])
            if len(values) > 1:
                var = f"csum{index}"
                what = f"the {fix.kind.value} checksum at offset {at}"
                out += [
                    _value_list(var, values, 2, what),
                    STLVmWrFlowVar(fv_name=var, pkt_offset=at),
                ]
    return out


def _rate(pps: float | None) -> dict[str, float]:
    """No rate is flat out: 100% of the port's line rate (L1, as TRex counts it), or as near as
    TRex's cores get."""
    return {"pps": pps} if pps is not None else {"percentage": 100}


def _stream(**fields: Any) -> STLStream:
    return STLStream(
        mac_src_override_by_pkt=True, mac_dst_override_mode=STLStreamDstMAC_PKT, **fields
    )


def build_streams(program: FieldProgram, latency: dict[str, Any] | None) -> list[STLStream]:
    """The traffic stream, and a low-rate latency stream when ``latency`` is given."""
    base = program.render(program.schedule[0], max(program.frame_sizes))
    vm = vm_instructions(program)
    rate = _rate(program.rate_pps)
    if program.count is not None:
        mode = STLTXSingleBurst(total_pkts=program.count, **rate)
    else:
        mode = STLTXCont(**rate)
    builder = STLPktBuilder(pkt_buffer=base, vm=vm or None)
    streams = [_stream(name="traffic", packet=builder, mode=mode)]
    if latency is None:
        return streams
    lat_rate = {"pps": latency["rate_pps"]}
    if program.count is None:
        lat_mode = STLTXCont(**lat_rate)
    elif program.rate_pps is None:
        raise TranslationError("latency with a packet count needs rate_pps to size its burst")
    else:
        total = max(1, math.ceil(program.count * latency["rate_pps"] / program.rate_pps))
        lat_mode = STLTXSingleBurst(total_pkts=total, **lat_rate)
    streams.append(
        _stream(
            name="latency",
            packet=STLPktBuilder(pkt_buffer=program.packet(0)),
            mode=lat_mode,
            flow_stats=STLFlowLatencyStats(pg_id=latency["pg_id"]),
        )
    )
    return streams


class Session:
    """What one worker process holds between requests: at most one connected client."""

    def __init__(self) -> None:
        self.client: STLClient | None = None

    def connected(self) -> STLClient:
        if self.client is None:
            raise RuntimeError("no TRex server: send a connect request first")
        return self.client

    def connect(self, server: str) -> None:
        client = STLClient(server=server)
        client.connect()
        self.client = client

    def run(self, program: FieldProgram, request: dict[str, Any]) -> dict[str, Any]:
        """Send the program's streams from ``request["ports"]`` and read the counters back."""
        if program.count is None and program.duration is None:
            raise TranslationError("a TRex run needs count or duration, or it would never end")
        client, ports = self.connected(), request["ports"]
        streams = build_streams(program, request.get("latency"))
        client.reset(ports=ports)
        client.add_streams(streams, ports=ports)
        client.clear_stats()
        duration = program.duration if program.duration is not None else -1
        client.start(ports=ports, duration=duration, force=True)
        started = time.monotonic()
        # Timed here to the millisecond: wait_on_traffic polls every 10 ms, then sleeps out the
        # latency streams' RX delay before it removes their filters.
        while client.is_traffic_active(ports=ports):
            time.sleep(0.001)
        seconds = time.monotonic() - started
        client.wait_on_traffic(ports=ports)
        reply: dict[str, Any] = {"stats": client.get_stats(ports=ports), "seconds": seconds}
        if request.get("latency") is not None:
            reply["latency"] = client.get_pgid_stats([request["latency"]["pg_id"]])
        return reply

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request["action"]
        if action == "streams":
            program = FieldProgram.from_dict(request["program"])
            streams = build_streams(program, request.get("latency"))
            return {"streams": [s.to_json() for s in streams]}
        if action == "connect":
            self.connect(request["server"])
            return {"connected": request["server"]}
        if action == "ports":
            infos = self.connected().get_port_info(request["ports"])
            return {"ports": dict(zip(map(str, request["ports"]), infos, strict=True))}
        if action == "run":
            return self.run(FieldProgram.from_dict(request["program"]), request)
        if action == "stats":
            return {"stats": self.connected().get_stats(ports=request["ports"])}
        raise ValueError(
            f"unknown action {action!r}; expected streams, connect, ports, run or stats"
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()


def main() -> int:
    replies, sys.stdout = sys.stdout, sys.stderr  # the client prints; only replies go to stdout
    session = Session()
    try:
        for line in sys.stdin:
            try:
                reply = session.handle(json.loads(line))
            except Exception as e:  # every failure goes back to the caller as one JSON error
                reply = {"error": f"{type(e).__name__}: {e}"}
            replies.write(json.dumps(reply, default=str) + "\n")
            replies.flush()
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
