"""LKJ prior on a correlation Cholesky factor with a multivariate normal likelihood, from
Pyro's ``examples/lkj.py``, verbatim.

``theta ~ HalfCauchy(ones(d))`` (batch shape ``(d,)``, outside any plate), ``L_omega ~
LKJCholesky(d, 1)``, ``MultivariateNormal(mu, scale_tril=diag(sqrt(theta)) @ L_omega)`` in an
``observations`` plate; dtype/device follow ``y``. As in the example the data are
``torch.randn(n, num_variables).to(dtype=torch.double)``: float64 torch data. Change: ``n=200``,
three variables instead of 500 x 5, drawn from a local generator.
"""

import pyro
import pyro.distributions as dist
import torch


def model(y):
    d = y.shape[1]
    N = y.shape[0]
    options = dict(dtype=y.dtype, device=y.device)
    # Vector of variances for each of the d variables
    theta = pyro.sample("theta", dist.HalfCauchy(torch.ones(d, **options)))
    # Lower cholesky factor of a correlation matrix
    concentration = torch.ones(
        (), **options
    )  # Implies a uniform distribution over correlation matrices
    L_omega = pyro.sample("L_omega", dist.LKJCholesky(d, concentration))
    # Lower cholesky factor of the covariance matrix
    L_Omega = torch.mm(torch.diag(theta.sqrt()), L_omega)
    # For inference with SVI, one might prefer to use torch.bmm(theta.sqrt().diag_embed(), L_omega)

    # Vector of expectations
    mu = torch.zeros(d, **options)

    with pyro.plate("observations", N):
        obs = pyro.sample("obs", dist.MultivariateNormal(mu, scale_tril=L_Omega), obs=y)
    return obs


def data():
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(200, 3, generator=generator).to(dtype=torch.double)
    return (y,), {}
