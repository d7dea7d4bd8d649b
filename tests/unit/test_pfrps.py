"""PF_PACKET RPS (``bpf/pfrps``) in the kernel through BPF_PROG_TEST_RUN, held to its Python model,
and the model held to the seed (its glibc generator, its printed lines).

- Each hash is bit-exact: the kernel's hash modulo 2^31 - 1 and modulo 2^16 (coprime, product above
  2^32) equal the model's, on hypothesis-drawn MACs, source and destination.
- Of N filters (any N, not only powers of two) exactly the model's worker accepts a frame, whole;
  the fanout program names the same worker.
- Discovery, session or both: only the configured PPPoE ethertypes pass.
- The model prints the seed's lines from the seed's counts, ``SeedRandom`` is glibc's ``rand_r``,
  and the seed's spreads are ordinary draws of an even spread (chi-square, 7 degrees of freedom).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpf import BpfObject
from bpf.pfrps import HashAlg, MacSide, Protocols
from bpf.pfrps.cli import cpus_arg, report
from bpf.pfrps.model import (
    SeedRandom,
    chi_square,
    frame_mac,
    seed_line,
    seed_macs,
    seed_worker_of,
    spread,
    std_dev,
    worker_of,
)
from bpf.pfrps.pfrps import SOURCE, WorkerCount

NODE_MAC = bytes.fromhex("020000000402")
MODULI = (2**31 - 1, 2**16)  # the fanout program returns an int: hash % 2^31-1 stays positive
# 1st and 99th percentiles of chi-square with 7 degrees of freedom (8 workers)
CHI2_7_P01, CHI2_7_P99 = 1.239, 18.475


def pppoe_frame(src: bytes, dst: bytes = NODE_MAC, ethertype: int = 0x8863) -> bytes:
    """The seed's frame: ver/type 0x11, code 0, session 0xcafe, length 128, 128 bytes of 0xff."""
    header = bytes([0x11, 0x00, 0xCA, 0xFE, 0x00, 0x80])
    return dst + src + ethertype.to_bytes(2, "big") + header + b"\xff" * 128


def load(
    workers: int,
    worker_id: int = 0,
    alg: HashAlg = HashAlg.MAC_HASH,
    side: MacSide = MacSide.SRC,
    protocols: Protocols = Protocols.BOTH,
) -> BpfObject:
    obj = BpfObject.open(SOURCE)
    obj.rodata["n_workers"] = workers
    obj.rodata["worker_id"] = worker_id
    obj.rodata["hash_alg"] = obj.enum("pfrps_hash")[f"PFRPS_{alg.name}"]
    obj.rodata["mac_side"] = obj.enum("pfrps_mac")[f"PFRPS_MAC_{side.name}"]
    obj.rodata["protocols"] = protocols.value
    return obj.load()


@pytest.fixture(scope="module")
def residues():
    """(alg, side, modulus) -> a loaded object whose fanout program returns hash % modulus."""
    objects = {
        (alg, side, m): load(m, alg=alg, side=side)
        for alg in HashAlg
        for side in MacSide
        for m in MODULI
    }
    yield objects
    for obj in objects.values():
        obj.close()


def test_python_enums_are_the_programs():
    with BpfObject.open(SOURCE) as obj:
        assert obj.enum("pfrps_hash") == {f"PFRPS_{a.name}": a.value for a in HashAlg}
        assert obj.enum("pfrps_proto") == {
            "PFRPS_PROTO_DISCOVERY": Protocols.DISCOVERY.value,
            "PFRPS_PROTO_SESSION": Protocols.SESSION.value,
        }


@pytest.mark.parametrize("side", list(MacSide))
@pytest.mark.parametrize("alg", list(HashAlg))
@settings(max_examples=150, deadline=None)
@given(src=st.binary(min_size=6, max_size=6), dst=st.binary(min_size=6, max_size=6))
def test_hash_is_bit_exact(residues, alg, side, src, dst):
    frame = pppoe_frame(src, dst)
    mac = frame_mac(frame, side)
    for modulus in MODULI:
        program = residues[alg, side, modulus].programs["pfrps_fanout"]
        got = program.test_run(frame).verdict
        assert got == worker_of(mac, modulus, alg), f"{alg.name} of {mac.hex(':')} mod {modulus}"


# Every byte at 0x00, 0xff, or one high bit alone: a hash that reads a byte as signed, or a word
# short, gives another worker for some of these.
MAC_ENDS = [
    bytes(6),
    b"\xff" * 6,
    b"\x80" + bytes(5),
    bytes(5) + b"\x80",
    b"\x7f" + b"\xff" * 5,
    b"\xff" * 5 + b"\x7f",
    bytes(2) + b"\x80" + bytes(3),
    b"\xff\xff" + bytes(4),
]


@pytest.mark.parametrize("side", list(MacSide))
@pytest.mark.parametrize("alg", list(HashAlg))
def test_macs_at_the_ends_of_their_range(residues, alg, side):
    for src in MAC_ENDS:
        for dst in MAC_ENDS:
            for ethertype in (0x8863, 0x8864):
                frame = pppoe_frame(src, dst, ethertype)
                mac = frame_mac(frame, side)
                for modulus in MODULI:
                    program = residues[alg, side, modulus].programs["pfrps_fanout"]
                    got = program.test_run(frame).verdict
                    assert got == worker_of(mac, modulus, alg), (
                        f"{alg.name} of {mac.hex(':')} ({ethertype:#06x}) mod {modulus}"
                    )


@pytest.mark.parametrize("workers", [1, 3, 6, 8, 16])
@pytest.mark.parametrize("alg", list(HashAlg))
def test_exactly_the_models_worker_accepts_whole(alg, workers):
    macs = list(seed_macs(64, seed=workers))
    objects = [load(workers, i, alg) for i in range(workers)]
    try:
        for mac in macs:
            frame = pppoe_frame(mac)
            verdicts = [o.programs["pfrps_filter"].test_run(frame).verdict for o in objects]
            expected = worker_of(mac, workers, alg)
            # test_run's skb starts at the network header: whole is the frame less its 14 bytes
            assert verdicts == [len(frame) - 14 if i == expected else 0 for i in range(workers)]
            fanout = objects[0].programs["pfrps_fanout"].test_run(frame).verdict
            assert fanout == expected, f"fanout and filters disagree on {mac.hex(':')}"
    finally:
        for obj in objects:
            obj.close()


@pytest.mark.parametrize("protocols", [Protocols.DISCOVERY, Protocols.SESSION, Protocols.BOTH])
def test_only_the_configured_pppoe_kinds_pass(protocols):
    with load(1, protocols=protocols) as obj:
        for ethertype, kind in [(0x8863, Protocols.DISCOVERY), (0x8864, Protocols.SESSION)]:
            frame = pppoe_frame(bytes(6), ethertype=ethertype)
            expected = len(frame) - 14 if kind in protocols else 0
            for name in ("pfrps_filter", "pfrps_accept"):
                got = obj.programs[name].test_run(frame).verdict
                assert got == expected, f"{name} with {protocols} on {ethertype:#06x}"
        ipv4 = pppoe_frame(bytes(6), ethertype=0x0800)
        assert obj.programs["pfrps_accept"].test_run(ipv4).verdict == 0


def test_seed_lines_from_the_seeds_counts():
    # The seed's README and the comments of its bpf_rps.c, as printed.
    printed = [
        "#0:0232 #1:0237 #2:0262 #3:0246 #4:0230 #5:0233 #6:0236 #7:0246 (total:1922 std_dev:9.959292)",
        "#0:1989 #1:1952 #2:1961 #3:1977 #4:1956 #5:1938 #6:1968 #7:1962 (total:15703 std_dev:14.563975)",
        "#0:3165 #1:3155 #2:3061 #3:3157 #4:3123 #5:3109 #6:3116 #7:3114 (total:25000 std_dev:31.784430)",
        "#0:3097 #1:3215 #2:3258 #3:3091 #4:3132 #5:3103 #6:3063 #7:3041 (total:25000 std_dev:69.966063)",
        "#0:3178 #1:3078 #2:3144 #3:3123 #4:3068 #5:3055 #6:3118 #7:3236 (total:25000 std_dev:56.901230)",
        "#0:3155 #1:3119 #2:3142 #3:3110 #4:3108 #5:3098 #6:3177 #7:3091 (total:25000 std_dev:28.124722)",
    ]
    for line in printed:
        counts = [int(field.split(":")[1]) for field in line.split(" (")[0].split()]
        assert seed_line(counts) == line


def test_seed_random_is_glibc_rand_r():
    libc = ctypes.CDLL(None)
    state = ctypes.c_uint(1_733_000_000)
    ours = SeedRandom(1_733_000_000)
    for _ in range(5000):
        assert ours.rand_r() == libc.rand_r(ctypes.byref(state))


def test_seed_mask_starves_workers_of_a_count_not_a_power_of_two():
    macs = list(seed_macs(2000, seed=7))
    masked = spread(macs, 6, HashAlg.JHASH_OAAT, seed_worker_of)
    assert masked[2] == masked[3] == 0, f"hash & 5 never gives 2 or 3: {masked}"
    assert min(spread(macs, 6, HashAlg.JHASH_OAAT)) > 0


SEED_STD_DEVS = {
    HashAlg.MAC_HASH: 28.124722,
    HashAlg.MAC_JHASH: 56.901230,
    HashAlg.JHASH_OAAT: 69.966063,
}


def test_seed_spreads_are_draws_of_an_even_spread():
    """The seed ranks its hashes by one run each (its injector seeds rand_r with time(NULL)). Its
    generator through its ``& 7`` gives every hash a chi-square whose mean is the even spread's (7
    degrees of freedom): the three figures are draws of the same law, none a property of its hash."""
    for alg, figure in SEED_STD_DEVS.items():
        statistic = 8 * figure**2 / 3125  # sum((c - mean)^2 / mean) for 25,000 over 8
        assert CHI2_7_P01 < statistic < CHI2_7_P99, f"{alg.name}: the seed's {figure}"
    runs = 12
    statistics_ = {alg: [] for alg in HashAlg}
    for seed in range(1_704_067_200, 1_704_067_200 + runs):  # time(NULL) on 2024-01-01
        macs = list(seed_macs(25_000, seed))  # the generator is the slow part: once per seed
        for alg in HashAlg:
            counts = spread(macs, 8, alg, seed_worker_of)
            assert counts == spread(macs, 8, alg), "& 7 is % 8"
            assert abs(chi_square(counts) - 8 * std_dev(counts) ** 2 / 3125) < 1e-9
            statistics_[alg].append(chi_square(counts))
    for alg, drawn in statistics_.items():
        # mean 7, standard deviation sqrt(14)/sqrt(runs) ~ 1.1: 4 of them either side
        assert abs(statistics.mean(drawn) - 7) < 4 * (14 / runs) ** 0.5, alg.name


def test_command_prints_the_seeds_line_and_json():
    counts = [
        WorkerCount(n, n * 148, n + d, d, c) for n, d, c in [(232, 0, 0), (237, 1, 2), (262, 0, 0)]
    ]
    assert report(counts, [0, 1, 0], as_json=False) == seed_line([232, 237, 262])
    line = json.loads(report(counts, [0, 1, 0], as_json=True))
    assert line["total"] == 731 and line["std_dev"] == std_dev([232, 237, 262])
    assert line["workers"][1] == {
        "frames": 237,
        "bytes": 237 * 148,
        "cut": 2,
        "steered": 238,
        "dropped": 1,
        "restarts": 1,
    }


@pytest.mark.parametrize(
    "text, cpus", [("0", (0,)), ("1,0", (1, 0)), ("0-3,6", (0, 1, 2, 3, 6)), ("2-2", (2,))]
)
def test_cpus_are_lists_and_ranges(text, cpus):
    assert cpus_arg(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "0,,1", "3-1"])
def test_cpus_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cpus_arg(text)
