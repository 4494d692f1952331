r"""Autoregressive model of order :math:`K` with intercept (posteriordb ``arK-arK``).

An AR(5) model fitted to a simulated series of length :math:`T = 200`, with the likelihood
conditional on the first :math:`K` values:

.. math::

    \alpha &\sim \mathcal{N}(0, 10^2), \\
    \beta_k &\sim \mathcal{N}(0, 10^2), \qquad k = 1, \dots, K, \\
    \sigma &\sim \mathrm{HalfCauchy}(2.5), \\
    y_t \mid \alpha, \beta, \sigma &\sim
        \mathcal{N}\Big(\alpha + \sum_{k=1}^{K} \beta_k y_{t-k}, \sigma^2\Big),
        \qquad t = K + 1, \dots, T,

with no stationarity constraint on :math:`\beta`. The likelihood is a Gaussian regression of
:math:`y_t` on its :math:`K` lags and is vectorised with a :math:`(T - K) \times K` lag matrix.

Sites
-----
``"alpha"``
    latent, scalar.
``"beta"``
    latent, shape ``(K,)`` (one site, ``to_event(1)``); ``beta[k - 1]`` is the coefficient of
    lag ``k``.
``"sigma"``
    latent, scalar, positive.
``"y"``
    observed, shape ``(T - K,)`` (the values :math:`y_{K+1}, \dots, y_T`), in the plate
    ``"data"`` (dim -1).

Data
----
``data.json`` fields ``K`` (the order, 5; keyword ``order``), ``T`` (200; implied by the length
of ``y``) and ``y`` (the series). The reference arrays ``alpha (n,)``, ``beta (n, 5)`` and
``sigma (n,)`` are all sampled parameters; none is derived.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, version 0.5 (2023), https://github.com/stan-dev/posteriordb
(posterior ``arK-arK``; simulated data from the Stan ``stat_comp_benchmarks`` suite).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "model",
    "lag_matrix",
    "data_from_json",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "arK-arK"
HAS_IMPROPER_PRIOR = False


def lag_matrix(y: torch.Tensor, order: int) -> torch.Tensor:
    """The ``(T - order, order)`` matrix whose row for time ``t`` is ``(y[t-1], ..., y[t-order])``.

    Parameters
    ----------
    y : torch.Tensor
        The series, shape ``(T,)``.
    order : int
        Number of lags ``K``.
    """
    T = y.shape[-1]
    return torch.stack([y[order - k : T - k] for k in range(1, order + 1)], dim=-1)


def model(y: torch.Tensor, order: int = 5) -> torch.Tensor:
    """AR(K) model with intercept, likelihood conditional on the first ``order`` values.

    Parameters
    ----------
    y : torch.Tensor
        The observed series, shape ``(T,)``; the first ``order`` values are conditioned on.
    order : int
        Autoregressive order ``K``.

    Returns
    -------
    torch.Tensor
        The conditional means of ``y[order:]``.
    """
    X = lag_matrix(y, order)
    alpha = pyro.sample("alpha", dist.Normal(y.new_zeros(()), y.new_tensor(10.0)))
    beta = pyro.sample("beta", dist.Normal(y.new_zeros(order), y.new_tensor(10.0)).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(y.new_tensor(2.5)))
    with pyro.plate("data", X.shape[-2], dim=-1):
        # (X * beta).sum(-1) rather than X @ beta so that a batched beta of shape (..., 1, K)
        # (vectorized particles) broadcasts to (..., T - K).
        mean = alpha + (X * beta).sum(-1)
        pyro.sample("y", dist.Normal(mean, sigma), obs=y[order:])
    return mean


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json`` (``order`` and ``y``)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    y = torch.tensor(raw["y"], dtype=dtype)
    if len(y) != int(raw["T"]):
        raise ValueError(f"len(y) = {len(y)} but T = {raw['T']}")
    return {"y": y, "order": int(raw["K"])}


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """The reference draws as the latent sites ``alpha``, ``beta``, ``sigma`` (all sampled)."""
    return {k: np.asarray(draws[k], dtype=np.float64) for k in ("alpha", "beta", "sigma")}


def init_values(y: torch.Tensor, order: int = 5) -> dict[str, torch.Tensor]:
    """Initial values: zero intercept and coefficients, ``sigma`` = sd of the series."""
    return {
        "alpha": y.new_zeros(()),
        "beta": y.new_zeros(order),
        "sigma": y.std(),
    }
