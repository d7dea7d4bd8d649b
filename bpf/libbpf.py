"""ctypes declarations for the parts of Debian's ``libbpf.so.1`` (1.1) the binding uses, and its errors.

This is the only module that touches ``libbpf.so.1``; the Pythonic layer is ``bpf.object``,
``bpf.attach`` and ``bpf.ringbuf``. libbpf's own log lines are routed here (``libbpf_set_print``) and
attached to the ``LibbpfError`` of the call that produced them, so a failure says what libbpf said.
Not for: re-exporting the whole libbpf API; add a prototype when a caller needs it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

log = logging.getLogger("libbpf")

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(None, use_errno=True)


class LibbpfError(OSError):
    """A libbpf call failed; ``messages`` holds what libbpf logged during the call."""

    def __init__(self, errno: int, what: str, messages: list[str] | None = None) -> None:
        self.messages = messages or []
        detail = "".join(f"\n  libbpf: {m}" for m in self.messages)
        super().__init__(errno, f"{what}: {os.strerror(errno)}{detail}")


# --- libbpf's log, captured per thread --------------------------------------------------------------

_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_capture = threading.local()
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]


@_PRINT_FN
def _on_libbpf_print(level: int, fmt: bytes, args: int) -> int:
    if level == 2 and not log.isEnabledFor(logging.DEBUG):
        return 0  # libbpf's debug chatter (a line per relocation) costs time to format
    # On x86-64 a va_list argument arrives as a pointer: vsnprintf formats it as libbpf meant.
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip("\n").removeprefix("libbpf: ")
    lines = getattr(_capture, "lines", None)
    if lines is not None and level < 2:
        lines.append(text)  # the error raised for this call will carry it: log it quietly
        log.debug("%s", text)
    else:
        log.log(_LEVELS.get(level, logging.DEBUG), "%s", text)
    return 0


_lib.libbpf_set_print.argtypes = [_PRINT_FN]
_lib.libbpf_set_print.restype = c_void_p
_lib.libbpf_set_print(_on_libbpf_print)


@contextmanager
def captured() -> Iterator[list[str]]:
    """Collect what libbpf logs (warnings and info) in this thread during the block."""
    outer = getattr(_capture, "lines", None)
    _capture.lines = []
    try:
        yield _capture.lines
    finally:
        if outer is not None:
            outer.extend(_capture.lines)
        _capture.lines = outer


def call(fn, *args, what: str):
    """Call a libbpf function that returns a negative errno on failure; raise LibbpfError."""
    with captured() as messages:
        ret = fn(*args)
    if isinstance(ret, int) and ret < 0:
        raise LibbpfError(-ret, what, messages)
    return ret


def call_ptr(fn, *args, what: str) -> int:
    """Call a libbpf function that returns NULL and sets errno on failure; raise LibbpfError."""
    with captured() as messages:
        ctypes.set_errno(0)
        ret = fn(*args)
        err = ctypes.get_errno()
    if not ret:
        raise LibbpfError(err or 22, what, messages)
    return ret


# --- option structs (the sizes libbpf 1.1 expects; `sz` is set by the constructors) ----------------


class _Opts(ctypes.Structure):
    def __init__(self, **fields: object) -> None:
        super().__init__(sz=ctypes.sizeof(self), **fields)


class TestRunOpts(_Opts):
    __test__ = False  # a C struct, not a pytest test class

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_char_p),  # assigned bytes: points at them without a copy or a cast
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_char_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class LinkCreateOpts(_Opts):
    # Only the leading fields: libbpf reads the rest as zero when `sz` stops before them.
    _fields_ = [("sz", c_size_t), ("flags", c_uint32)]


class TcHook(_Opts):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class TcOpts(_Opts):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class MapBatchOpts(_Opts):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class ProgInfo(ctypes.Structure):
    """The leading fields of UAPI ``struct bpf_prog_info`` (append-only, so a prefix is valid)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
    ]


class BtfType(ctypes.Structure):
    """``struct btf_type``; kind-specific records follow it in memory."""

    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


assert ctypes.sizeof(ProgInfo) == 224 and ProgInfo.run_cnt.offset == 200
assert ctypes.sizeof(TestRunOpts) == 80, "struct bpf_test_run_opts is 80 bytes in libbpf 1.1"
assert ctypes.sizeof(TcHook) == 24 and ctypes.sizeof(TcOpts) == 32

RINGBUF_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

# --- prototypes ---------------------------------------------------------------------------------------

_P = c_void_p  # opaque libbpf objects (struct bpf_object *, bpf_program *, bpf_map *, btf *, ...)
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "bpf_object__open_file": (_P, [c_char_p, _P]),
    "bpf_object__load": (c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__name": (c_char_p, [_P]),
    "bpf_object__next_program": (_P, [_P, _P]),
    "bpf_object__next_map": (_P, [_P, _P]),
    "bpf_object__btf": (_P, [_P]),
    "bpf_program__name": (c_char_p, [_P]),
    "bpf_program__fd": (c_int, [_P]),
    "bpf_program__type": (c_int, [_P]),
    "bpf_program__set_log_buf": (c_int, [_P, c_char_p, c_size_t]),
    "bpf_program__set_autoload": (c_int, [_P, c_bool]),
    "bpf_map__name": (c_char_p, [_P]),
    "bpf_map__fd": (c_int, [_P]),
    "bpf_map__type": (c_int, [_P]),
    "bpf_map__key_size": (c_uint32, [_P]),
    "bpf_map__value_size": (c_uint32, [_P]),
    "bpf_map__max_entries": (c_uint32, [_P]),
    "bpf_map__set_max_entries": (c_int, [_P, c_uint32]),
    "bpf_map__set_type": (c_int, [_P, c_int]),
    "bpf_map__btf_key_type_id": (c_uint32, [_P]),
    "bpf_map__btf_value_type_id": (c_uint32, [_P]),
    "bpf_map__initial_value": (c_void_p, [_P, POINTER(c_size_t)]),
    "bpf_map__set_pin_path": (c_int, [_P, c_char_p]),
    "bpf_map__reuse_fd": (c_int, [_P, c_int]),
    "btf__type_by_id": (POINTER(BtfType), [_P, c_uint32]),
    "btf__name_by_offset": (c_char_p, [_P, c_uint32]),
    "btf__find_by_name_kind": (c_int, [_P, c_char_p, c_uint32]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_lookup_and_delete_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts)],
    ),
    "bpf_map_update_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts)],
    ),
    "bpf_map_delete_batch": (c_int, [c_int, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts)]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(TestRunOpts)]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, POINTER(LinkCreateOpts)]),
    "bpf_tc_hook_create": (c_int, [POINTER(TcHook)]),
    "bpf_tc_hook_destroy": (c_int, [POINTER(TcHook)]),
    "bpf_tc_attach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_detach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_query": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "ring_buffer__new": (_P, [c_int, RINGBUF_SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [_P, c_int]),
    "ring_buffer__consume": (c_int, [_P]),
    "ring_buffer__epoll_fd": (c_int, [_P]),
    "ring_buffer__free": (None, [_P]),
    "libbpf_num_possible_cpus": (c_int, []),
}

for _name, (_restype, _argtypes) in _PROTOTYPES.items():
    _fn = getattr(_lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes

lib = _lib

POSSIBLE_CPUS: int = _lib.libbpf_num_possible_cpus()
