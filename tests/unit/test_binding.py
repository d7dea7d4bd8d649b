"""The libbpf binding against the real kernel: load, configure, maps, ring buffer, test_run, pins."""

import ctypes
import shutil
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import bpf
from bpf import build, journal
from bpf.attach import pin_dir
from bpf.btf import Btf, BtfError
from bpf.ringbuf import RingBuffer, RingReader
from harness.topology import host_ifname

SELFTEST = Path(bpf.__file__).parent / "selftest"


@pytest.fixture
def sample():
    with bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as obj:
        yield obj.load()


def frame(first_byte: int = 0, dst: str = "192.0.2.1", size: int = 60) -> bytes:
    packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst=dst) / UDP()
    data = bytes(packet)
    return bytes([first_byte]) * 8 + data[8:] + bytes(size - len(data))


def test_trivial_program_verdicts_and_timing():
    with bpf.BpfObject.open(SELFTEST / "trivial.bpf.c") as obj:
        obj.load()
        passed = obj.programs["xdp_pass"].test_run(frame())
        dropped = obj.programs["xdp_drop"].test_run(frame(), repeat=1000)
    assert passed.verdict is bpf.XdpAction.PASS
    assert passed.packet == frame(), "an XDP_PASS program must hand back the packet unchanged"
    assert dropped.verdict is bpf.XdpAction.DROP
    assert 0 < dropped.duration_ns < 100_000, f"implausible ns/packet {dropped.duration_ns}"


def test_scapy_packet_accepted_as_input(sample):
    packet = Ether(dst="02:00:00:00:00:02") / IP(dst="198.51.100.7") / UDP(dport=53)
    run = sample.programs["xdp_sample"].test_run(packet)
    assert run.packet == bytes(packet)


def test_verifier_rejection_carries_the_log():
    obj = bpf.BpfObject.open(SELFTEST / "unsafe.bpf.c")
    try:
        with pytest.raises(bpf.VerifierError) as caught:
            obj.load()
    finally:
        obj.close()
    err = caught.value
    assert err.program == "xdp_unchecked_read"
    assert "invalid access to packet" in err.log, err.log
    assert "invalid access to packet" in str(err), "the message must show the log's tail"


def test_rodata_configures_before_load_and_is_frozen_after():
    with bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as obj:
        assert obj.rodata["event_every"] == 1, "the C initialiser is the default"
        obj.rodata["verdict"] = int(bpf.XdpAction.DROP)
        obj.load()
        assert obj.programs["xdp_sample"].test_run(frame()).verdict is bpf.XdpAction.DROP
        with pytest.raises(RuntimeError, match="read-only after load"):
            obj.rodata["verdict"] = int(bpf.XdpAction.PASS)
        with pytest.raises(KeyError, match="no const volatile global 'nope'"):
            obj.rodata["nope"]


def test_max_entries_set_before_load():
    with bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as obj:
        obj.maps["lru"].max_entries = 1000
        obj.load()
        assert obj.maps["lru"].max_entries == 1000
        with pytest.raises(RuntimeError, match="before load"):
            obj.maps["lru"].max_entries = 5


def test_btf_types_match_the_c_structs(sample):
    key_type = sample.maps["by_key"].key_type
    value_type = sample.maps["by_key"].value_type
    assert key_type.__name__ == "sample_key" and ctypes.sizeof(key_type) == 8
    assert [name for name, _ in key_type._fields_] == ["addr", "port", "proto", "pad"]
    assert value_type.__name__ == "sample_counters" and ctypes.sizeof(value_type) == 32
    assert value_type.hist.offset == 20 and value_type.last_len.offset == 16


def test_enum_members_from_btf():
    with bpf.BpfObject.open(SELFTEST / "parse.bpf.c") as obj:
        flags = obj.enum("flow_flags")
        statuses = obj.enum("parse_status")
        with pytest.raises(BtfError, match=r"no enum 'nope'.*unused global"):
            obj.enum("nope")
    assert flags == {
        "FLOW_F_PPPOE": 1,
        "FLOW_F_FRAGMENT": 2,
        "FLOW_F_LATER_FRAGMENT": 4,
        "FLOW_F_PORTS": 8,
    }
    assert list(statuses.values()) == list(range(len(statuses))), "implicit values count from 0"
    names = list(statuses)
    assert names[0] == "PARSE_OK" and names[-1] == "PARSE_STATUS_MAX"


def test_enum_signed_and_64_bit_from_vmlinux():
    """clang 14 emits neither a signed enum nor ENUM64; the kernel's own BTF has both."""
    libbpf = ctypes.CDLL("libbpf.so.1")  # a handle of our own: its prototypes are not bpf.lib's
    libbpf.btf__load_vmlinux_btf.restype = ctypes.c_void_p
    libbpf.btf__free.argtypes = [ctypes.c_void_p]
    handle = libbpf.btf__load_vmlinux_btf()
    assert handle, "no kernel BTF at /sys/kernel/btf/vmlinux"
    try:
        vmlinux = Btf(handle)
        prog_types = vmlinux.enum("bpf_prog_type")
        rpm_status = vmlinux.enum("rpm_status")
        callchain = vmlinux.enum("perf_callchain_context")
    finally:
        libbpf.btf__free(handle)
    assert {t.name: prog_types[f"BPF_PROG_TYPE_{t.name}"] for t in bpf.ProgType} == {
        t.name: t.value for t in bpf.ProgType
    }, "bpf.ProgType must agree with the kernel"
    assert rpm_status["RPM_INVALID"] == -1, "a signed enum keeps its negative values"
    assert callchain["PERF_CONTEXT_HV"] == 2**64 - 32, "ENUM64: (__u64)-32 in the UAPI"


def test_hash_map_typed_access(sample):
    program, by_key = sample.programs["xdp_sample"], sample.maps["by_key"]
    for first_byte in (1, 1, 2, 3, 3, 3):
        program.test_run(frame(first_byte))
    counts = {bytes(k)[0]: v.packets for k, v in by_key.items()}
    assert counts == {1: 2, 2: 1, 3: 3}
    key = by_key.key_type.from_buffer_copy(bytes([3] * 8))
    key.pad = 0
    assert by_key[key].bytes == 3 * 60
    assert key in by_key
    del by_key[key]
    assert key not in by_key and len(by_key) == 2
    with pytest.raises(KeyError):
        by_key[key]
    by_key[dict(addr=7, port=8, proto=17)] = dict(packets=5, bytes=500)
    assert by_key[(7, 8, 17, 0)].packets == 5


def test_per_cpu_values_listed_and_summed(sample):
    percpu = sample.maps["by_len_percpu"]
    for _ in range(4):
        sample.programs["xdp_sample"].test_run(frame(size=62))
    per_cpu = percpu[62 & 7]
    assert len(per_cpu) == bpf.POSSIBLE_CPUS
    total = percpu.lookup_sum(62 & 7)
    assert (total.packets, total.bytes) == (4, 4 * 62)
    assert list(total.hist) == [0, 0, 4, 0], "arrays inside values are summed element-wise"
    scalar = sample.maps["lru_percpu"]
    scalar[9] = list(range(1, bpf.POSSIBLE_CPUS + 1))
    assert scalar[9] == list(range(1, bpf.POSSIBLE_CPUS + 1))
    assert scalar.lookup_sum(9) == sum(range(1, bpf.POSSIBLE_CPUS + 1))


def test_batch_update_and_lookup(sample):
    lru = sample.maps["lru"]
    lru.update_batch((i, i * 10) for i in range(40))
    assert dict(lru.lookup_batch(batch=7)) == {i: i * 10 for i in range(40)}
    lru.clear()
    assert len(lru) == 0


def test_lru_evicts_instead_of_failing(sample):
    lru = sample.maps["lru"]
    for i in range(3 * lru.max_entries):
        lru[i] = i
    assert 0 < len(lru) <= lru.max_entries
    assert (3 * lru.max_entries - 1) in lru, "the newest entry survives"


def test_array_clear_zeroes_every_slot(sample):
    sample.programs["xdp_sample"].test_run(frame(size=61))
    by_len = sample.maps["by_len"]
    assert by_len[61 & 7].packets == 1
    by_len.clear()
    assert all(v.packets == 0 for _, v in by_len.items())
    assert len(by_len) == by_len.max_entries, "array slots never go away"


def test_lpm_trie_longest_prefix_decides(sample):
    prefixes = sample.maps["prefixes"]
    addr = ctypes.c_uint8 * 4
    prefixes[dict(prefixlen=8, addr=addr(10, 0, 0, 0))] = int(bpf.XdpAction.DROP)
    prefixes[dict(prefixlen=24, addr=addr(10, 1, 2, 0))] = int(bpf.XdpAction.TX)
    run = sample.programs["xdp_sample"].test_run
    assert run(frame(dst="10.9.9.9")).verdict is bpf.XdpAction.DROP
    assert run(frame(dst="10.1.2.200")).verdict is bpf.XdpAction.TX
    assert run(frame(dst="11.1.2.3")).verdict is bpf.XdpAction.PASS


def test_ring_buffer_batches_are_bounded(sample):
    program = sample.programs["xdp_sample"]
    for _ in range(10):
        program.test_run(frame(5))
    with RingBuffer(sample.maps["events"], sample.struct("sample_event"), budget=4) as ring:
        first = ring.poll(timeout_ms=0)
        rest = ring.drain()
        assert ring.poll(timeout_ms=0) == []
    assert len(first) == 4, "one poll returns at most `budget` records"
    seqs = [e.seq for e in first + rest]
    assert seqs == list(range(1, 11)), "every record exactly once, in order"
    assert all(list(e.head) == [5] * 4 and e.len == 60 for e in first + rest)


def test_ring_buffer_raw_records(sample):
    sample.programs["xdp_sample"].test_run(frame())
    with RingBuffer(sample.maps["events"]) as ring:
        (record,) = ring.drain()
    assert isinstance(record, bytes) and len(record) == ctypes.sizeof(sample.struct("sample_event"))


def test_pins_are_removed_with_the_object():
    directory = pin_dir(host_ifname(journal.current().run_id, "binding"))
    with bpf.BpfObject.open(SELFTEST / "binding.bpf.c") as obj:
        obj.load()
        obj.maps["lru"].pin(directory / "lru")
        assert (directory / "lru").exists()
        with pytest.raises(ValueError, match="under /sys/fs/bpf/bpflab"):
            obj.maps["by_key"].pin(Path("/sys/fs/bpf/elsewhere"))
    assert not directory.exists(), "closing the object unpins, and removes the emptied directory"
    with pytest.raises(RuntimeError, match="is closed"):
        obj.maps["lru"].lookup(0)


def test_stale_or_missing_object_is_a_clear_error(tmp_path):
    tree = tmp_path
    shutil.copytree(SELFTEST.parent / "include", tree / "bpf" / "include")
    (tree / "injector").mkdir()
    source = tree / "bpf" / "demo.bpf.c"
    shutil.copy(SELFTEST / "trivial.bpf.c", source)
    with pytest.raises(build.ObjectError, match=r"missing; rebuild with `python -m bpf\.build`"):
        build.require_object(source, tree)
    build.build(tree)
    assert build.require_object(source, tree) == build.object_path(source)
    source.write_text(source.read_text() + "\n/* edited */\n")
    with pytest.raises(build.ObjectError, match="older than its sources"):
        build.require_object(source, tree)
    assert build.build(tree) == [build.object_path(source)], "only the stale object is rebuilt"


def test_c_define_reads_integer_constants(tmp_path):
    header = tmp_path / "consts.h"
    header.write_text(
        "#define SMALL\t\t12\t/* a comment */\n#define WIDE 0x9e3779b97f4a7c15ULL\n"
        "#define DERIVED (1 << SMALL)\n"
    )
    assert build.c_define(header, "SMALL") == 12
    assert build.c_define(header, "WIDE") == 0x9E3779B97F4A7C15
    with pytest.raises(LookupError, match="no integer #define DERIVED"):
        build.c_define(header, "DERIVED")


def test_ring_reader_reads_records_in_place_across_wraparounds(sample):
    program, event = sample.programs["xdp_sample"], sample.struct("sample_event")
    ring = sample.maps["events"]
    per_lap = ring.max_entries // 32  # a 20-byte event and its 8-byte header, rounded up to 8
    seen: list[int] = []
    with RingReader(ring) as reader:
        for _ in range(5):  # five batches of 3/4 of the ring each: the data wraps around
            program.test_run(frame(), repeat=1)
            for _ in range(per_lap * 3 // 4 - 1):
                program.test_run(frame())
            seen += [event.from_buffer_copy(bytes(r)).seq for r in reader.records()]
        assert list(reader.records()) == []
    assert seen == list(range(1, len(seen) + 1)) and len(seen) == 5 * (per_lap * 3 // 4)


def test_ring_reader_budget_leaves_the_rest_for_later(sample):
    for _ in range(6):
        sample.programs["xdp_sample"].test_run(frame())
    with RingReader(sample.maps["events"]) as reader:
        first = [bytes(r) for r in reader.records(budget=4)]
        rest = [bytes(r) for r in reader.records()]
    assert (len(first), len(rest)) == (4, 2)
