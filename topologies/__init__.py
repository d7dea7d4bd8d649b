"""The shipped topology files (YAML), found by name: ``topologies.path("two_host")``."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The names of the shipped topologies."""
    return sorted(p.stem for p in _HERE.glob("*.yaml"))


def path(name: str) -> Path:
    """The file of the shipped topology ``name``; FileNotFoundError lists the shipped ones."""
    file = _HERE / f"{name}.yaml"
    if not file.is_file():
        raise FileNotFoundError(f"no shipped topology {name!r} (shipped: {', '.join(names())})")
    return file
