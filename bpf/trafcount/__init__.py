"""The traffic counter: packets and bytes per IP address (source or destination) and protocol, at XDP
ingress, TC ingress or TC egress, IPv4 and IPv6, exact when several CPUs count one address, in an LRU
table whose evictions are counted; a time series of per-address deltas up to 1 kHz and Prometheus
metrics on top.

``trafcount.bpf.c`` is the data plane (its packet sizes and exact inserts, ``bpf/include/counter.h``,
are shared with flow metrics), ``trafcount.TrafCount`` its control plane, ``series`` the time
series (its reader in C, ``series.c``), ``model`` the Python reference the data plane and the time
series are tested against, ``cli`` the ``trafcount`` command.
"""

from bpf.trafcount.model import ByteCount, Config, Hook, Key, Model, TrafKey, default_key
from bpf.trafcount.trafcount import Totals, TrafCount

__all__ = [
    "ByteCount",
    "Config",
    "Hook",
    "Key",
    "Model",
    "Totals",
    "TrafCount",
    "TrafKey",
    "default_key",
]
