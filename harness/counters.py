"""Counters at the layers a packet crosses, for reconciling what was sent with what arrived.

``interface_stats`` reads an interface's kernel counters (netlink ``IFLA_STATS64``: rx/tx packets,
bytes, drops) in any namespace; ``delta`` subtracts two readings. Program counters come from the
program's own maps (e.g. ``harness.sink``), injector counts from its report. A test reconciles them:
sent = arrived + counted drops, exactly.
Not for: rates over time (``harness.measure``).
"""

from __future__ import annotations

from pyroute2 import IPRoute

from bpf import netns


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
