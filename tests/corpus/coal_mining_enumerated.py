"""Coal-mining disasters changepoint with a discrete switchpoint marginalised by enumeration.

The classic PyMC ``disaster_model.py`` (``switchpoint ~ DiscreteUniform``, ``early_rate``,
``late_rate ~ Exponential(1)``, ``Poisson(switch(switchpoint >= idx, early, late))``) written in
Pyro's enumeration idiom (``enumeration.ipynb``): ``@config_enumerate`` on a ``Categorical``
switchpoint outside the ``years`` plate, ``torch.where`` broadcasting against the enumerated
dimension, and a continuous-only guide ``AutoNormal(poutine.block(model, hide=["switchpoint"]))``
with ``TraceEnum_ELBO(max_plate_nesting=1)`` (``pyro_guide``/``pyro_elbo``). Data: the 111
yearly counts as float torch tensors.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormal

from ._coal import DISASTERS


@config_enumerate
def model(disasters):
    T = len(disasters)
    switchpoint = pyro.sample("switchpoint", dist.Categorical(logits=torch.zeros(T)))
    early_rate = pyro.sample("early_rate", dist.Exponential(1.0))
    late_rate = pyro.sample("late_rate", dist.Exponential(1.0))
    idx = torch.arange(T)
    with pyro.plate("years", T):
        rate = torch.where(switchpoint >= idx, early_rate, late_rate)
        pyro.sample("obs", dist.Poisson(rate), obs=disasters)


def data():
    return (torch.tensor(DISASTERS, dtype=torch.float),), {}


def pyro_guide(model):
    return AutoNormal(poutine.block(model, hide=["switchpoint"]))


def pyro_elbo():
    return TraceEnum_ELBO(max_plate_nesting=1)
