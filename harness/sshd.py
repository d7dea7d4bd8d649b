"""Debian's OpenSSH server, started in a namespace to stand in for a peer host.

``Sshd.start(netns, address, directory)`` generates a host key and a client key (ed25519) under
``directory``, writes an ``sshd_config`` that listens on ``address`` only and lets root in with that
key alone, starts ``sshd -D -e`` as a journaled daemon inside ``netns``, and writes the matching
client ``ssh_config`` (``client_config``: the key, the host key as the only known host, strict
checking) for ``ssh -F`` / ``--ssh-config``. Nothing touches ``/etc/ssh`` or ``~/.ssh``. ``stop()``
ends the daemon; the namespace's sessions go with it. Not for: using the peer (``harness.peer``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from bpf import netns as bpf_netns
from bpf.daemon import Daemon

SSHD = Path("/usr/sbin/sshd")
READY_TIMEOUT = 10.0
_PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it; Debian's unit creates it


class SshdError(RuntimeError):
    """sshd is missing or did not start; the message says why and what to do."""


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bpflab", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """One sshd in a namespace and the files to reach it."""

    def __init__(self, daemon: Daemon, address: str, client_config: Path) -> None:
        self.daemon, self.address, self.client_config = daemon, address, client_config

    @classmethod
    def start(cls, netns: str, address: str, directory: Path) -> Sshd:
        if not SSHD.is_file() or shutil.which("ssh") is None:
            raise SshdError(
                "sshd or ssh is not installed: apt-get install openssh-server (ci/bootstrap)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        _PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        host_key = _keygen(directory / "host_ed25519")
        (directory / "authorized_keys").write_text(_keygen(directory / "client_ed25519") + "\n")
        config = directory / "sshd_config"
        config.write_text(
            f"ListenAddress {address}\n"
            f"HostKey {directory / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"  # the keys live in a temporary directory, not a home
            "PidFile none\n"
            "AcceptEnv no\n"
        )
        (directory / "known_hosts").write_text(f"{address} {host_key}\n")
        client_config = directory / "ssh_config"
        client_config.write_text(
            f"Host {address}\n"
            f"  IdentityFile {directory / 'client_ed25519'}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {directory / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n"
        )
        log = directory / "sshd.log"
        daemon = Daemon.start([str(SSHD), "-D", "-e", "-f", str(config)], netns=netns, output=log)
        server = cls(daemon, address, client_config)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                daemon.stop()
                raise SshdError(f"sshd exited on start ({log}): {log.read_text().strip()}")
            if server._listening(netns):
                return server
            time.sleep(0.05)
        daemon.stop()
        raise SshdError(f"sshd did not listen on {address} within {READY_TIMEOUT} s ({log})")

    def _listening(self, netns: str) -> bool:
        with bpf_netns.entered(netns):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with probe:
            return probe.connect_ex((self.address, 22)) == 0

    def stop(self) -> None:
        self.daemon.stop()
