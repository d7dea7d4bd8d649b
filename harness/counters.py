"""Counters at the layers a packet crosses, for reconciling what was sent with what arrived.

``interface_stats`` reads an interface's kernel counters (netlink ``IFLA_STATS64``: rx/tx packets,
bytes, drops) in any namespace; ``delta`` subtracts two readings. Program counters come from the
program's own maps (e.g. ``harness.sink``), injector counts from its report. A test reconciles them:
sent = arrived + counted drops, exactly.
Counting exactly needs a quiet link: a veth's ``tx_dropped`` counts every frame dropped at a full
receiving ring, the kernel's own included, and on a fresh link the kernel talks (IPv6 DAD, router
solicitations, MLD; ARP before its first ICMP error). ``bpf.netns.silence_ipv6`` (or
``silence_ipv6_everywhere`` here) and ``pin_neighbour`` stop that for the duration of a topology (both vanish with its namespaces).
A sender returns when its frames are queued, not when they arrived: ``settled`` reads a counter
once it has stopped moving.
Not for: rates over time (``harness.measure``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pyroute2 import IPRoute

from bpf import netns
from bpf.netns import silence_ipv6

if TYPE_CHECKING:
    from harness.topology import Topology

_NUD_PERMANENT = 0x80
T = TypeVar("T")


def interface_stats(ifname: str, namespace: str | None = None) -> dict[str, int]:
    """The kernel's 64-bit counters of ``ifname`` in ``namespace`` (None: this namespace)."""
    with netns.entered(namespace), IPRoute() as ipr:
        links = ipr.get_links(ifname=ifname)
        if not links:
            where = f"namespace {namespace}" if namespace else "this namespace"
            raise LookupError(f"no interface {ifname!r} in {where}")
        return dict(links[0].get_attr("IFLA_STATS64"))


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after}


def silence_ipv6_everywhere(topology: Topology) -> None:
    """``bpf.netns.silence_ipv6`` on every interface of every node of a built topology (for topologies whose
    traffic is IPv4 only, when counts must be exact)."""
    for node in topology.nodes.values():
        for ifname in node.interfaces.values():
            silence_ipv6(ifname, node.netns)


def pin_neighbour(ifname: str, address: str, mac: str, namespace: str | None = None) -> None:
    """A permanent neighbour entry, so the kernel never ARPs for ``address`` on ``ifname``."""
    with netns.entered(namespace), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.neigh("replace", dst=address, lladdr=mac, ifindex=index, state=_NUD_PERMANENT)


def settled(
    read: Callable[[], T], at_least: T | None = None, still: float = 0.05, timeout: float = 3.0
) -> T:
    """``read()`` once it has reached ``at_least`` (if given) and two reads ``still`` seconds apart
    agree, or at ``timeout``: frames still in flight have landed, and excess ones had time to show.
    A receiver fed in bursts (a ring buffer drained by a user-space re-injector) needs a longer
    ``still``."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        now = read()
        if (now == last and (at_least is None or now >= at_least)) or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(still)
