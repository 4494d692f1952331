"""Dying units: active latent units and held-out log p(x) of ELBO, IWAE and VampPrior VAEs.

Four VAEs on the binarised digits (``models/vae_digits``: train 1500 images, test 297), with the
same architecture (latent size 32, decoder ``32 -> 128 -> 64``, encoder ``64 -> 128 -> 2 x 32``
run by the ``Amortized`` guide through ``vae_digits.shared_encoder``, so all four start from the
same weights), mini-batches of 100, Adam at 3e-3, the same number of steps and seed:

(a) standard-normal prior, trained with ``Trace_ELBO``;
(b) standard-normal prior, trained with ``IWAE(num_particles=8)``;
(c) VampPrior (``prior="vamp"``, 50 pseudo-inputs sharing the guide's encoder), ``Trace_ELBO``;
(d) standard-normal prior, ``Trace_ELBO`` with a linear KL warm-up over the first third of the
    steps (``fit(kl_anneal=steps // 3)``).

For each it reports, on the 297 test images:

- log p(x) per image, estimated by importance sampling with K = 1000 guide draws per image
  (the IWAE bound at K = 1000), repeated with 3 seeds. ``stderr_images`` is the spread of the
  per-image estimates over images, sd / sqrt(297): the uncertainty of the test-set mean as an
  estimate of the mean over images like these. ``stderr_mc`` is the Monte Carlo error of the
  reported mean (sd of the 3 repeats / sqrt(3)). Differences to (a) are paired per image,
  with their own per-image standard error;
- the held-out ELBO per image (100 draws);
- active units (Burda et al. 2016, section 5.2): A_u = Cov_x(E_q[u | x]) > 0.01, from the
  encoder's means (``ppl_vi.diagnostics.active_units``, exact), on the test images (and on the
  training images).

Burda, Grosse & Salakhutdinov (2016) report more active units for IWAE- than for VAE-trained
models (their Table 2); the JSON's ``burda_claim`` and the printout say whether this run
reproduces that. Writes ``benchmarks/results/dying_units.json``.

    python benchmarks/dying_units.py [--steps 3000] [--latent-dim 32] [--threads 1] [--quick]

``--quick`` (100 steps, K = 100 for log p(x), 1 repeat) only checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import ppl_vi
from ppl_vi.diagnostics import active_units
from ppl_vi.elbos import IWAE
from ppl_vi.guides import Amortized
from ppl_vi.models import vae_digits

RESULTS = Path(__file__).parent / "results"
THRESHOLD = 0.01  # Burda et al.'s


def variants(num_pseudo: int, steps: int) -> dict:
    """Name -> (model options, ELBO, fit options)."""
    warmup = max(1, steps // 3)
    return {
        "ELBO, standard prior": ({}, Trace_ELBO(max_plate_nesting=1), {}),
        "IWAE(K=8), standard prior": ({}, IWAE(num_particles=8, max_plate_nesting=1), {}),
        f"ELBO, VampPrior(K={num_pseudo})": (
            {"prior": "vamp", "num_pseudo": num_pseudo},
            Trace_ELBO(max_plate_nesting=1),
            {},
        ),
        f"ELBO + KL warm-up ({warmup} steps)": (
            {},
            Trace_ELBO(max_plate_nesting=1),
            {"kl_anneal": warmup},
        ),
    }


def train(options: dict, elbo, latent_dim: int, steps: int, seed: int, **fit_options):
    return ppl_vi.fit(
        vae_digits.model,
        **vae_digits.load_data("train"),
        **options,
        latent_dim=latent_dim,
        subsample_size=100,
        guide=Amortized,
        guide_kwargs={"encoder": vae_digits.shared_encoder(latent_dim)},
        elbo=elbo,
        num_steps=steps,
        lr=3e-3,
        progress=False,
        convergence=None,
        polish=None,
        seed=seed,
        **fit_options,
    )


def log_weights(result, kwargs: dict, num: int) -> torch.Tensor:
    """log p(x_n, z) - log q(z | x_n) for ``num`` guide draws per image: ``(num, N)``."""
    with pyro.plate("particles", num, dim=-2):
        guide_trace = poutine.trace(result.guide).get_trace(**kwargs)
        model_trace = poutine.trace(poutine.replay(result.model, trace=guide_trace)).get_trace(
            **kwargs
        )
    log_w = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name in ("z", "x") if sign > 0 else ("z",):
            site = trace.nodes[name]
            log_w = log_w + sign * site["fn"].log_prob(site["value"])  # (num, N)
    return log_w


def log_px(result, kwargs: dict, num_particles: int, seed: int, chunk: int = 100) -> torch.Tensor:
    """Per-image importance-sampling estimate log (1/K) sum_k w_k, K = num_particles: ``(N,)``.

    Draws are taken in chunks (a VampPrior's density needs a (chunk, N, components, L) array)
    and combined with one logsumexp per image."""
    pyro.set_rng_seed(seed)
    parts = []
    with result.param_scope(), torch.no_grad():
        for start in range(0, num_particles, chunk):
            parts.append(log_weights(result, kwargs, min(chunk, num_particles - start)))
    log_w = torch.cat(parts).double()  # (K, N)
    return torch.logsumexp(log_w, 0) - math.log(num_particles)


def held_out_elbo(result, kwargs: dict, num: int, seed: int) -> float:
    pyro.set_rng_seed(seed)
    with result.param_scope(), torch.no_grad():
        return log_weights(result, kwargs, num).double().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--num-pseudo", type=int, default=50)
    parser.add_argument("--eval-particles", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="100 steps, K = 100, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_particles, args.repeats = 100, 100, 1
    torch.set_num_threads(args.threads)
    test = vae_digits.load_data("test")
    train_x = vae_digits.load_data("train")
    n_test = test["x"].shape[0]
    print(
        f"torch threads: {torch.get_num_threads()}; {args.steps} steps, batch 100, Adam 3e-3, "
        f"latent {args.latent_dim}; log p(x) with K={args.eval_particles} x {args.repeats}"
    )
    report = {
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "quick": args.quick,
        "latent_dim": args.latent_dim,
        "num_pseudo": args.num_pseudo,
        "batch": 100,
        "lr": 3e-3,
        "seed": 0,
        "eval_particles": args.eval_particles,
        "repeats": args.repeats,
        "threshold": THRESHOLD,
        "stderr_note": (
            "stderr_images: sd over the test images of the per-image log p(x) estimate / "
            "sqrt(N); stderr_mc: sd of the repeated test means / sqrt(repeats) (0 with one "
            "repeat); paired differences use the per-image differences"
        ),
        "variants": {},
    }
    per_image = {}
    total = time.perf_counter()
    for name, (options, elbo, fit_options) in variants(args.num_pseudo, args.steps).items():
        start = time.perf_counter()
        result = train(options, elbo, args.latent_dim, args.steps, seed=0, **fit_options)
        seconds = time.perf_counter() - start
        kwargs = {**test, **options, "latent_dim": args.latent_dim}
        estimates = torch.stack(
            [log_px(result, kwargs, args.eval_particles, seed=100 + r) for r in range(args.repeats)]
        )  # (R, N)
        per_image[name] = estimates.mean(0)
        means = estimates.mean(1)
        elbo_test = held_out_elbo(result, kwargs, 100, seed=200)
        au_test = active_units(result, **kwargs, threshold=THRESHOLD)
        au_train = active_units(
            result, **train_x, **options, latent_dim=args.latent_dim, threshold=THRESHOLD
        )
        entry = {
            "options": {**options, **fit_options},
            "objective": type(elbo).__name__,
            "test_log_px": per_image[name].mean().item(),
            "stderr_images": per_image[name].std().item() / math.sqrt(n_test),
            "stderr_mc": (means.std().item() / math.sqrt(args.repeats))
            if args.repeats > 1
            else 0.0,
            "test_log_px_repeats": means.tolist(),
            "test_elbo": elbo_test,
            "active_units_test": au_test.total,
            "active_units_train": au_train.total,
            "unit_variances_test": au_test.variances["z"].tolist(),
            "train_seconds": seconds,
            "final_loss_per_image": float(result.losses[-100:].mean() / 1500),
        }
        report["variants"][name] = entry
        print(
            f"  {name:26s} log p(x) {entry['test_log_px']:8.3f} +- {entry['stderr_images']:.3f} "
            f"(images) +- {entry['stderr_mc']:.3f} (MC), ELBO {elbo_test:8.3f}, active units "
            f"{au_test.total:2d}/{args.latent_dim} (test) {au_train.total:2d} (train), "
            f"{seconds:.0f} s"
        )
    names = list(report["variants"])
    base = names[0]
    for name in names[1:]:
        diff = per_image[name] - per_image[base]
        report["variants"][name]["log_px_minus_elbo_prior"] = {
            "mean": diff.mean().item(),
            "stderr": diff.std().item() / math.sqrt(n_test),
        }
        print(
            f"  {name} - {base}: log p(x) {diff.mean().item():+.3f} +- "
            f"{diff.std().item() / math.sqrt(n_test):.3f} (paired over images)"
        )
    au = {name: v["active_units_test"] for name, v in report["variants"].items()}
    reproduced = au[names[1]] > au[names[0]]
    report["kl_warmup"] = {
        "active_units_without": au[names[0]],
        "active_units_with": au[names[3]],
        "log_px_difference": report["variants"][names[3]]["log_px_minus_elbo_prior"],
    }
    report["burda_claim"] = {
        "claim": "IWAE-trained VAEs have more active units than ELBO-trained ones "
        "(Burda et al. 2016, Table 2)",
        "active_units_elbo": au[names[0]],
        "active_units_iwae": au[names[1]],
        "reproduced": reproduced,
    }
    report["total_seconds"] = time.perf_counter() - total
    verdict = "reproduced" if reproduced else "NOT reproduced"
    print(
        f"Burda et al.'s claim (more active units with IWAE than with the ELBO): {verdict} "
        f"({au[names[1]]} vs {au[names[0]]} of {args.latent_dim}); "
        f"total {report['total_seconds']:.0f} s"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("dying_units_quick.json" if args.quick else "dying_units.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
