"""``BayesianRegression`` PyroModule from Pyro's tutorial ``bayesian_regression.ipynb``.

The class is verbatim: ``PyroModule[nn.Linear]`` whose ``weight`` and ``bias`` are replaced by
``PyroSample`` priors (``.expand([...]).to_event(2)`` / ``.to_event(1)``), ``sigma ~
Uniform(0, 10)`` and a ``data`` plate. As in the tutorial, ``model`` is a module-level instance
``BayesianRegression(3, 1)`` called as ``model(x_data, y_data)``. Change: the rugged-terrain CSV
is replaced by simulated data with the same columns (``_rugged.py``).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn

from ._rugged import rugged_dataframe


class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


model = BayesianRegression(3, 1)


def data():
    df = rugged_dataframe()
    # Dataset: Add a feature to capture the interaction between "cont_africa" and "rugged"
    df["cont_africa_x_rugged"] = df["cont_africa"] * df["rugged"]
    data = torch.tensor(
        df[["cont_africa", "rugged", "cont_africa_x_rugged", "rgdppc_2000"]].values,
        dtype=torch.float,
    )
    x_data, y_data = data[:, :-1], data[:, -1]
    return (x_data, y_data), {}
