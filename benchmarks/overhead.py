"""Per-step overhead of ``ppl_vi.fit`` against a hand-written ``pyro.infer.SVI`` loop.

Both sides fit the same model with the same guide class (``MeanField``), ELBO (``Trace_ELBO``,
one particle) and optimizer (Adam, lr 0.01) for the same number of steps. ``fit`` runs with the
progress bar on and its final polish phase on (learning-rate decay and parameter averaging),
with the polish phase's extra particles off so that both sides evaluate the same ELBO, and the
stopping rule off so that both take the same number of steps. A third run, ``fit`` with all its
defaults (16 particles in the polish phase), shows what the default final phase costs. Runs are
interleaved; the script prints the median and range of the per-step time ratios and writes
``benchmarks/results/overhead.json``.

Times are CPU time of this process (``time.process_time``), which other jobs on a shared
machine disturb much less than wall time; ``fit``'s set-up (tracing the model, building the
guide) is taken out by subtracting a one-step fit.

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
from _timing import ratio_stats, svi_step_time
from pyro.infer import Trace_ELBO

import ppl_vi
from ppl_vi import Polish
from ppl_vi.guides import MeanField
from ppl_vi.models import eight_schools, logistic_regression

RESULTS = Path(__file__).parent / "results"
SAME_ELBO = Polish(num_particles=1)  # decay + averaging, no extra particles


def hand_loop(model, data, steps):
    # one warm-up step builds the parameters, as fit does before its loop
    return svi_step_time(model, MeanField(model), Trace_ELBO(), data, steps, warmup=1)


def _fit_cpu_time(model, data, steps, polish):
    sink = io.StringIO()  # the progress bar is drawn (to a buffer) exactly as on a terminal
    start = time.process_time()
    with redirect_stderr(sink):
        ppl_vi.fit(model, **data, num_steps=steps, convergence=None, polish=polish, progress=True)
    return time.process_time() - start


def ppl_vi_fit(model, data, steps, polish):
    setup = _fit_cpu_time(model, data, 1, polish)
    return (_fit_cpu_time(model, data, steps + 1, polish) - setup) / steps


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
        times = {"loop": [], "fit": [], "fit_defaults": []}
        for _ in range(args.repeats):  # interleaved: loop, fit, fit with defaults, loop, ...
            times["loop"].append(hand_loop(module.model, data, args.steps))
            times["fit"].append(ppl_vi_fit(module.model, data, args.steps, SAME_ELBO))
            times["fit_defaults"].append(ppl_vi_fit(module.model, data, args.steps, Polish()))
        row = {f"{k}_ms_per_step": statistics.median(v) * 1e3 for k, v in times.items()}
        for key in ("fit", "fit_defaults"):
            for stat, value in ratio_stats(times[key], times["loop"]).items():
                row[f"{key}_ratio_{stat}"] = value
        report["models"][name] = row
        print(
            f"{name:20s} loop {row['loop_ms_per_step']:.3f} ms/step | fit "
            f"{row['fit_ms_per_step']:.3f} ms/step, ratio {row['fit_ratio_median']:.3f} "
            f"(range {row['fit_ratio_min']:.3f}-{row['fit_ratio_max']:.3f}) | fit defaults "
            f"{row['fit_defaults_ms_per_step']:.3f} ms/step, ratio "
            f"{row['fit_defaults_ratio_median']:.3f} (range {row['fit_defaults_ratio_min']:.3f}-"
            f"{row['fit_defaults_ratio_max']:.3f})"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
