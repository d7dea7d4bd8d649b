"""PF_PACKET receive packet steering: the frames of one interface spread over N AF_PACKET sockets,
one per worker process, by a hash of a MAC address, through per-socket filters (the seed's design)
or one PACKET_FANOUT group.

``pfrps.bpf.c`` is the data plane, ``pfrps.Node`` the node that runs the workers, ``model`` the
Python reference both are tested against.
"""

from bpf.pfrps.model import HashAlg, MacSide, Protocols
from bpf.pfrps.pfrps import Config, Mode, Node, Rx, WorkerCount

__all__ = ["Config", "HashAlg", "MacSide", "Mode", "Node", "Protocols", "Rx", "WorkerCount"]
