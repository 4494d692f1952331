"""Ladder VAE vs the plain hierarchical VAE on binarized digits: held-out log p(x), active units.

Both fit the same generative model (``models/ladder_vae``: two latent layers, 8 units next to the
data and 4 on top, networks with 128 hidden units) with the same inference widths (128 per
layer): the :class:`~ppl_vi.guides.ladder.Ladder` guide with ``inference="ladder"`` (bottom-up
pass, top-down merge with the model's conditionals; Sønderby et al. 2016) and with
``inference="bottom_up"`` (the plain hierarchical VAE's q(z1 | x) q(z2 | z1)). Training: the 1500
training images, mini-batches of 100, Adam at 3e-3, ``Trace_ELBO``, the same steps and seed;
without and with a linear warm-up of the KL term over ``--warmup`` steps (``fit(kl_anneal=...)``;
``--warmup 0`` skips those runs). On the 297 test images it reports:

* log p(x) per image by IWAE with K = ``--particles`` (default 1000) draws, the mean over images,
  its standard error over images, and the paired difference ladder - plain with its standard
  error (the same images, so the image-to-image spread cancels);
* the ELBO per image (the mean of the same K log weights);
* active units of each layer (Burda, Grosse & Salakhutdinov 2016: A_u = Cov_x(E_q[u | x]) > 0.01),
  by ``ppl_vi.diagnostics.active_units`` (``--au-samples`` guide draws per image, corrected for
  their own spread); a local copy of that estimator is used where ppl_vi has none.

Writes ``benchmarks/results/ladder.json``.

    python benchmarks/ladder.py [--steps 3000] [--warmup 1000] [--particles 1000] [--threads 1]
    python benchmarks/ladder.py --quick      # 300 steps, K = 100: about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch

import ppl_vi
from ppl_vi.diagnostics import active_units
from ppl_vi.elbos import IWAE
from ppl_vi.guides.ladder import Ladder
from ppl_vi.models import ladder_vae

RESULTS = Path(__file__).parent / "results"
LATENT_DIMS = (8, 4)  # bottom (z1) to top (z2)
HIDDEN = 128
BATCH = 100
LR = 3e-3
INFERENCE = ("ladder", "bottom_up")
THRESHOLD = 0.01


def _active_units(result, data: dict, num_samples: int, seed: int) -> dict:
    """Per layer: A_u of every unit (Monte Carlo, corrected for the draws' own spread)."""
    au = active_units(result, **data, num_samples=num_samples, seed=seed, threshold=THRESHOLD)
    return {name: v.tolist() for name, v in au.variances.items()}


def _evaluate(result, test: dict, num_particles: int, au_samples: int) -> dict:
    with result.param_scope(), torch.no_grad():
        pyro.set_rng_seed(100)
        iwae = IWAE(num_particles=num_particles, max_plate_nesting=1)
        log_w = iwae.particles(ladder_vae.model, result.guide, (), test).log_weights  # (K, N)
    log_p = (torch.logsumexp(log_w, 0) - math.log(num_particles)).double()  # (N,)
    elbo = log_w.mean(0).double()
    variances = _active_units(result, test, au_samples, seed=200)
    return {
        "per_image": log_p,
        "test_log_likelihood": log_p.mean().item(),
        "test_log_likelihood_stderr": (log_p.std() / math.sqrt(log_p.numel())).item(),
        "test_elbo": elbo.mean().item(),
        "active_units": {n: sum(a > THRESHOLD for a in v) for n, v in variances.items()},
        "unit_variances": {n: [round(a, 4) for a in v] for n, v in variances.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=1000, help="KL warm-up steps (0: none)")
    parser.add_argument("--particles", type=int, default=1000, help="IWAE particles K")
    parser.add_argument("--au-samples", type=int, default=100, help="guide draws per image")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="300 steps, K = 100, 20 draws")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.particles, args.au_samples = 300, 100, 100, 20
    torch.set_num_threads(args.threads)
    train, test = ladder_vae.load_data(), ladder_vae.load_data("test")
    n_train = train["x"].shape[0]
    schedules = {"no warm-up": None}
    if args.warmup > 0:
        schedules[f"warm-up {args.warmup}"] = args.warmup
    report = {
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch": BATCH,
        "lr": LR,
        "latent_dims_bottom_up": list(LATENT_DIMS),
        "hidden": HIDDEN,
        "iwae_particles": args.particles,
        "active_unit_samples": args.au_samples,
        "threshold": THRESHOLD,
        "quick": args.quick,
        "runs": {},
    }
    print(
        f"torch threads: {torch.get_num_threads()}; {args.steps} steps, batch {BATCH}, Adam {LR}; "
        f"test log p(x) by IWAE K={args.particles}"
    )
    rows = []
    for label, warmup in schedules.items():
        run = {}
        for inference in INFERENCE:
            start = time.perf_counter()
            result = ppl_vi.fit(
                ladder_vae.model,
                **train,
                latent_dims=LATENT_DIMS,
                hidden_dim=HIDDEN,
                subsample_size=BATCH,
                guide=Ladder,
                guide_kwargs={"hidden_dims": HIDDEN, "inference": inference},
                num_steps=args.steps,
                lr=LR,
                progress=False,
                convergence=None,
                polish=None,
                seed=0,
                kl_anneal=warmup,
            )
            seconds = time.perf_counter() - start
            data = dict(test, latent_dims=LATENT_DIMS, hidden_dim=HIDDEN)
            out = _evaluate(result, data, args.particles, args.au_samples)
            out["train_seconds"] = seconds
            out["final_train_loss_per_image"] = float(result.losses[-100:].mean()) / n_train
            run[inference] = out
        diff = run["ladder"]["per_image"] - run["bottom_up"]["per_image"]
        run["ladder_minus_bottom_up"] = {
            "test_log_likelihood": diff.mean().item(),
            "stderr": (diff.std() / math.sqrt(diff.numel())).item(),
        }
        for inference in INFERENCE:
            run[inference].pop("per_image")
            r = run[inference]
            rows.append(
                f"  {label:16s} {inference:9s}  {r['test_log_likelihood']:8.3f} "
                f"+- {r['test_log_likelihood_stderr']:.3f}  {r['test_elbo']:8.3f}   "
                f"{r['active_units']['z2']} of {LATENT_DIMS[1]}   "
                f"{r['active_units']['z1']} of {LATENT_DIMS[0]}  {r['train_seconds']:5.0f} s"
            )
        d = run["ladder_minus_bottom_up"]
        rows.append(
            f"  {label:16s} ladder - plain: {d['test_log_likelihood']:+.3f} +- {d['stderr']:.3f}"
        )
        report["runs"][label] = run
    print(
        "  setting          guide      log p(x) (+- se)  ELBO      top z2   z1      train\n"
        + "\n".join(rows)
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ladder.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
