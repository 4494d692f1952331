"""Radon varying-intercept model (Gelman & Hill 2007) with ``a[county]``, in Pyro.

Translation of the varying-intercept model of PyMC's "A Primer on Bayesian Methods for Multilevel
Modeling" (``a ~ Normal(mu_a, sigma_a)`` per county, ``y ~ Normal(a[county] + b * floor,
sigma_y)``) in the style of NumPyro's hierarchical regression tutorial (``α[patient_code]``,
``len(np.unique(...))``). Data: simulated Minnesota-like survey, 400 houses in 30 counties,
passed as numpy arrays as read from a DataFrame (``county`` int64 codes, ``floor`` and
``log_radon`` float64).
"""

import numpy as np
import pyro
import pyro.distributions as dist


def model(county, floor, log_radon=None):
    n_counties = len(np.unique(county))
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 10.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfCauchy(5.0))
    with pyro.plate("counties", n_counties):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfCauchy(5.0))
    with pyro.plate("houses", len(county)):
        mean = a[county] + b * floor
        pyro.sample("log_radon", dist.Normal(mean, sigma_y), obs=log_radon)


def data():
    rng = np.random.default_rng(0)
    n_counties, n = 30, 400
    county = np.concatenate([np.arange(n_counties), rng.integers(0, n_counties, n - n_counties)])
    floor = (rng.random(n) < 0.2).astype(np.float64)
    a = 1.5 + 0.3 * rng.standard_normal(n_counties)
    log_radon = a[county] - 0.6 * floor + 0.75 * rng.standard_normal(n)
    return (county, floor), {"log_radon": log_radon}
