"""Packaging hook: the wheel carries every BPF object, compiled ahead of time by bpf/build.py."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _bpf_build():
    spec = importlib.util.spec_from_file_location("bpf_build", HERE / "bpf" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithBpf(build_py):
    def run(self):
        super().run()
        bpf_build = _bpf_build()
        if self.editable_mode:
            bpf_build.build(HERE)
        else:
            bpf_build.build(HERE, out_root=Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithBpf})
