"""Per-step overhead of ``ppl_vi.fit`` against a hand-written ``pyro.infer.SVI`` loop.

Both sides fit the same model with the same guide class (``MeanField``), ELBO (``Trace_ELBO``)
and optimizer (Adam, lr 0.01) for the same number of steps. ``fit`` runs with its defaults
(progress bar on, final polish phase on) except that the stopping rule is off so both sides take
the same number of steps. Runs are interleaved; the script prints the median and range of the
per-step time ratio fit / loop and writes ``benchmarks/results/overhead.json``.

    python benchmarks/overhead.py [--steps 1000] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

import ppl_vi
from ppl_vi.guides import MeanField
from ppl_vi.models import eight_schools, logistic_regression

RESULTS = Path(__file__).parent / "results"


def hand_loop(model, data, steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = MeanField(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(**data)  # builds the parameters, as fit does before its loop
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(**data)
    return (time.perf_counter() - start) / steps


def ppl_vi_fit(model, data, steps):
    sink = io.StringIO()  # the progress bar is drawn (to a buffer) exactly as on a terminal
    with redirect_stderr(sink):
        result = ppl_vi.fit(model, **data, num_steps=steps, convergence=None, progress=True)
    return result.wall_time / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {"eight_schools": eight_schools, "logistic_regression": logistic_regression}
    report = {
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "models": {},
    }
    print(f"torch threads: {torch.get_num_threads()}, steps per run: {args.steps}")
    for name, module in models.items():
        data = module.load_data()
        loop_t, fit_t, ratios = [], [], []
        for _ in range(args.repeats):  # interleaved: loop, fit, loop, fit, ...
            a = hand_loop(module.model, data, args.steps)
            b = ppl_vi_fit(module.model, data, args.steps)
            loop_t.append(a)
            fit_t.append(b)
            ratios.append(b / a)
        row = {
            "loop_ms_per_step": statistics.median(loop_t) * 1e3,
            "fit_ms_per_step": statistics.median(fit_t) * 1e3,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
        report["models"][name] = row
        print(
            f"{name:20s} loop {row['loop_ms_per_step']:.3f} ms/step  fit "
            f"{row['fit_ms_per_step']:.3f} ms/step  ratio fit/loop median "
            f"{row['ratio_median']:.3f} (range {row['ratio_min']:.3f}-{row['ratio_max']:.3f})"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
