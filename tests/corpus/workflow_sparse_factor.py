"""Multivariate logistic-growth model from Pyro's tutorial ``workflow.ipynb`` (second version).

Verbatim: ``LogNormal``/``Laplace`` priors, ``pyro.deterministic("rate_loc", 0.01 * coef @
features.T)`` in the ``strain`` plate, nested ``strain`` x ``place`` plates, and a sparse
multinomial likelihood added with ``pyro.factor("obs", sparse_multinomial_likelihood(...))``.
The model takes the tutorial's ``dataset`` dict (plus ``predict=None``). Change: the nextstrain
download is replaced by a small simulated dataset with the same keys (8 time steps, 4 places,
5 strains, 12 mutations; ``sparse_counts`` built from the dense counts). The tutorial fits it
with ``AutoNormal(model, init_scale=0.01)`` and ``Trace_ELBO``.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.special import sparse_multinomial_likelihood


def model(dataset, predict=None):
    features = dataset["features"]
    counts = dataset["counts"]
    sparse_counts = dataset["sparse_counts"]
    assert features.shape[0] == counts.shape[-1]
    S, M = features.shape
    T, P, S = counts.shape
    time = torch.arange(float(T)) * dataset["time_step_days"] / 5.5
    time -= time.mean()

    # Model each region as multivariate logistic growth.
    rate_scale = pyro.sample("rate_scale", dist.LogNormal(-4, 2))
    init_scale = pyro.sample("init_scale", dist.LogNormal(0, 2))
    with pyro.plate("mutation", M, dim=-1):
        coef = pyro.sample("coef", dist.Laplace(0, 0.5))
    with pyro.plate("strain", S, dim=-1):
        rate_loc = pyro.deterministic("rate_loc", 0.01 * coef @ features.T)
        with pyro.plate("place", P, dim=-2):
            rate = pyro.sample("rate", dist.Normal(rate_loc, rate_scale))
            init = pyro.sample("init", dist.Normal(0, init_scale))
    if predict is not None:  # Exit early during evaluation.
        probs = (init + rate * time[predict]).softmax(-1)
        return probs
    logits = (init + rate * time[:, None, None]).log_softmax(-1)

    # Observe sequences via a cheap sparse multinomial likelihood.
    t, p, s = sparse_counts["index"]
    pyro.factor(
        "obs",
        sparse_multinomial_likelihood(
            sparse_counts["total"], logits[t, p, s], sparse_counts["value"]
        ),
    )


def data():
    generator = torch.Generator().manual_seed(0)
    T, P, S, M = 8, 4, 5, 12
    features = (torch.rand(S, M, generator=generator) < 0.3).float()
    rate = torch.randn(S, generator=generator) * 0.5
    init = torch.randn(P, S, generator=generator)
    time = torch.arange(float(T)) * 14 / 5.5
    probs = (init + rate * (time - time.mean())[:, None, None]).softmax(-1)
    totals = torch.randint(5, 60, (T, P), generator=generator).float()
    counts = torch.zeros(T, P, S)
    for i in range(T):
        for j in range(P):
            draws = torch.multinomial(
                probs[i, j], int(totals[i, j]), replacement=True, generator=generator
            )
            counts[i, j] = torch.bincount(draws, minlength=S).float()
    index = counts.nonzero(as_tuple=True)
    dataset = {
        "features": features,
        "counts": counts,
        "sparse_counts": {
            "total": counts.sum(-1),
            "index": torch.stack(index),
            "value": counts[index],
        },
        "time_step_days": 14,
        "locations": [f"place {j}" for j in range(P)],
        "lineages": [f"B.1.{k}" for k in range(S)],
    }
    return (dataset,), {}
