"""Attach programs to interfaces and sockets, pin objects on bpffs; undo all of it, even after a kill.

- XDP is attached through a BPF link (``BPF_LINK_CREATE``): the kernel detaches it when the last file
  descriptor closes, so a killed process leaves no XDP program behind. The mode is explicit: NATIVE
  fails on a driver without native XDP rather than falling back to generic.
- TC is attached to a clsact hook with libbpf's ``bpf_tc_*`` (netlink filters, visible to ``tc``). Such
  filters outlive their process, so each is recorded in the journal (``bpf.journal``) and removed by
  ``harness clean`` if its owner dies; a clsact qdisc this module created is removed with its last filter.
- Socket filters (``SO_ATTACH_BPF``) and ``PACKET_FANOUT_EBPF`` belong to a socket and die with it.
- Pins live under ``/sys/fs/bpf/bpflab/``; each is recorded in the journal until unpinned. Every
  process sees the one bpffs of the host, even under ``ip netns exec`` (``pin_dir``).
Every attachment is a context manager and is also detached by closing its ``BpfObject``.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bpf import journal, netns
from bpf.libbpf import LibbpfError, LinkCreateOpts, TcHook, TcOpts, call, lib
from bpf.object import Program, ProgType

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "bpflab"
_BPF_FS_MAGIC = 0xCAFE4A11
_libc = ctypes.CDLL(None, use_errno=True)

_BPF_XDP = 37  # enum bpf_attach_type
_BPF_TC_INGRESS, _BPF_TC_EGRESS = 1 << 0, 1 << 1
_SO_ATTACH_BPF, _SO_DETACH_BPF = 50, 27
_SOL_PACKET, _PACKET_FANOUT, _PACKET_FANOUT_DATA, _PACKET_FANOUT_EBPF = 263, 18, 22, 7


class XdpMode(enum.IntEnum):
    """XDP attach mode; the value is the XDP_FLAGS_* bit. No mode falls back to another."""

    GENERIC = 1 << 1  # XDP_FLAGS_SKB_MODE: any device, after the skb is built
    NATIVE = 1 << 2  # XDP_FLAGS_DRV_MODE: in the driver; fails if the driver lacks it


class TcDirection(enum.IntEnum):
    INGRESS = _BPF_TC_INGRESS
    EGRESS = _BPF_TC_EGRESS


def ifindex(ifname: str, namespace: str | None = None) -> int:
    """The index of ``ifname`` in ``namespace`` (None: the calling thread's namespace)."""
    with netns.entered(namespace):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            where = f"network namespace {namespace!r}" if namespace else "this network namespace"
            raise LibbpfError(errno.ENODEV, f"no interface {ifname!r} in {where}") from None


def _where(ifname: str, namespace: str | None) -> str:
    return f"{ifname}@{namespace}" if namespace else ifname


class _Attachment:
    """Registered with its object on attach, so closing the object detaches it."""

    program: Program

    def _register(self) -> None:
        self.program.object.attachments.append(self)

    def _unregister(self) -> None:
        attachments = self.program.object.attachments
        if self in attachments:
            attachments.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def detach(self) -> None:
        raise NotImplementedError


class XdpLink(_Attachment):
    """An XDP program attached to an interface through a BPF link."""

    def __init__(self, program: Program, ifname: str, mode: XdpMode, namespace: str | None) -> None:
        if program.type != ProgType.XDP:
            raise TypeError(f"{program.name} is a {program.type.name} program, not XDP")
        self.program, self.ifname, self.mode, self.namespace = program, ifname, mode, namespace
        self.ifindex = ifindex(ifname, namespace)
        what = f"attach XDP {program.name} to {_where(ifname, namespace)} in {mode.name} mode"
        with netns.entered(namespace):
            opts = LinkCreateOpts(flags=int(mode))
            try:
                self._fd = call(
                    lib.bpf_link_create, program.fd, self.ifindex, _BPF_XDP, opts, what=what
                )
            except LibbpfError as err:
                # EBUSY: a program is attached in this mode; EEXIST: in the other mode. A link never
                # replaces what is there, and native and generic XDP exclude each other.
                if err.errno not in (errno.EBUSY, errno.EEXIST):
                    raise
                raise LibbpfError(
                    err.errno,
                    f"{what} (an XDP program is already attached there; one per interface: "
                    "detach it first)",
                    err.messages,
                ) from None
        self._register()

    def detach(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._unregister()


class _Clsact:
    """Reference counts of clsact qdiscs this process created: removed when its last filter goes."""

    created: dict[tuple[str | None, int], int] = {}  # noqa: RUF012 (process-wide registry)


@dataclass
class TcFilter(_Attachment):
    """A program attached as a direct-action filter on an interface's clsact hook."""

    program: Program
    ifname: str
    direction: TcDirection
    namespace: str | None = None
    priority: int = 0  # 0: the kernel picks one (read back after attach)
    handle: int = 0
    ifindex: int = field(init=False, default=0)
    _journal_id: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.program.type != ProgType.SCHED_CLS:
            raise TypeError(f"{self.program.name} is a {self.program.type.name} program, not TC")
        where = _where(self.ifname, self.namespace)
        self.ifindex = ifindex(self.ifname, self.namespace)
        with netns.entered(self.namespace):
            hook = TcHook(ifindex=self.ifindex, attach_point=int(self.direction))
            # The qdisc is shared by both directions and possibly by other tools: create it only if
            # it is missing, and then remember that it is ours to remove.
            created = lib.bpf_tc_hook_create(ctypes.byref(hook))
            if created < 0 and created != -errno.EEXIST:
                raise LibbpfError(-created, f"create clsact on {where}")
            try:
                opts = TcOpts(prog_fd=self.program.fd, priority=self.priority, handle=self.handle)
                call(
                    lib.bpf_tc_attach,
                    ctypes.byref(hook),
                    ctypes.byref(opts),
                    what=f"attach TC to {where}",
                )
            except BaseException:
                if created == 0:  # just created, so nothing else is on it: leave no qdisc behind
                    both = TcHook(
                        ifindex=self.ifindex, attach_point=_BPF_TC_INGRESS | _BPF_TC_EGRESS
                    )
                    lib.bpf_tc_hook_destroy(ctypes.byref(both))
                raise
        key = (self.namespace, self.ifindex)
        if created == 0:
            _Clsact.created[key] = 0
        if key in _Clsact.created:
            _Clsact.created[key] += 1
        self.priority, self.handle, self.prog_id = opts.priority, opts.handle, opts.prog_id
        self._journal_id = journal.current().record(
            "tc",
            namespace=self.namespace,
            ifname=self.ifname,
            direction=self.direction.name,
            priority=self.priority,
            handle=self.handle,
            prog_id=self.prog_id,
            own_qdisc=key in _Clsact.created,
        )
        self._register()

    def detach(self) -> None:
        if self._journal_id is None:
            return
        key = (self.namespace, self.ifindex)
        remove_qdisc = False
        if key in _Clsact.created:
            _Clsact.created[key] -= 1
            remove_qdisc = _Clsact.created[key] == 0
            if remove_qdisc:
                del _Clsact.created[key]
        _detach_tc(
            self.namespace,
            self.ifname,
            self.direction.name,
            self.priority,
            self.handle,
            None,
            remove_qdisc,
        )
        journal.current().strike(self._journal_id)
        self._journal_id = None
        self._unregister()


@journal.undoes("tc")
def _detach_tc(
    namespace: str | None,
    ifname: str,
    direction: str,
    priority: int,
    handle: int,
    prog_id: int | None,
    own_qdisc: bool,
) -> None:
    """Remove a TC filter (only if it still runs ``prog_id``), and the clsact qdisc if it was ours."""
    if namespace is not None and not netns.exists(namespace):
        return  # the namespace, and everything in it, is gone
    with netns.entered(namespace):
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            return  # the interface is gone, and its filters with it
        hook = TcHook(ifindex=index, attach_point=int(TcDirection[direction]))
        opts = TcOpts(priority=priority, handle=handle)
        if prog_id is not None:
            found = lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
            if found < 0 or opts.prog_id != prog_id:
                return  # someone else's filter now sits there
            opts = TcOpts(priority=priority, handle=handle)
        ret = lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
        if ret < 0 and ret != -errno.ENOENT:
            raise LibbpfError(-ret, f"detach TC filter from {_where(ifname, namespace)}")
        if own_qdisc:
            both = TcHook(ifindex=index, attach_point=_BPF_TC_INGRESS | _BPF_TC_EGRESS)
            lib.bpf_tc_hook_destroy(ctypes.byref(both))


class SocketFilter(_Attachment):
    """A SOCKET_FILTER program attached to one socket (``SO_ATTACH_BPF``)."""

    def __init__(self, program: Program, sock: socket.socket) -> None:
        if program.type != ProgType.SOCKET_FILTER:
            raise TypeError(f"{program.name} is a {program.type.name} program, not a socket filter")
        self.program, self.socket = program, sock
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_BPF, program.fd)
        self._register()

    def detach(self) -> None:
        if self.socket is not None:
            if self.socket.fileno() >= 0:
                self.socket.setsockopt(socket.SOL_SOCKET, _SO_DETACH_BPF, 0)
            self.socket = None
            self._unregister()

    def replace(self, program: Program) -> SocketFilter:
        """Put ``program`` on the socket in this one's place, in one step (``SO_ATTACH_BPF`` swaps
        the filter atomically: no packet meets the socket unfiltered). This attachment is then over."""
        sock = self.socket
        if sock is None:
            raise RuntimeError(f"{self.program.name} is detached: nothing to replace")
        replacement = SocketFilter(program, sock)
        self.socket = None
        self._unregister()
        return replacement


class FanoutKind(enum.IntEnum):
    """How a ``PACKET_FANOUT`` group picks the member of each packet (``PACKET_FANOUT_*``)."""

    HASH = 0  # the skb's flow hash (``skb_get_hash``: L3/L4 fields; not the MAC)
    CPU = 2  # the CPU the packet is received on
    EBPF = _PACKET_FANOUT_EBPF  # a SOCKET_FILTER program's return value, modulo the members


def join_fanout(
    sock: socket.socket,
    group_id: int,
    program: Program | None = None,
    kind: FanoutKind = FanoutKind.EBPF,
) -> None:
    """Join a bound AF_PACKET socket to fanout group ``group_id`` of ``kind`` (EBPF: steered by
    ``program``, set again by each member joining; the last one set steers the group).

    The program returns the index of the member socket that gets each packet; it sees ``skb->data``
    at the network header, not the Ethernet header (unlike a socket filter). The group lives as long
    as its sockets: nothing to detach.
    """
    if (program is not None) != (kind == FanoutKind.EBPF):
        raise ValueError(
            f"a {kind.name} fanout group takes {'a' if kind == FanoutKind.EBPF else 'no'} program"
        )
    if program is not None and program.type != ProgType.SOCKET_FILTER:
        raise TypeError(f"{program.name} is a {program.type.name} program, not a socket filter")
    sock.setsockopt(_SOL_PACKET, _PACKET_FANOUT, (group_id & 0xFFFF) | (int(kind) << 16))
    if program is not None:
        sock.setsockopt(_SOL_PACKET, _PACKET_FANOUT_DATA, program.fd)


def _is_bpffs(path: Path) -> bool:
    statfs = ctypes.create_string_buffer(256)  # struct statfs; f_type, a long, comes first
    if _libc.statfs(bytes(path), statfs) != 0:
        return False
    return ctypes.c_long.from_buffer(statfs).value == _BPF_FS_MAGIC


def _outer_bpffs() -> Path | None:
    """The bpffs seen by the nearest ancestor process in another mount namespace (the shell that
    ran ``ip netns exec``), as a path through its ``/proc/PID/root``; None if there is none."""
    ours = os.readlink("/proc/self/ns/mnt")
    pid = os.getppid()
    while pid > 0:
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != ours:
                outer = Path(f"/proc/{pid}/root") / BPFFS.relative_to("/")
                return outer if _is_bpffs(outer) else None
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone, or not ours to look into
            return None
        pid = int(stat.rpartition(")")[2].split()[1])  # the field after the state: the parent
    return None


_reached: Path | None = None


def bpffs() -> Path:
    """Where this process reaches the host's bpffs: ``/sys/fs/bpf``, or a path through a held file
    descriptor under ``ip netns exec``.

    ``ip netns exec`` runs each command in a mount namespace of its own with a fresh /sys, where the
    host's bpffs is not mounted, and a private bpffs there would hide one command's pins from the
    next. Neither mount(2) nor open_tree(2) binds a mount of another namespace (EINVAL), but a path
    lookup may cross into one: the bpffs of the process that ran ``ip netns exec`` is opened through
    its ``/proc/PID/root`` and reached as ``/proc/self/fd/N`` for the rest of this process's life,
    whether or not that process lives on.
    """
    global _reached
    if _reached is None:
        if _is_bpffs(BPFFS):
            _reached = BPFFS
        elif (outer := _outer_bpffs()) is not None:
            held = os.open(outer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            _reached = Path(f"/proc/self/fd/{held}")
        else:
            raise LibbpfError(
                errno.ENOENT,
                f"{BPFFS} is not a mounted bpffs, here or where `ip netns exec` was run: run "
                f"ci/bootstrap (or mount -t bpf bpf {BPFFS})",
            )
    return _reached


def pin_dir(name: str) -> Path:
    """A directory for one owner's pins, ``/sys/fs/bpf/bpflab/NAME`` on the host's bpffs, as this
    process reaches it (``bpffs``): whoever pins and whoever opens the pins see the same ones."""
    return bpffs() / PIN_ROOT.relative_to(BPFFS) / name


def pin_name(ifname: str, namespace: str | None = None) -> str:
    """How a data plane names the pins of an interface: ``IF`` in the initial namespace,
    ``IF@NS`` in named namespace NS (given, or the one this thread is in), so that two
    namespaces' ``ens5`` never share pins."""
    where = namespace if namespace is not None else netns.identify()
    return ifname if where is None else f"{ifname}@{where}"


def host_path(path: Path) -> Path:
    """A path on the host's bpffs as the host names it (``/sys/fs/bpf/...``), for messages and the
    journal, whatever way this process reaches it."""
    reached = bpffs()
    return BPFFS / path.relative_to(reached) if path.is_relative_to(reached) else path


_pins: dict[Path, int] = {}  # path -> journal entry


def pin_object(fd: int, path: Path) -> None:
    """Pin a map, program or link fd at ``path`` (from ``pin_dir``); recorded for clean-up."""
    shown = host_path(path)
    if not shown.is_relative_to(PIN_ROOT):
        raise ValueError(f"{shown}: pins of this project live under {PIN_ROOT}")
    path.parent.mkdir(parents=True, exist_ok=True)
    call(lib.bpf_obj_pin, fd, str(path).encode(), what=f"pin at {shown}")
    _pins[path] = journal.current().record("pin", path=str(shown))


def keep_pin(path: Path) -> None:
    """``path`` outlives this process on purpose (a table the next run reopens): strike it from the
    journal, so that ``harness clean`` leaves it once this process has gone."""
    entry = _pins.pop(path, None)
    if entry is not None:
        journal.current().strike(entry)


def unpin_object(path: Path) -> None:
    if path in _pins:
        journal.current().undo(_pins.pop(path))
    else:
        _remove_pin(str(host_path(path)))


def unpin_present(directory: Path, names: Iterable[str]) -> list[Path]:
    """Remove the pins ``directory/NAME`` of ``names`` that exist, whoever made them (a command
    undoing another process's run); the paths removed."""
    removed = [directory / name for name in names if (directory / name).exists()]
    for path in removed:
        unpin_object(path)
    return removed


@journal.undoes("pin")
def _remove_pin(path: str) -> None:
    """Unlink a pin (named as the host names it), then its directories up to PIN_ROOT while they
    are empty."""
    root = bpffs()
    pin = root / Path(path).relative_to(BPFFS)
    pin.unlink(missing_ok=True)
    for parent in pin.parents:
        if parent == root or not parent.is_relative_to(root):
            break
        try:
            parent.rmdir()
        except OSError:
            break  # not empty: another owner's pins are there
