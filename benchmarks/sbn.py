"""Sigmoid belief net on binarised digits: Rao-Blackwellized score function vs plain REINFORCE.

Both estimators train the same two-layer sigmoid belief network (``models/sigmoid_belief_net``,
K1 = 20, K2 = 10) with the same factorised Bernoulli guide, the same number of steps, particles,
mini-batch size and optimizer, from the same seed. The trained generative model is then scored on
the 297 held-out images: its parameters are frozen, the per-image guide for the test images is
fitted with the same (Rao-Blackwellized) estimator for both models, and the held-out ELBO per
image is estimated with 64 particles. Prints the held-out ELBO of each (higher is better) and
writes ``benchmarks/results/sbn.json``.

    python benchmarks/sbn.py [--steps 3000] [--test-steps 1500] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

import ppl_vi
from ppl_vi.elbos import RBScoreFunctionELBO
from ppl_vi.models import sigmoid_belief_net as sbn

RESULTS = Path(__file__).parent / "results"
ESTIMATORS = {
    "rb_score": {"rao_blackwellize": True, "control_variates": True},
    "reinforce": {"rao_blackwellize": False, "control_variates": False},
}


def train(flags: dict, steps: int, batch: int, particles: int, seed: int):
    data = sbn.load_data(split="train")
    return ppl_vi.fit(
        sbn.model,
        **data,
        subsample_size=batch,
        guide=sbn.local_bernoulli_guide,
        elbo=RBScoreFunctionELBO(num_particles=particles, **flags),
        num_steps=steps,
        lr=0.05,
        convergence=None,
        polish=None,
        progress=False,
        seed=seed,
    )


def held_out_elbo(result, steps: int, particles: int, seed: int) -> float:
    """Mean ELBO per test image with the generative parameters frozen."""
    test = sbn.load_data(split="test")
    elbo = RBScoreFunctionELBO(num_particles=particles)
    with result.param_scope():
        store = pyro.get_param_store()
        for name in ("q_h1_logits", "q_h2_logits"):
            del store[name]  # a fresh per-image guide for the test images

        def lr_for(name):
            return {"lr": 0.0 if name.startswith("sbn.") else 0.05}

        pyro.set_rng_seed(seed)
        svi = SVI(sbn.model, sbn.local_bernoulli_guide, pyro.optim.Adam(lr_for), elbo)
        for _ in range(steps):
            svi.step(**test)
        estimate = Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=1)
        with torch.no_grad():
            loss = estimate.loss(sbn.model, sbn.local_bernoulli_guide, **test)
    return -loss / test["x"].shape[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--test-steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"torch_threads": torch.get_num_threads(), **vars(args), "estimators": {}}
    print(
        f"torch threads: {torch.get_num_threads()}; {args.steps} training steps, batch "
        f"{args.batch}, {args.particles} particles"
    )
    for name, flags in ESTIMATORS.items():
        start = time.perf_counter()
        result = train(flags, args.steps, args.batch, args.particles, args.seed)
        seconds = time.perf_counter() - start
        value = held_out_elbo(result, args.test_steps, args.particles, args.seed)
        train_loss = float(result.losses[-200:].mean()) / 1500
        report["estimators"][name] = {
            "held_out_elbo_per_image": value,
            "final_train_loss_per_image": train_loss,
            "train_seconds": seconds,
        }
        print(
            f"  {name:10s} held-out ELBO {value:.3f} nats/image, final training loss "
            f"{train_loss:.3f} nats/image, {seconds:.0f} s"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sbn.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
