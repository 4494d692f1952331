"""Neal's funnel as written in Pyro's own tests (``tests/infer/reparam/test_neutra.py``).

``neals_funnel(dim=10)``: ``y ~ Normal(0, 3)`` and ``x ~ Normal(0, exp(y / 2))`` in a plate of
``dim``. The same funnel drives ``examples/neutra.py``-style NeuTra reparameterisation and
NumPyro's ``examples/funnel.py``. No data: ``model(dim=10)``.
"""

import pyro
import pyro.distributions as dist
import torch


def model(dim=10):
    y = pyro.sample("y", dist.Normal(0, 3))
    with pyro.plate("D", dim):
        return pyro.sample("x", dist.Normal(0, torch.exp(y / 2)))


def data():
    return (), {"dim": 10}
