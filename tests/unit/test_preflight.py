"""Preflight's rules on the facts a machine gives (channel counts, sysfs, /proc/interrupts): each
check passes, skips with the reason, or fails with the reason and the fix. What they read from a
real interface is tested on host veths (tests/functional/test_preflight.py)."""

from __future__ import annotations

from pathlib import Path

from pyroute2.ethtool.ethtool import EthtoolChannels

from harness.preflight import Status, btf_check, channels_check, governor_check, irq_affinity_check


def _channels(combined: int, max_combined: int) -> EthtoolChannels:
    return EthtoolChannels(0, 0, 0, max_combined, 0, 0, 0, combined)


def test_ena_needs_at_most_half_its_channels():
    over = channels_check("ens5", "ena", _channels(8, 8))
    assert (over.status, over.fix) == (Status.FAIL, "ethtool -L ens5 combined 4")
    assert "half its channels" in over.detail
    assert channels_check("ens5", "ena", _channels(4, 8)).status is Status.PASS
    assert channels_check("p0", "mlx5_core", _channels(8, 8)).status is Status.PASS


def test_btf_missing_says_which_kernel_option(tmp_path):
    missing = btf_check(tmp_path / "vmlinux")
    assert (missing.status, missing.fix) == (
        Status.FAIL,
        "a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    )
    (tmp_path / "vmlinux").write_bytes(b"\0" * 4096)
    assert btf_check(tmp_path / "vmlinux").status is Status.PASS


def _cpus(tmp_path: Path, *governors: str) -> Path:
    for cpu, governor in enumerate(governors):
        path = tmp_path / f"cpu{cpu}" / "cpufreq"
        path.mkdir(parents=True)
        (path / "scaling_governor").write_text(governor + "\n")
    return tmp_path


def test_governor_other_than_performance_fails_with_the_command(tmp_path):
    check = governor_check(_cpus(tmp_path, "performance", "powersave"))
    assert (check.status, check.fix) == (Status.FAIL, "cpupower frequency-set -g performance")
    assert "performance, powersave" in check.detail


def test_governor_performance_passes_and_none_skips(tmp_path):
    assert governor_check(_cpus(tmp_path / "a", "performance", "performance")).status is Status.PASS
    skipped = governor_check(tmp_path / "b")
    assert skipped.status is Status.SKIP and "no cpufreq" in skipped.detail


INTERRUPTS = """\
           CPU0       CPU1
 24:          0     912345  PCI-MSIX-0000:00:05.0   1-edge      ens5-Tx-Rx-0
 25:     812345          0  PCI-MSIX-0000:00:05.0   2-edge      ens5-Tx-Rx-1
 26:          3          0  PCI-MSIX-0000:00:06.0   1-edge      ens50-Tx-Rx-0
"""


def test_irq_affinity_of_the_queues_named_after_the_interface(tmp_path):
    for irq, cpus in (("24", "1"), ("25", "0"), ("26", "0-1")):
        (tmp_path / irq).mkdir()
        (tmp_path / irq / "smp_affinity_list").write_text(cpus + "\n")
    check = irq_affinity_check("ens5", INTERRUPTS, tmp_path)
    assert (check.status, check.detail) == (Status.PASS, "2 IRQs: 24->1, 25->0")
    skipped = irq_affinity_check("veth0", INTERRUPTS, tmp_path)
    assert skipped.status is Status.SKIP
