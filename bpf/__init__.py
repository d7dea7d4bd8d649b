"""The product: eBPF data planes (one folder each: BPF C, control plane, CLI) and the libbpf binding.

The binding, re-exported here, is a small Pythonic layer over Debian's ``libbpf.so.1``:
``bpf.object`` (open, configure, load, maps, test_run), ``bpf.attach`` (XDP, TC, sockets, pins),
``bpf.ringbuf`` (ring-buffer consumer), ``bpf.btf`` (C structs as ctypes types), ``bpf.build``
(ahead-of-time compilation of the BPF C). Programs are never compiled at run time.
"""

from bpf.attach import PIN_ROOT, TcDirection, XdpMode, join_fanout, pin_dir
from bpf.btf import fields_of
from bpf.libbpf import LibbpfError
from bpf.object import (
    POSSIBLE_CPUS,
    BpfObject,
    Map,
    MapType,
    Program,
    ProgType,
    TcAction,
    TestRun,
    VerifierError,
    XdpAction,
)
from bpf.ringbuf import RingBuffer

__all__ = [
    "PIN_ROOT",
    "POSSIBLE_CPUS",
    "BpfObject",
    "LibbpfError",
    "Map",
    "MapType",
    "ProgType",
    "Program",
    "RingBuffer",
    "TcAction",
    "TcDirection",
    "TestRun",
    "VerifierError",
    "XdpAction",
    "XdpMode",
    "fields_of",
    "join_fanout",
    "pin_dir",
]
