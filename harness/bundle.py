"""The failure bundle: what a person needs to see why a test failed, in one directory.

The pytest plugin writes one for every test that fails in its setup or its body, while its
fixtures (topologies, loaded objects, captures) still exist, under ``--bundle-dir``
(``failure-bundles/`` by default; CI keeps it as an artifact):

- ``report.txt``: the failure as pytest reports it (a hypothesis test's falsifying example
  included) and the seeds to repeat it with (``--hypothesis-seed``, ``--fuzz-seed``);
- ``captures/``: every frame a ``harness.capture.Capture`` of the test returned, one pcap per
  capture, and every pcap the test wrote under its ``tmp_path`` (tcpdump, tshark);
- ``bpf/``: ``bpftool`` JSON of each program this process has loaded and of each program attached
  in the run's namespaces (those a command the test started loaded), ``map dump`` of the maps
  they use (hash tables whole, arrays up to 4096 slots), and ``verifier.log`` when the failure is the verifier's refusal;
- ``netns/NAME.json``: the links, addresses, routes and neighbours of each namespace of the run;
- ``dmesg.txt``: the last lines of the kernel log.

Each part is written on its own: one that cannot be had (bpftool missing, a namespace gone) is
noted in ``errors.txt`` and the rest is still written. Nothing here builds a shell string.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from pyroute2 import IPRoute

from bpf import journal
from bpf import netns as bpf_netns
from bpf.netns import NETNS_RUN_DIR
from bpf.object import BpfObject, VerifierError
from harness.capture import Capture, write_pcap
from harness.topology import NETNS_PREFIX

DEFAULT_DIR = Path("failure-bundles")
KERNEL_LOG_LINES = 200
MAX_DUMPED_SLOTS = 4096  # an array dumps every slot: a larger one is listed, not dumped
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def bundle_path(root: Path, nodeid: str) -> Path:
    """The bundle directory of the test ``nodeid`` (``tests/x.py::test_y[a-b]``)."""
    return root / _UNSAFE.sub("_", nodeid).strip("_")


def write(
    directory: Path,
    report: str,
    *,
    seeds: dict[str, object],
    error: BaseException | None = None,
    tmp_path: Path | None = None,
    captures: Iterable[Capture] = (),
) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    seed_lines = "".join(f"{name}: {value}\n" for name, value in seeds.items() if value is not None)
    (directory / "report.txt").write_text(f"{seed_lines}\n{report}\n")
    problems: list[str] = []
    parts: list[tuple[str, Callable[[], None]]] = [
        ("captures", lambda: _captures(directory / "captures", captures, tmp_path)),
        ("bpf", lambda: _bpf(directory / "bpf", error, problems)),
        ("netns", lambda: _namespaces(directory / "netns", problems)),
        ("dmesg", lambda: _kernel_log(directory / "dmesg.txt")),
    ]
    for name, part in parts:
        try:
            part()
        except Exception as err:  # one part missing must not lose the others
            problems.append(f"{name}: {type(err).__name__}: {err}")
    if problems:
        (directory / "errors.txt").write_text("\n".join(problems) + "\n")
    return directory


def _captures(directory: Path, captures: Iterable[Capture], tmp_path: Path | None) -> None:
    directory.mkdir()
    for index, capture in enumerate(captures):
        where = f"{capture.netns}-" if capture.netns else ""
        write_pcap(directory / f"{index}-{where}{capture.ifname}.pcap", capture.seen)
    if tmp_path is not None and tmp_path.is_dir():
        for pcap in (*tmp_path.rglob("*.pcap"), *tmp_path.rglob("*.pcapng")):
            shutil.copy2(pcap, directory / f"tmp-{pcap.name}")


def _bpftool(*args: str) -> object:
    done = subprocess.run(
        ["bpftool", "--json", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bpftool {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return json.loads(done.stdout or "null")


def _bpf(directory: Path, error: BaseException | None, problems: list[str]) -> None:
    directory.mkdir()
    verifier = _verifier_error(error)
    if verifier is not None:
        (directory / "verifier.log").write_text(f"{verifier.program}\n{verifier.log}\n")
    ids = {
        program.info().id for obj in BpfObject.loaded_objects() for program in obj.programs.values()
    }
    attached = {}
    for name in _run_namespaces():
        with bpf_netns.entered(name):
            attached[name] = _bpftool("net", "show")
        ids |= set(_prog_ids(attached[name]))
    (directory / "attached.json").write_text(json.dumps(attached, indent=1))
    programs = [_bpftool("prog", "show", "id", str(i)) for i in sorted(ids)]
    (directory / "programs.json").write_text(json.dumps(programs, indent=1))
    map_ids = sorted({m for p in programs if isinstance(p, dict) for m in p.get("map_ids", [])})
    maps = []
    for map_id in map_ids:
        info = _bpftool("map", "show", "id", str(map_id))
        maps.append(info)
        kind = info.get("type", "")
        if kind == "ringbuf" or (kind.endswith("array") and info["max_entries"] > MAX_DUMPED_SLOTS):
            continue
        try:
            dump = _bpftool("map", "dump", "id", str(map_id))
        except RuntimeError as err:
            problems.append(f"map {map_id}: {err}")
            continue
        (directory / f"map-{map_id}-{info.get('name', '')}.json").write_text(
            json.dumps(dump, indent=1)
        )
    (directory / "maps.json").write_text(json.dumps(maps, indent=1))


def _verifier_error(error: BaseException | None) -> VerifierError | None:
    while error is not None:
        if isinstance(error, VerifierError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _prog_ids(tree: object) -> Iterable[int]:
    """Every ``id`` of a program in ``bpftool net show``'s answer (XDP and TC, any depth)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "id" and isinstance(value, int):
                yield value
            else:
                yield from _prog_ids(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _prog_ids(item)


def _run_namespaces() -> list[str]:
    if not NETNS_RUN_DIR.is_dir():
        return []
    prefix = f"{NETNS_PREFIX}{journal.current().run_id}-"
    return sorted(p.name for p in NETNS_RUN_DIR.iterdir() if p.name.startswith(prefix))


def _namespaces(directory: Path, problems: list[str]) -> None:
    directory.mkdir()
    for name in _run_namespaces():
        try:
            state = _network_state(name)
        except Exception as err:  # the namespace went while we looked
            problems.append(f"netns {name}: {err}")
            continue
        (directory / f"{name}.json").write_text(json.dumps(state, indent=1))


def _network_state(name: str) -> dict:
    with bpf_netns.entered(name):
        ipr = IPRoute()  # opened inside: IPRoute(netns=) forks a helper per handle
    with ipr:
        links = ipr.get_links()
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        return {
            "links": [
                {
                    "ifname": link.get_attr("IFLA_IFNAME"),
                    "index": link["index"],
                    "state": link.get_attr("IFLA_OPERSTATE"),
                    "mtu": link.get_attr("IFLA_MTU"),
                    "address": link.get_attr("IFLA_ADDRESS"),
                    "kind": _nested(link, "IFLA_LINKINFO", "IFLA_INFO_KIND"),
                    "xdp_prog_id": _nested(link, "IFLA_XDP", "IFLA_XDP_PROG_ID"),
                }
                for link in links
            ],
            "addresses": [
                {
                    "ifname": names.get(a["index"]),
                    "address": f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}",
                }
                for a in ipr.get_addr()
            ],
            "routes": [
                {
                    "family": "inet6" if r["family"] == socket.AF_INET6 else "inet",
                    "dst": f"{r.get_attr('RTA_DST') or 'default'}/{r['dst_len']}",
                    "gateway": r.get_attr("RTA_GATEWAY"),
                    "dev": names.get(r.get_attr("RTA_OIF")),
                    "table": r.get_attr("RTA_TABLE"),
                }
                for family in (socket.AF_INET, socket.AF_INET6)
                for r in ipr.get_routes(family=family)
            ],
            "neighbours": [
                {
                    "dst": n.get_attr("NDA_DST"),
                    "lladdr": n.get_attr("NDA_LLADDR"),
                    "dev": names.get(n["ifindex"]),
                    "state": n["state"],
                }
                for n in ipr.get_neighbours()
            ],
        }


def _nested(msg, outer: str, inner: str) -> object:
    attr = msg.get_attr(outer)
    return attr.get_attr(inner) if attr else None


def _kernel_log(path: Path) -> None:
    done = subprocess.run(
        ["dmesg", "--time-format", "iso"], capture_output=True, text=True, timeout=30, check=False
    )
    lines = done.stdout.splitlines()[-KERNEL_LOG_LINES:]
    path.write_text("\n".join(lines) + "\n" if lines else f"dmesg: {done.stderr.strip()}\n")
