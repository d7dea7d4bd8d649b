"""The shipped testbed files (YAML), found by name: ``testbeds.path("veth")``."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The names of the shipped testbeds."""
    return sorted(p.stem for p in _HERE.glob("*.yaml"))


def path(name: str) -> Path:
    """The file of the shipped testbed ``name``; FileNotFoundError lists the shipped ones."""
    file = _HERE / f"{name}.yaml"
    if not file.is_file():
        raise FileNotFoundError(f"no shipped testbed {name!r} (shipped: {', '.join(names())})")
    return file
