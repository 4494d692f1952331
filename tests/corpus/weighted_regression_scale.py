"""Weighted (survey-weight) linear regression with ``poutine.scale(scale=weights)``.

Uses ``poutine.scale`` as its docstring describes ("scale the score of all sample and observe
sites"), with a per-observation weight tensor inside the data plate, the pattern Pyro's
``svi_part_ii.ipynb`` and ``examples/dmm.py`` use for minibatch/KL scaling. Data: scikit-learn's
wine set (178 x 13, standardised; target: alcohol predicted from the other 12 columns) with
positive sampling weights, as float64 numpy arrays.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from sklearn.datasets import load_wine


def model(X, weights, y=None):
    N, D = X.shape
    beta = pyro.sample("beta", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    alpha = pyro.sample("alpha", dist.Normal(0.0, 5.0))
    sigma = pyro.sample("sigma", dist.Exponential(1.0))
    with pyro.plate("data", N), poutine.scale(scale=weights):
        pyro.sample("y", dist.Normal(alpha + X @ beta, sigma), obs=y)


def data():
    X = load_wine().data
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y, X = X[:, 0], X[:, 1:]
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 2.0, size=len(y))
    return (X, weights), {"y": y}
