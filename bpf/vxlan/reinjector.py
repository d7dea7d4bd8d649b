"""The VXLAN pipeline's ring-buffer re-injector: frames the XDP program queued to ``frames`` (ringbuf
mode) go out of the egress interface from user space, for NICs that cannot redirect.

```python
with VxlanPipeline(Config(mode=Mode.RINGBUF)) as vx, Reinjector(vx.ring, "ens6", "dut") as out:
    vx.attach("ens5", netns="dut")
    vx.set_egress("ens6", next_hop_mac, netns="dut")
    out.run(stop)          # until the threading.Event ``stop`` is set; out.forwarded, out.failed
    vx.detach()
    out.drain()            # what the ring still holds
```

Records are read straight from the ring's memory (``bpf.ringbuf.RingReader``: no callback per
record) and copied into an AF_PACKET TX ring (``bpf.txring.TxRing``: one ``send()`` per batch, not
per frame); each frame is copied once, from a memoryview of the ring into a TX slot, never through
Python ``bytes``. A record is ``struct vxlan_frame`` cut to its frame: ``len`` (4 bytes) then exactly
``len`` bytes, so the frame is the record less its first 4 bytes. The loop sleeps in ``select()`` on
the map's fd, which the kernel makes readable when it commits a record to an empty ring.

Accounting: every record read is ``forwarded`` (queued to the TX ring) or ``failed`` (longer than a
TX slot or the egress's MTU, refused by the kernel as malformed, or queued while the egress was
down), so the pipeline's ``queued`` counter equals
``forwarded + failed`` once the ring is empty. A frame the egress drops after the TX ring (a full
veth peer) is the egress's ``tx_dropped``. Not for: reading frames to look at them
(``VxlanPipeline.frames``).
"""

from __future__ import annotations

import fcntl
import mmap
import select
import socket
import struct
import threading

from bpf import netns as bpf_netns
from bpf.object import Map
from bpf.ringbuf import RingReader
from bpf.txring import TxRing

FRAME_OFFSET = 4  # offsetof(struct vxlan_frame, data)
SLOT_SIZE = mmap.PAGESIZE  # a TX slot: frames up to 4054 bytes, past any MTU native XDP allows
TX_SLOTS = 2048
BATCH = 1024  # records per TX ring flush: the ring is 8 MiB, thousands of small frames
VLAN_HLEN = 4  # AF_PACKET takes a frame of MTU + Ethernet header + one VLAN tag
_SIOCGIFMTU = 0x8921


def interface_mtu(ifname: str, netns: str | None = None) -> int:
    with bpf_netns.entered(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        info = fcntl.ioctl(sock, _SIOCGIFMTU, struct.pack("16si", ifname.encode()[:15], 0))
    return struct.unpack_from("i", info, 16)[0]


class Reinjector:
    """Forwards the records of a RINGBUF map of ``struct vxlan_frame`` out of ``ifname``."""

    def __init__(
        self, ring: Map, ifname: str, netns: str | None = None, batch: int = BATCH
    ) -> None:
        self.ifname, self.batch = ifname, batch
        self.reader = RingReader(ring)
        try:
            self.tx = TxRing(ifname, netns, frame_size=SLOT_SIZE, frames=TX_SLOTS)
        except BaseException:
            self.reader.close()
            raise
        # A longer frame would make the kernel fail the whole send() (EMSGSIZE): count it instead.
        largest = min(self.tx.max_frame, interface_mtu(ifname, netns) + 14 + VLAN_HLEN)
        self._largest_record = FRAME_OFFSET + largest
        self.too_big = 0

    @property
    def forwarded(self) -> int:
        """Frames handed to the egress (the kernel took them from the TX ring)."""
        return self.tx.sent - self.tx.rejected - self.tx.refused.total()

    @property
    def failed(self) -> int:
        """Frames read from the ring that did not go out: too long for a TX slot or the egress's
        MTU, refused by the kernel as malformed, or taken back from a link that was down."""
        return self.too_big + self.tx.rejected + self.tx.refused.total()

    def _frames(self):
        """The frames of the records waiting now (at most ``batch``), as memoryviews of the ring."""
        largest = self._largest_record
        for record in self.reader.records(self.batch):
            if len(record) > largest:
                self.too_big += 1
                continue
            yield record[FRAME_OFFSET:]

    def forward(self) -> int:
        """Forward one batch of what is waiting now, without sleeping; returns the records read."""
        before = self.too_big
        return self.tx.send(self._frames()) + self.too_big - before

    def run(self, stop: threading.Event, poll_interval: float = 0.1) -> None:
        """Forward until ``stop`` is set (checked at least every ``poll_interval`` seconds). The map's
        fd stays readable while records wait, so a full batch is followed at once by the next."""
        fd = self.reader.fileno()
        while not stop.is_set():
            if select.select([fd], [], [], poll_interval)[0]:
                self.forward()

    def drain(self) -> None:
        """Forward everything left, once the producer has stopped (the program detached)."""
        while self.forward() == self.batch:
            pass

    def close(self) -> None:
        self.tx.close()
        self.reader.close()

    def __enter__(self) -> Reinjector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
