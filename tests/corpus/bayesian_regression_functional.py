"""Functional rugged-terrain regression from Pyro's ``bayesian_regression_ii.ipynb``.

The same model appears in ``intro_long.ipynb``: ``a + b_a * is_cont_africa + b_r * ruggedness +
b_ar * is_cont_africa * ruggedness`` with ``sigma ~ Uniform(0, 10)``. The model is verbatim.
Change: the columns come straight from a pandas DataFrame as float64 numpy arrays
(``df["rugged"].values``), as many users pass them, instead of the tutorial's
``torch.tensor(df.values, dtype=torch.float)``; the CSV is replaced by simulated data
(``_rugged.py``).
"""

import pyro
import pyro.distributions as dist

from ._rugged import rugged_dataframe


def model(is_cont_africa, ruggedness, log_gdp):
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b_a = pyro.sample("bA", dist.Normal(0.0, 1.0))
    b_r = pyro.sample("bR", dist.Normal(0.0, 1.0))
    b_ar = pyro.sample("bAR", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
    mean = a + b_a * is_cont_africa + b_r * ruggedness + b_ar * is_cont_africa * ruggedness
    with pyro.plate("data", len(ruggedness)):
        pyro.sample("obs", dist.Normal(mean, sigma), obs=log_gdp)


def data():
    df = rugged_dataframe()
    is_cont_africa = df["cont_africa"].values
    ruggedness = df["rugged"].values
    log_gdp = df["rgdppc_2000"].values
    return (is_cont_africa, ruggedness, log_gdp), {}
