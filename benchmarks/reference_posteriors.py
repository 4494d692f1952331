"""VI methods and Pyro NUTS against posteriordb reference draws.

For every posterior of ``ppl_vi.models.posteriordb`` (data and reference draws read from the
posteriordb folder at run time, never copied), this script fits each VI method (guide x ELBO)
and runs Pyro NUTS (one chain, 500 warm-up + 1000 draws). Accuracy is always measured against
the reference draws (posteriordb's Stan runs, 10 x 1000 draws, 2000 kept): the largest
|mean error| in reference sds over all scalar components, the median sd ratio (VI / reference)
and, for VI, PSIS k-hat. Wall times are compared as the ratio VI / NUTS.

NUTS results are cached in ``benchmarks/results/nuts_cache/`` (keyed by posterior and
settings), because some posteriors take minutes (kilpisjarvi about 18 min). ``--budget`` caps
the script's total wall time: once spent, remaining NUTS runs that are not cached are skipped
and the table says so.

Writes ``benchmarks/results/reference_posteriors.json`` and ``.md``.

    python benchmarks/reference_posteriors.py [--reference-dir ../shared/posteriordb]
        [--posteriors eight_schools_noncentered garch11] [--steps 3000] [--budget 3600]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

import ppl_vi
from ppl_vi.compare import STANDARD_METHODS, compare, components
from ppl_vi.models import posteriordb

RESULTS = Path(__file__).parent / "results"
CACHE = RESULTS / "nuts_cache"
#: Method label -> (guide, ELBO, ELBO options, compare PSIS-resampled draws).
METHODS = STANDARD_METHODS
#: What "off" means in the table: mean error, k-hat or sd ratio beyond these.
MAX_ERROR_OK, KHAT_OK, SD_RATIO_OK = 0.5, 0.7, (0.5, 2.0)


def accuracy(draws: dict, reference: dict) -> dict:
    """Max |mean error| (reference sds) and median sd ratio over shared scalar components."""
    shared = [k for k in reference if k in draws]
    a, r = components({k: draws[k] for k in shared}), components({k: reference[k] for k in shared})
    errors, ratios = [], []
    for name, ref in r.items():
        sd = ref.std(ddof=1)
        errors.append(abs(a[name].mean() - ref.mean()) / sd)
        ratios.append(a[name].std(ddof=1) / sd)
    return {
        "max_abs_mean_error_sd": float(max(errors)),
        "median_sd_ratio": float(np.median(ratios)),
    }


def run_vi(post, label: str, steps: int, seed: int) -> dict:
    guide, elbo, elbo_kwargs, resample = METHODS[label]
    init = {k: torch.as_tensor(v) for k, v in post.init_values().items()}
    start = time.perf_counter()
    try:
        result = ppl_vi.fit(
            post.model,
            **post.data,
            guide=guide,
            guide_kwargs={"init_loc_fn": init},
            elbo=elbo,
            elbo_kwargs=elbo_kwargs,
            num_steps=steps,
            progress=False,
            seed=seed,
        )
    except Exception as err:  # a method that fails on a posterior is a result too
        return {"method": label, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    wall = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = compare(result, post, num_samples=4000, seed=seed, warn=False, resample=resample)
    return {
        "method": label,
        "max_abs_mean_error_sd": report.max_mean_error,
        "median_sd_ratio": float(report.table["sd_ratio"].median()),
        "khat": report.khat,
        "wall_time_s": wall,
        "steps": result.num_steps,
    }


def run_nuts(post, seed: int, budget_left: float, warmup: int, draws: int) -> dict:
    key = f"{post.name}_w{warmup}_d{draws}_s{seed}.json"
    path = CACHE / key
    if path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    if budget_left <= 0:
        return {"method": "nuts", "skipped": "time budget spent (run again to fill the cache)"}
    init = {k: torch.as_tensor(v) for k, v in post.init_values().items()}
    try:
        nuts = ppl_vi.run_nuts(
            post.model,
            **post.data,
            num_warmup=warmup,
            num_samples=draws,
            init_values=init,
            progress=False,
            seed=seed,
        )
    except Exception as err:  # reported in the table, not fatal
        return {"method": "nuts", "error": f"{type(err).__name__}: {str(err)[:200]}"}
    samples = {k: v.numpy() for k, v in nuts.samples.items()}
    row = {
        "method": "nuts",
        **accuracy(samples, post.reference),
        "wall_time_s": nuts.wall_time,
        "divergences": nuts.num_divergences,
        "settings": nuts.settings,
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return {**row, "cached": False}


def verdict(row: dict) -> str:
    if "error" in row:
        return "failed"
    if "skipped" in row:
        return "skipped"
    lo, hi = SD_RATIO_OK
    bad = (
        row["max_abs_mean_error_sd"] > MAX_ERROR_OK
        or row.get("khat", 0.0) > KHAT_OK
        or not lo <= row["median_sd_ratio"] <= hi
    )
    return "OFF" if bad else "ok"


def markdown(results: dict, threads: int, steps: int, warmup: int, draws: int) -> str:
    lines = [
        "# VI and NUTS on posteriordb reference posteriors",
        "",
        f"torch threads: {threads}; VI: {steps} steps (Adam lr 0.01, final phase "
        f"`Polish()`), 4000 draws; NUTS: Pyro, 1 chain, {warmup} warm-up + {draws} draws. "
        "Accuracy against posteriordb's reference draws: `max err` is the largest |mean error| "
        "over scalar components in reference sds, `sd ratio` the median of VI (or NUTS) sd / "
        f"reference sd. `OFF` marks max err > {MAX_ERROR_OK}, k-hat > {KHAT_OK} or a median sd "
        f"ratio outside [{SD_RATIO_OK[0]}, {SD_RATIO_OK[1]}]. NUTS times come from a cache "
        "(benchmarks/results/nuts_cache/) and may have been measured on a differently loaded "
        "machine than the VI times. "
        "`VI/NUTS time` is the wall-time ratio; `best VI` is the VI row with the smallest max err.",
        "",
        "| posterior | method | max err (sd) | sd ratio | k-hat | wall time (s) | VI/NUTS time "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        nuts = next((r for r in rows if r["method"] == "nuts"), None)
        vi = [r for r in rows if r["method"] != "nuts" and "max_abs_mean_error_sd" in r]
        best = min(vi, key=lambda r: r["max_abs_mean_error_sd"])["method"] if vi else None
        for row in rows:
            label = row["method"] + (" (best VI)" if row["method"] == best else "")
            if "error" in row or "skipped" in row:
                lines.append(
                    f"| {name} | {label} | | | | | | {verdict(row)}: "
                    f"{row.get('error') or row.get('skipped')} |"
                )
                continue
            ratio = ""
            if row["method"] != "nuts" and nuts and "wall_time_s" in nuts:
                ratio = f"{row['wall_time_s'] / nuts['wall_time_s']:.2f}"
            khat = f"{row['khat']:.2f}" if "khat" in row else ""
            extra = f" ({row['divergences']} div.)" if row.get("divergences") else ""
            lines.append(
                f"| {name} | {label} | {row['max_abs_mean_error_sd']:.3f} | "
                f"{row['median_sd_ratio']:.2f} | {khat} | {row['wall_time_s']:.1f}{extra} | "
                f"{ratio} | {verdict(row)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", default=None, help="posteriordb folder")
    parser.add_argument("--posteriors", nargs="*", default=None)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite the .md from the .json, run nothing"
    )
    args = parser.parse_args(argv)
    if args.table_only:
        saved = json.loads((RESULTS / "reference_posteriors.json").read_text())
        meta = saved["meta"]
        table = markdown(saved["results"], meta["threads"], meta["steps"], args.warmup, args.draws)
        (RESULTS / "reference_posteriors.md").write_text(table)
        print(table)
        return
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)  # flat-prior regressions are badly scaled in float32
    pyro.enable_validation(False)
    folder = posteriordb.find_reference_dir(args.reference_dir)
    names = args.posteriors or posteriordb.available()
    start = time.perf_counter()
    results = {}
    for name in names:
        post = posteriordb.load(name, folder)
        rows = []
        for label in args.methods:
            row = run_vi(post, label, args.steps, args.seed)
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        left = args.budget - (time.perf_counter() - start)
        row = run_nuts(post, args.seed, left, args.warmup, args.draws)
        rows.append(row)
        print(name, json.dumps(row), flush=True)
        results[name] = rows
        write(results, args, folder, time.perf_counter() - start)
    print(markdown(results, args.threads, args.steps, args.warmup, args.draws))


def write(results: dict, args, folder: Path, elapsed: float) -> None:
    """Write the JSON and the Markdown table (after every posterior, so a stop loses little)."""
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "threads": args.threads,
        "steps": args.steps,
        "reference_dir": str(folder),
        "total_wall_time_s": elapsed,
    }
    (RESULTS / "reference_posteriors.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    table = markdown(results, args.threads, args.steps, args.warmup, args.draws)
    (RESULTS / "reference_posteriors.md").write_text(table)


if __name__ == "__main__":
    main()
