"""Logistic regression with data subsampling, ``pyro.plate("data", N, subsample_size=64)``.

The subsampling idiom of Pyro's ``svi_part_ii.ipynb`` ("Automatic subsampling with plate":
``with pyro.plate("observe_data", size=10, subsample_size=5) as ind``) and
``tensor_shapes.ipynb`` (``model2``: ``batch = data[ind]``), applied to a logistic regression
whose weight vector is one ``Normal(...).to_event(1)`` site. Data: the first 500 rows of
scikit-learn's breast cancer set (30 standardised features) as torch tensors.
"""

import pyro
import pyro.distributions as dist
import torch
from sklearn.datasets import load_breast_cancer


def model(x, y):
    N, D = x.shape
    w = pyro.sample("w", dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("data", N, subsample_size=64) as ind:
        logits = x[ind] @ w + b
        pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y[ind])


def data():
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:500], y[:500]
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return (torch.tensor(X, dtype=torch.float), torch.tensor(y, dtype=torch.float)), {}
