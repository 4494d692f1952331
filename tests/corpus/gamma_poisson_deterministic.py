"""GammaPoisson regression with ``pyro.deterministic`` from Pyro's tutorial
``predictive_deterministic.ipynb``, verbatim.

``coef ~ Normal(0, scale).expand([P]).to_event(1)`` outside any plate, ``rate =
pyro.deterministic("rate", softplus(coef @ features.T))`` and a ``GammaPoisson`` likelihood in
a ``bins`` plate. Data exactly as in the tutorial: scikit-learn's ``make_regression(n_features=1,
bias=150., noise=5., random_state=108)`` turned into counts. The tutorial runs NUTS.
"""

import pyro
import pyro.distributions as dist
import torch
from sklearn.datasets import make_regression


def model(features, counts):
    N, P = features.shape
    scale = pyro.sample("scale", dist.LogNormal(0, 1))
    coef = pyro.sample("coef", dist.Normal(0, scale).expand([P]).to_event(1))
    rate = pyro.deterministic("rate", torch.nn.functional.softplus(coef @ features.T))
    concentration = pyro.sample("concentration", dist.LogNormal(0, 1))
    with pyro.plate("bins", N):
        return pyro.sample("counts", dist.GammaPoisson(concentration, rate), obs=counts)


def data():
    X, y = make_regression(n_features=1, bias=150.0, noise=5.0, random_state=108)
    X_ = torch.tensor(X, dtype=torch.float)
    y_ = torch.tensor((y**3) / 100000.0 + 10.0, dtype=torch.float)
    y_.round_().clamp_(min=0)
    return (X_, y_), {}
