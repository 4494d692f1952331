"""Bayesian neural network: a PyroModule MLP with ``PyroSample`` priors on all weights.

Follows Pyro's ``modules.ipynb`` ("Bayesian linear layer": ``PyroSample(prior=dist.Normal(0,
1).expand([...]).to_event(2))``) and ``bayesian_regression.ipynb`` (``PyroModule[nn.Linear]``
whose ``weight``/``bias`` become ``PyroSample``s, ``forward(x, y=None)`` with a ``data`` plate):
two such layers with a ReLU between, and a categorical likelihood on the logits. Module-level
instance ``model = BNN(4, 16, 3)``. Data: scikit-learn's iris (150 x 4, standardised) as torch
tensors (labels as a LongTensor).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from sklearn.datasets import load_iris
from torch import nn


class BNN(PyroModule):
    def __init__(self, in_features, hidden_features, out_features):
        super().__init__()
        self.fc1 = PyroModule[nn.Linear](in_features, hidden_features)
        self.fc1.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([hidden_features, in_features]).to_event(2)
        )
        self.fc1.bias = PyroSample(dist.Normal(0.0, 1.0).expand([hidden_features]).to_event(1))
        self.fc2 = PyroModule[nn.Linear](hidden_features, out_features)
        self.fc2.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, hidden_features]).to_event(2)
        )
        self.fc2.bias = PyroSample(dist.Normal(0.0, 1.0).expand([out_features]).to_event(1))
        self.relu = nn.ReLU()

    def forward(self, x, y=None):
        hidden = self.relu(self.fc1(x))
        logits = self.fc2(hidden)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits


model = BNN(4, 16, 3)


def data():
    X, y = load_iris(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    x_data = torch.tensor(X, dtype=torch.float)
    y_data = torch.tensor(y, dtype=torch.long)
    return (x_data, y_data), {}
