"""Steps per second of each guide family relative to MeanField, and IAF relative to Pyro's.

Every guide is trained with ``Trace_ELBO`` (one particle) and Adam through plain
``pyro.infer.SVI`` on ``eight_schools`` and ``logistic_regression``. Variants are interleaved
round by round; the script prints medians (and ranges) of the per-step times, each guide's time
relative to ``MeanField`` and ``IAF`` relative to ``pyro.infer.autoguide.AutoIAFNormal`` with
the same hidden sizes and number of flows (target: at most 1.1x), and writes
``benchmarks/results/guides.json``.

    python benchmarks/guides.py [--steps 200] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from _timing import ratio_stats, svi_step_time
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal

from ppl_vi.guides import HVM, IAF, MeanField
from ppl_vi.infer_util import model_info
from ppl_vi.models import eight_schools, logistic_regression

RESULTS = Path(__file__).parent / "results"
NUM_FLOWS = 2


def make_guides(model, dim: int) -> dict:
    hidden = [3 * dim, 3 * dim]
    return {
        "mean_field": lambda: MeanField(model),
        "iaf": lambda: IAF(model, num_flows=NUM_FLOWS, hidden_dims=hidden),
        "pyro_auto_iaf": lambda: AutoIAFNormal(model, hidden_dim=hidden, num_transforms=NUM_FLOWS),
        "hvm": lambda: HVM(model),
    }


def step_time(model, make_guide, data, steps: int) -> float:
    return svi_step_time(model, make_guide(), Trace_ELBO(), data, steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch threads: {torch.get_num_threads()}; {args.repeats} interleaved repeats of "
        f"{args.steps} steps; CPU time per step"
    )
    report = {"torch_threads": torch.get_num_threads(), "steps": args.steps, "models": {}}
    for module in (eight_schools, logistic_regression):
        name = module.__name__.rsplit(".", 1)[-1]
        data = module.load_data()
        dim = sum(
            int(torch.tensor(s).prod()) for s in model_info(module.model, (), data).latent.values()
        )
        guides = make_guides(module.model, dim)
        times = {g: [] for g in guides}
        for _ in range(args.repeats):
            for g, make in guides.items():
                times[g].append(step_time(module.model, make, data, args.steps))
        row = {}
        for g, t in times.items():
            row[g] = {
                "ms_per_step": statistics.median(t) * 1e3,
                "steps_per_s": 1 / statistics.median(t),
                "vs_mean_field": ratio_stats(t, times["mean_field"])["median"],
            }
        row["iaf_vs_pyro_auto_iaf"] = ratio_stats(times["iaf"], times["pyro_auto_iaf"])
        report["models"][name] = row
        print(f"{name} (latent dim {dim}):")
        for g in guides:
            print(
                f"  {g:14s} {row[g]['ms_per_step']:7.3f} ms/step  {row[g]['steps_per_s']:7.1f} "
                f"steps/s  time vs mean_field {row[g]['vs_mean_field']:.2f}"
            )
        r = row["iaf_vs_pyro_auto_iaf"]
        print(
            f"  IAF / AutoIAFNormal: {r['median']:.2f} (range {r['min']:.2f}-{r['max']:.2f}); "
            "target <= 1.1"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guides.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
