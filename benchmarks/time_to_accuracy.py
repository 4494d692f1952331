"""Time to accuracy: seconds until every posterior mean is within 0.1 reference sd.

ppl-vi's method here: the full-rank Gaussian guide (``guide="full_rank"``) trained on
``Trace_ELBO`` with 32 vectorized particles per step, lr 0.1, ``fit``'s default ``jit="auto"``
(the whole step compiled for fits of 200+ steps, eager below), and posterior means from
Pareto-smoothed importance sampling with the fitted guide as the proposal
(``VIResult.importance_means``, 16,000 draws).
Fits run on a doubling ladder of ``num_steps``; the time to accuracy is the wall time of the
shortest fit whose means are all within ``--tol`` reference sd (set-up, compilation and the
importance draws included). The cumulative time of the ladder up to that fit is reported too
(what a user who does not know the budget in advance would spend). Each seed is its own run;
the table gives the median and range over seeds.

Baselines, in the same run: Pyro NUTS (1 chain, 500 warm-up + 1000 draws, with and without
``jit_compile``) and, when NumPyro is installed, NumPyro NUTS (same settings) timed as users call
it (the second ``MCMC.run`` call in a process) and as a ``jax.jit``-compiled sampler alone. A
sampler's time to accuracy is its wall time when its means are within ``--tol`` reference sd.

References: ArviZ's bundled NUTS draws for ``eight_schools``, a cached long NUTS run for
``logistic_regression`` (``_references.py``), and posteriordb's gold-standard draws for the
posteriordb set (``--reference-dir``; there the NUTS times are those cached by
``reference_posteriors.py`` and VI runs one seed).

    python benchmarks/time_to_accuracy.py [--seeds 3] [--threads 1] [--reference-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ppl_vi
from ppl_vi.compare import FAST_METHOD
from ppl_vi.models import eight_schools, logistic_regression

sys.path.insert(0, str(Path(__file__).parent))
import _numpyro  # noqa: E402
import _references  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LADDER = (125, 250, 500, 1000, 2000, 4000)
DRAWS = 16000
METHOD = {**FAST_METHOD[1], "convergence": None}
METHOD_LABEL = (
    "full-rank Gaussian, Trace_ELBO with 32 vectorized particles, lr 0.1, jit='auto' (the step "
    "compiled from 200 steps), PSIS means"
)


def vi_run(model, data: dict, reference: dict, steps: int, seed: int, **extra) -> dict:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ppl_vi.fit(
                model, **data, num_steps=steps, seed=seed, progress=False, **{**METHOD, **extra}
            )
            means, khat = result.importance_means(DRAWS, seed=seed)
    except Exception as err:  # noqa: BLE001 - a failed fit is a result (not reached) too
        wall = time.perf_counter() - start
        return {
            "steps": steps,
            "wall_s": wall,
            "error_sd": float("inf"),
            "khat": float("nan"),
            "failed": f"{type(err).__name__}: {str(err)[:160]}",
        }
    wall = time.perf_counter() - start
    means = {k: v.numpy() for k, v in means.items()}
    return {
        "steps": steps,
        "wall_s": wall,
        "error_sd": _references.max_error(means, reference),
        "khat": khat,
    }


def vi_ladder(model, data, reference, seed: int, tol: float, **extra) -> dict:
    runs, cumulative = [], 0.0
    for steps in LADDER:
        run = vi_run(model, data, reference, steps, seed, **extra)
        cumulative += run["wall_s"]
        runs.append(run)
        if run["error_sd"] <= tol:
            return {"reached": True, **run, "cumulative_s": cumulative, "ladder": runs}
    return {"reached": False, **runs[-1], "cumulative_s": cumulative, "ladder": runs}


def pyro_nuts(model, data, reference, seed: int, jit_compile: bool, **extra) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = ppl_vi.run_nuts(
            model,
            **data,
            num_warmup=500,
            num_samples=1000,
            seed=seed,
            progress=False,
            jit_compile=jit_compile,
            **extra,
        )
    means = {k: v.numpy().mean(0) for k, v in nuts.samples.items()}
    return {
        "wall_s": nuts.wall_time,
        "error_sd": _references.max_error(means, reference),
        "divergences": nuts.num_divergences,
    }


def numpyro_nuts(name: str, reference: dict, seed: int) -> dict:
    out = _numpyro.nuts(name, num_warmup=500, num_samples=1000, seed=seed)
    error = _references.max_error(out["means"], reference)
    return {
        "compiled_wall_s": out["wall_s"],
        "first_wall_s": out["first_wall_s"],
        "run_wall_s": out["plain_wall_s"],
        "run_first_wall_s": out["plain_first_wall_s"],
        "error_sd": error,
        "plain_error_sd": _references.max_error(out["plain_means"], reference),
    }


def _spread(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bundled(seeds: int, tol: float) -> dict:
    numpyro_ok, numpyro_note = _numpyro.available()
    if not numpyro_ok:
        print(numpyro_note)
    problems = {
        "eight_schools": (eight_schools, _references.eight_schools_reference()),
        "logistic_regression": (logistic_regression, _references.logistic_regression_reference()),
    }
    out = {}
    for name, (module, reference) in problems.items():
        data = module.load_data()
        vi, nuts, nuts_jit, numpyro = [], [], [], []
        for seed in range(seeds):  # interleaved: VI, Pyro NUTS, Pyro NUTS (jit), NumPyro, ...
            vi.append(vi_ladder(module.model, data, reference, seed, tol))
            print(f"{name} seed {seed}: VI {_describe(vi[-1])}", flush=True)
            if seed == 0:  # one run of each sampler: they take 10-50 s each
                nuts.append(pyro_nuts(module.model, data, reference, seed, False))
                nuts_jit.append(pyro_nuts(module.model, data, reference, seed, True))
                print(f"  Pyro NUTS {nuts[-1]}\n  Pyro NUTS jit {nuts_jit[-1]}", flush=True)
                if numpyro_ok:
                    numpyro.append(numpyro_nuts(name, reference, seed))
                    print(f"  NumPyro NUTS {numpyro[-1]}", flush=True)
        reached = [r["wall_s"] for r in vi if r["reached"]]
        row = {
            "vi": vi,
            "vi_reached": len(reached),
            "vi_time_s": _spread(reached) if reached else None,
            "vi_cumulative_s": _spread([r["cumulative_s"] for r in vi if r["reached"]])
            if reached
            else None,
            "pyro_nuts": nuts[0],
            "pyro_nuts_jit": nuts_jit[0],
            "numpyro_nuts": numpyro[0] if numpyro else None,
            "numpyro_note": numpyro_note,
        }
        if reached:
            row["speedup_vs_pyro_nuts"] = nuts[0]["wall_s"] / row["vi_time_s"]["median"]
            if numpyro:
                row["speedup_vs_numpyro_run"] = (
                    numpyro[0]["run_wall_s"] / row["vi_time_s"]["median"]
                )
        out[name] = row
    return out


def posteriordb_set(reference_dir, tol: float) -> dict:
    from ppl_vi.models import posteriordb

    cache = RESULTS / "nuts_cache"
    out = {}
    for name in posteriordb.POSTERIORS:
        try:
            post = posteriordb.load(name, reference_dir)
        except FileNotFoundError as err:
            return {"skipped": str(err)}
        reference = _references.moments(post.reference)
        init = {k: torch.as_tensor(v) for k, v in post.init_values().items()}
        vi = vi_ladder(post.model, post.data, reference, 0, tol, guide_kwargs={"init_loc_fn": init})
        nuts_file = cache / f"{post.name}_w500_d1000_s0.json"
        nuts = json.loads(nuts_file.read_text()) if nuts_file.exists() else None
        out[name] = {"vi": vi, "pyro_nuts_cached": nuts}
        print(
            f"{name}: VI {_describe(vi)}; NUTS (cached) "
            f"{nuts and (round(nuts['wall_time_s'], 1), round(nuts['max_abs_mean_error_sd'], 3))}",
            flush=True,
        )
    return out


def _describe(run: dict) -> str:
    state = "reached" if run["reached"] else "NOT reached"
    return (
        f"{state} at {run['steps']} steps: {run['wall_s']:.2f} s (ladder "
        f"{run['cumulative_s']:.2f} s), error {run['error_sd']:.3f} sd, k-hat {run['khat']:.2f}"
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tol", type=float, default=0.1)
    parser.add_argument(
        "--reference-dir",
        default=None,
        help="posteriordb reference folder (skip the posteriordb set if absent)",
    )
    parser.add_argument("--skip-posteriordb", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "torch_threads": torch.get_num_threads(),
        "jax_note": _numpyro.threads_note(),
        "tol_sd": args.tol,
        "method": METHOD_LABEL,
        "ladder": LADDER,
        "draws": DRAWS,
        "seeds": args.seeds,
        "bundled": bundled(args.seeds, args.tol),
    }
    if not args.skip_posteriordb:
        report["posteriordb"] = posteriordb_set(args.reference_dir, args.tol)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "time_to_accuracy.json").write_text(json.dumps(report, indent=1, default=_plain))
    return report


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def _fmt(spread: dict | None) -> str:
    if spread is None:
        return "not reached"
    return f"{spread['median']:.2f} s ({spread['min']:.2f}-{spread['max']:.2f})"


def markdown(report: dict) -> str:
    tol = report["tol_sd"]
    lines = [
        f"#### Time to accuracy (every posterior mean within {tol} reference sd)",
        "",
        f"ppl-vi: {report['method']}, shortest fit of the ladder {list(report['ladder'])} steps "
        f"that reaches the target (median and range over {report['seeds']} seeds; set-up, "
        f"compilation and {report['draws']} importance draws included; `ladder` = all fits up "
        "to it; the first fit in the process also pays one-time imports such as ArviZ, the top "
        "of the first range). Samplers: 1 chain, 500 warm-up + 1000 draws, one run each, error "
        "in brackets. "
        f"torch threads: {report['torch_threads']}; {report['jax_note']}",
        "",
        "| posterior | ppl-vi | ppl-vi ladder | Pyro NUTS | Pyro NUTS (jit) | NumPyro NUTS "
        "`MCMC.run` | NumPyro NUTS (jit-compiled sampler) | ppl-vi vs Pyro NUTS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["bundled"].items():
        n, nj, npy = row["pyro_nuts"], row["pyro_nuts_jit"], row["numpyro_nuts"]
        numpyro_cells = "skipped | skipped"
        if npy is not None:
            numpyro_cells = (
                f"{npy['run_wall_s']:.2f} s ({npy['plain_error_sd']:.2f} sd) | "
                f"{npy['compiled_wall_s']:.2f} s ({npy['error_sd']:.2f} sd)"
            )
        speed = row.get("speedup_vs_pyro_nuts")
        lines.append(
            f"| {name} | {_fmt(row['vi_time_s'])}, {row['vi_reached']}/{len(row['vi'])} seeds "
            f"| {_fmt(row['vi_cumulative_s']) if row['vi_cumulative_s'] else '-'} "
            f"| {n['wall_s']:.1f} s ({n['error_sd']:.2f} sd) "
            f"| {nj['wall_s']:.1f} s ({nj['error_sd']:.2f} sd) | {numpyro_cells} "
            f"| {'-' if speed is None else f'{speed:.1f}x'} |"
        )
    pdb = report.get("posteriordb")
    if pdb and "skipped" not in pdb:
        lines += [
            "",
            "posteriordb set (one seed; NUTS wall times are the cached 500 + 1000 runs of "
            "`reference_posteriors.py`, not re-run here):",
            "",
            "| posterior | ppl-vi | steps | error (sd) | k-hat | Pyro NUTS (cached) |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in pdb.items():
            vi, nuts = row["vi"], row["pyro_nuts_cached"]
            reached = f"{vi['wall_s']:.2f} s" if vi["reached"] else "not reached"
            nuts_cell = "-"
            if nuts is not None:
                ok = nuts["max_abs_mean_error_sd"] <= tol
                nuts_cell = (
                    f"{nuts['wall_time_s']:.1f} s ({nuts['max_abs_mean_error_sd']:.2f} "
                    f"sd{'' if ok else ', not reached'})"
                )
            lines.append(
                f"| {name} | {reached} | {vi['steps']} | {vi['error_sd']:.3f} | "
                f"{vi['khat']:.2f} | {nuts_cell} |"
            )
    elif pdb:
        lines += ["", f"posteriordb set skipped: {pdb['skipped']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(main()))
