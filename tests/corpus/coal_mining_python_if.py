"""Coal-mining changepoint as a newcomer writes it: a continuous switchpoint, a sequential
``for t in pyro.plate(...)`` loop and a Python ``if`` on the sampled tensor.

The PyMC ``disaster_model.py`` changepoint, with the rate chosen per year by ``early_rate if t <
switchpoint else late_rate`` (a Python branch on a tensor, as in ``intro_part_i.ipynb``'s
``ice_cream_sales``) inside a sequential plate (``svi_part_ii.ipynb``: ``for i in
pyro.plate("data_loop", len(data))``). The switchpoint gets no gradient through the branch.
Data: the first 40 years of the counts as the int64 numpy array they are (``disasters[t]`` is
a numpy scalar until converted).
"""

import pyro
import pyro.distributions as dist

from ._coal import DISASTERS


def model(disasters):
    T = len(disasters)
    switchpoint = pyro.sample("switchpoint", dist.Uniform(0.0, float(T)))
    early_rate = pyro.sample("early_rate", dist.Exponential(1.0))
    late_rate = pyro.sample("late_rate", dist.Exponential(1.0))
    for t in pyro.plate("years", T):
        if t < switchpoint:
            rate = early_rate
        else:
            rate = late_rate
        pyro.sample(f"obs_{t}", dist.Poisson(rate), obs=disasters[t])


def data():
    return (DISASTERS[:40],), {}
