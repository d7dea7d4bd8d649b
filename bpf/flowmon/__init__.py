"""Flow metrics: per 5-tuple packets, bytes, first and last seen and TCP flags, counted at XDP ingress,
TC ingress or TC egress, in the map kind chosen at load (hash, per-CPU hash, LRU, array, per-CPU array
or ring buffer), with every packet not counted counted by reason.

``flowmon.bpf.c`` is the data plane (its storage layer, ``bpf/include/flowtable.h``, is shared),
``flowmon.FlowMon`` its control plane and ``flowmon.FlowTable`` the reusable storage reader, ``model``
the Python reference both are tested against, ``cli`` the ``flowmon`` command.
"""

from bpf.flowmon.flowmon import Flow, FlowMon, FlowTable
from bpf.flowmon.model import Config, Direction, FlowKey, Full, Hook, Model, Storage

__all__ = [
    "Config",
    "Direction",
    "Flow",
    "FlowKey",
    "FlowMon",
    "FlowTable",
    "Full",
    "Hook",
    "Model",
    "Storage",
]
