"""Horseshoe regression, NumPyro's ``examples/horseshoe_regression.py``
(``model_normal_likelihood``) in Pyro.

``numpyro`` swapped for ``pyro`` and ``jnp.dot`` for ``@``; kept as written there: the vector
sites (``lambdas ~ HalfCauchy(ones(D))``, ``unscaled_betas``) have batch shape ``(D,)`` *outside*
any plate and without ``.to_event(1)``, ``tau`` has shape ``(1,)``, ``betas`` is a
``pyro.deterministic`` and the likelihood has no plate either. Data: 100 x 20 simulated design
with 3 non-zero coefficients, as float64 numpy arrays like the example's ``np`` data.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch


def model(X, Y):
    D_X = X.shape[1]

    # sample from horseshoe prior
    lambdas = pyro.sample("lambdas", dist.HalfCauchy(torch.ones(D_X)))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.ones(1)))

    # note that in practice for a normal likelihood we would probably want to
    # integrate out the coefficients (as is done for example in sparse_regression.py).
    # however, this trick wouldn't be applicable to other likelihoods
    # (e.g. bernoulli, see below) so we don't make use of it here.
    unscaled_betas = pyro.sample("unscaled_betas", dist.Normal(0.0, torch.ones(D_X)))
    scaled_betas = pyro.deterministic("betas", tau * lambdas * unscaled_betas)

    # compute mean function using linear coefficients
    mean_function = X @ scaled_betas

    prec_obs = pyro.sample("prec_obs", dist.Gamma(3.0, 1.0))
    sigma_obs = 1.0 / torch.sqrt(prec_obs)

    # observe data
    pyro.sample("Y", dist.Normal(mean_function, sigma_obs), obs=Y)


def data():
    rng = np.random.default_rng(0)
    N, D_X = 100, 20
    X = rng.standard_normal((N, D_X))
    W = np.zeros(D_X)
    W[:3] = [1.5, -1.0, 0.8]
    Y = X @ W + 0.5 * rng.standard_normal(N)
    return (X, Y), {}
