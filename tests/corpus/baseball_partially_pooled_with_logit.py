"""``partially_pooled_with_logit`` from Pyro's ``examples/baseball.py``, verbatim.

Logit-normal hierarchy with a ``HalfCauchy`` scale. Pyro runs it with NUTS; here it is input for
SVI. Data: the Efron-Morris table (see ``_baseball.py``).
"""

import pyro
from pyro.distributions import Binomial, HalfCauchy, Normal
from pyro.distributions.util import scalar_like

from ._baseball import data  # noqa: F401


def model(at_bats, hits):
    r"""
    Number of hits has a Binomial distribution with a logit link function.
    The logits $\alpha$ for each player is normally distributed with the
    mean and scale parameters sharing a common prior.
    """
    num_players = at_bats.shape[0]
    loc = pyro.sample("loc", Normal(scalar_like(at_bats, -1), scalar_like(at_bats, 1)))
    scale = pyro.sample("scale", HalfCauchy(scale=scalar_like(at_bats, 1)))
    with pyro.plate("num_players", num_players):
        alpha = pyro.sample("alpha", Normal(loc, scale))
        return pyro.sample("obs", Binomial(at_bats, logits=alpha), obs=hits)
