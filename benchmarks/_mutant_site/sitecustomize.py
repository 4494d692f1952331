"""Serve ``benchmarks/mutate.py``'s current mutant in every Python process a mutant's tests
start: mutate.py's child puts this folder and ``benchmarks/`` first on ``PYTHONPATH``."""

import _mutant_hook

_mutant_hook.install_from_env()
