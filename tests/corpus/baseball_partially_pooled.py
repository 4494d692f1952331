"""Partial pooling model from Pyro's ``examples/baseball.py`` (``partially_pooled``), verbatim.

Beta-Binomial hierarchy with ``m ~ Uniform(0, 1)`` and ``kappa ~ Pareto(1, 1.5)``. Pyro runs it
with NUTS; here it is input for SVI. Data: the Efron-Morris table (see ``_baseball.py``).
"""

import pyro
from pyro.distributions import Beta, Binomial, Pareto, Uniform
from pyro.distributions.util import scalar_like

from ._baseball import data  # noqa: F401


def model(at_bats, hits):
    r"""
    Number of hits has a Binomial distribution with independent
    probability of success, $\phi_i$. Each $\phi_i$ follows a Beta
    distribution with concentration parameters $c_1$ and $c_2$, where
    $c_1 = m * kappa$, $c_2 = (1 - m) * kappa$, $m ~ Uniform(0, 1)$,
    and $kappa ~ Pareto(1, 1.5)$.
    """
    num_players = at_bats.shape[0]
    m = pyro.sample("m", Uniform(scalar_like(at_bats, 0), scalar_like(at_bats, 1)))
    kappa = pyro.sample("kappa", Pareto(scalar_like(at_bats, 1), scalar_like(at_bats, 1.5)))
    with pyro.plate("num_players", num_players):
        phi_prior = Beta(m * kappa, (1 - m) * kappa)
        phi = pyro.sample("phi", phi_prior)
        return pyro.sample("obs", Binomial(at_bats, phi), obs=hits)
