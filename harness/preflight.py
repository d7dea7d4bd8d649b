"""NIC preflight: what the DUT's interfaces and the machine can do, checked before any figure is taken.

``preflight(ifname, netns, driver=...)`` runs each check on one interface and returns a ``Report``:
every check passes, is skipped with the reason (a virtual device has no IRQs), or fails with the
reason and the fix (the command that would make it pass). The report is recorded with the results
(the testbed's fingerprint), and benchmarks refuse to run on an interface whose report failed.

Checks, in order:
- ``driver``: driver, version, firmware, bus (``ethtool -i``), against the testbed's driver;
- ``link``: the link speed (``ethtool``), recorded;
- ``xdp-features``: the netdev netlink family's XDP features (``basic``, ``redirect``,
  ``ndo-xmit``, ``xsk-zerocopy``, ``rx-sg``); ``basic`` is required;
- ``native-xdp``: a program attached in native mode really is native (the kernel says DRV, not
  SKB); if the attach is refused at this MTU, the driver's single-buffer limit is found by trying
  attaches at lower MTUs (never from a table), and given as the fix;
- ``channels``: the channel counts; on ENA, XDP needs at most half the maximum
  (``ethtool -L IF combined MAX/2``);
- ``rss``: the RSS indirection table (``ethtool -x``), which soft RSS compares itself with;
- ``btf``: the kernel's BTF (``/sys/kernel/btf/vmlinux``);
- ``governor``: the CPU frequency governor (``performance`` wanted);
- ``irq-affinity``: the CPUs of the interface's queue IRQs (``/proc/interrupts``);
- ``pps-allowance``: ENA's ``pps_allowance_exceeded`` (AWS caps packets per second per instance),
  read now; ``Report.pps_capped()`` reads it again after the run.

Not for: choosing interfaces (``harness.testbed``) or measuring (``harness.bench``).
"""

from __future__ import annotations

import enum
import errno
import re
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool
from pyroute2.ethtool.ethtool import EthtoolChannels
from pyroute2.netlink import NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

import bpf
from bpf import XdpMode
from bpf import netns as bpf_netns
from bpf.libbpf import LibbpfError
from harness import ethtool

TRIVIAL = Path(bpf.__file__).parent / "selftest" / "trivial.bpf.c"
BTF = Path("/sys/kernel/btf/vmlinux")
CPUS = Path("/sys/devices/system/cpu")
IRQS = Path("/proc/irq")
PPS_COUNTER = "pps_allowance_exceeded"
MIN_MTU = 68
_NETDEV_CMD_DEV_GET = 1
XDP_FEATURES = {  # enum netdev_xdp_act (include/uapi/linux/netdev.h)
    "basic": 1 << 0,
    "redirect": 1 << 1,
    "ndo-xmit": 1 << 2,
    "xsk-zerocopy": 1 << 3,
    "hw-offload": 1 << 4,
    "rx-sg": 1 << 5,
    "ndo-xmit-sg": 1 << 6,
}


class Status(enum.Enum):
    PASS = "pass"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.status.value:4}  {self.name:14} {self.detail}{fix}"


@dataclass
class Report:
    """The checks of one interface."""

    ifname: str
    netns: str | None
    checks: list[Check] = field(default_factory=list)
    pps_before: int | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.FAIL]

    def check(self, name: str) -> Check:
        (found,) = [c for c in self.checks if c.name == name]
        return found

    def text(self) -> str:
        where = f" (namespace {self.netns})" if self.netns else ""
        return "\n".join([f"preflight of {self.ifname}{where}:", *(c.line() for c in self.checks)])

    def as_dict(self) -> dict:
        return {
            "ifname": self.ifname,
            "checks": [{**asdict(c), "status": c.status.value} for c in self.checks],
        }

    def pps_capped(self) -> int:
        """Packets ENA refused over the instance's allowance since preflight (0 off ENA)."""
        if self.pps_before is None:
            return 0
        now = ethtool.statistics(self.ifname, self.netns).get(PPS_COUNTER, self.pps_before)
        return now - self.pps_before


class _NetdevMessage(genlmsg):
    """The netdev generic netlink family's device message (include/uapi/linux/netdev.h)."""

    nla_map = (
        ("NETDEV_A_DEV_UNSPEC", "none"),
        ("NETDEV_A_DEV_IFINDEX", "uint32"),
        ("NETDEV_A_DEV_PAD", "none"),
        ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
        ("NETDEV_A_DEV_XDP_ZC_MAX_SEGS", "uint32"),
    )


def xdp_features(ifname: str, netns: str | None = None) -> set[str]:
    """The XDP features the driver declares, from the netdev netlink family (kernel 6.3+)."""
    with bpf_netns.entered(netns):
        index = socket.if_nametoindex(ifname)
        sock = GenericNetlinkSocket()
    try:
        sock.bind("netdev", _NetdevMessage)
        request = _NetdevMessage()
        request["cmd"], request["version"] = _NETDEV_CMD_DEV_GET, 1
        request["attrs"] = [("NETDEV_A_DEV_IFINDEX", index)]
        (reply,) = sock.nlm_request(request, msg_type=sock.prid, msg_flags=NLM_F_REQUEST)
        bits = reply.get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0
    finally:
        sock.close()
    return {name for name, bit in XDP_FEATURES.items() if bits & bit}


def _driver(ifname: str, netns: str | None, expected: str | None) -> Check:
    info = ethtool.driver_info(ifname, netns)
    detail = f"{info.driver} {info.version}, firmware {info.firmware or '-'}, bus {info.bus or '-'}"
    if expected is not None and info.driver != expected:
        return Check(
            "driver",
            Status.FAIL,
            f"{detail}: the testbed expects {expected}",
            "run on the testbed's machine, or pick the testbed of this NIC (--testbed)",
        )
    return Check("driver", Status.PASS, detail)


def _link(ifname: str, netns: str | None) -> Check:
    with bpf_netns.entered(netns):
        tool = Ethtool()
    try:
        mode = tool.get_link_mode(ifname)
    finally:
        tool.close()
    if not mode.speed or mode.speed < 0:
        return Check("link", Status.SKIP, "the driver reports no link speed")
    return Check("link", Status.PASS, f"{mode.speed} Mb/s {mode.duplex or ''}".strip())


def _xdp_features(ifname: str, netns: str | None) -> Check:
    try:
        features = xdp_features(ifname, netns)
    except Exception as err:  # an older kernel has no netdev family: pyroute2 raises its own types
        return Check("xdp-features", Status.SKIP, f"no netdev netlink family ({err})")
    listed = ", ".join(sorted(features)) or "none"
    if "basic" not in features:
        return Check(
            "xdp-features",
            Status.FAIL,
            f"{listed}: no native XDP",
            "a driver with native XDP (ena, mlx5_core, veth); generic XDP is not what is measured",
        )
    return Check("xdp-features", Status.PASS, listed)


def _attached_natively(program: bpf.Program, ifname: str, netns: str | None) -> bool:
    """Attach, and ask the kernel in which mode the program runs: driver mode has its own id."""
    attached = program.attach_xdp(ifname, XdpMode.NATIVE, netns)
    with attached, bpf_netns.entered(netns), IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=ifname)
    return link.get_nested("IFLA_XDP", "IFLA_XDP_DRV_PROG_ID") == program.info().id


def _set_mtu(ifname: str, netns: str | None, mtu: int) -> None:
    with bpf_netns.entered(netns), IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu)


def _mtu(ifname: str, netns: str | None) -> int:
    with bpf_netns.entered(netns), IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=ifname)
    return link.get_attr("IFLA_MTU")


def _mtu_holder(ifname: str, netns: str | None, driver: str) -> tuple[str, str | None]:
    """The interface whose MTU bounds a single-buffer XDP attach: a NIC's own; a veth's is its
    peer's (the kernel refuses XDP on a veth whose peer could send it larger frames)."""
    if driver != "veth":
        return ifname, netns
    peer_index = ethtool.statistics(ifname, netns)["peer_ifindex"]
    with bpf_netns.entered(netns):
        own_index = socket.if_nametoindex(ifname)
    named = (
        sorted(p.name for p in bpf_netns.NETNS_RUN_DIR.iterdir())
        if bpf_netns.NETNS_RUN_DIR.is_dir()
        else []
    )
    for candidate in dict.fromkeys([netns, None, *named]):
        with bpf_netns.entered(candidate), IPRoute() as ipr:
            try:
                (link,) = ipr.link("get", index=peer_index)
            except NetlinkError:
                continue
        if link.get_attr("IFLA_LINK") == own_index and link.get_attr("IFLA_LINKINFO"):
            return link.get_attr("IFLA_IFNAME"), candidate
    raise LookupError(f"the veth peer of {ifname} (index {peer_index}) is in no namespace known")


def _xdp_mtu_limit(
    program: bpf.Program, ifname: str, netns: str | None, holder: tuple[str, str | None]
) -> int | None:
    """The highest MTU of ``holder`` at which a single-buffer XDP program attaches to ``ifname``,
    by bisection; the MTU is put back afterwards. None if none does (not an MTU matter)."""
    mtu = _mtu(*holder)
    low, high = MIN_MTU, mtu - 1  # low: assumed to attach (checked last); high: to try
    try:
        while low < high:
            middle = (low + high + 1) // 2
            _set_mtu(*holder, middle)
            try:
                _attached_natively(program, ifname, netns)
                low = middle
            except LibbpfError as err:
                if err.errno != errno.ERANGE:
                    raise
                high = middle - 1
        _set_mtu(*holder, low)
        _attached_natively(program, ifname, netns)
    except LibbpfError:
        return None
    finally:
        _set_mtu(*holder, mtu)
    return low


def _native_xdp(ifname: str, netns: str | None, driver: str) -> Check:
    with bpf.BpfObject.open(TRIVIAL) as obj:
        obj.load()
        program = obj.programs["xdp_pass"]
        try:
            native = _attached_natively(program, ifname, netns)
        except LibbpfError as err:
            if err.errno != errno.ERANGE:
                return Check("native-xdp", Status.FAIL, f"native attach refused: {err.strerror}")
            holder = _mtu_holder(ifname, netns, driver)
            whose = "its" if holder[0] == ifname else f"its peer {holder[0]}'s"
            mtu = _mtu(*holder)
            limit = _xdp_mtu_limit(program, ifname, netns, holder)
            if limit is None:
                return Check(
                    "native-xdp",
                    Status.FAIL,
                    f"native attach refused (ERANGE) at {whose} MTU {mtu} and every lower one",
                    "see the kernel log (dmesg) for the driver's reason",
                )
            return Check(
                "native-xdp",
                Status.FAIL,
                f"{whose} MTU {mtu} is over the driver's single-buffer XDP limit, {limit} "
                f"(found by attaching)",
                f"ip link set {holder[0]} mtu {limit}",
            )
    if not native:
        return Check(
            "native-xdp",
            Status.FAIL,
            "the kernel fell back to generic (SKB) mode",
            "a driver with native XDP; generic XDP is not what is measured",
        )
    return Check("native-xdp", Status.PASS, f"attached in driver mode at MTU {_mtu(ifname, netns)}")


def _channels(ifname: str, netns: str | None, driver: str) -> Check:
    with bpf_netns.entered(netns):
        tool = Ethtool()
    try:
        channels = tool.get_channels(ifname)
    except Exception as err:  # pyroute2's NotSupportedError and netlink errors alike
        return Check("channels", Status.SKIP, f"the driver reports no channels ({err})")
    finally:
        tool.close()
    return channels_check(ifname, driver, channels)


def channels_check(ifname: str, driver: str, channels: EthtoolChannels) -> Check:
    detail = (
        f"rx {channels.rx_count}/{channels.max_rx}, tx {channels.tx_count}/{channels.max_tx}, "
        f"combined {channels.combined_count}/{channels.max_combined}"
    )
    if driver == "ena" and channels.combined_count > channels.max_combined // 2:
        half = channels.max_combined // 2
        return Check(
            "channels",
            Status.FAIL,
            f"{detail}: ENA needs at most half its channels for XDP",
            f"ethtool -L {ifname} combined {half}",
        )
    return Check("channels", Status.PASS, detail)


def _rss(ifname: str, netns: str | None, driver: str) -> Check:
    table = ethtool.rss_table(ifname, netns)
    if table is None:
        return Check("rss", Status.SKIP, f"{driver} keeps no RSS indirection table")
    queues = len(set(table))
    return Check("rss", Status.PASS, f"{len(table)} entries over {queues} queues")


def btf_check(btf: Path = BTF) -> Check:
    if btf.is_file():
        return Check("btf", Status.PASS, f"{btf} ({btf.stat().st_size // 1024} KiB)")
    return Check("btf", Status.FAIL, f"no {btf}", "a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def governor_check(cpus: Path = CPUS) -> Check:
    governors = {
        path.read_text().strip() for path in cpus.glob("cpu[0-9]*/cpufreq/scaling_governor")
    }
    if not governors:
        return Check("governor", Status.SKIP, "no cpufreq: the hypervisor or firmware sets it")
    if governors != {"performance"}:
        return Check(
            "governor",
            Status.FAIL,
            f"{', '.join(sorted(governors))}: frequency changes under load move the figures",
            "cpupower frequency-set -g performance",
        )
    return Check("governor", Status.PASS, "performance on every CPU")


def irq_affinity_check(ifname: str, interrupts: str, irq_dir: Path = IRQS) -> Check:
    """The CPUs of the IRQs that ``interrupts`` (the text of /proc/interrupts) names after ``ifname``
    (ENA: ens5-Tx-Rx-0, mlx5: mlx5_comp0@pci:...; a virtual device has none)."""
    irqs = []
    for line in interrupts.splitlines()[1:]:
        number, _, rest = line.partition(":")
        if re.search(rf"\b{re.escape(ifname)}\b", rest) and number.strip().isdigit():
            irqs.append(number.strip())
    if not irqs:
        return Check("irq-affinity", Status.SKIP, "no IRQ in /proc/interrupts is named after it")
    cpus = [(irq_dir / irq / "smp_affinity_list").read_text().strip() for irq in irqs]
    pairs = ", ".join(f"{irq}->{cpu}" for irq, cpu in zip(irqs, cpus, strict=True))
    return Check("irq-affinity", Status.PASS, f"{len(irqs)} IRQs: {pairs}")


def preflight(ifname: str, netns: str | None = None, *, driver: str | None = None) -> Report:
    """Every check on ``ifname`` (in ``netns``); ``driver`` is the testbed's (None: any)."""
    report = Report(ifname, netns)
    found = ethtool.driver_info(ifname, netns).driver
    checks: list[Callable[[], Check]] = [
        lambda: _driver(ifname, netns, driver),
        lambda: _link(ifname, netns),
        lambda: _xdp_features(ifname, netns),
        lambda: _native_xdp(ifname, netns, found),
        lambda: _channels(ifname, netns, found),
        lambda: _rss(ifname, netns, found),
        btf_check,
        governor_check,
        lambda: irq_affinity_check(ifname, Path("/proc/interrupts").read_text()),
    ]
    for run in checks:
        report.checks.append(run())
    stats = ethtool.statistics(ifname, netns)
    if PPS_COUNTER in stats:
        report.pps_before = stats[PPS_COUNTER]
        report.checks.append(
            Check("pps-allowance", Status.PASS, f"{PPS_COUNTER} = {report.pps_before} before")
        )
    else:
        report.checks.append(
            Check("pps-allowance", Status.SKIP, f"{found} counts no {PPS_COUNTER}")
        )
    return report
