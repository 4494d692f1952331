"""Step time and gradient variance of ppl-vi's ELBO classes against Pyro's, in one run.

All runs fit ``eight_schools`` with a ``MeanField`` guide and Adam through plain
``pyro.infer.SVI``. Variants are interleaved round by round; the script prints medians and
ranges of per-step times and the ratios the targets are stated in, and writes
``benchmarks/results/elbos.json``:

- IWAE and Renyi (alpha 0.5) with K = 16 vectorized vs K = 1 (target <= 2.5x), and vs the
  sequential particle loop;
- our IWAE vs Pyro's ``RenyiELBO(alpha=0)`` at K = 16 (target <= 1.1x);
- our Rao-Blackwellized score-function ELBO vs Pyro's ``TraceGraph_ELBO`` at K = 8 (target
  <= 1.5x), with the variance of each one's gradient estimate at the same parameters. On this
  reparameterizable guide ``TraceGraph_ELBO`` uses pathwise gradients; the ``_score`` rows force
  score functions on the same guide (as for discrete or non-reparameterizable guides), which is
  the like-for-like comparison;
- the Stein-operator objective (kernel and neural) at K = 16, for reference.

    python benchmarks/elbos.py [--steps 200] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pyro
import torch
from _timing import ratio_stats, svi_step_time
from pyro.infer import RenyiELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger

from ppl_vi.elbos import IWAE, RBScoreFunctionELBO, SteinOperatorELBO
from ppl_vi.elbos import RenyiELBO as OurRenyi
from ppl_vi.guides import MeanField
from ppl_vi.models import eight_schools

RESULTS = Path(__file__).parent / "results"


class ScoreFunctionOnly(Messenger):
    """Make every random guide site draw with ``sample()``, so Pyro uses score functions."""

    def _pyro_sample(self, msg):
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if not msg["is_observed"] and type(base).__name__ != "Delta":
            msg["fn"].has_rsample_(False)


def score_function_guide(guide):
    def wrapped(*args, **kwargs):
        with ScoreFunctionOnly():
            return guide(*args, **kwargs)

    return wrapped


VARIANTS = {
    "iwae_k1": lambda: IWAE(num_particles=1),
    "iwae_k16": lambda: IWAE(num_particles=16),
    "iwae_k16_sequential": lambda: IWAE(num_particles=16, vectorize_particles=False),
    "pyro_renyi0_k16": lambda: RenyiELBO(alpha=0.0, num_particles=16, vectorize_particles=True),
    "renyi_k1": lambda: OurRenyi(alpha=0.5, num_particles=1),
    "renyi_k16": lambda: OurRenyi(alpha=0.5, num_particles=16),
    "rb_score_k8": lambda: RBScoreFunctionELBO(num_particles=8),
    "pyro_tracegraph_k8": lambda: TraceGraph_ELBO(num_particles=8, vectorize_particles=True),
    "pyro_tracegraph_k8_score": lambda: TraceGraph_ELBO(num_particles=8, vectorize_particles=True),
    "stein_kernel_k16": lambda: SteinOperatorELBO(test_function="kernel", num_particles=16),
    "stein_neural_k16": lambda: SteinOperatorELBO(test_function="neural", num_particles=16),
}


def make_guide(name: str):
    guide = MeanField(eight_schools.model)
    return score_function_guide(guide) if name.endswith("_score") else guide


def step_time(name, data, steps: int) -> float:
    return svi_step_time(eight_schools.model, make_guide(name), VARIANTS[name](), data, steps)


def gradient_variance(name, data, repeats: int = 200) -> float:
    """Total variance (summed over parameter components) of one gradient estimate at the guide's
    initial parameters."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = make_guide(name)
    elbo = VARIANTS[name]()
    samples = []
    for _ in range(repeats):
        with pyro.poutine.trace(param_only=True) as tr:
            elbo.loss_and_grads(eight_schools.model, guide, **data)
        params = [site["value"].unconstrained() for site in tr.trace.nodes.values()]
        samples.append(torch.cat([p.grad.flatten().clone() for p in params]))
        for p in params:
            p.grad = None
    return float(torch.stack(samples).var(0).sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = eight_schools.load_data()
    times = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            times[name].append(step_time(name, data, args.steps))
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}

    def ratio(a, b):
        return ratio_stats(times[a], times[b])

    ratios = {
        "iwae_k16 / iwae_k1 (<= 2.5)": ratio("iwae_k16", "iwae_k1"),
        "iwae_k16_sequential / iwae_k1": ratio("iwae_k16_sequential", "iwae_k1"),
        "renyi_k16 / renyi_k1 (<= 2.5)": ratio("renyi_k16", "renyi_k1"),
        "iwae_k16 / pyro_renyi0_k16 (<= 1.1)": ratio("iwae_k16", "pyro_renyi0_k16"),
        "rb_score_k8 / pyro_tracegraph_k8 (<= 1.5)": ratio("rb_score_k8", "pyro_tracegraph_k8"),
        "rb_score_k8 / pyro_tracegraph_k8_score": ratio("rb_score_k8", "pyro_tracegraph_k8_score"),
    }
    variance = {
        name: gradient_variance(name, data)
        for name in ("rb_score_k8", "pyro_tracegraph_k8_score", "pyro_tracegraph_k8")
    }
    print(
        f"torch threads: {torch.get_num_threads()}; {args.repeats} interleaved repeats of "
        f"{args.steps} steps; eight_schools, MeanField"
    )
    for name, t in times.items():
        print(f"  {name:22s} {ms[name]:8.3f} ms/step (range {min(t) * 1e3:.3f}-{max(t) * 1e3:.3f})")
    for name, r in ratios.items():
        print(f"  {name:42s} {r['median']:.2f} (range {r['min']:.2f}-{r['max']:.2f})")
    for name, v in variance.items():
        print(f"  gradient variance {name:20s} {v:.4g}")
    print(
        f"  variance ratio tracegraph (score function) / rb_score: "
        f"{variance['pyro_tracegraph_k8_score'] / variance['rb_score_k8']:.1f}"
    )
    print(
        "  (pyro_tracegraph_k8 uses pathwise gradients on this reparameterizable guide;\n"
        "   the _score rows force score functions on the same guide, as rb_score does)"
    )
    RESULTS.mkdir(exist_ok=True)
    report = {
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "ms_per_step": ms,
        "ratios": ratios,
        "gradient_variance": variance,
    }
    (RESULTS / "elbos.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
