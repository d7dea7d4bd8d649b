"""Soft RSS: an XDP program that spreads flows over buckets as NIC RSS would, counts them per bucket
and per flow, reports elephant flows, and optionally steers each bucket to a CPU or an interface.

``softrss.bpf.c`` is the data plane, ``softrss.SoftRss`` its control plane, ``model`` the Python
reference both are tested against.
"""

from bpf.softrss.model import Action, Config, FlowKey, HashKind, equal_reta
from bpf.softrss.softrss import (
    Balance,
    Bucket,
    BucketReport,
    Elephant,
    Flow,
    SoftRss,
)

__all__ = [
    "Action",
    "Balance",
    "Bucket",
    "BucketReport",
    "Config",
    "Elephant",
    "Flow",
    "FlowKey",
    "HashKind",
    "SoftRss",
    "equal_reta",
]
