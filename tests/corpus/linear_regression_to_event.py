"""Linear regression ``X @ w + b`` with a vector prior ``w ~ Normal(0, 1).to_event(1)``.

Pattern from Pyro's tutorials: the coefficient vector is one site with
``dist.Normal(...).expand([P]).to_event(1)`` outside any plate and enters through a
matrix product (``predictive_deterministic.ipynb``: ``coef @ features.T``; ``modules.ipynb``:
``input @ self.weight``), then a ``data`` plate around the likelihood. Data: scikit-learn's
``load_diabetes`` (442 x 10, already centred and scaled; target standardised here), passed as
float64 numpy arrays as loaded.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from sklearn.datasets import load_diabetes


def model(X, y=None):
    N, D = X.shape
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    mean = X @ w + b
    with pyro.plate("data", N):
        return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def data():
    X, y = load_diabetes(return_X_y=True)
    X = X / X.std(axis=0)
    y = (y - y.mean()) / y.std()
    assert X.dtype == np.float64
    return (X, y), {}
