"""Timing helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import statistics
import time

import pyro
from pyro.infer import SVI


def svi_step_time(model, guide, elbo, data: dict, steps: int, warmup: int = 5) -> float:
    """CPU seconds per ``pyro.infer.SVI`` step (Adam, lr 0.01) after ``warmup`` steps.

    CPU time of this process (``time.process_time``) is disturbed much less than wall time by
    other jobs on a shared machine.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(warmup):  # builds the parameters
        svi.step(**data)
    start = time.process_time()
    for _ in range(steps):
        svi.step(**data)
    return (time.process_time() - start) / steps


def per_step(seconds_for, steps: int, setup_steps: int = 3) -> float:
    """Seconds per step of a fit, its set-up taken out.

    ``seconds_for(n)`` runs a fit of ``n`` steps and returns its time; the set-up (tracing the
    model, building the guide, recording a compiled step) is measured by a ``setup_steps`` fit
    and subtracted: ``(t(steps + setup_steps) - t(setup_steps)) / steps``.
    """
    setup = seconds_for(setup_steps)
    return (seconds_for(steps + setup_steps) - setup) / steps


def ratio_stats(numerators: list, denominators: list) -> dict:
    """Median, min and max of the per-repeat ratios of two interleaved timing series."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def format_ratio(r: dict) -> str:
    """``median (min-max)`` of a :func:`ratio_stats` result."""
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
