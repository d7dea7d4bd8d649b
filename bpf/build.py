"""Ahead-of-time compilation of every ``*.bpf.c`` of the ``bpf``, ``injector`` and ``harness`` packages into a BPF
ELF object beside it, and of the user-space C in ``NATIVE`` (the VXLAN re-injector's core and its C
reference, the traffic counter's time-series reader, the flow-metrics ring reader) into a shared
library or program beside its sources.

The package build (``setup.py``) calls this for the wheel; after editing BPF C in a checkout run
``python -m bpf.build``. Each object gets a manifest (``NAME.bpf.json``) holding the SHA-256 of the
source and of every project header it included, so that loading can tell a stale object from a fresh
one. This module never runs at load time to "fix" things: a missing or stale object is an error that
says how to rebuild (``require_object``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import NamedTuple

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent  # the checkout, or site-packages: holds the packages below
PACKAGES_WITH_BPF = ("bpf", "injector", "harness")
REBUILD_HINT = "rebuild with `python -m bpf.build` (in a checkout) or reinstall the package"

# libbpf's headers (bpf_helpers.h, bpf_endian.h) and the UAPI headers (linux-libc-dev) only: no kernel
# headers, so the objects build on any Debian machine whatever kernel it runs.
CFLAGS = [
    "-O2",
    "-g",
    "-target",
    "bpf",
    "-mcpu=v3",
    "-Wall",
    "-Werror",
    "-std=gnu11",
]


class ObjectError(RuntimeError):
    """A BPF object is missing, stale, or failed to compile."""


# User-space C: an artefact, its sources (relative to the source root) and its link flags. Freshness
# works as for BPF objects, with the manifest ``ARTEFACT.json``. A NamedTuple, not a dataclass:
# setup.py runs this file without importing it as a module, which dataclasses need.
class Native(NamedTuple):
    artefact: str
    sources: tuple[str, ...]
    ldflags: tuple[str, ...]


NATIVE = (
    Native("bpf/vxlan/libvxlan_forward.so", ("bpf/vxlan/forward.c",), ("-shared", "-fPIC")),
    Native(
        "bpf/vxlan/vxlan_reinjector_ref",
        ("bpf/vxlan/reinjector_ref.c", "bpf/vxlan/forward.c"),
        ("-lbpf",),
    ),
    Native(
        "bpf/trafcount/libtrafcount_series.so",
        ("bpf/trafcount/series.c",),
        ("-shared", "-fPIC", "-lbpf"),
    ),
    Native(
        "bpf/flowmon/libflowmon_ringdrain.so",
        ("bpf/flowmon/ringdrain.c",),
        ("-shared", "-fPIC", "-pthread"),
    ),
)
NATIVE_CFLAGS = ["-O2", "-g", "-Wall", "-Werror", "-std=gnu11"]
_RUN = {"capture_output": True, "text": True}


def c_define(path: Path, name: str) -> int:
    """The integer of ``#define name`` in the C file ``path`` (decimal or hex, U/L suffixes): how
    the Python models read the data planes' constants from their one definition."""
    found = re.search(rf"^#define {name}\s+(0x[0-9a-fA-F]+|\d+)[uUlL]*\b", path.read_text(), re.M)
    if found is None:
        raise LookupError(f"{path}: no integer #define {name}")
    return int(found.group(1), 0)


def _include_dirs(root: Path) -> list[str]:
    # asm/types.h lives under the multiarch directory on Debian; `-target bpf` does not search it.
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return [str(root / "bpf" / "include"), f"/usr/include/{multiarch}"]


def sources(root: Path = SOURCE_ROOT) -> list[Path]:
    return sorted(
        path for package in PACKAGES_WITH_BPF for path in (root / package).rglob("*.bpf.c")
    )


def object_path(source: Path) -> Path:
    return source.with_name(source.name[: -len(".c")] + ".o")


def manifest_path(source: Path) -> Path:
    return source.with_name(source.name[: -len(".c")] + ".json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _project_deps(depfile: Path, root: Path) -> list[Path]:
    """The files of this package that a Make-style dependency file lists (system headers excluded)."""
    text = depfile.read_text().replace("\\\n", " ")
    _, _, prerequisites = text.partition(":")
    deps = []
    for name in prerequisites.split():
        path = Path(name).resolve()
        if path.is_relative_to(root):
            deps.append(path)
    return deps


def fingerprint(source: Path, root: Path = SOURCE_ROOT) -> dict[str, str]:
    """What a fresh object of ``source`` was built from: package-relative path -> SHA-256."""
    manifest = manifest_path(source)
    recorded = json.loads(manifest.read_text())["deps"]
    return {rel: _sha256(root / rel) for rel in recorded if (root / rel).exists()}


def compile_source(source: Path, root: Path = SOURCE_ROOT, out_root: Path | None = None) -> Path:
    """Compile one source; write its object and manifest under ``out_root`` (default: beside it)."""
    clang = shutil.which("clang")
    if clang is None:
        raise ObjectError("clang is not installed: run ci/bootstrap (Debian package clang)")
    source = source.resolve()
    relative = source.relative_to(root)
    out_dir = (out_root or root) / relative.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = out_dir / object_path(source).name
    with tempfile.TemporaryDirectory() as tmp:
        depfile = Path(tmp) / "deps.d"
        include = [f"-I{d}" for d in _include_dirs(root)]
        cmd = [
            clang,
            *CFLAGS,
            *include,
            "-MD",
            "-MF",
            str(depfile),
            "-c",
            str(source),
            "-o",
            str(obj),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ObjectError(f"{relative}: clang failed ({done.returncode}):\n{done.stderr}")
        deps = _project_deps(depfile, root)
    manifest = {
        "source": str(relative),
        "cflags": CFLAGS,
        "deps": {str(d.relative_to(root)): _sha256(d) for d in deps},
    }
    (out_dir / manifest_path(source).name).write_text(json.dumps(manifest, indent=1) + "\n")
    return obj


def is_fresh(source: Path, root: Path = SOURCE_ROOT) -> bool:
    obj, manifest = object_path(source), manifest_path(source)
    if not obj.exists() or not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text())
    if recorded.get("cflags") != CFLAGS:
        return False
    return fingerprint(source, root) == recorded["deps"]


def require_object(source: Path, root: Path = SOURCE_ROOT) -> Path:
    """The object compiled from ``source``, checked to be present and built from these sources."""
    obj = object_path(source)
    if not obj.exists():
        raise ObjectError(f"{obj}: BPF object missing; {REBUILD_HINT}")
    if not is_fresh(source, root):
        raise ObjectError(f"{obj}: BPF object older than its sources; {REBUILD_HINT}")
    return obj


def natives(root: Path = SOURCE_ROOT) -> list[Native]:
    """The ``NATIVE`` artefacts whose sources ``root`` holds (a tree may hold some packages only)."""
    return [n for n in NATIVE if all((root / source).exists() for source in n.sources)]


def _native_manifest(artefact: Path) -> Path:
    return artefact.with_name(artefact.name + ".json")


def compile_native(native: Native, root: Path = SOURCE_ROOT, out_root: Path | None = None) -> Path:
    """Compile and link one user-space artefact; write it and its manifest under ``out_root``
    (default: beside its sources), with its sources: the package data ships only headers of C."""
    clang = shutil.which("clang")
    if clang is None:
        raise ObjectError("clang is not installed: run ci/bootstrap (Debian package clang)")
    out = (out_root or root) / native.artefact
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        deps: set[Path] = set()
        for index, source in enumerate(native.sources):
            depfile = Path(tmp) / f"{index}.d"
            cmd = [clang, *NATIVE_CFLAGS, "-MD", "-MF", str(depfile), "-c", str(root / source)]
            done = subprocess.run([*cmd, "-fPIC", "-o", str(Path(tmp) / f"{index}.o")], **_RUN)
            if done.returncode != 0:
                raise ObjectError(f"{source}: clang failed ({done.returncode}):\n{done.stderr}")
            deps.update(_project_deps(depfile, root))
        objects = [str(Path(tmp) / f"{i}.o") for i in range(len(native.sources))]
        done = subprocess.run([clang, *objects, *native.ldflags, "-o", str(out)], **_RUN)
        if done.returncode != 0:
            raise ObjectError(
                f"{native.artefact}: linking failed ({done.returncode}):\n{done.stderr}"
            )
    if out_root is not None and out_root != root:
        for dep in deps:
            target = out_root / dep.relative_to(root)
            if not target.exists():
                shutil.copy2(dep, target)
    manifest = {
        "artefact": native.artefact,
        "cflags": NATIVE_CFLAGS,
        "deps": {str(d.relative_to(root)): _sha256(d) for d in sorted(deps)},
    }
    _native_manifest(out).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def native_is_fresh(native: Native, root: Path = SOURCE_ROOT) -> bool:
    artefact = root / native.artefact
    manifest = _native_manifest(artefact)
    if not artefact.exists() or not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text())
    if recorded.get("cflags") != NATIVE_CFLAGS:
        return False
    current = {rel: _sha256(root / rel) for rel in recorded["deps"] if (root / rel).exists()}
    return current == recorded["deps"]


def require_native(artefact: str, root: Path = SOURCE_ROOT) -> Path:
    """The user-space artefact ``artefact`` (a ``NATIVE`` path), checked present and fresh."""
    (native,) = [n for n in NATIVE if n.artefact == artefact]
    path = root / artefact
    if not path.exists():
        raise ObjectError(f"{path}: missing; {REBUILD_HINT}")
    if not native_is_fresh(native, root):
        raise ObjectError(f"{path}: older than its sources; {REBUILD_HINT}")
    return path


def build(
    root: Path = SOURCE_ROOT, out_root: Path | None = None, force: bool = False
) -> list[Path]:
    """Compile every stale source (all of them with ``force`` or into another tree)."""
    built = []
    for source in sources(root):
        if force or out_root is not None or not is_fresh(source, root):
            built.append(compile_source(source, root, out_root))
    for native in natives(root):
        if force or out_root is not None or not native_is_fresh(native, root):
            built.append(compile_native(native, root, out_root))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bpf.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--force", action="store_true", help="recompile even fresh objects")
    args = parser.parse_args(argv)
    try:
        built = build(force=args.force)
    except ObjectError as err:
        print(err, file=sys.stderr)
        return 1
    for obj in built:
        print(f"built {obj.relative_to(SOURCE_ROOT)}")
    print(f"{len(built)} built, {len(sources()) + len(natives()) - len(built)} fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
