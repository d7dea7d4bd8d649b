"""The traffic counter's time series (``bpf.trafcount.series``): the C reader (``series.c``) held to
its Python specification, ``bpf.trafcount.model.SeriesModel``.

The tables are written from user space (any counts, IPv4 and IPv6 keys, keys gone and back, counts
that go down as after an eviction, counts past a u32), read once by ``TrafCount.snapshot`` (the
model's input) and then by the reader: every bin must be the model's, delta for delta and in the
same order, and what the bins add up to the model's; the reader's output, written through buffers of
several sizes (down to one piece, so that a bin spans many), must be the model's bytes in both
formats. The grid (``run``): the bins of a run add up to the counts of frames sent meanwhile, a stop
ends a sleep at once, a stop before the run still makes a last bin.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from bpf.trafcount import Config, Hook, TrafCount, TrafKey
from bpf.trafcount.model import (
    Bin,
    SeriesModel,
    binary_bin,
    binary_file_header,
    json_line,
)
from bpf.trafcount.series import PIECE, Format, Sampler, parse_json_line, read_binary

# Of each table: eight times what any test writes. The LRU evicts before it is full (each CPU keeps
# free entries of its own), and a test's table must hold exactly what it wrote.
ENTRIES = 4096
HZ = 1000
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
Table = dict[bytes, tuple[int, int]]  # raw key -> (packets, bytes)


def raw_key(address: str, proto: int) -> bytes:
    """struct traf_key4 or traf_key6: the address in network order, the protocol, 3 pad bytes."""
    return ipaddress.ip_address(address).packed + bytes([proto, 0, 0, 0])


def write_tables(tc: TrafCount, table: Table) -> None:
    """Make the tables hold exactly ``table``."""
    for name in ("addrs4", "addrs6"):
        tc.obj.maps[name].clear()
    for name, size in (("addrs4", 8), ("addrs6", 20)):
        pairs = [(k, struct.pack("=QQ", *v)) for k, v in table.items() if len(k) == size]
        tc.obj.maps[name].update_batch(pairs)


@pytest.fixture(scope="module")
def tc():
    with TrafCount(Config(entries=ENTRIES)) as tc:
        yield tc


class Outputs:
    """One reader of each kind on the same tables: deltas only, JSON lines and binary, each to a
    file through a buffer of ``buffer_size`` bytes."""

    def __init__(self, tc: TrafCount, directory: Path, buffer_size: int) -> None:
        self.files = {form: (directory / f"series.{form.name}").open("wb") for form in Format}
        self.samplers = [Sampler(tc, HZ)] + [
            Sampler(tc, HZ, f.fileno(), form, buffer_size) for form, f in self.files.items()
        ]
        self.bins: list[list[Bin]] = [[] for _ in self.samplers]

    def sample(self, model: SeriesModel, table: Table) -> None:
        """One read by each reader of what ``table`` (read just before) holds, checked against the
        model."""
        want = model.read(table, 0)
        for sampler, kept in zip(self.samplers, self.bins, strict=True):
            got = sampler.sample()
            assert got == Bin(want.index, got.t_ns, want.deltas), (
                f"bin {want.index}: reader (got) and model (want) differ; table {table}"
            )
            kept.append(got)

    def check(self, model: SeriesModel) -> None:
        for sampler in self.samplers:
            assert sampler.summed() == model.summed(), "what the bins add up to"
        written = {form: Path(f.name).read_bytes() for form, f in self.files.items()}
        json_bins, binary_bins = self.bins[1 + list(Format).index(Format.JSON)], self.bins[-1]
        assert written[Format.JSON].decode() == "".join(json_line(b) for b in json_bins)
        assert written[Format.BINARY] == binary_file_header(HZ) + b"".join(
            binary_bin(b) for b in binary_bins
        )

    def close(self) -> None:
        for sampler in self.samplers:
            sampler.close()
        for f in self.files.values():
            f.close()


def run_sequence(tc: TrafCount, tmp: Path, tables: list[Table], buffer_size: int) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    model, outputs = SeriesModel(), Outputs(tc, tmp, buffer_size)
    try:
        for table in tables:
            write_tables(tc, table)
            read = tc.snapshot()
            assert read == table, "the tables hold what was written"
            outputs.sample(model, read)
        outputs.check(model)
    finally:
        outputs.close()


# --- hypothesis: random tables, read after read --------------------------------------------------

GROUP = st.sampled_from([0, 0, 0, 0, 1, 0xFFFF, 0x2001, 0xDB8]) | st.integers(0, 0xFFFF)
IPV6 = st.lists(GROUP, min_size=8, max_size=8).map(
    lambda groups: str(ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in groups)))
)
IPV4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
KEYS = st.lists(
    st.builds(raw_key, IPV4 | IPV6, st.sampled_from([1, 6, 17, 58, 255]) | st.integers(0, 255)),
    min_size=1,
    max_size=40,
    unique=True,
)
# Small counts, so that a key is often unchanged or lower (evicted and created again) at the next
# read; now and then past a u32, which the binary format writes as several deltas.
COUNT = st.integers(0, 4) | st.integers(0, 2**40)


@st.composite
def reads(draw) -> list[Table]:
    keys = draw(KEYS)
    tables = []
    for _ in range(draw(st.integers(1, 6))):
        present = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
        tables.append({k: (draw(COUNT), draw(COUNT)) for k in present})
    return tables


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(tables=reads(), buffer_size=st.sampled_from([PIECE, PIECE + 27, 1000, 1 << 16]))
def test_reader_makes_the_models_bins_in_both_formats(tc, tmp_path_factory, tables, buffer_size):
    run_sequence(tc, tmp_path_factory.mktemp("series"), tables, buffer_size)


# --- the rules, one at a time ---------------------------------------------------------------------

A, B = raw_key("10.3.0.1", 17), raw_key("2001:db8::1", 6)


def test_first_bin_holds_everything_then_only_what_changed(tc, tmp_path):
    run_sequence(tc, tmp_path, [{}, {A: (3, 87)}, {A: (3, 87), B: (2, 120)}, {A: (7, 203)}], PIECE)
    model = SeriesModel()
    bins = [model.read(t, 0) for t in ({A: (3, 87)}, {A: (3, 87)}, {A: (5, 90), B: (1, 60)})]
    assert [len(b.deltas) for b in bins] == [1, 0, 2], "an unchanged key makes no delta"
    assert bins[2].deltas[0][1:] == (2, 3)


def test_evicted_and_created_again_counts_all_as_new(tc, tmp_path):
    tables = [
        {A: (10, 500)},
        {A: (2, 100)},  # fewer packets and bytes: evicted and created again
        {A: (3, 90)},  # more packets, fewer bytes: the same
        {},  # gone
        {A: (5, 200)},  # back after a read without it: all new, although more than before
    ]
    run_sequence(tc, tmp_path, tables, PIECE)
    model = SeriesModel()
    deltas = [[d[1:] for d in model.read(t, 0).deltas] for t in tables]
    assert deltas == [[(10, 500)], [(2, 100)], [(3, 90)], [], [(5, 200)]]
    assert model.summed() == {TrafKey(4, bytes([10, 3, 0, 1]), 17): (20, 890)}


def test_ipv6_addresses_written_as_python_writes_them(tc, tmp_path):
    addresses = ["::", "::1", "1::", "fd00::6:1", "2001:db8:0:1:0:0:0:1", "0:1:0:1:0:1:0:1"]
    addresses += ["::ffff:192.0.2.1", "::192.0.2.1", "1:0:0:2:0:0:0:3", "ffff:" * 7 + "ffff"]
    run_sequence(tc, tmp_path, [{raw_key(a, 6): (1, 60) for a in addresses}], PIECE)


def test_a_bin_much_larger_than_the_buffer(tc, tmp_path):
    big = {raw_key(f"10.{i >> 8}.{i & 255}.1", 17): (i + 1, 60 * (i + 1)) for i in range(400)}
    big |= {raw_key(f"fd00::{i:x}", 6): (1, 1) for i in range(100)}
    grown = {k: (p + 1, b + 60) for k, (p, b) in big.items()}
    for size in (PIECE, PIECE + 1, 4096):
        run_sequence(tc, tmp_path / str(size), [big, grown, {}], size)


def test_counts_past_a_u32_written_as_several_deltas_that_add_up(tc, tmp_path):
    huge = 3 * 2**32 + 5
    run_sequence(tc, tmp_path, [{A: (huge, 7)}, {A: (huge + 1, 2**32)}], PIECE)
    data = binary_file_header(HZ) + binary_bin(SeriesModel().read({A: (huge, 7)}, 0))
    _, bins = read_binary(data)
    (only,) = list(bins)
    assert [d[1:] for d in only.deltas] == [(2**32 - 1, 7), (2**32 - 1, 0), (2**32 - 1, 0), (8, 0)]
    assert sum(d[1] for d in only.deltas) == huge


def test_output_buffer_smaller_than_a_piece_refused(tc):
    with pytest.raises(OSError, match="Invalid argument"):
        Sampler(tc, HZ, 1, Format.JSON, PIECE - 1)


# --- the grid ------------------------------------------------------------------------------------


def udp4(src: str) -> bytes:
    return bytes(
        Ether(**MACS) / IP(src=src, dst="198.51.100.2") / UDP(sport=1, dport=2) / (b"x" * 20)
    )


@pytest.mark.parametrize("form", list(Format), ids=lambda f: f.name.lower())
def test_run_bins_add_up_to_what_was_counted_meanwhile(tmp_path, form):
    frames = [udp4(f"10.6.0.{i}") for i in range(1, 9)]
    frames.append(bytes(Ether(**MACS) / IPv6(src="fd00::6:1", dst="fd00::1") / UDP() / b"y"))
    path = tmp_path / "series"
    with TrafCount() as tc, path.open("wb") as out, Sampler(tc, HZ, out.fileno(), form) as sampler:
        xdp = tc.program(Hook.XDP)
        xdp.test_run(frames[0], repeat=5)  # before the run: in its first bin
        running = threading.Thread(target=sampler.run)
        running.start()
        for _ in range(20):
            for frame in frames:
                xdp.test_run(frame, repeat=3)
            time.sleep(0.005)
        sampler.stop()
        running.join()
        counts, summed, made = tc.counts(), sampler.summed(), sampler.bins
    if form is Format.BINARY:
        hz, read = read_binary(path.read_bytes())
        assert hz == HZ
        bins = list(read)
    else:
        bins = [parse_json_line(line) for line in path.read_text().splitlines()]
    assert [b.index for b in bins] == list(range(made)), "every bin, in order"
    assert all(a.t_ns < b.t_ns for a, b in itertools.pairwise(bins)), "times rise"
    sums: dict[TrafKey, tuple[int, int]] = {}
    for b in bins:
        for k, p, n in b.deltas:
            sums[k] = (sums.get(k, (0, 0))[0] + p, sums.get(k, (0, 0))[1] + n)
    assert sums == summed == counts, "the bins add up to the table"
    assert made > 20, f"{made} bins in more than 0.1 s at {HZ} Hz"


def test_stop_ends_a_sleep_at_once_and_a_stop_before_the_run_makes_one_bin():
    with TrafCount() as tc, Sampler(tc, 1) as sampler:
        timer = threading.Timer(0.1, sampler.stop)
        started = time.monotonic()
        timer.start()
        sampler.run()
        took = time.monotonic() - started
        assert took < 0.5, f"a stop 0.1 s into a 1 s sleep took {took:.2f} s to end the run"
        assert sampler.bins == 2, "the first bin, and the last after the stop"
    with TrafCount() as tc, Sampler(tc, HZ) as sampler:
        sampler.stop()
        sampler.run()
        assert sampler.bins == 1


def test_reader_writes_to_the_fd_it_was_given(tc):
    read_end, write_end = os.pipe()
    try:
        with Sampler(tc, HZ, write_end, Format.JSON) as sampler:
            write_tables(tc, {A: (1, 29)})
            sampler.sample()
        assert os.read(read_end, 4096).decode().endswith('"deltas": [["10.3.0.1", 17, 1, 29]]}\n')
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_failed_write_named_and_the_run_ends(tc):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the write fails (EPIPE; Python ignores SIGPIPE)
    try:
        with Sampler(tc, HZ, write_end, Format.BINARY) as sampler:
            with pytest.raises(BrokenPipeError, match="time series: writing a bin"):
                sampler.run()
            assert sampler.bins == 0
    finally:
        os.close(write_end)


def test_a_binary_series_without_bins_is_its_header_and_a_closed_sampler_refuses(tc, tmp_path):
    path = tmp_path / "series.bin"
    with path.open("wb") as out:
        sampler = Sampler(tc, HZ, out.fileno(), Format.BINARY)
        sampler.close()
    assert path.read_bytes() == binary_file_header(HZ)
    with pytest.raises(ValueError, match="closed"):
        sampler.sample()
    with pytest.raises(ValueError, match="closed"):
        sampler.stop()
