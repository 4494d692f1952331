"""Coin-fairness model with a masked prior, ``dist.Beta(10.0, 10.0).mask(False)``, from Pyro's
tutorial ``mle_map.ipynb`` (``masked_model``), verbatim.

``.mask(False)`` drops the prior's log-density, so the site is a latent with no prior term
(the tutorial uses it to get the MLE from ``AutoDelta(masked_model)`` with ``Trace_ELBO``;
``pyro_guide``/``pyro_elbo`` build those). Data: the tutorial's ten flips, six heads.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta


def model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0).mask(False))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def data():
    data = torch.zeros(10)
    data[0:6] = 1.0
    return (data,), {}


def pyro_guide(model):
    return AutoDelta(model)


def pyro_elbo():
    return Trace_ELBO()
