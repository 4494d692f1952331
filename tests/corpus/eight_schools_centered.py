"""Centred eight schools, NumPyro's README example ``eight_schools(J, sigma, y=None)`` in Pyro.

``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)`` and ``theta ~ Normal(mu, tau)`` in
``pyro.plate("J", J)``; the translation only swaps ``numpyro`` for ``pyro``. The README passes
``y`` and ``sigma`` as numpy arrays, kept here (float64 as numpy makes them).
"""

import numpy as np
import pyro
import pyro.distributions as dist


def model(J, sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0, 5))
    tau = pyro.sample("tau", dist.HalfCauchy(5))
    with pyro.plate("J", J):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def data():
    J = 8
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    return (J, sigma), {"y": y}
