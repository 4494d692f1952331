"""Coin-fairness model with a sequential plate, ``for i in pyro.plate("data_loop", len(data))``,
from Pyro's tutorial ``svi_part_ii.ipynb``.

The model is the tutorial's (``alpha0 = beta0 = 10`` as defined in ``svi_part_i.ipynb``), one
``obs_{i}`` site per flip. Data exactly as in ``svi_part_i.ipynb``: a Python *list* of ten 0-d
float tensors (six heads, four tails).
"""

import pyro
import pyro.distributions as dist
import torch


def model(data):
    # define the hyperparameters that control the Beta prior
    alpha0 = torch.tensor(10.0)
    beta0 = torch.tensor(10.0)
    # sample f from the beta prior
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    # loop over the observed data [WE ONLY CHANGE THE NEXT LINE]
    for i in pyro.plate("data_loop", len(data)):
        # observe datapoint i using the bernoulli likelihood
        pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])


def data():
    # create some data with 6 observed heads and 4 observed tails
    data = []
    for _ in range(6):
        data.append(torch.tensor(1.0))
    for _ in range(4):
        data.append(torch.tensor(0.0))
    return (data,), {}
