"""Bayesian neural networks: held-out predictions of VI, MAP and NUTS; local reparameterization.

Part 1 (``predictive``): on the diabetes regression and breast-cancer classification data of
``models/bnn`` (fixed 80/20 split, standardized), a SMALL network (one hidden layer of 5 ReLU
units, so that NUTS finishes in a few minutes on one core) is fitted by

- mean-field VI (``fit(guide="mean_field")``, Trace_ELBO, full data),
- mean-field VI with local reparameterization (``elbo=LocalReparam(Trace_ELBO())``),
- MAP (``guide=AutoDelta``: the posterior mode under the same priors),
- NUTS (``run_nuts``, one chain, Pyro's JIT-compiled potential),

and, for VI and MAP also the default network (50 hidden units). Reported on the test split:
the posterior predictive log-likelihood per datum (log-mean-exp over 1000 draws; MAP: the
plug-in density), RMSE (regression, standardized units), accuracy and the expected
calibration error (10 equal-width bins, classification; with 114 test rows an ECE moves by
about 0.01 per misjudged row).

Part 2 (``gradient_variance``): at the parameters of a mean-field fit of the default network
on the regression data, the total variance (summed over entries) of the gradient of the loss
with respect to the first layer's weight means, over repeated draws on random mini-batches,
for plain weight sampling and local reparameterization, with the ratio and its standard error
(delta method from the per-draw squared deviations), for several batch sizes.

    python benchmarks/bnn.py [--quick] [--steps 5000] [--threads 1]

writes ``benchmarks/results/bnn.json``. The full run takes about 6 minutes on one core (NUTS
most of it); ``--quick`` under a minute (tiny budgets: a smoke test, not results).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta

import ppl_vi
from ppl_vi.local_reparam import LocalReparam
from ppl_vi.models import bnn
from ppl_vi.stats import expected_calibration_error

RESULTS = Path(__file__).parent / "results"
SMALL, DEFAULT = (5,), bnn.DEFAULT_HIDDEN_DIMS


def _fit(train: dict, hidden: tuple, guide, elbo, steps: int):
    start = time.perf_counter()
    result = ppl_vi.fit(
        bnn.model, **train, hidden_dims=hidden, guide=guide, elbo=elbo, num_steps=steps,
        lr=0.01, progress=False, convergence=None, seed=0,
    )  # fmt: skip
    return result, time.perf_counter() - start


def _metrics(posterior, test: dict, hidden: tuple, num_samples: int) -> dict:
    pyro.set_rng_seed(1)
    m = bnn.predictive_metrics(
        posterior, test["x"], test["y"], num_samples=num_samples, task=test["task"],
        hidden_dims=hidden,
    )  # fmt: skip
    out = {"test_log_lik": m["log_lik"]}
    if test["task"] == "regression":
        out["rmse"] = m["rmse"]
    else:
        out["accuracy"] = m["accuracy"]
        out["ece"] = expected_calibration_error(m["probs"], test["y"], num_bins=10)
    return out


def predictive(args) -> dict:
    report = {}
    for task in bnn.TASKS:
        train, test = bnn.load_data(task, "train"), bnn.load_data(task, "test")
        rows = {}
        runs = [
            ("mean_field", SMALL, "mean_field", Trace_ELBO()),
            ("mean_field+local_reparam", SMALL, "mean_field", LocalReparam(Trace_ELBO())),
            ("map", SMALL, AutoDelta, Trace_ELBO()),
            ("mean_field", DEFAULT, "mean_field", Trace_ELBO()),
            ("mean_field+local_reparam", DEFAULT, "mean_field", LocalReparam(Trace_ELBO())),
            ("map", DEFAULT, AutoDelta, Trace_ELBO()),
        ]
        for name, hidden, guide, elbo in runs:
            result, seconds = _fit(train, hidden, guide, elbo, args.steps)
            draws = 1 if name == "map" else args.draws
            row = {"hidden_dims": list(hidden), **_metrics(result, test, hidden, draws)}
            row["seconds"] = seconds
            row["jit"] = result.method_info["jit"]["main"]["path"]
            rows[f"{name} {hidden}"] = row
            _print_row(task, f"{name} {hidden}", row)
        start = time.perf_counter()
        nuts = ppl_vi.run_nuts(
            bnn.model, **train, hidden_dims=SMALL, num_warmup=args.nuts, num_samples=args.nuts,
            seed=0, progress=False, jit_compile=True,
        )  # fmt: skip
        row = {"hidden_dims": list(SMALL), **_metrics(nuts.samples, test, SMALL, 0)}
        row.update(seconds=time.perf_counter() - start, divergences=nuts.num_divergences)
        row.update(num_warmup=args.nuts, num_samples=args.nuts)
        rows[f"nuts {SMALL}"] = row
        _print_row(task, f"nuts {SMALL}", row)
        report[task] = rows
    return report


def _print_row(task: str, name: str, row: dict) -> None:
    extra = (
        f"rmse {row['rmse']:.3f}"
        if "rmse" in row
        else f"accuracy {row['accuracy']:.3f}  ECE {row['ece']:.3f}"
    )
    print(
        f"  {task:14s} {name:34s} test log-lik {row['test_log_lik']:8.3f}  {extra}  "
        f"{row['seconds']:6.1f} s"
    )


def _loc_gradients(elbo, guide, data, repeats, batch) -> torch.Tensor:
    loc = dict(guide.named_parameters())["locs.layers.0.weight_unconstrained"]
    grads = []
    for _ in range(repeats):
        loss = elbo.differentiable_loss(
            bnn.model, guide, **data, hidden_dims=DEFAULT, subsample_size=batch
        )
        (grad,) = torch.autograd.grad(loss, loc)
        grads.append(grad.reshape(-1))
    return torch.stack(grads)  # (repeats, 50 * 10)


def _total_variance(g: torch.Tensor) -> tuple[float, float]:
    """sum_j Var(g_j) and its standard error, from the per-draw ||g_r - mean||^2."""
    r = g.shape[0]
    sq = ((g - g.mean(0)) ** 2).sum(1) * r / (r - 1)
    return float(sq.mean()), float(sq.std() / math.sqrt(r))


def gradient_variance(args) -> dict:
    train = bnn.load_data("regression", "train")
    result, _ = _fit(train, DEFAULT, "mean_field", Trace_ELBO(), args.steps)
    out = {"hidden_dims": list(DEFAULT), "draws": args.grad_draws, "batches": {}}
    with result.param_scope():
        guide = result.guide
        for batch in (16, 64, 256):
            start = time.perf_counter()
            pyro.set_rng_seed(2)
            plain = _loc_gradients(Trace_ELBO(), guide, train, args.grad_draws, batch)
            t_plain = time.perf_counter() - start
            pyro.set_rng_seed(2)
            start = time.perf_counter()
            local = _loc_gradients(LocalReparam(), guide, train, args.grad_draws, batch)
            t_local = time.perf_counter() - start
            (vp, sp), (vl, sl) = _total_variance(plain), _total_variance(local)
            ratio = vl / vp
            ratio_se = ratio * math.sqrt((sl / vl) ** 2 + (sp / vp) ** 2)
            per_entry = local.var(0) / plain.var(0)
            out["batches"][str(batch)] = {
                "plain_total_variance": vp,
                "plain_se": sp,
                "local_total_variance": vl,
                "local_se": sl,
                "ratio": ratio,
                "ratio_se": ratio_se,
                "median_per_entry_ratio": float(per_entry.median()),
                "seconds_per_gradient_plain": t_plain / args.grad_draws,
                "seconds_per_gradient_local": t_local / args.grad_draws,
            }
            print(
                f"  batch {batch:4d}: total gradient variance plain {vp:10.4g} +- {sp:.2g}, "
                f"local {vl:10.4g} +- {sl:.2g}; ratio {ratio:.3f} +- {ratio_se:.3f} (median per "
                f"entry {float(per_entry.median()):.3f})"
            )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="VI/MAP steps (default 5000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps is None:
        args.steps = 300 if args.quick else 5000
    args.nuts = 30 if args.quick else 300
    args.draws = 100 if args.quick else 1000
    args.grad_draws = 30 if args.quick else 200
    print(
        f"torch threads: {torch.get_num_threads()}; VI/MAP {args.steps} steps; NUTS "
        f"{args.nuts} warm-up + {args.nuts} draws on hidden_dims={SMALL}"
        + (" (--quick: smoke test, not results)" if args.quick else "")
    )
    report = {
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "steps": args.steps,
        "predictive_draws": args.draws,
    }
    start = time.perf_counter()
    print("held-out predictions (log-lik per datum; regression on the standardized scale):")
    report["predictive"] = predictive(args)
    print(f"gradient variance of the first layer's weight means ({args.grad_draws} draws):")
    report["gradient_variance"] = gradient_variance(args)
    report["seconds"] = time.perf_counter() - start
    print(f"total {report['seconds']:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bnn.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
