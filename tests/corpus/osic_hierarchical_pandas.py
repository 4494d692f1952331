"""Hierarchical linear regression from NumPyro's tutorial
``bayesian_hierarchical_linear_regression.ipynb`` (OSIC pulmonary fibrosis), in Pyro.

The model is the tutorial's ``model(patient_code, Weeks, FVC_obs=None)`` with ``numpyro`` swapped
for ``pyro`` (Greek site names such as ``"μ_α"`` kept); ``α[patient_code] + β[patient_code] *
Weeks`` is computed outside the ``data`` plate and ``n_patients = len(np.unique(patient_code))``.
Change: the arguments are pandas Series (``train["patient_code"]``, ``train["Weeks"]``,
``train["FVC"]``), integer-valued as in the Kaggle CSV, instead of the tutorial's ``.values``;
the data are simulated (40 patients, 6-10 visits each), with ``patient_code`` from
``LabelEncoder`` as in the tutorial.
"""

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
from sklearn.preprocessing import LabelEncoder


def model(patient_code, Weeks, FVC_obs=None):
    μ_α = pyro.sample("μ_α", dist.Normal(0.0, 500.0))
    σ_α = pyro.sample("σ_α", dist.HalfNormal(100.0))
    μ_β = pyro.sample("μ_β", dist.Normal(0.0, 3.0))
    σ_β = pyro.sample("σ_β", dist.HalfNormal(3.0))

    n_patients = len(np.unique(patient_code))

    with pyro.plate("plate_i", n_patients):
        α = pyro.sample("α", dist.Normal(μ_α, σ_α))
        β = pyro.sample("β", dist.Normal(μ_β, σ_β))

    σ = pyro.sample("σ", dist.HalfNormal(100.0))
    FVC_est = α[patient_code] + β[patient_code] * Weeks

    with pyro.plate("data", len(patient_code)):
        pyro.sample("obs", dist.Normal(FVC_est, σ), obs=FVC_obs)


def simulated_train(n_patients=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_patients):
        patient = f"ID00{rng.integers(10**9, 10**10)}"
        intercept = rng.normal(2700.0, 600.0)
        slope = rng.normal(-5.0, 4.0)
        weeks = np.sort(rng.integers(-5, 80, size=rng.integers(6, 11)))
        for w in weeks:
            fvc = intercept + slope * w + rng.normal(0.0, 120.0)
            rows.append({"Patient": patient, "Weeks": int(w), "FVC": int(round(fvc))})
    return pd.DataFrame(rows)


def data():
    train = simulated_train()
    patient_encoder = LabelEncoder()
    train["patient_code"] = patient_encoder.fit_transform(train["Patient"].values)
    return (train["patient_code"], train["Weeks"]), {"FVC_obs": train["FVC"]}
