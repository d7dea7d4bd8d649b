"""Run a block of code inside a named network namespace (the ``ip netns`` convention: /run/netns/NAME).

setns(2) moves only the calling thread, so other threads of the process are unaffected, and what the
block opens (sockets, netlink handles, BPF links by ifindex) stays bound to that namespace after the
block ends. This module enters namespaces and silences a namespace's IPv6 on an interface; creating
and deleting namespaces is the topology's job.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NETNS_RUN_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """A network namespace does not exist or cannot be entered."""


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns into {what}: {os.strerror(err)}")


def exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def identify() -> str | None:
    """The name under /run/netns of the namespace this thread is in (as ``ip netns identify``),
    or None when it has none: the host's own, or a container's, which is its own world."""
    here = os.stat("/proc/thread-self/ns/net").st_ino
    if NETNS_RUN_DIR.is_dir():
        for path in sorted(NETNS_RUN_DIR.iterdir()):
            try:
                if path.stat().st_ino == here:
                    return path.name
            except OSError:  # a namespace removed while we look
                continue
    return None


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block in namespace ``name``; ``None`` means the namespace the thread is already in."""
    if name is None:
        yield
        return
    path = NETNS_RUN_DIR / name
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(
            errno.ENOENT, f"network namespace {name!r} does not exist ({path})"
        ) from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, f"network namespace {name!r}")
        try:
            yield
        finally:
            _setns(home, "the thread's original network namespace")
    finally:
        os.close(target)
        os.close(home)


def silence_ipv6(ifname: str, namespace: str | None = None) -> None:
    """Turn IPv6 off on ``ifname``, so its kernel sends no ND, router solicitation or MLD there
    (exact counts, and monitors that must see only the traffic they are given, need that)."""
    with entered(namespace):  # /proc/sys/net resolves the namespace of the thread that opens it
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
