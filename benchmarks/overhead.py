"""Per-step time of ``ppl_vi.fit`` vs a hand-written ``pyro.infer.SVI`` loop, with and without JIT.

All runs fit the same model with the same guide class (``MeanField``), ELBO (``Trace_ELBO``, one
particle) and optimizer (Adam, lr 0.01) for the same number of steps:

- ``loop``: ``pyro.infer.SVI`` with ``Trace_ELBO``; ``loop_jit``: the same with Pyro's
  ``JitTrace_ELBO``;
- ``fit``: ``ppl_vi.fit`` with the progress bar on, its final phase on (learning-rate decay and
  parameter averaging, without the extra particles so that the ELBO is the same) and the
  stopping rule off; ``fit_jit``: the same with ``jit=True``;
- ``fit_defaults``: ``fit`` with all its defaults (16 particles in the final phase);
- ``numpyro``: NumPyro's SVI (AutoNormal + Trace_ELBO, Adam 0.01, ``jax.jit``-compiled update),
  when NumPyro is installed.

Runs are interleaved; the script reports the median and range of the per-step time ratios and
checks that ``fit(jit=True)`` and ``fit()`` give the same parameters for the same seed. Times
are CPU time of this process (``time.process_time``), which other jobs on a shared machine
disturb much less than wall time; ``fit``'s set-up (tracing the model, building the guide,
recording the graph) is taken out by subtracting a short fit.

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
from pyro.infer import JitTrace_ELBO, Trace_ELBO

import ppl_vi
from ppl_vi import Polish
from ppl_vi.guides import MeanField
from ppl_vi.models import eight_schools, logistic_regression

sys.path.insert(0, str(Path(__file__).parent))
import _numpyro  # noqa: E402
from _timing import format_ratio as _ratio  # noqa: E402
from _timing import per_step, ratio_stats, svi_step_time  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SAME_ELBO = Polish(num_particles=1)  # decay + averaging, no extra particles
SETUP_STEPS = 3  # the compiled step is recorded at step 2: a 3-step fit holds all set-up


def hand_loop(model, data, steps, jit=False):
    elbo = JitTrace_ELBO(ignore_jit_warnings=True) if jit else Trace_ELBO()
    # warm-up steps build the parameters (and record the graph), as fit does before its loop
    return svi_step_time(model, MeanField(model), elbo, data, steps, warmup=3)


def _fit(model, data, steps, polish, jit):
    sink = io.StringIO()  # the progress bar is drawn (to a buffer) exactly as on a terminal
    start = time.process_time()
    with redirect_stderr(sink):
        result = ppl_vi.fit(
            model, **data, num_steps=steps, convergence=None, polish=polish, progress=True, jit=jit
        )
    return time.process_time() - start, result


def ppl_vi_fit(model, data, steps, polish, jit=False):
    return per_step(lambda n: _fit(model, data, n, polish, jit)[0], steps, SETUP_STEPS)


def same_result(model, data, steps: int = 300) -> float:
    """Largest |parameter difference| between ``fit()`` and ``fit(jit=True)``, same seed."""
    _, a = _fit(model, data, steps, SAME_ELBO, False)
    _, b = _fit(model, data, steps, SAME_ELBO, True)
    pa, pb = a.params, b.params
    return max(float((pa[k] - pb[k]).abs().max()) for k in pa)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numpyro_ok, numpyro_note = _numpyro.available()
    models = {"eight_schools": eight_schools, "logistic_regression": logistic_regression}
    report = {
        "torch_threads": torch.get_num_threads(),
        "jax_note": _numpyro.threads_note() if numpyro_ok else numpyro_note,
        "steps": args.steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "numpyro": numpyro_note,
        "models": {},
    }
    print(f"torch threads: {torch.get_num_threads()}, steps per run: {args.steps}")
    if not numpyro_ok:
        print(numpyro_note)
    for name, module in models.items():
        data = module.load_data()
        keys = ["loop", "loop_jit", "fit", "fit_jit", "fit_defaults"]
        times = {k: [] for k in keys + (["numpyro"] if numpyro_ok else [])}
        for _ in range(args.repeats):  # interleaved
            times["loop"].append(hand_loop(module.model, data, args.steps))
            times["loop_jit"].append(hand_loop(module.model, data, args.steps, jit=True))
            times["fit"].append(ppl_vi_fit(module.model, data, args.steps, SAME_ELBO))
            times["fit_jit"].append(ppl_vi_fit(module.model, data, args.steps, SAME_ELBO, True))
            times["fit_defaults"].append(ppl_vi_fit(module.model, data, args.steps, Polish()))
            if numpyro_ok:
                out = _numpyro.svi_step_times(name, steps=args.steps)
                times["numpyro"].append(out["cpu_s_per_step"][0])
        row = {f"{k}_ms_per_step": statistics.median(v) * 1e3 for k, v in times.items()}
        row["steps_per_s"] = {k: 1.0 / statistics.median(v) for k, v in times.items()}
        pairs = {
            "fit_vs_loop": ("fit", "loop"),
            "fit_jit_vs_loop_jit": ("fit_jit", "loop_jit"),
            "jit_speedup": ("fit", "fit_jit"),
            "fit_defaults_vs_loop": ("fit_defaults", "loop"),
        }
        if numpyro_ok:
            pairs["fit_jit_vs_numpyro"] = ("fit_jit", "numpyro")
        row["ratios"] = {k: ratio_stats(times[a], times[b]) for k, (a, b) in pairs.items()}
        row["jit_max_param_difference"] = same_result(module.model, data)
        report["models"][name] = row
        r = row["ratios"]
        print(
            f"{name:20s} loop {row['loop_ms_per_step']:.3f} | loop_jit "
            f"{row['loop_jit_ms_per_step']:.3f} | fit {row['fit_ms_per_step']:.3f} | fit_jit "
            f"{row['fit_jit_ms_per_step']:.3f} ms/step; jit speed-up "
            f"{r['jit_speedup']['median']:.2f}x ({r['jit_speedup']['min']:.2f}-"
            f"{r['jit_speedup']['max']:.2f}); max |param diff| jit vs not "
            f"{row['jit_max_param_difference']:.2e}",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def markdown(report: dict) -> str:
    has_numpyro = any("numpyro_ms_per_step" in row for row in report["models"].values())
    lines = [
        "#### Per-step time: ppl-vi vs a hand-written Pyro SVI loop and NumPyro",
        "",
        f"MeanField/AutoNormal + Trace_ELBO + Adam, CPU ms per step (median of "
        f"{report['repeats']} interleaved repeats of {report['steps']} steps; ratios: median and "
        f"range of the per-repeat ratios). torch threads: {report['torch_threads']}. "
        f"NumPyro: {report['numpyro']}. `fit` includes its progress bar, final phase and "
        "non-finite checks.",
        "",
        "| model | Pyro SVI loop | Pyro SVI + JitTrace_ELBO | fit | fit(jit=True) | "
        "fit / fit(jit=True) | fit / loop | fit(jit) / loop(jit) | "
        + ("NumPyro SVI | fit(jit) / NumPyro | " if has_numpyro else "")
        + "same seed: max param diff |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if has_numpyro else "") + "---|",
    ]
    for name, row in report["models"].items():
        r = row["ratios"]
        cells = [
            name,
            f"{row['loop_ms_per_step']:.3f}",
            f"{row['loop_jit_ms_per_step']:.3f}",
            f"{row['fit_ms_per_step']:.3f}",
            f"{row['fit_jit_ms_per_step']:.3f}",
            f"**{_ratio(r['jit_speedup'])}**",
            _ratio(r["fit_vs_loop"]),
            _ratio(r["fit_jit_vs_loop_jit"]),
        ]
        if has_numpyro:
            cells += [f"{row['numpyro_ms_per_step']:.3f}", _ratio(r["fit_jit_vs_numpyro"])]
        cells.append(f"{row['jit_max_param_difference']:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(main()))
