"""Gaussian VI to accuracy: Pathfinder, batch-and-match, the auto method, and ADVI.

For each posterior (the twelve posteriordb references, the zoo's eight schools and logistic
regression, and a simulated logistic regression with D = 100, N = 10,000) and each method,
this script reports the number of log-density gradient evaluations and the wall time to
accuracy: every posterior mean within ``--mean-tol`` (0.1) reference sd and every sd within
``--sd-tol`` (10%) of the reference sd, measured on 4000 draws of ``result.sample()``
(PSIS-resampled for Pathfinder and for auto results that are not trusted as they are).
Where a method does not get there, the error it reached is reported.

Methods:

- ``pathfinder-1`` / ``pathfinder-4``: single- and multi-path Pathfinder (one run each);
- ``bam``: batch-and-match (32 draws per step) on a ladder of step counts, from Pathfinder
  (``init="pathfinder"``, its cost included); ``bam-rank4`` the same with a rank-4 plus
  diagonal covariance;
- ``fast``: the current ``FAST_METHOD`` (full-rank, 32 particles, lr 0.1, jit, PSIS-resampled)
  on a ladder of step counts;
- ``advi``: full-rank ADVI with Adam as users run it (``guide="full_rank"``, defaults: one
  particle, lr 0.01, the final phase) on a ladder of step counts;
- ``auto``: ``fit(guide="auto")``, one run; its verdict is reported next to its accuracy.

Gradient evaluations: Pathfinder counts each log-density gradient (L-BFGS and line search);
BaM ``steps x batch``; ADVI ``steps x particles`` (final-phase particles included). Ladder
times are those of the shortest fit that reached the accuracy (set-up included), and the
cumulative time of the ladder up to it.

The D = 100 regression has no published draws: its reference is a Pyro NUTS run (4 chains x
1000 draws after 500 warm-up, jit) computed once and cached in
``benchmarks/results/references/``.

    python benchmarks/gaussian_vi.py [--reference-dir ../shared/posteriordb] [--threads 1]
        [--only kilpisjarvi sblrc_blr] [--methods pathfinder-1 auto] [--out part.json]
    python benchmarks/gaussian_vi.py --merge part1.json part2.json   # one report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import ppl_vi
from ppl_vi.compare import FAST_METHOD

sys.path.insert(0, str(Path(__file__).parent))
import _references  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DRAWS = 4000
LADDERS = {
    "bam": (25, 100, 400),
    "fast": (125, 500, 2000),
    "advi": (500, 2000, 8000),
}
SIM_N, SIM_D = 10_000, 100


# ---------------------------------------------------------------------------- problems
def sim_logistic_model(X, y=None):
    """Logistic regression written as Pyro users write it, with a matrix product.

    A matrix product does not broadcast over Pyro's particle plate (a batched ``beta`` has
    shape ``(P, 1, D)``, so ``X @ beta[..., None]`` gives ``(P, 1, N)``, not ``(P, N)``); the
    batching probe sees that and every method evaluates draws one at a time here, as it would
    for a user's model. ``(X * beta).sum(-1)`` broadcasts but holds ``(P, N, D)`` floats.
    """
    D = X.shape[-1]
    alpha = pyro.sample("alpha", dist.Normal(0.0, 2.5))
    beta = pyro.sample("beta", dist.Normal(torch.zeros(D), 2.5).to_event(1))
    logits = alpha[..., None] + (X @ beta[..., None]).squeeze(-1)
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def sim_logistic_data() -> dict:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(SIM_N, SIM_D, generator=g)
    beta = torch.randn(SIM_D, generator=g) * 0.3
    y = torch.bernoulli(torch.sigmoid(0.5 + X @ beta), generator=g)
    return {"X": X, "y": y}


def sim_logistic_reference(refresh: bool = False) -> dict:
    path = _references.RESULTS / "sim_logistic_d100.json"
    if path.exists() and not refresh:
        return json.loads(path.read_text())["sites"]
    nuts = ppl_vi.run_nuts(sim_logistic_model, **sim_logistic_data(), num_warmup=500,
                           num_samples=1000, num_chains=4, seed=1, progress=False,
                           jit_compile=True)  # fmt: skip
    summary = nuts.summary()
    payload = {
        "source": "Pyro NUTS, 4 chains x (500 warm-up + 1000 draws), jit_compile=True, seed 1",
        "max_r_hat": float(summary["r_hat"].max()),
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "wall_time_s": nuts.wall_time,
        "sites": _references.moments({k: nuts.samples[k].numpy() for k in ("alpha", "beta")}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return payload["sites"]


def problems(reference_dir, only):
    from ppl_vi.models import eight_schools, logistic_regression, posteriordb

    out = []
    for name in posteriordb.POSTERIORS:
        post = posteriordb.load(name, reference_dir)
        out.append((name, post.model, post.data, lambda p=post: _references.moments(p.reference)))
    out.append(("zoo_eight_schools", eight_schools.model, eight_schools.load_data(),
                _references.eight_schools_reference))  # fmt: skip
    logistic = (logistic_regression.model, logistic_regression.load_data())
    out.append(("zoo_logistic_regression", *logistic, _references.logistic_regression_reference))
    out.append(("sim_logistic_d100", sim_logistic_model, sim_logistic_data(),
                sim_logistic_reference))  # fmt: skip
    return [p for p in out if not only or p[0] in only]


# ---------------------------------------------------------------------------- accuracy
def accuracy(result, reference: dict) -> dict:
    """Worst |mean error| (reference sds) and worst |sd ratio - 1| over shared components."""
    draws = result.sample(DRAWS, seed=1)
    worst_mean, worst_sd = 0.0, 0.0
    for name, ref in reference.items():
        if name not in draws:
            continue
        x = draws[name].double().cpu().numpy().reshape(DRAWS, -1)
        mean, sd = np.asarray(ref["mean"]).reshape(-1), np.asarray(ref["sd"]).reshape(-1)
        worst_mean = max(worst_mean, float(np.max(np.abs(x.mean(0) - mean) / sd)))
        worst_sd = max(worst_sd, float(np.max(np.abs(x.std(0, ddof=1) / sd - 1))))
    return {"mean_error": worst_mean, "sd_error": worst_sd}


def reached(acc: dict, mean_tol: float, sd_tol: float) -> bool:
    return acc["mean_error"] <= mean_tol and acc["sd_error"] <= sd_tol


def run_once(model, data, reference, options: dict, grads) -> dict:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ppl_vi.fit(model, **data, progress=False, seed=0, **options)
            wall = time.perf_counter() - start
            acc = accuracy(result, reference)
    except Exception as err:  # noqa: BLE001 - a failed fit is a result (not reached) too
        return {"wall_s": time.perf_counter() - start, "mean_error": math.inf,
                "sd_error": math.inf, "num_grads": 0,
                "failed": f"{type(err).__name__}: {str(err)[:160]}"}  # fmt: skip
    out = {"wall_s": wall, **acc, "num_grads": grads(result)}
    if result.verdict is not None:
        out["verdict"] = result.verdict.status
        out["stages"] = [s["method"] for s in result.verdict.stages]
    return out


def ladder(model, data, reference, steps_list, options, grads, tols) -> dict:
    runs, cumulative = [], 0.0
    for steps in steps_list:
        run = run_once(model, data, reference, {**options, "num_steps": steps}, grads)
        run["steps"] = steps
        cumulative += run["wall_s"]
        runs.append(run)
        if reached(run, *tols):
            return {"reached": True, **run, "cumulative_s": cumulative, "ladder": runs}
    best = min(runs, key=lambda r: max(r["mean_error"], r["sd_error"]))
    return {"reached": False, **best, "cumulative_s": cumulative, "ladder": runs}


def pathfinder_grads(result) -> int:
    return int(result.method_info.get("num_grads", 0))


def methods():
    fast = {**FAST_METHOD[1], "convergence": None}

    def particles(k):
        return lambda r: r.num_steps * k

    def bam_grads(r):  # the Pathfinder start counts too
        return r.num_steps * 32 + int(r.method_info.get("init_grads", 0))

    def auto_grads(r):
        return sum(s.get("num_grads", 0) for s in r.verdict.stages)

    return {
        "pathfinder-1": (None, {"guide": "pathfinder", "guide_kwargs": {"num_paths": 1}},
                         pathfinder_grads),
        "pathfinder-4": (None, {"guide": "pathfinder"}, pathfinder_grads),
        "bam": ("bam", {"guide": "bam", "init": "pathfinder", "convergence": None}, bam_grads),
        "bam-rank4": ("bam", {"guide": "bam", "init": "pathfinder", "convergence": None,
                              "guide_kwargs": {"rank": 4}}, bam_grads),
        "fast": ("fast", fast, particles(32)),
        "advi": ("advi", {"guide": "full_rank"}, _advi_grads),
        "auto": (None, {"guide": "auto"}, auto_grads),
    }  # fmt: skip


def _advi_grads(result) -> int:
    # main phase 1 particle per step; the final phase (the last 20%) uses 16 particles
    polish = ppl_vi.Polish()
    main = int(result.num_steps * (1 - polish.fraction))
    return main + (result.num_steps - main) * polish.num_particles


# ---------------------------------------------------------------------------- report
def _median_ratio(rows: list, num: str, den: str, key: str) -> dict | None:
    ratios = [r[num][key] / r[den][key] for r in rows
              if r[num].get("reached") and r[den].get("reached") and r[den][key] > 0]  # fmt: skip
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "n": len(ratios)}  # fmt: skip


def markdown(report: dict) -> str:
    names = list(report["methods"])
    lines = [
        f"Time and gradient evaluations to accuracy (means within {report['mean_tol']} "
        f"reference sd, sds within {report['sd_tol']:.0%}); {report['threads']} torch "
        f"thread(s), load average {report['load_start']} at the start and "
        f"{report['load_end']} at the end"
        + (
            f" ({report['parallel_parts']} processes in parallel, one per core)"
            if report.get("parallel_parts")
            else ""
        )
        + ". Each cell: wall s / gradient evaluations, or the "
        "errors reached (max mean error in sds, max |sd ratio - 1|) when not reached.",
        "",
        "| posterior | " + " | ".join(names) + " | auto verdict |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for name, row in report["rows"].items():
        cells = []
        for m in names:
            r = row[m]
            if r.get("reached"):
                cells.append(f"{r['wall_s']:.2f} s / {r['num_grads']}")
            elif "failed" in r:
                cells.append("failed")
            else:
                cells.append(f"not reached ({r['mean_error']:.2f}, {r['sd_error']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['auto'].get('verdict', '')} |")
    lines.append("")
    for key, text in report["summary"].items():
        lines.append(f"- {key}: {text}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--mean-tol", type=float, default=0.1)
    parser.add_argument("--sd-tol", type=float, default=0.1)
    parser.add_argument("--out", default=None, help="write the JSON here (a part of the set)")
    parser.add_argument("--merge", nargs="*", default=None, help="merge part JSONs and report")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge)
    torch.set_num_threads(args.threads)
    table = {k: v for k, v in methods().items() if not args.methods or k in args.methods}
    tols = (args.mean_tol, args.sd_tol)
    report = {"mean_tol": args.mean_tol, "sd_tol": args.sd_tol, "threads": args.threads,
              "load_start": round(os.getloadavg()[0], 2), "methods": list(table),
              "rows": {}}  # fmt: skip
    for name, model, data, reference_fn in problems(args.reference_dir, args.only):
        reference = reference_fn()
        row = {}
        for label, (ladder_key, options, grads) in table.items():
            if ladder_key is None:
                run = run_once(model, data, reference, options, grads)
                run["reached"] = reached(run, *tols)
                run["cumulative_s"] = run["wall_s"]
            else:
                run = ladder(model, data, reference, LADDERS[ladder_key], options, grads, tols)
            row[label] = run
            state = "reached" if run["reached"] else "not reached"
            print(f"{name} {label}: {state} {run['wall_s']:.2f} s, {run['num_grads']} grads, "
                  f"errors ({run['mean_error']:.3f}, {run['sd_error']:.3f})"
                  + (f", verdict {run['verdict']}" if "verdict" in run else "")
                  + (f", {run['failed']}" if "failed" in run else ""), flush=True)  # fmt: skip
        report["rows"][name] = row
    report["load_end"] = round(os.getloadavg()[0], 2)
    report["summary"] = summarize(report)
    RESULTS.mkdir(exist_ok=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        return report
    suffix = "" if not (args.only or args.methods) else "_partial"
    (RESULTS / f"gaussian_vi{suffix}.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / f"gaussian_vi{suffix}.md").write_text(markdown(report))
    print(markdown(report))
    return report


def merge(paths: list) -> dict:
    """One report from parts run in parallel processes (``--out``)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    report = {**parts[0], "rows": {}}
    for part in parts:  # a later part's methods replace an earlier part's, row by row
        for name, row in part["rows"].items():
            report["rows"].setdefault(name, {}).update(row)
    report["load_start"] = max(p["load_start"] for p in parts)
    report["load_end"] = max(p["load_end"] for p in parts)
    report["parallel_parts"] = len(parts)
    report["methods"] = list(dict.fromkeys(m for p in parts for m in p["methods"]))
    report["summary"] = summarize(report)
    (RESULTS / "gaussian_vi.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / "gaussian_vi.md").write_text(markdown(report))
    print(markdown(report))
    return report


def summarize(report: dict) -> dict:
    rows = list(report["rows"].values())
    names = list(report["rows"])
    out = {}
    if "auto" in report["methods"]:
        pdb = [n for n in names if not n.startswith(("zoo_", "sim_"))]
        hit = [n for n in pdb if report["rows"][n]["auto"].get("reached")]
        missed = [n for n in pdb if n not in hit]
        flagged = [n for n in missed if report["rows"][n]["auto"].get("verdict") == "use NUTS"]
        out["auto reached accuracy on posteriordb"] = (
            f"{len(hit)} of {len(pdb)}; not reached: {missed or 'none'}; of those flagged "
            f"'use NUTS': {flagged or 'none'}"
        )
        for n in [n for n in names if n.startswith(("zoo_", "sim_"))]:
            r = report["rows"][n]["auto"]
            out[f"auto on {n}"] = (
                f"{'reached' if r.get('reached') else 'not reached'} "
                f"({r['mean_error']:.3f}, {r['sd_error']:.3f}), verdict {r.get('verdict')}"
            )
    pairs = (("auto", "advi"), ("auto", "fast"), ("pathfinder-4", "advi"),
             ("pathfinder-4", "fast"), ("bam", "advi"), ("bam", "fast"))  # fmt: skip
    for num, den in pairs:
        if num in report["methods"] and den in report["methods"]:
            g = _median_ratio(rows, num, den, "num_grads")
            w = _median_ratio(rows, num, den, "wall_s")
            out[f"{num} / {den}, where both reached"] = (
                f"gradient evaluations {_fmt(g)}; wall time {_fmt(w)}"
            )
    for m in report["methods"]:
        walls = [r[m]["wall_s"] for r in rows if r[m].get("reached")]
        if walls:
            out[f"{m}: median wall time to accuracy"] = (
                f"{statistics.median(walls):.2f} s over the {len(walls)} posteriors it reached"
            )
    return out


def _fmt(stats: dict | None) -> str:
    if stats is None:
        return "no posterior where both reached"
    return (f"median {stats['median']:.3g} (range {stats['min']:.3g}-{stats['max']:.3g}, "
            f"{stats['n']} posteriors)")  # fmt: skip


if __name__ == "__main__":
    main()
