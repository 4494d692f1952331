"""Latent random-walk time series with user-controlled subsampling, from Pyro's tutorial
``easyguide.ipynb``, verbatim.

``drift ~ LogNormal(-1, 0.5)``; inside ``pyro.plate("data", full_size, subsample=subsample)`` a
Python loop over time steps samples continuous states ``state_{t} ~ Normal(z, drift)`` and
observes ``Bernoulli(logits=z)``. Called as ``model(batch, subsample, full_size=full_size)`` with
one mini-batch (``batch`` is ``num_time_steps x batch_size``). Data as in the tutorial: drawn by
running the model with ``batch=[None] * 7`` (under ``poutine.seed``), ``full_size=100``; the
mini-batch here is the first 20 series. The tutorial pairs it with easy-guides and
``Trace_ELBO``.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine


def model(batch, subsample, full_size):
    batch = list(batch)
    num_time_steps = len(batch)
    drift = pyro.sample("drift", dist.LogNormal(-1, 0.5))
    with pyro.plate("data", full_size, subsample=subsample):
        z = 0.0
        for t in range(num_time_steps):
            z = pyro.sample(f"state_{t}", dist.Normal(z, drift))
            batch[t] = pyro.sample(f"obs_{t}", dist.Bernoulli(logits=z), obs=batch[t])
    return torch.stack(batch)


def data():
    full_size = 100
    num_time_steps = 7
    data = poutine.seed(model, rng_seed=123456789)(
        [None] * num_time_steps, torch.arange(full_size), full_size
    )
    assert data.shape == (num_time_steps, full_size)
    batch_size = 20
    subsample = torch.arange(0, batch_size)
    batch = data[:, 0:batch_size]
    return (batch, subsample), {"full_size": full_size}
