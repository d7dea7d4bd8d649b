"""The flow-metrics check of the demo (``harness run demo``): for the lead to call from
``harness/demo.py`` on ``two_host``, as ``Check("flow metrics ...", *check_flowmon(...))``.

Flowmon is attached natively at XDP on the dut's ens5 with a per-CPU hash, one period of a spec is
sent by the xdp injector, and every flow of the spec must hold exactly the packets and bytes the
model predicts, with nothing missed. Returns (passed, detail, figures) and builds nothing itself.
"""

from __future__ import annotations

import time

from bpf.attach import ifindex
from bpf.flowmon.flowmon import FlowMon
from bpf.flowmon.model import Config, Hook, Model, Storage
from injector.spec import TrafficSpec
from injector.xdp import PACED_BATCH, XdpSender

SETTLE_S = 3.0  # the dut's NAPI may still be counting when the sender returns


def check_flowmon(injector: str, dut: str, spec: TrafficSpec) -> tuple[bool, str, dict]:
    config = Config(storage=Storage.PERCPU_HASH)
    program = spec.resolve()
    model = Model(config)
    ens5 = ifindex("ens5", dut)
    for i in range(program.period):
        model.feed(program.packet(i), Hook.XDP, ens5)
    with FlowMon(config) as fm:
        fm.attach("ens5", [Hook.XDP], dut)
        with XdpSender(program, "veth0", injector) as sender:
            sender.send(count=program.period, batch=PACED_BATCH)
        deadline = time.monotonic() + SETTLE_S
        while True:
            ours = {f.key: (f.packets, f.bytes) for f in fm.flows() if f.key in model.flows}
            counted = sum(p for p, _ in ours.values())
            if counted >= program.period or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        misses = {k: v for k, v in fm.misses().items() if v}
    want = {k: (c.packets, c.bytes) for k, c in model.flows.items()}
    wrong = {str(k): (ours.get(k), w) for k, w in want.items() if ours.get(k) != w}
    passed = not wrong and not misses
    detail = f"{len(want)} flows, {program.period:,} packets counted at XDP in a per-CPU hash" + (
        "" if passed else f"\n(kernel, model) per flow that differs: {wrong}; misses {misses}"
    )
    figures = {"flows": len(want), "packets": counted, "misses": misses}
    return passed, detail, figures
