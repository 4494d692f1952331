"""Complete pooling model from Pyro's ``examples/baseball.py`` (``fully_pooled``), verbatim.

Pyro runs it with NUTS; here it is input for SVI. Data: the Efron-Morris table (see
``_baseball.py``), 18 players, 45 at-bats each.
"""

import pyro
from pyro.distributions import Binomial, Uniform
from pyro.distributions.util import scalar_like

from ._baseball import data  # noqa: F401


def model(at_bats, hits):
    r"""
    Number of hits in $K$ at bats for each player has a Binomial
    distribution with a common probability of success, $\phi$.
    """
    phi_prior = Uniform(scalar_like(at_bats, 0), scalar_like(at_bats, 1))
    phi = pyro.sample("phi", phi_prior)
    num_players = at_bats.shape[0]
    with pyro.plate("num_players", num_players):
        return pyro.sample("obs", Binomial(at_bats, phi), obs=hits)
