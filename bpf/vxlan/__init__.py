"""The VXLAN pipeline for AWS VPC Traffic Mirroring: decapsulate mirrored frames, keep allowlisted
inner IPv4 traffic, NAT it, clear DF and forward it out of a second interface (XDP redirect, TC
redirect, or a ring buffer for a userspace re-injector).

``vxlan.bpf.c`` is the data plane, ``pipeline.VxlanPipeline`` its control plane, ``allowlist`` the
allowlist file format, ``model`` the Python reference both are tested against.
"""

from bpf.vxlan.allowlist import Allowlist, AllowlistError
from bpf.vxlan.model import Config, DropReason, Egress, Match, Mode, Model, NatTarget, Verdict
from bpf.vxlan.pipeline import Stats, VxlanPipeline

__all__ = [
    "Allowlist",
    "AllowlistError",
    "Config",
    "DropReason",
    "Egress",
    "Match",
    "Mode",
    "Model",
    "NatTarget",
    "Stats",
    "Verdict",
    "VxlanPipeline",
]
