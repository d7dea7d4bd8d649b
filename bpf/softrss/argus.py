"""``softrss-argus``: one Argus flow monitor per soft RSS bucket, each seeing only its bucket's traffic.

    softrss-argus -i IF [--netns NS] [-b N] -o DIR [-s SECONDS] [-c FILE]
                  [--hash toeplitz|jhash] [--key HEX] [--symmetric] [--mode native|generic]

What it builds, in the interface's namespace, and undoes on SIGINT/SIGTERM (newest first):

1. N veth pairs ``bl<run id>-a<b>`` / ``bl<run id>-a<b>p`` (the run id prefix lets ``harness clean``
   and the leak checks recognise them in the host namespace), IPv6 off so their own kernel stays
   silent, and ``softrss_bucket_pass`` (XDP_PASS) on the ``p`` end: a veth drops frames redirected
   into it when its peer has neither an XDP program nor GRO (PLATFORM trap 4), and GRO would merge a
   TCP burst into one packet before Argus counts it.
2. The soft RSS data plane on ``IF`` with the ``ifaces`` action: bucket b's frames are redirected
   into ``...a<b>`` and arrive at ``...a<b>p`` one by one, as sent.
3. One Debian ``argus -X -i ...a<b>p -w DIR/bucket-<b>.argus -S 1`` per bucket, a child process
   recorded in the journal with its pid and start time, so ``harness clean`` stops it if this
   supervisor dies. A health check every HEALTH_INTERVAL restarts an instance that exited, writing
   to ``bucket-<b>.<n>.argus`` for its n-th restart: argus appends to an existing file, and the tail
   of a killed instance's file may hold a torn record that would spoil what follows.
4. ``DIR/softrss-argus.json``, the flow-to-bucket configuration (hash, key, RETA, each bucket's
   interfaces, files and argus pid), rewritten on every restart; on exit also the data plane's state
   (``DIR/softrss-state.json``, for ``SoftRss.restore``).

Stopping sends SIGTERM to every instance (argus then writes out the flows it holds) and waits.
``-c`` reads the same settings from a YAML or JSON file (keys as the long options, with
underscores); options on the command line win. Everything is validated before anything is created.
Not for: reading the Argus files (``ra``), or running without Argus (``softrss``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from bpf import LibbpfError, XdpMode, files, journal
from bpf import netns as bpf_netns
from bpf.attach import ifindex
from bpf.cli import (
    STATS_INTERVAL,
    UsageError,
    add_stats_interval,
    check_interface,
    failure,
    seconds_arg,
    stop_event,
)
from bpf.daemon import Daemon
from bpf.softrss import cli
from bpf.softrss.model import Action, Config, HashKind
from bpf.softrss.softrss import SoftRss
from bpf.toeplitz import MICROSOFT_KEY

HEALTH_INTERVAL = 0.5  # seconds between checks that every argus is alive
READY_TIMEOUT = 10.0  # seconds for a new argus to open its capture
CONFIG_NAME, STATE_NAME = "softrss-argus.json", "softrss-state.json"


class ConfigError(ValueError):
    """A setting is wrong; the message names the file (or option) and the field."""


@dataclass(frozen=True)
class Settings:
    interface: str
    output_dir: Path
    netns: str | None = None
    buckets: int = 8
    stats_interval: float = STATS_INTERVAL
    hash: HashKind = HashKind.TOEPLITZ
    key: bytes = MICROSOFT_KEY
    symmetric: bool = False
    mode: XdpMode = XdpMode.NATIVE


# setting -> its type: str and bool as such, else the option's parser of a value given as text
_FIELDS = {
    "interface": str,
    "output_dir": str,
    "netns": str,
    "buckets": cli.buckets_arg,
    "stats_interval": seconds_arg,
    "hash": str,
    "key": cli.key_arg,
    "symmetric": bool,
    "mode": str,
}


def _field(source: str, name: str, value: Any) -> Any:
    """``value`` of setting ``name`` checked and converted; ConfigError names ``source`` and field."""
    where = f"{source}: field {name!r}"
    parse = _FIELDS[name]
    if parse is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not true or false")
        return value
    if parse is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {value!r} is not a name")
        choices = {"hash": [k.value for k in HashKind], "mode": ["native", "generic"]}.get(name)
        if choices and value not in choices:
            raise ConfigError(f"{where}: {value!r}, one of {', '.join(choices)} expected")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {value!r} has the wrong type")
    try:
        return parse(str(value))
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a YAML or JSON file (JSON is YAML), each checked; unknown fields refused."""
    try:
        data = files.load_yaml(path)
    except files.FileError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a mapping of settings expected, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(_FIELDS)}"
        )
    return {name: _field(str(path), name, value) for name, value in data.items()}


def settings_from(args: argparse.Namespace) -> Settings:
    """The config file's settings overridden by the options given, all checked."""
    values = read_config_file(Path(args.config_file)) if args.config_file else {}
    source = args.config_file or "the command line"
    given = {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
    values.update(given)
    for required in ("interface", "output_dir"):
        if required not in values:
            option = {"interface": "-i/--interface", "output_dir": "-o/--output-dir"}[required]
            raise ConfigError(f"{source}: {option} (or field {required!r}): required")
    settings = Settings(
        interface=values["interface"],
        output_dir=Path(values["output_dir"]),
        netns=values.get("netns"),
        buckets=values.get("buckets", Settings.buckets),
        stats_interval=values.get("stats_interval", Settings.stats_interval),
        hash=HashKind(values.get("hash", Settings.hash.value)),
        key=values.get("key", Settings.key),
        symmetric=values.get("symmetric", Settings.symmetric),
        mode=XdpMode[values.get("mode", "native").upper()],
    )
    try:
        check_interface(settings.interface, settings.netns)
    except UsageError as err:
        raise ConfigError(f"{source}: {err}") from None
    if settings.output_dir.exists() and not settings.output_dir.is_dir():
        raise ConfigError(f"{source}: output_dir {settings.output_dir} is not a directory")
    old = sorted(settings.output_dir.glob("bucket-*.argus"))
    if old:
        raise ConfigError(
            f"{source}: output_dir {settings.output_dir} holds Argus files of an earlier run "
            f"({old[0].name}...): argus would append to them; move them or choose another directory"
        )
    if shutil.which("argus") is None:
        raise ConfigError("argus not found on PATH: apt-get install argus-server")
    return settings


# --- what is created, and its undo ---


@journal.undoes("bucket_link")
def remove_bucket_link(namespace: str | None, ifname: str) -> None:
    """Delete a bucket's veth pair (its peer goes with it)."""
    if namespace is not None and not bpf_netns.exists(namespace):
        return
    with bpf_netns.entered(namespace), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])


@dataclass
class Instance:
    """One bucket's argus: the interface it listens on, the files it wrote, the process now."""

    bucket: int
    ifname: str
    files: list[Path] = field(default_factory=list)
    process: Daemon | None = None
    restarts: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "interface": self.ifname,
            "files": [f.name for f in self.files],
            "pid": self.process.pid if self.process else None,
            "restarts": self.restarts,
        }


class ArgusFanout:
    """The veths, the data plane and the argus instances of one ``softrss-argus`` run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.journal = journal.current()
        prefix = f"bl{self.journal.run_id}-a"
        self.links = [f"{prefix}{b}" for b in range(settings.buckets)]
        self.instances = [Instance(b, f"{prefix}{b}p") for b in range(settings.buckets)]
        self._link_entries: list[int] = []
        self.rss: SoftRss | None = None

    def __enter__(self) -> ArgusFanout:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        s = self.settings
        s.output_dir.mkdir(parents=True, exist_ok=True)
        self._create_links()
        self.rss = SoftRss(
            Config(
                buckets=s.buckets,
                hash=s.hash,
                key=s.key,
                symmetric=s.symmetric,
                action=Action.IFACES,
                threshold_packets=0,
            )
        )
        self.rss.set_ifaces(self.links, s.netns)
        bucket_pass = self.rss.obj.programs["softrss_bucket_pass"]
        for instance in self.instances:
            bucket_pass.attach_xdp(instance.ifname, XdpMode.NATIVE, s.netns)
        for instance in self.instances:
            self._spawn(instance)
        for instance in self.instances:
            self._wait_ready(instance)
        self.rss.attach(s.interface, s.netns, s.mode)
        self.write_config()

    def _create_links(self) -> None:
        ns = self.settings.netns
        with bpf_netns.entered(ns), IPRoute() as ipr:
            for link, instance in zip(self.links, self.instances, strict=True):
                ipr.link("add", ifname=link, kind="veth", peer=instance.ifname)
                self._link_entries.append(
                    self.journal.record("bucket_link", namespace=ns, ifname=link)
                )
                for end in (link, instance.ifname):
                    bpf_netns.silence_ipv6(end)
                for end in (link, instance.ifname):
                    ipr.link("set", index=ipr.link_lookup(ifname=end)[0], state="up")

    def _spawn(self, instance: Instance) -> None:
        s = self.settings
        generation = len(instance.files)
        name = f"bucket-{instance.bucket}.argus"
        if generation:
            name = f"bucket-{instance.bucket}.{generation}.argus"
        path = s.output_dir / name
        command = ["argus", "-X", "-i", instance.ifname, "-w", str(path), "-S", "1"]
        log = s.output_dir / f"bucket-{instance.bucket}.log"
        instance.process = Daemon.start(command, netns=s.netns, output=log)
        instance.files.append(path)

    def _wait_ready(self, instance: Instance) -> None:
        """Until argus has a packet socket bound to its interface (/proc/PID/net/packet)."""
        index = str(ifindex(instance.ifname, self.settings.netns))
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if instance.process.poll() is not None:
                raise RuntimeError(
                    f"argus of bucket {instance.bucket} exited ({instance.process.poll()}) "
                    f"on start: see {self.settings.output_dir}/bucket-{instance.bucket}.log"
                )
            try:
                sockets = Path(f"/proc/{instance.process.pid}/net/packet").read_text()
            except FileNotFoundError:
                sockets = ""
            if any(line.split()[4] == index for line in sockets.splitlines()[1:]):
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"argus of bucket {instance.bucket} did not open {instance.ifname} in "
            f"{READY_TIMEOUT} s: see {self.settings.output_dir}/bucket-{instance.bucket}.log"
        )

    def check_health(self) -> list[str]:
        """Restart every instance that exited; one line per restart."""
        restarted = []
        for instance in self.instances:
            code = instance.process.poll()
            if code is None:
                continue
            instance.process.stop()
            dead = instance.process.pid
            instance.restarts += 1
            self._spawn(instance)
            self._wait_ready(instance)
            restarted.append(
                f"argus of bucket {instance.bucket} (pid {dead}) exited with {code}: restarted as "
                f"pid {instance.process.pid}, writing {instance.files[-1].name}"
            )
        if restarted:
            self.write_config()
        return restarted

    def write_config(self) -> None:
        s = self.settings
        config = {
            "interface": s.interface,
            "netns": s.netns,
            "mode": s.mode.name.lower(),
            "buckets": s.buckets,
            "hash": s.hash.value,
            "key": s.key.hex(),
            "symmetric": s.symmetric,
            "reta": self.rss.reta,
            "bucket_interfaces": self.links,
            "instances": [i.describe() for i in self.instances],
        }
        path = s.output_dir / CONFIG_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1) + "\n")
        tmp.replace(path)

    def stop(self) -> None:
        """SIGTERM every argus (they write out their flows), then detach and delete the links."""
        running = [i for i in self.instances if i.process is not None]
        for instance in running:
            instance.process.terminate()
        for instance in running:
            instance.process.stop()
            instance.process = None
        if self.rss is not None:
            self.rss.detach()
            self.rss.save(self.settings.output_dir / STATE_NAME)
            self.rss.close()
            self.rss = None
        for entry in reversed(self._link_entries):
            self.journal.undo(entry)
        self._link_entries.clear()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softrss-argus",
        description="One Argus instance per soft RSS bucket, each fed exactly its bucket's flows.",
    )
    # Defaults are None: what the command line does not give comes from -c, then from Settings.
    parser.add_argument("-i", "--interface", metavar="IF", help="interface to attach to")
    parser.add_argument("--netns", metavar="NS", help="network namespace of the interface")
    parser.add_argument(
        "-b", "--buckets", type=cli.buckets_arg, help="buckets = argus instances (default 8)"
    )
    parser.add_argument(
        "-o", "--output-dir", metavar="DIR", help="Argus files, logs and configuration go here"
    )
    add_stats_interval(parser, default=None)  # None: the configuration file may set it
    parser.add_argument(
        "-c", "--config-file", metavar="FILE", help="settings as YAML or JSON (options win)"
    )
    parser.add_argument("--hash", choices=[k.value for k in HashKind], help="default toeplitz")
    parser.add_argument("--key", type=cli.key_arg, metavar="HEX", help="Toeplitz key, 40 bytes")
    parser.add_argument(
        "--symmetric", action="store_const", const=True, help="both directions share a bucket"
    )
    parser.add_argument("--mode", choices=["native", "generic"], help="XDP mode (default native)")
    return parser


def _status(fanout: ArgusFanout) -> str:
    report = fanout.rss.bucket_stats()
    lines = [f"{'bucket':>6} {'packets':>12} {'flows':>8} {'argus pid':>9} {'restarts':>8}  file"]
    for b, instance in zip(report.buckets, fanout.instances, strict=True):
        lines.append(
            f"{b.index:>6} {b.packets:>12,} {b.flows:>8,} {instance.process.pid:>9} "
            f"{instance.restarts:>8}  {instance.files[-1].name}"
        )
    lines.append(f"balance: packets max/mean {report.packets.max_over_mean:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as err:
        print(f"softrss-argus: {err}", file=sys.stderr)
        return 2
    stop = stop_event()
    try:
        with ArgusFanout(settings) as fanout:
            where = (
                f"{settings.interface}@{settings.netns}" if settings.netns else settings.interface
            )
            print(
                f"softrss-argus: {settings.buckets} argus instances ready, attached to {where}; "
                f"configuration in {settings.output_dir / CONFIG_NAME}",
                file=sys.stderr,
                flush=True,
            )
            next_stats = time.monotonic() + settings.stats_interval
            while not stop.wait(HEALTH_INTERVAL):
                for line in fanout.check_health():
                    print(f"softrss-argus: {line}", file=sys.stderr, flush=True)
                if time.monotonic() >= next_stats:
                    print(_status(fanout), flush=True)
                    next_stats += settings.stats_interval
            print(_status(fanout), flush=True)
    except (LibbpfError, OSError, RuntimeError) as err:
        print(failure("softrss-argus", err), file=sys.stderr)
        return 1
    print(f"softrss-argus: stopped; files in {settings.output_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
