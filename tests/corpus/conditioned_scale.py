"""``deferred_conditioned_scale`` from Pyro's tutorial ``intro_part_ii.ipynb``, verbatim.

The ``scale`` model (``weight ~ Normal(guess, 1)``, ``measurement ~ Normal(weight, 0.75)``)
conditioned at call time with ``pyro.condition(scale, data={"measurement": measurement})(guess)``:
the observation enters through a handler, not ``obs=``, and ``guess`` is a Python float. Called
as in the tutorial with ``measurement=torch.tensor(9.5)`` and ``guess=8.5``.
"""

import pyro
import pyro.distributions as dist
import torch


def scale(guess):
    weight = pyro.sample("weight", dist.Normal(guess, 1.0))
    return pyro.sample("measurement", dist.Normal(weight, 0.75))


def model(measurement, guess):
    return pyro.condition(scale, data={"measurement": measurement})(guess)


def data():
    return (torch.tensor(9.5), 8.5), {}
