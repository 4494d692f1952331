"""Poisson GLM with a varying intercept ``alpha[group]`` indexed inside the data plate.

No single Pyro original: this is the standard varying-intercept count regression (Gelman & Hill
ch. 15; McElreath's Kline/UCB models, whose NumPyro versions index ``v[dept]``) written in Pyro's
idiom: group effects in a ``groups`` plate, then ``alpha[group]`` gathered per observation inside
``pyro.plate("data", N)``. Data: 300 simulated counts in 12 groups with one covariate, as torch
tensors (``group`` is a LongTensor).
"""

import pyro
import pyro.distributions as dist
import torch


def model(group, x, num_groups, counts=None):
    mu_alpha = pyro.sample("mu_alpha", dist.Normal(0.0, 2.0))
    sigma_alpha = pyro.sample("sigma_alpha", dist.HalfNormal(1.0))
    with pyro.plate("groups", num_groups):
        alpha = pyro.sample("alpha", dist.Normal(mu_alpha, sigma_alpha))
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(group)):
        log_rate = alpha[group] + beta * x
        return pyro.sample("counts", dist.Poisson(log_rate.exp()), obs=counts)


def data():
    generator = torch.Generator().manual_seed(0)
    num_groups, N = 12, 300
    group = torch.randint(0, num_groups, (N,), generator=generator)
    x = torch.randn(N, generator=generator)
    alpha = 1.0 + 0.5 * torch.randn(num_groups, generator=generator)
    counts = torch.poisson((alpha[group] + 0.3 * x).exp(), generator=generator)
    return (group, x, num_groups), {"counts": counts}
