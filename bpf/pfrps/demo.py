"""The PF_PACKET RPS check of the demo (``harness run demo``): for the lead to call from
``harness/demo.py`` on ``bng_l2``, as ``Check("PF_PACKET RPS ...", *check_pfrps(injector, bng))``.

The seed's run: its injector's frames (25,000 by default, its generator with a fixed seed) from the
injector's eth0 to the bng's ens5, where 8 workers read them, once through the seed's design (one
filter per socket) and once through one PACKET_FANOUT_EBPF group. Each worker's count in the kernel
must be the model's in both, and every frame read whole. Returns (passed, detail, figures) and
builds nothing itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from bpf.pfrps.model import HashAlg, seed_frame, seed_line, seed_macs, spread, std_dev
from bpf.pfrps.pfrps import Config, Mode, Node, WorkerCount
from injector.scapy_backend import PacketSocket

SEED = 1_733_184_000  # rand_r's seed: the seed's injector used time(NULL)
SETTLE_S = 15.0  # how long the workers may take to read the last frames
FRAME_LEN = 148


def send_each_once(frames: Iterable[bytes], ifname: str, netns: str | None) -> int:
    """Send every frame once; one the loaded veth refuses (ENOBUFS) was not delivered: it is sent
    again after a pause. Returns the frames sent."""
    sent = 0
    with PacketSocket(ifname, netns) as out:
        for frame in frames:
            while not out.send(frame):
                time.sleep(0.0005)
            sent += 1
    return sent


def accounted_for(node: Node, expected: int, timeout: float = SETTLE_S) -> list[WorkerCount]:
    """The node's counts once ``expected`` frames are read or dropped, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        counts = node.counts()
        if sum(c.frames + c.dropped for c in counts) >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def check_pfrps(
    injector: str,
    bng: str,
    frames: int = 25_000,
    workers: int = 8,
    alg: HashAlg = HashAlg.MAC_HASH,
    dest_mac: bytes = bytes.fromhex("020000000402"),
) -> tuple[bool, str, dict]:
    macs = list(seed_macs(frames, SEED))
    model = spread(macs, workers, alg)
    wire = [seed_frame(mac, dest_mac) for mac in macs]
    wrong, figures = [], {"model": model, "model_std_dev": std_dev(model)}
    for mode in (Mode.FILTERS, Mode.FANOUT_EBPF):
        with Node(Config("ens5", workers=workers, hash=alg, mode=mode, netns=bng)) as node:
            node.start()
            started = time.monotonic()
            sent = send_each_once(wire, "eth0", injector)
            accounted_for(node, sent)
            seconds = time.monotonic() - started
            node.stop()
            counts = node.counts()
        steered = [c.steered for c in counts]
        read = [c.frames for c in counts]
        cut = [i for i, c in enumerate(counts) if c.bytes != c.frames * FRAME_LEN]
        if steered != model or read != model or cut:
            wrong.append(
                f"{mode.value}: kernel {seed_line(steered)}; read {seed_line(read)}"
                + (f"; workers {cut} read cut frames" if cut else "")
            )
        figures[mode.value] = {
            "steered": steered,
            "read": read,
            "dropped": sum(c.dropped for c in counts),
            "seconds": round(seconds, 3),
        }
    passed = not wrong
    detail = (
        f"{frames:,} seed frames over {workers} workers by {alg.name.lower()}, filters and "
        f"fanout-ebpf: each worker's count is the model's ({seed_line(model)})"
    )
    if wrong:
        detail += "\n" + "\n".join(wrong)
    return passed, detail, figures
