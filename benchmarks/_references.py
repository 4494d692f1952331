"""Reference posterior means and sds for the time-to-accuracy benchmark.

``eight_schools`` uses ArviZ's bundled NUTS draws (``ppl_vi.models.eight_schools.reference_draws``);
``logistic_regression`` has no published draws, so its reference is a long Pyro NUTS run (4 chains
x 2000 draws after 1000 warm-up iterations, JIT-compiled), computed once and cached in
``benchmarks/results/references/`` (``--refresh`` recomputes it); posteriordb posteriors use the
gold-standard draws shipped with posteriordb.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "references"


def moments(draws: dict) -> dict:
    """Site -> ``{"mean", "sd"}`` (lists) of draws ``{site: (n, *shape)}``."""
    out = {}
    for name, value in draws.items():
        value = np.asarray(value, dtype=np.float64)
        out[name] = {"mean": value.mean(0).tolist(), "sd": value.std(0, ddof=1).tolist()}
    return out


def logistic_regression_reference(refresh: bool = False) -> dict:
    """Site -> ``{"mean", "sd"}`` from a long NUTS run (cached as JSON)."""
    path = RESULTS / "logistic_regression.json"
    if path.exists() and not refresh:
        return json.loads(path.read_text())["sites"]
    import ppl_vi
    from ppl_vi.models import logistic_regression

    nuts = ppl_vi.run_nuts(
        logistic_regression.model,
        **logistic_regression.load_data(),
        num_warmup=1000,
        num_samples=2000,
        num_chains=4,
        seed=1,
        progress=False,
        jit_compile=True,
    )
    summary = nuts.summary()
    draws = {k: v.numpy() for k, v in nuts.samples.items() if k in ("alpha", "beta")}
    payload = {
        "source": "Pyro NUTS, 4 chains x (1000 warm-up + 2000 draws), jit_compile=True, seed 1",
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "max_r_hat": float(summary["r_hat"].max()),
        "wall_time_s": nuts.wall_time,
        "sites": moments(draws),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return payload["sites"]


def eight_schools_reference() -> dict:
    from ppl_vi.models import eight_schools

    draws = eight_schools.reference_draws()
    return moments({k: draws[k] for k in ("mu", "tau", "theta_t")})


def max_error(means: dict, reference: dict) -> float:
    """Largest ``|mean - reference mean| / reference sd`` over every component of every
    reference site that ``means`` has (at least one must be shared)."""
    shared = [name for name in reference if name in means]
    if not shared:
        raise ValueError(f"no site of the reference {sorted(reference)} among {sorted(means)}")
    worst = 0.0
    for name in shared:
        ref = reference[name]
        mean = np.asarray(means[name], dtype=np.float64)
        err = np.abs(mean - np.asarray(ref["mean"])) / np.asarray(ref["sd"])
        worst = max(worst, float(np.max(err)))
    return worst


if __name__ == "__main__":
    ref = logistic_regression_reference(refresh=True)
    print({k: np.round(v["mean"], 3) for k, v in ref.items()})
