"""A peer host reached over OpenSSH: one persistent connection, the project's commands run there.

``SshPeer(address)`` opens a control master (``ssh -M -N``) as the kernel's ``drivers/net``
selftests do, so each later command rides the same authenticated connection (a few milliseconds,
not a handshake). The master stays in the foreground as a journaled daemon (``ControlPersist``
would fork it away from us): a killed run leaves nothing.
``run(argv)`` runs a command there; ``command(name)`` is the path of one of the project's console
scripts on the peer (``injector``), installed there by the documented command (README: testbeds).

The peer's interface toward the DUT is never typed in: ``interface_toward(network)`` asks the peer
which of its interfaces holds an address in the DUT's network (``ip -j addr show to PREFIX``, as
the kernel's library finds the remote's interface). No agent of our own runs there: ssh, ``ip``,
``cat`` of sysfs counters and the project's own commands. Not for: what to send (``harness.bench``).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bpf.daemon import Daemon
from harness.testbed import PeerAddress

CONNECT_TIMEOUT = 10.0  # seconds for the control master to be up
COMMAND_TIMEOUT = 600.0


class PeerError(RuntimeError):
    """The peer cannot be reached, or a command there failed; the message says which and why."""


@dataclass(frozen=True)
class PeerInterface:
    ifname: str
    mac: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface


class SshPeer:
    """One peer host: ``with SshPeer(address, bin_dir) as peer: peer.run([...])``; ``config`` is an
    ssh_config(5) file (``ssh -F``: keys, known hosts), else the user's own."""

    def __init__(
        self,
        address: PeerAddress,
        bin_dir: str | None = None,
        *,
        config: Path | None = None,
    ) -> None:
        self.address, self.bin_dir = address, bin_dir
        self._dir = tempfile.TemporaryDirectory(prefix="bpflab-ssh-")
        self.control_path = Path(self._dir.name) / "control"
        options = [
            "-o",
            f"ControlPath={self.control_path}",
            "-o",
            "BatchMode=yes",  # never prompt: a test run has no one to answer
            "-o",
            f"ConnectTimeout={int(CONNECT_TIMEOUT)}",
            "-o",
            "ServerAliveInterval=5",
        ]
        if config is not None:
            options = ["-F", str(config), *options]
        if address.port:
            options += ["-p", str(address.port)]
        self._options = options
        self._master: Daemon | None = None

    def _ssh(self, *args: str) -> list[str]:
        return ["ssh", *self._options, *args, self.address.destination]

    def open(self) -> SshPeer:
        log = Path(self._dir.name) / "master.log"
        self._master = Daemon.start(self._ssh("-M", "-N"), output=log)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while time.monotonic() < deadline:
            if self._master.poll() is not None:
                self._master.stop()
                self._master = None
                raise PeerError(f"{self.address}: ssh failed: {log.read_text().strip()}")
            check = subprocess.run(self._ssh("-O", "check"), capture_output=True, check=False)
            if check.returncode == 0:
                return self
            time.sleep(0.05)
        self.close()
        raise PeerError(f"{self.address}: no ssh connection within {CONNECT_TIMEOUT} s")

    def close(self) -> None:
        if self._master is not None:
            subprocess.run(self._ssh("-O", "exit"), capture_output=True, check=False)
            self._master.stop()
            self._master = None
        self._dir.cleanup()

    def __enter__(self) -> SshPeer:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, name: str) -> str:
        """The path of the project's command ``name`` on the peer."""
        return f"{self.bin_dir}/{name}" if self.bin_dir else name

    def run(
        self, argv: list[str], *, input: str | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> str:
        """Run ``argv`` on the peer; its stdout, or PeerError with its stderr."""
        done = subprocess.run(
            [*self._ssh(), "--", shlex.join(argv)],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise PeerError(
                f"{self.address}: `{shlex.join(argv)}` exited {done.returncode}: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def start(self, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` on the peer with pipes to its stdin and stdout (text); the caller ends it
        by closing stdin. A killed run closes the pipe too, so the command ends with it."""
        return subprocess.Popen(
            [*self._ssh(), "--", shlex.join(argv)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def write_file(self, path: str, content: str) -> None:
        self.run(["sh", "-c", f"cat > {shlex.quote(path)}"], input=content)

    def interface_stats(self, ifname: str) -> dict[str, int]:
        """The peer's counters of ``ifname`` by the kernel's names (``tx_dropped``, ``rx_dropped``,
        ``rx_missed_errors``...), as ``harness.counters.interface_stats`` gives this host's: read
        through netlink in the peer's network namespace (``ip -s -s -j link``). Not from sysfs:
        /sys/class/net shows the namespace sysfs was mounted in, so a peer whose sshd runs in a
        namespace (the stand-in here) would read this host's interfaces of that name, or none."""
        (shown,) = json.loads(self.run(["ip", "-s", "-s", "-j", "link", "show", "dev", ifname]))
        return {
            f"{direction}_{field}": int(value)
            for direction, counts in shown["stats64"].items()
            for field, value in counts.items()
        }

    def counter(self, ifname: str, name: str) -> int:
        """One of ``interface_stats``; PeerError if the interface has no such counter."""
        try:
            return self.interface_stats(ifname)[name]
        except KeyError:
            raise PeerError(f"{self.address}: {ifname} has no counter {name!r}") from None

    def interface_toward(
        self, network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ) -> PeerInterface:
        """The peer's interface with an address in ``network`` (the DUT NIC's own network)."""
        found = json.loads(self.run(["ip", "-j", "addr", "show", "to", str(network)]) or "[]")
        for link in found:
            for info in link.get("addr_info", []):
                address = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
                if address.ip in network:
                    (shown,) = json.loads(self.run(["ip", "-j", "link", "show", link["ifname"]]))
                    return PeerInterface(link["ifname"], shown["address"], address)
        raise PeerError(
            f"{self.address}: no interface of the peer has an address in {network}, the DUT NIC's "
            f"network: give the peer's interface toward the DUT an address there"
        )
