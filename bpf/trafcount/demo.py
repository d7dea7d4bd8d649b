"""The traffic-counter check of the demo (``harness run demo``): for the lead to call from
``harness/demo.py`` on ``two_host``, as ``Check("traffic counter ...", *check_trafcount(...))``.

The traffic counter is attached natively at XDP on the dut's ens5 (keyed on the source, IP bytes,
as the seed), one period of a spec is sent by the xdp injector, and every address of the spec must
hold exactly the packets and bytes the model predicts, with nothing evicted or lost. The table is
sized to hold the spec's addresses twice over. Returns (passed, detail, figures) and builds nothing.
"""

from __future__ import annotations

import time

from bpf.trafcount.model import Config, Hook, Model
from bpf.trafcount.trafcount import TrafCount
from injector.spec import TrafficSpec
from injector.xdp import PACED_BATCH, XdpSender

SETTLE_S = 3.0  # the dut's NAPI may still be counting when the sender returns


def check_trafcount(injector: str, dut: str, spec: TrafficSpec) -> tuple[bool, str, dict]:
    program = spec.resolve()
    model = Model(Config())  # what it counts does not depend on the table's size
    for i in range(program.period):
        model.feed(program.packet(i), Hook.XDP)
    want = model.table()
    config = Config(entries=max(2 * len(want), 64))
    with TrafCount(config) as tc:
        tc.attach("ens5", Hook.XDP, dut)
        with XdpSender(program, "veth0", injector) as sender:
            sender.send(count=program.period, batch=PACED_BATCH)
        deadline = time.monotonic() + SETTLE_S
        while True:
            ours = {k: v for k, v in tc.counts().items() if k in want}
            counted = sum(p for p, _ in ours.values())
            if counted >= program.period or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        totals = tc.totals()
    wrong = {str(k): (ours.get(k), w) for k, w in want.items() if ours.get(k) != w}
    lost = totals.entry_gone + totals.no_room
    passed = not wrong and not totals.evicted and not lost
    addresses = len({(k.version, k.packed) for k in want})
    detail = f"{addresses} addresses, {program.period:,} packets counted at XDP by source" + (
        ""
        if passed
        else f"\n(kernel, model) per address that differs: {wrong}; evicted {totals.evicted}, "
        f"lost {lost}"
    )
    figures = {"addresses": addresses, "packets": counted, "evicted": totals.evicted, "lost": lost}
    return passed, detail, figures
