"""Traffic descriptions as TRex STL streams, built and sent by ``injector.trex_worker`` in a child process.

The TRex client (PyPI ``lbr-trex-client``, the optional dependency ``trex``) bundles scapy 2.4.3, so
it never loads into this process: the child gets the resolved ``FieldProgram`` as JSON on stdin.
``trex_streams()`` needs no server and returns the streams' ``to_json()``; ``run_on_trex()`` needs a
real TRex server (none can run on the development machines; tests use it only with
``--trex-server``). This module does not start or configure TRex servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
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


def _call(request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "injector.trex_worker"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    try:
        reply = json.loads(done.stdout)
    except json.JSONDecodeError:
        hint = ""
        if "lbr_trex_client" in done.stderr:
            hint = " (install the TRex client: pip install 'bpflab[trex]')"
        raise TrexError(f"TRex worker failed{hint}: {done.stderr.strip()[-2000:]}") from None
    if "error" in reply:
        raise TrexError(f"{request['program']['description']}: {reply['error']}")
    return reply


def _request(program: FieldProgram, action: str, latency: Latency | None) -> dict[str, Any]:
    return {
        "action": action,
        "program": program.to_dict(),
        "latency": None
        if latency is None
        else {"pg_id": latency.pg_id, "rate_pps": latency.rate_pps},
    }


def trex_streams(program: FieldProgram, latency: Latency | None = None) -> list[dict[str, Any]]:
    """The STL streams for ``program`` as ``STLStream.to_json()`` dicts (no server needed)."""
    return _call(_request(program, "streams", latency), timeout=120)["streams"]


def run_on_trex(
    program: FieldProgram,
    server: str,
    ports: tuple[int, ...] = (0,),
    latency: Latency | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send ``program`` from ``ports`` of the TRex server at ``server`` and return its counters
    (``stats``: ``STLClient.get_stats()``, ``latency``: ``get_pgid_stats()`` when asked)."""
    request = _request(program, "run", latency)
    request.update(server=server, ports=list(ports))
    return _call(request, timeout=timeout)
