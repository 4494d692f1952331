"""Neal's funnel decentred with ``poutine.reparam(config={"x": LocScaleReparam(...)})``.

The funnel is Pyro's ``neals_funnel`` (``tests/infer/reparam/test_neutra.py``); the
reparameterisation follows NumPyro's ``examples/funnel.py``
(``reparam(model, config={"x": LocScaleReparam(0)})``) in Pyro's API. Change: Pyro's
``LocScaleReparam`` asserts that ``centered`` is a float or tensor, so NumPyro's integer ``0`` is
written ``centered=0.0``. ``model`` is the handler-wrapped callable, called as ``model(dim=10)``;
the latent site seen by a guide is ``x_decentered``.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam


def neals_funnel(dim=10):
    y = pyro.sample("y", dist.Normal(0, 3))
    with pyro.plate("D", dim):
        return pyro.sample("x", dist.Normal(0, torch.exp(y / 2)))


model = poutine.reparam(neals_funnel, config={"x": LocScaleReparam(centered=0.0)})


def data():
    return (), {"dim": 10}
