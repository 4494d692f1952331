"""Multivariate normal with unknown mean and covariance: LKJ correlation Cholesky factor times
``LogNormal`` scales, in the SVI-ready form of Pyro's ``examples/contrib/forecast/bart.py``.

Same structure as ``examples/lkj.py`` (``LKJCholesky`` + ``MultivariateNormal(...,
scale_tril=...)`` in an ``observations`` plate), but with ``bart.py``'s idiom for the scales:
``obs_scale ~ LogNormal(zeros(dim), 1).to_event(1)``, ``obs_corr ~ LKJCholesky(dim,
torch.ones(()))`` and ``scale_tril = obs_scale.unsqueeze(-1) * obs_corr``; the mean is
``Normal(zeros(dim), 10).to_event(1)``. Data: 300 draws of a correlated 3-d Gaussian as a
float64 numpy array.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch


def model(y):
    N, dim = y.shape
    loc = pyro.sample("loc", dist.Normal(torch.zeros(dim), 10.0).to_event(1))
    obs_scale = pyro.sample("obs_scale", dist.LogNormal(torch.zeros(dim), 1.0).to_event(1))
    obs_corr = pyro.sample("obs_corr", dist.LKJCholesky(dim, torch.ones(())))
    obs_scale_tril = obs_scale.unsqueeze(-1) * obs_corr
    with pyro.plate("observations", N):
        pyro.sample("obs", dist.MultivariateNormal(loc, scale_tril=obs_scale_tril), obs=y)


def data():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6, -0.3], [0.6, 2.0, 0.2], [-0.3, 0.2, 0.5]])
    y = rng.multivariate_normal([1.0, -2.0, 0.5], cov, size=300)
    return (y,), {}
