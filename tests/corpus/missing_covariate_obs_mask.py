"""Regression with a partly missing covariate imputed through ``pyro.sample(..., obs_mask=...)``.

Pyro's ``pyro.sample`` docstring: "obs_mask: Optional boolean tensor mask ... events with
mask=True will be conditioned on obs and remaining events will be imputed by sampling. This
introduces a latent sample site named ``name + "_unobserved"``". The imputation model follows
NumPyro's ``bayesian_imputation.ipynb`` (missing ``age`` modelled by a Normal and then used as
a covariate) with Pyro's ``obs_mask`` in place of NumPyro's ``.mask(False)`` + index update.
Pyro rejects NaN in ``obs`` even where ``obs_mask`` is False (support validation runs on the
whole tensor), so the model fills the NaNs with ``nan_to_num()`` before observing. Data:
scikit-learn's diabetes set (442 rows), ``bmi`` standardised with 20% of it set to NaN, target
standardised, as float64 numpy arrays (NaN marks missing, as pandas does).
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from sklearn.datasets import load_diabetes


def model(bmi, age, y=None):
    bmi_mask = ~torch.isnan(bmi)
    bmi_mu = pyro.sample("bmi_mu", dist.Normal(0.0, 1.0))
    bmi_sigma = pyro.sample("bmi_sigma", dist.HalfNormal(1.0))
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b_bmi = pyro.sample("b_bmi", dist.Normal(0.0, 1.0))
    b_age = pyro.sample("b_age", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(age)):
        bmi = pyro.sample(
            "bmi",
            dist.Normal(bmi_mu, bmi_sigma),
            obs=bmi.nan_to_num(),
            obs_mask=bmi_mask,
        )
        pyro.sample("y", dist.Normal(a + b_bmi * bmi + b_age * age, sigma), obs=y)


def data():
    bunch = load_diabetes()
    X, y = bunch.data, bunch.target
    age = X[:, bunch.feature_names.index("age")]
    bmi = X[:, bunch.feature_names.index("bmi")]
    age, bmi = age / age.std(), bmi / bmi.std()
    y = (y - y.mean()) / y.std()
    rng = np.random.default_rng(0)
    bmi = np.where(rng.random(len(bmi)) < 0.2, np.nan, bmi)
    return (bmi, age), {"y": y}
