"""The import hook that serves a mutated module from memory (``benchmarks/mutate.py``).

Used in mutate.py's forked children and, through ``_mutant_site/sitecustomize.py``, in every
Python process those children's tests start (the data-parallel ranks), which learn the mutant
from the environment: module name, path, and a file with its source.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

ENV = ("PPL_VI_MUTANT_MODULE", "PPL_VI_MUTANT_PATH", "PPL_VI_MUTANT_SOURCE")


class MutatedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module's mutated source from memory (the file is left alone)."""

    def __init__(self, name: str, path, source: str):
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)  # noqa: S102


def install_from_env() -> None:
    """Install the hook named by the environment (a no-op when it names none)."""
    name, path, source_file = (os.environ.get(k) for k in ENV)
    if name:
        with open(source_file) as f:
            sys.meta_path.insert(0, MutatedModule(name, path, f.read()))
