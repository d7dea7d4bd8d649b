"""Long-running helper processes (argus, sshd, an ssh control master), recorded in the journal.

``Daemon.start(command, netns=..., output=...)`` starts a process in its own session (a Ctrl-C at
the terminal reaches the supervisor only, which stops its daemons in order), optionally in a
network namespace through ``nsenter``, which execs the command so that the pid recorded is the
daemon's. ``stop()`` sends SIGTERM, waits, then SIGKILLs; a run killed before that leaves a journal
entry that ``harness clean`` undoes with ``stop_process``. Not for: short commands (``subprocess.run``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from bpf import journal
from bpf.netns import NETNS_RUN_DIR

STOP_TIMEOUT = 10.0  # seconds for a daemon to finish its work after SIGTERM, then SIGKILL


@journal.undoes("process")
def stop_process(pid: int, start_time: int, command: str) -> None:
    """SIGTERM the process if it is still the one recorded (not a recycled pid), SIGKILL if it stays.

    Also the undo of a dead supervisor's children: they are no longer ours to wait for, so poll.
    """
    owner = journal.Owner(pid, start_time)
    if not owner.alive():
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while owner.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if owner.alive():
        os.kill(pid, signal.SIGKILL)


class Daemon:
    """One started process and its journal entry."""

    def __init__(self, process: subprocess.Popen, name: str, entry: int) -> None:
        self.process, self.name, self._entry = process, name, entry

    @classmethod
    def start(
        cls, command: list[str], *, netns: str | None = None, output: Path | None = None
    ) -> Daemon:
        """Start ``command`` (in ``netns``), its stdout and stderr appended to ``output``."""
        if netns is not None:
            command = ["nsenter", f"--net={NETNS_RUN_DIR / netns}", *command]
        log = output.open("ab") if output is not None else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            if output is not None:
                log.close()
        name = Path(command[3 if netns is not None else 0]).name
        owner = journal.Owner.of(process.pid)
        entry = journal.current().record(
            "process", pid=process.pid, start_time=owner.start_time if owner else 0, command=name
        )
        return cls(process, name, entry)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        """The exit status, None while it runs."""
        return self.process.poll()

    def terminate(self) -> None:
        """SIGTERM without waiting: to stop several daemons at once, then ``stop()`` each."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        journal.current().strike(self._entry)
        return self.process.returncode
