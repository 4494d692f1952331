"""VAE on binarized digits: held-out log-likelihood of ELBO- vs IWAE-trained models.

Both models (``models/vae_digits``, latent size 8, decoder hidden 128) are trained with the
``Amortized`` guide (encoder hidden 128) on the 1500 training images, mini-batches of 100, Adam
at 3e-3, the same steps and seed; one with ``Trace_ELBO``, one with ``IWAE(num_particles=8)``.
On the 297 test images it reports the IWAE(K=1000) estimate of log p(x) per image (mean of three
independent estimates) and the ELBO per image (100 particles), and writes
``benchmarks/results/vae.json``.

    python benchmarks/vae.py [--steps 3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

import ppl_vi
from ppl_vi.elbos import IWAE
from ppl_vi.guides import Amortized
from ppl_vi.models import vae_digits

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = vae_digits.load_data(), vae_digits.load_data("test")
    n_test = test["x"].shape[0]
    objectives = {
        "Trace_ELBO": Trace_ELBO(max_plate_nesting=1),
        "IWAE(K=8)": IWAE(num_particles=8, max_plate_nesting=1),
    }
    report = {"torch_threads": torch.get_num_threads(), "steps": args.steps, "objectives": {}}
    print(f"torch threads: {torch.get_num_threads()}; {args.steps} steps, batch 100")
    for name, elbo in objectives.items():
        start = time.perf_counter()
        result = ppl_vi.fit(
            vae_digits.model,
            **train,
            subsample_size=100,
            guide=Amortized,
            guide_kwargs={"hidden_dims": (128,)},
            elbo=elbo,
            num_steps=args.steps,
            lr=3e-3,
            progress=False,
            convergence=None,
            polish=None,
            seed=0,
        )
        seconds = time.perf_counter() - start
        with result.param_scope(), torch.no_grad():
            estimates = []
            for s in range(3):
                pyro.set_rng_seed(100 + s)
                bound = IWAE(num_particles=1000, max_plate_nesting=1)
                estimates.append(-bound.loss(vae_digits.model, result.guide, **test) / n_test)
            pyro.set_rng_seed(200)
            elbo_100 = Trace_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
            test_elbo = -elbo_100.loss(vae_digits.model, result.guide, **test) / n_test
        log_lik = sum(estimates) / len(estimates)
        report["objectives"][name] = {
            "test_log_likelihood_iwae1000": log_lik,
            "test_log_likelihood_estimates": estimates,
            "test_elbo": test_elbo,
            "train_seconds": seconds,
        }
        print(
            f"  {name:11s} held-out log p(x) (IWAE K=1000) {log_lik:.3f} nats/image, held-out "
            f"ELBO {test_elbo:.3f}, {seconds:.0f} s"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vae.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
