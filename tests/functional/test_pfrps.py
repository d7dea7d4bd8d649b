"""PF_PACKET RPS (``bpf/pfrps``) live on ``bng_l2``: the injector's eth0 sends PPPoE frames to the
bng's ens5, where N worker processes read them on their own AF_PACKET sockets.

- Each MAC always reaches the same worker, the model's, source or destination MAC, with a worker
  count that is not a power of two.
- With the seed's MAC generator and 25,000 frames over 8 workers, the kernel's per-worker counts
  (PACKET_STATISTICS) equal the model's, for each hash, in the filters and fanout-ebpf modes alike
  (so they agree on placement), and every frame is read once, whole (bytes = frames x 148).
- The kernel's own fanouts (hash, cpu) deliver every frame exactly once, whole.
- Workers read through their TPACKET_V3 rings (the default), every frame whole (the ring's
  ``tp_snaplen`` is its ``tp_len``); the recv path is tested where it differs, in the kill test.
- A worker killed with SIGKILL and restarted by ``supervise`` loses only its own frames, counted:
  they wait in its socket's ring or queue and it reads them on restart, or, past a small one, the
  kernel drops them and counts each one; the other workers read all of theirs meanwhile. A ring
  worker killed again and again mid-stream, at any point, counts every frame once.
- The ``pfrps`` and ``injector pppoe`` commands as a user runs them (``--netns``, or under
  ``ip netns exec``): the seed's line and --json carry the model's counts; SIGINT and SIGTERM stop
  cleanly; bad arguments are refused by name.

Every frame is sent once: a send the veth refuses (ENOBUFS: PLATFORM trap 11) was not delivered, so
it is sent again, and the counts stay exact on a loaded machine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bpf.pfrps import Config, HashAlg, MacSide, Mode, Node, Protocols, Rx
from bpf.pfrps.demo import SEED, accounted_for, check_pfrps, send_each_once
from bpf.pfrps.model import seed_frame, seed_line, seed_macs, spread, worker_of
from injector.cli import pppoe_frames
from injector.scapy_backend import PacketSocket

PFRPS = Path(sys.executable).with_name("pfrps")
INJECTOR = Path(sys.executable).with_name("injector")
BNG_MAC = bytes.fromhex("020000000402")  # topologies/bng_l2.yaml
FRAME_LEN = 148
SETTLE_S = 15.0


@pytest.fixture
def bng_l2(topology) -> tuple[str, str]:
    """``bng_l2`` up: the injector's and the bng's namespaces."""
    topo = topology("bng_l2")
    return topo.node("injector").netns, topo.node("bng").netns


def send_all(frames, injector: str) -> int:
    return send_each_once(frames, "eth0", injector)


def settle(node: Node, expected: int) -> list:
    return accounted_for(node, expected, SETTLE_S)


def dead(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def assert_whole_and_once(counts, sent: int) -> None:
    steered = sum(c.steered for c in counts)
    assert steered == sent, f"the kernel gave the sockets {steered:,} frames of {sent:,} sent"
    for i, c in enumerate(counts):
        assert c.frames + c.dropped == c.steered, f"worker {i}: {c}"
        assert c.bytes == c.frames * FRAME_LEN and c.cut == 0, f"worker {i} read cut frames: {c}"


@pytest.mark.parametrize("side", list(MacSide), ids=lambda s: s.value)
@pytest.mark.parametrize("mode", [Mode.FILTERS, Mode.FANOUT_EBPF], ids=lambda m: m.value)
def test_each_mac_always_reaches_the_models_worker(bng_l2, mode, side):
    injector, bng = bng_l2
    workers, alg = 5, HashAlg.MAC_JHASH  # 5: the seed's `& (max_id - 1)` would starve workers
    macs = list(seed_macs(40, SEED))
    config = Config("ens5", workers=workers, hash=alg, mode=mode, mac=side, netns=bng)
    with Node(config) as node, PacketSocket("eth0", injector) as out:
        node.start()
        seen: dict[bytes, set[int]] = {mac: set() for mac in macs}
        for _ in range(3):
            for mac in macs:
                before = [c.frames for c in node.counts()]
                frame = (
                    seed_frame(mac, BNG_MAC) if side is MacSide.SRC else seed_frame(bytes(6), mac)
                )
                while not out.send(frame):
                    time.sleep(0.0005)
                deadline = time.monotonic() + SETTLE_S
                while (after := [c.frames for c in node.counts()]) == before:
                    assert time.monotonic() < deadline, f"{mac.hex(':')}: no worker read it"
                    time.sleep(0.002)
                seen[mac].update(i for i in range(workers) if after[i] != before[i])
        counts = node.counts()
    wrong = {
        m.hex(":"): (sorted(w), worker_of(m, workers, alg))
        for m, w in seen.items()
        if w != {worker_of(m, workers, alg)}
    }
    assert not wrong, f"MAC: (workers that read it, the model's) {wrong}"
    assert_whole_and_once(counts, 3 * len(macs))
    assert len({worker_of(m, workers, alg) for m in macs}) == workers, "every worker was tested"


@pytest.mark.parametrize("alg", list(HashAlg), ids=lambda a: a.name.lower())
def test_seed_frames_over_8_workers_counted_as_the_model(bng_l2, alg):
    """The seed's run (25,000 frames of its generator over 8 workers), in both modes that steer by
    MAC: each worker's kernel count is the model's, so the filters and the fanout agree."""
    injector, bng = bng_l2
    frames = list(pppoe_frames(BNG_MAC, 25_000, SEED, "discovery"))
    model = spread(seed_macs(25_000, SEED), 8, alg)
    by_mode = {}
    for mode in (Mode.FILTERS, Mode.FANOUT_EBPF):
        with Node(Config("ens5", workers=8, hash=alg, mode=mode, netns=bng)) as node:
            node.start()
            sent = send_all(frames, injector)
            counts = settle(node, sent)
            node.stop()
            counts = node.counts()
        assert_whole_and_once(counts, sent)
        by_mode[mode] = [c.steered for c in counts]
        assert by_mode[mode] == model, (
            f"{mode.value}: kernel {seed_line(by_mode[mode])}\n model {seed_line(model)}"
        )
        assert sum(c.frames for c in counts) + sum(c.dropped for c in counts) == sent
    print(f"{alg.name.lower()}: {seed_line(model)}")


@pytest.mark.parametrize("mode", [Mode.FANOUT_HASH, Mode.FANOUT_CPU], ids=lambda m: m.value)
@pytest.mark.parametrize("protocols", [Protocols.DISCOVERY, Protocols.BOTH], ids=["disc", "both"])
def test_kernel_fanouts_deliver_every_frame_once(bng_l2, mode, protocols):
    injector, bng = bng_l2
    kind = "discovery" if protocols is Protocols.DISCOVERY else "both"
    frames = list(pppoe_frames(BNG_MAC, 5000, SEED, kind))
    config = Config("ens5", workers=4, mode=mode, protocols=protocols, netns=bng)
    with Node(config) as node:
        node.start()
        sent = send_all(frames, injector)
        settle(node, sent)
        node.stop()
        counts = node.counts()
    assert_whole_and_once(counts, sent)
    assert sum(c.frames + c.dropped for c in counts) == sent


def paced(frames, gap: float):
    """``frames`` one every ``gap`` seconds at most (the sleeps' granularity makes it slower)."""
    for frame in frames:
        yield frame
        time.sleep(gap)


def wait_for_reads(node: Node, want: dict[int, int]) -> list:
    """The counts once worker i has read ``want[i]`` frames, for each i given."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        counts = node.counts()
        if all(counts[i].frames >= n for i, n in want.items()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


# kept: the dead worker's ring or queue (4 MiB) holds its frames until the restart reads them;
# overflowed: 96 KiB drops most of them, and the kernel counts every one. The second batch is paced
# in that case, so that the live workers' small rings or queues never fill.
QUEUES = {"kept": (4 << 20, 0.0), "overflowed": (96 << 10, 0.00005)}


@pytest.mark.parametrize("rx", list(Rx), ids=lambda r: r.value)
@pytest.mark.parametrize("queue", list(QUEUES))
def test_killed_worker_loses_only_its_own_frames_counted(bng_l2, queue, rx):
    injector, bng = bng_l2
    queue_bytes, gap = QUEUES[queue]
    workers, alg, victim = 4, HashAlg.JHASH_OAAT, 2
    macs = list(seed_macs(8000, SEED))
    first, second = macs[:4000], macs[4000:]
    config = Config("ens5", workers=workers, hash=alg, netns=bng, queue_bytes=queue_bytes, rx=rx)
    with Node(config) as node:
        node.start()
        settle(node, send_all(paced((seed_frame(m, BNG_MAC) for m in first), gap), injector))
        before = node.counts()
        assert [c.frames for c in before] == spread(first, workers, alg)
        # Killed while it waits for a frame: no frame is between the queue and its counter.
        pid = node.pids[victim]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + SETTLE_S
        while not dead(pid):
            assert time.monotonic() < deadline, f"worker {victim} (pid {pid}) did not die"
            time.sleep(0.01)
        send_all(paced((seed_frame(m, BNG_MAC) for m in second), gap), injector)
        expected = spread(second, workers, alg)
        others = {i: before[i].frames + expected[i] for i in range(workers) if i != victim}
        away = wait_for_reads(node, others)  # the live workers read theirs meanwhile
        for i in range(workers):
            read = away[i].frames - before[i].frames
            assert read == (0 if i == victim else expected[i]), f"worker {i} while {victim} died"
        assert node.supervise() == [victim]
        settle(node, len(macs))
        node.stop()
        counts = node.counts()
    total = spread(macs, workers, alg)
    assert [c.steered for c in counts] == total, "the kernel steered as the model, kill or not"
    for i, c in enumerate(counts):
        if i != victim:
            assert c.dropped == 0 and c.frames == total[i], f"worker {i} lost frames: {c}"
    lost = counts[victim].dropped
    assert counts[victim].frames + lost == total[victim], counts[victim]
    assert (lost > 0) == (queue == "overflowed"), f"{queue}: {lost} of {expected[victim]} dropped"
    assert counts[victim].bytes == counts[victim].frames * FRAME_LEN
    assert node.restarts == [0, 0, 1, 0]
    print(f"{rx.value} {queue}: worker {victim} away for {expected[victim]} frames, {lost} dropped")


def test_ring_worker_killed_mid_stream_counts_every_frame_once(bng_l2):
    """SIGKILL at random moments while frames stream in, a restart after each: a ring worker
    commits a block's counts before it hands the block back, so whatever it was doing, every frame
    the kernel gave its socket is read once or dropped (counted) while it was away."""
    injector, bng = bng_l2
    workers, alg, victim = 4, HashAlg.MAC_JHASH, 1
    macs = list(seed_macs(60_000, SEED))
    config = Config("ens5", workers=workers, hash=alg, netns=bng, rx=Rx.RING)
    done, kills = threading.Event(), []
    chance = random.Random(SEED)

    def kill_again_and_again(node: Node) -> None:
        # soon after a restart: the new worker is often still reading the blocks left to it
        while not done.wait(chance.uniform(0.002, 0.02)):
            pid = node.pids[victim]
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + SETTLE_S
            while not dead(pid) and time.monotonic() < deadline:
                time.sleep(0.001)
            node.supervise()
            kills.append(pid)

    with Node(config) as node:
        node.start()
        killer = threading.Thread(target=kill_again_and_again, args=(node,))
        killer.start()
        try:
            sent = send_all((seed_frame(m, BNG_MAC) for m in macs), injector)
        finally:
            done.set()
            killer.join()
        settle(node, sent)
        node.stop()
        counts = node.counts()
    total = spread(macs, workers, alg)
    assert [c.steered for c in counts] == total, "the kernel steered as the model"
    assert_whole_and_once(counts, sent)
    for i, c in enumerate(counts):
        if i != victim:
            assert c.dropped == 0 and c.frames == total[i], f"worker {i} lost frames: {c}"
    assert node.restarts[victim] == len(kills) >= 10, f"{len(kills)} kills"
    print(
        f"worker {victim} killed {len(kills)} times: read {counts[victim].frames:,}, "
        f"dropped {counts[victim].dropped:,} of {total[victim]:,}"
    )


def test_demo_check_passes_on_bng_l2(bng_l2):
    passed, detail, figures = check_pfrps(*bng_l2)
    assert passed, detail
    model = spread(seed_macs(25_000, SEED), 8, HashAlg.MAC_HASH)
    assert figures["model"] == model
    for mode in ("filters", "fanout-ebpf"):
        assert figures[mode]["steered"] == figures[mode]["read"] == model, figures[mode]
    print(detail)


# --- the commands ---


class Running:
    """A command run in the background, its output in files."""

    def __init__(self, args: list[str], directory: Path) -> None:
        self.out, self.err = directory / "stdout", directory / "stderr"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err)

    def wait_for(self, test, timeout: float = SETTLE_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.out.read_text().splitlines() if test(line)]
            if found:
                return found[-1]
            assert self.proc.poll() is None, self.err.read_text()
            time.sleep(0.05)
        raise AssertionError(f"no such line in {timeout} s:\n{self.out.read_text()}")

    def stop(self, sig: signal.Signals) -> tuple[str, str]:
        self.proc.send_signal(sig)
        assert self.proc.wait(timeout=15) == 0, self.err.read_text()
        return self.out.read_text(), self.err.read_text()


def inject(injector: str, count: int, seed: int, *extra: str) -> dict:
    args = ["pppoe", "-i", "eth0", "--netns", injector, "-d", BNG_MAC.hex(":"), "-p", str(count)]
    done = subprocess.run(
        [str(INJECTOR), *args, "--seed", str(seed), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("inside", [False, True], ids=["--netns", "ip-netns-exec"])
def test_commands_json_the_models_counts(bng_l2, tmp_path, inside):
    injector, bng = bng_l2
    where = ["ip", "netns", "exec", bng, str(PFRPS)] if inside else [str(PFRPS), "--netns", bng]
    args = [*where, "-i", "ens5", "-w", "6", "-a", "1", "--mode"]
    running = Running([*args, "fanout-ebpf", "--proto", "both", "--json"], tmp_path)
    running.wait_for(lambda line: line.startswith("{"))  # the workers are up
    result = inject(injector, 3000, 11, "--kind", "both", "--gap-us", "0")
    refused = sum(result["refused"].values())
    line = running.wait_for(lambda line: json.loads(line)["total"] >= result["packets"] - refused)
    out, err = running.stop(signal.SIGTERM)
    last = json.loads(out.splitlines()[-1])
    got = [w["steered"] for w in last["workers"]]
    if not refused:  # a refused frame is one of the generator's MACs missing
        assert got == spread(seed_macs(3000, 11), 6, HashAlg.MAC_JHASH), line
    assert sum(got) == result["packets"] == last["total"]
    assert all(
        w["bytes"] == w["frames"] * FRAME_LEN and w["cut"] == 0 and w["restarts"] == 0
        for w in last["workers"]
    )
    assert "stopped" in err


def test_commands_print_the_seeds_line(bng_l2, tmp_path):
    injector, bng = bng_l2
    running = Running([str(PFRPS), "-i", "ens5", "--netns", bng, "-w", "8", "-a", "0"], tmp_path)
    running.wait_for(lambda line: line.startswith("#0:0000 #1:0000"))
    result = inject(injector, 25_000, SEED)  # the seed's pace: 20 us apart
    if result["refused"]:
        pytest.skip(f"the veth refused {result['refused']} of the seed's paced frames")
    model = spread(seed_macs(25_000, SEED), 8, HashAlg.MAC_HASH)
    running.wait_for(lambda line: line == seed_line(model))
    out, _ = running.stop(signal.SIGINT)
    assert out.splitlines()[-1] == seed_line(model)
    print(out.splitlines()[-1])


def test_command_pins_workers_to_the_cpus_asked(bng_l2, tmp_path):
    _, bng = bng_l2
    cpus = sorted(os.sched_getaffinity(0))
    asked = [cpus[-1], cpus[0]]  # worker 0 on the last CPU, worker 1 on the first, 2 on the last
    running = Running(
        [str(PFRPS), "-i", "ens5", "--netns", bng, "-w", "3", "--cpus", f"{asked[0]},{asked[1]}"],
        tmp_path,
    )
    running.wait_for(lambda line: line.startswith("#0:0000"))
    pids = [int(p) for p in running.err.read_text().split("pids ")[1].split()[:3]]
    pinned = [os.sched_getaffinity(pid) for pid in pids]
    running.stop(signal.SIGINT)
    assert pinned == [{asked[0]}, {asked[1]}, {asked[0]}]


@pytest.mark.parametrize(
    "args, named",
    [
        (["-w", "0"], "-w/--workers"),
        (["-w", "257"], "-w/--workers"),
        (["-a", "3"], "-a/--hash-alg"),
        (["--mode", "xdp"], "--mode"),
        (["--rx", "mmap"], "--rx"),
        (["--cpus", "99"], "--cpus"),
        (["--cpus", "a"], "--cpus"),
        (["-s", "0"], "-s/--stats-interval"),
        (["-i", "nosuch0"], "-i/--interface"),
        (["--netns", "bl-nosuch"], "--netns"),
    ],
)
def test_bad_arguments_refused_by_name(bng_l2, args, named):
    _, bng = bng_l2
    base = ["-i", "ens5"] if "-i" not in args else []
    netns = ["--netns", bng] if "--netns" not in args else []
    done = subprocess.run(
        [str(PFRPS), *base, *netns, *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr, done.stderr
