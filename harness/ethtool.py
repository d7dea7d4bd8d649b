"""The ethtool ioctls the harness needs (``SIOCETHTOOL``), with no ``ethtool`` process to parse.

- ``offload(ifname, name, on)``: read or switch GRO, GSO, TSO, TX checksum (topologies set them);
- ``driver_info(ifname)``: driver, version, firmware, bus (``ethtool -i``);
- ``statistics(ifname)``: the driver's named counters (``ethtool -S``; ENA's
  ``pps_allowance_exceeded`` is one);
- ``rss_table(ifname)``: the RSS indirection table (``ethtool -x``), None if the driver has none.

Channels and link modes come from pyroute2's ``Ethtool`` (netlink). Each function takes the
interface's namespace (None: this one). Errors are OSError naming the command and the interface.
Not for: deciding whether a NIC is fit for a benchmark (``harness.preflight``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct
from dataclasses import dataclass

from bpf import netns as bpf_netns

_SIOCETHTOOL = 0x8946
_GDRVINFO, _GSTRINGS, _GSTATS, _GSSET_INFO, _GRXFHINDIR = 0x03, 0x1B, 0x1D, 0x37, 0x38
_ETH_SS_STATS = 1
_ETH_GSTRING_LEN = 32
# Legacy ethtool ioctl commands (get, set) per offload; the kernel maps them onto netdev features.
_OFFLOAD_CMDS = {
    "gro": (0x2B, 0x2C),
    "gso": (0x23, 0x24),
    "tso": (0x1E, 0x1F),
    "tx_checksum": (0x16, 0x17),
}
_DRVINFO = struct.Struct("=I32s32s32s32s32s12sIIIII")  # struct ethtool_drvinfo


@dataclass(frozen=True)
class DriverInfo:
    driver: str
    version: str
    firmware: str
    bus: str


def _buffer(data: bytes) -> ctypes.Array:
    return ctypes.create_string_buffer(data, len(data))  # no NUL added: sizes are the kernel's


def _call(ifname: str, netns: str | None, request: ctypes.Array, what: str) -> None:
    with bpf_netns.entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(request)).ljust(40, b"\0")
        try:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
        except OSError as err:
            raise OSError(err.errno, f"ethtool {what} on {ifname}: {err.strerror}") from None


def _value(ifname: str, netns: str | None, cmd: int, data: int, what: str) -> int:
    """One ethtool_value ioctl (struct { u32 cmd; u32 data; }); returns data as the kernel left it."""
    request = _buffer(struct.pack("II", cmd, data))
    _call(ifname, netns, request, what)
    return struct.unpack("II", request.raw)[1]


def offload(ifname: str, name: str, on: bool | None = None, namespace: str | None = None) -> bool:
    """Read (``on=None``) or switch offload ``name`` (gro, gso, tso, tx_checksum) of an interface;
    returns its state."""
    get_cmd, set_cmd = _OFFLOAD_CMDS[name]
    if on is not None:
        _value(ifname, namespace, set_cmd, int(on), name)
    return bool(_value(ifname, namespace, get_cmd, 0, name))


def driver_info(ifname: str, netns: str | None = None) -> DriverInfo:
    request = _buffer(_DRVINFO.pack(_GDRVINFO, *([b""] * 6), 0, 0, 0, 0, 0))
    _call(ifname, netns, request, "-i")
    fields = _DRVINFO.unpack(request.raw)
    text = [f.split(b"\0", 1)[0].decode(errors="replace") for f in fields[1:5]]
    return DriverInfo(*text)


def statistics(ifname: str, netns: str | None = None) -> dict[str, int]:
    """The driver's counters by name (empty if it has none)."""
    info = _buffer(struct.pack("=IIQI", _GSSET_INFO, 0, 1 << _ETH_SS_STATS, 0))
    try:
        _call(ifname, netns, info, "-S")
    except OSError as err:
        if err.errno == errno.EOPNOTSUPP:
            return {}
        raise
    (count,) = struct.unpack_from("=I", info.raw, 16)
    names = _buffer(
        struct.pack("=III", _GSTRINGS, _ETH_SS_STATS, count) + bytes(count * _ETH_GSTRING_LEN)
    )
    _call(ifname, netns, names, "-S")
    values = _buffer(struct.pack("=II", _GSTATS, count) + bytes(count * 8))
    _call(ifname, netns, values, "-S")
    out = {}
    for i in range(count):
        raw = names.raw[12 + i * _ETH_GSTRING_LEN : 12 + (i + 1) * _ETH_GSTRING_LEN]
        out[raw.split(b"\0", 1)[0].decode()] = struct.unpack_from("=Q", values.raw, 8 + i * 8)[0]
    return out


def rss_table(ifname: str, netns: str | None = None) -> tuple[int, ...] | None:
    """The RSS indirection table (queue of each entry); None if the driver keeps none."""
    size_query = _buffer(struct.pack("=II", _GRXFHINDIR, 0))
    try:
        _call(ifname, netns, size_query, "-x")
    except OSError as err:
        if err.errno == errno.EOPNOTSUPP:
            return None
        raise
    (size,) = struct.unpack_from("=I", size_query.raw, 4)
    if size == 0:
        return None
    table = _buffer(struct.pack("=II", _GRXFHINDIR, size) + bytes(4 * size))
    _call(ifname, netns, table, "-x")
    return struct.unpack_from(f"={size}I", table.raw, 8)
