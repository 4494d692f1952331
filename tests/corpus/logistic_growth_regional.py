"""``regional_model2`` from Pyro's tutorial ``logistic-growth.ipynb``, verbatim.

Three plates (``lineages`` dim -1, ``region`` dim -2, ``time`` dim -3): per-lineage
``rate_loc``, per-region-and-lineage ``rate`` and ``init`` (nested plates), ``LogNormal`` scales
and a ``Multinomial(logits=...)`` likelihood with ``validate_args=False``. The tutorial's model
reads ``dataset["time_step_days"]`` from a notebook global; here that global is a module-level
dict holding only that constant. Change: simulated counts (10 time steps, 6 regions, 3
lineages) instead of the nextstrain download; the tutorial fits it with ``AutoNormal`` and
``Trace_ELBO``.
"""

import pyro
import pyro.distributions as dist
import torch

dataset = {"time_step_days": 14}


def model(counts):
    T, R, L = counts.shape

    lineage_plate = pyro.plate("lineages", L, dim=-1)
    region_plate = pyro.plate("region", R, dim=-2)
    time_plate = pyro.plate("time", T, dim=-3)

    # We assume the init can vary a lot from region to region but
    # that the rate varies considerably less.
    rate_scale = pyro.sample("rate_scale", dist.LogNormal(-4, 2))
    init_scale = pyro.sample("init_scale", dist.LogNormal(0, 2))

    # As before each lineage has a latent growth rate
    with lineage_plate:
        rate_loc = pyro.sample("rate_loc", dist.Normal(0, 1))

    # We allow the rate and init to vary from region to region
    with region_plate, lineage_plate:
        # The per-region per-lineage rate is governed by a hierarchical prior
        rate = pyro.sample("rate", dist.Normal(rate_loc, rate_scale))
        init = pyro.sample("init", dist.Normal(0, init_scale))

    # We measure time in units of the SARS-CoV-2 generation time of 5.5 days
    time = torch.arange(float(T)) * dataset["time_step_days"] / 5.5
    logits = init + rate * time[:, None, None]

    # Observe sequences via a multinomial likelihood.
    with time_plate, region_plate:
        pyro.sample(
            "obs",
            dist.Multinomial(logits=logits.unsqueeze(-2), validate_args=False),
            obs=counts.unsqueeze(-2),
        )


def data():
    generator = torch.Generator().manual_seed(0)
    T, R, L = 10, 6, 3
    rate = torch.tensor([0.0, 0.4, 0.8]) + 0.05 * torch.randn(R, L, generator=generator)
    init = torch.tensor([2.0, 0.0, -3.0]) + torch.randn(R, L, generator=generator)
    time = torch.arange(float(T)) * 14 / 5.5
    probs = (init + rate * time[:, None, None]).softmax(-1)
    counts = torch.zeros(T, R, L)
    for t in range(T):
        for r in range(R):
            n = int(torch.randint(20, 100, (), generator=generator))
            draws = torch.multinomial(probs[t, r], n, replacement=True, generator=generator)
            counts[t, r] = torch.bincount(draws, minlength=L).float()
    return (counts,), {}
