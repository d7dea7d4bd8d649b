"""Traffic descriptions as TRex STL streams, built and sent by ``injector.trex_worker`` in a child process.

The TRex client (PyPI ``lbr-trex-client``, the optional dependency ``trex``) bundles scapy 2.4.3, so
it never loads into this process: a ``TrexSession`` is one worker process, given resolved
``FieldProgram``s as JSON lines on its stdin, and with a server one client connection held for the
session. ``trex_streams()`` needs no server and returns the streams' ``to_json()``;
``run_on_trex()`` and a session with a server need a real TRex server (none can run on the
development machines; tests use one only with ``--trex-server``). This module does not start or
configure TRex servers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from injector.program import FieldProgram

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class TrexError(RuntimeError):
    """The TRex worker could not translate or send the traffic; the message is the worker's."""


@dataclass(frozen=True)
class Latency:
    """A separate low-rate stream of the first packet, measured with ``STLFlowLatencyStats``."""

    pg_id: int
    rate_pps: float = 1000.0


def burst(program: FieldProgram, count: int, rate_pps: float | None) -> FieldProgram:
    """``program`` as one burst of ``count`` frames at ``rate_pps``; None is flat out, which the
    worker asks of TRex as 100% of the port's line rate."""
    return dataclasses.replace(program, count=count, rate_pps=rate_pps, duration=None)


def _program(program: FieldProgram, latency: Latency | None) -> dict[str, Any]:
    return {
        "program": program.to_dict(),
        "latency": None
        if latency is None
        else {"pg_id": latency.pg_id, "rate_pps": latency.rate_pps},
    }


class TrexSession:
    """One ``injector.trex_worker`` process for a series of requests and, given ``server``, one
    TRex client connection for its life (the client counts the ports from when it connects).

    ``timeout`` bounds each reply (None: the TRex client's own RPC timeouts, 3 s a call, bound a
    dead server; a run lasts as long as its burst)."""

    def __init__(self, server: str | None = None, timeout: float | None = None) -> None:
        self.server, self.timeout = server, timeout
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> TrexSession:
        env = dict(os.environ)
        paths = (str(PROJECT_ROOT), env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        # A file, not a pipe: the client's messages could fill a pipe no one reads until the end.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "injector.trex_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        try:
            if self.server is not None:
                self._call({"action": "connect", "server": self.server}, "connecting")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the worker: on the end of its input it disconnects, releasing the ports it took."""
        if self._process is None:
            return
        process, self._process = self._process, None
        with contextlib.suppress(BrokenPipeError):  # a worker that died left a request unread
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        self._stderr.close()

    def _call(self, request: dict[str, Any], what: str) -> dict[str, Any]:
        process = self._process
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass  # it has ended: its stderr, read below, says why
        if not select.select([process.stdout], [], [], self.timeout)[0]:
            process.kill()
            raise TrexError(f"{self._where()}{what}: no reply in {self.timeout} s")
        line = process.stdout.readline()
        if not line:
            process.wait()
            self._stderr.seek(0)
            stderr = self._stderr.read().strip()
            hint = ""
            if "lbr_trex_client" in stderr:
                hint = " (install the TRex client: pip install 'bpflab[trex]')"
            status = process.returncode
            raise TrexError(f"{self._where()}TRex worker ended ({status}){hint}: {stderr[-2000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise TrexError(f"{self._where()}{what}: {reply['error']}")
        return reply

    def _where(self) -> str:
        return f"TRex server {self.server}: " if self.server else ""

    def streams(self, program: FieldProgram, latency: Latency | None = None) -> list[dict]:
        """The STL streams for ``program`` as ``STLStream.to_json()`` dicts (no server needed)."""
        request = {"action": "streams", **_program(program, latency)}
        return self._call(request, program.description)["streams"]

    def port_info(self, ports: tuple[int, ...]) -> dict[int, dict[str, Any]]:
        """``STLClient.get_port_info()`` of each of ``ports`` (``hw_mac``, ``speed``, ...)."""
        reply = self._call({"action": "ports", "ports": list(ports)}, f"ports {list(ports)}")
        return {int(port): info for port, info in reply["ports"].items()}

    def run(
        self, program: FieldProgram, ports: tuple[int, ...], latency: Latency | None = None
    ) -> dict[str, Any]:
        """Send ``program`` from ``ports`` and return TRex's counters of the run: ``stats``
        (``get_stats(ports)``, keyed by port as text), ``seconds`` (see ``injector.trex_worker``)
        and, when asked, ``latency`` (``get_pgid_stats()``)."""
        request = {"action": "run", "ports": list(ports), **_program(program, latency)}
        return self._call(request, program.description)

    def stats(self, ports: tuple[int, ...]) -> dict[str, Any]:
        """``get_stats(ports)`` since this session connected, keyed by port as text; the ports
        are read, not taken."""
        return self._call({"action": "stats", "ports": list(ports)}, f"stats of {list(ports)}")[
            "stats"
        ]


def trex_streams(program: FieldProgram, latency: Latency | None = None) -> list[dict[str, Any]]:
    """The STL streams for ``program`` as ``STLStream.to_json()`` dicts (no server needed)."""
    with TrexSession(timeout=120) as session:
        return session.streams(program, latency)


def run_on_trex(
    program: FieldProgram,
    server: str,
    ports: tuple[int, ...] = (0,),
    latency: Latency | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send ``program`` from ``ports`` of the TRex server at ``server`` and return its counters
    (``TrexSession.run``)."""
    with TrexSession(server, timeout) as session:
        return session.run(program, ports, latency)
