"""Which final phase removes the jitter Adam leaves in the guide's parameters?

Mean-field fits of 5000 steps (lr 0.01, stopping rule off) end in one of these final phases
(last 20% of the steps):

- none: constant learning rate to the end (plain Pyro);
- decay: learning rate decays geometrically to 0.1x;
- average: iterates averaged, learning rate constant;
- decay+average;
- decay+average+16 particles (ppl-vi's default ``Polish()``).

Error = max over all scalar parameters of |loc - loc*| / scale*, where loc*, scale* are the
mean-field optimum's unconstrained location and scale: exact for ``bayes_linear_regression``
(Gaussian posterior: means and 1/sqrt(precision diagonal)), and from a long reference fit
(20000 steps, 8 particles, 64-particle final phase) for the others. Prints the median and range
over seeds and writes ``benchmarks/results/polish.json``.

    python benchmarks/polish.py [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import ppl_vi
from ppl_vi import Polish
from ppl_vi.models import bayes_linear_regression, eight_schools, logistic_regression

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "none": None,
    "decay": Polish(average=False, num_particles=1),
    "average": Polish(lr_factor=1.0, num_particles=1),
    "decay+average": Polish(num_particles=1),
    "decay+average+16 particles (default)": Polish(),
}


def locs_scales(result):
    params = result.params
    locs = {k.split("locs.")[1]: v.flatten() for k, v in params.items() if ".locs." in k}
    scales = {k.split("scales.")[1]: v.flatten() for k, v in params.items() if ".scales." in k}
    return locs, scales


def optimum(module):
    data = module.load_data()
    if module is bayes_linear_regression:
        post = module.exact_posterior(**data)["beta"]
        return {"beta": post.mean}, {"beta": post.precision_matrix.diagonal().rsqrt()}
    result = ppl_vi.fit(
        module.model,
        **data,
        num_steps=20000,
        num_particles=8,
        polish=Polish(fraction=0.3, num_particles=64),
        convergence=None,
        progress=False,
        seed=1234,
    )
    return locs_scales(result)


def error(result, opt_locs, opt_scales) -> float:
    locs, _ = locs_scales(result)
    return max(float(((locs[k] - opt_locs[k]).abs() / opt_scales[k]).max()) for k in opt_locs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    report = {"torch_threads": torch.get_num_threads(), "seeds": args.seeds, "models": {}}
    for module in (eight_schools, bayes_linear_regression, logistic_regression):
        name = module.__name__.rsplit(".", 1)[-1]
        opt_locs, opt_scales = optimum(module)
        data = module.load_data()
        errors = {v: [] for v in VARIANTS}
        seconds = {v: [] for v in VARIANTS}
        for seed in range(args.seeds):
            for variant, polish in VARIANTS.items():  # interleaved over seeds
                start = time.perf_counter()
                result = ppl_vi.fit(
                    module.model,
                    **data,
                    polish=polish,
                    convergence=None,
                    progress=False,
                    seed=seed,
                )
                seconds[variant].append(time.perf_counter() - start)
                errors[variant].append(error(result, opt_locs, opt_scales))
        report["models"][name] = {}
        for variant in VARIANTS:
            e, s = errors[variant], seconds[variant]
            row = {
                "error_median": statistics.median(e),
                "error_min": min(e),
                "error_max": max(e),
                "seconds_median": statistics.median(s),
            }
            report["models"][name][variant] = row
            print(
                f"{name:24s} {variant:38s} max error {row['error_median']:.3f} sd "
                f"(range {row['error_min']:.3f}-{row['error_max']:.3f}), "
                f"{row['seconds_median']:.1f} s"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "polish.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
