r"""ARMA(1, 1) time-series model (posteriordb ``arma-arma11``).

A simulated series of length :math:`T = 200`, with one-step predictions :math:`\nu_t` and
residuals :math:`\epsilon_t` defined recursively (pre-sample residual 0, pre-sample value
:math:`\mu`):

.. math::

    \mu &\sim \mathcal{N}(0, 10^2), \quad \phi \sim \mathcal{N}(0, 2^2), \quad
    \theta \sim \mathcal{N}(0, 2^2), \quad \sigma \sim \mathrm{HalfCauchy}(2.5), \\
    \nu_1 &= \mu + \phi \mu, \qquad
    \nu_t = \mu + \phi y_{t-1} + \theta \epsilon_{t-1}, \quad t = 2, \dots, T, \\
    \epsilon_t &= y_t - \nu_t, \qquad
    \epsilon_t \sim \mathcal{N}(0, \sigma^2) \text{ independently}, \quad t = 1, \dots, T,

with no stationarity or invertibility constraint. :math:`\mu` is the intercept of the
recursion, not the process mean. The map :math:`y \mapsto \epsilon` has unit Jacobian, so the
likelihood is :math:`\prod_t \mathcal{N}(y_t \mid \nu_t, \sigma^2)`.

The recursion :math:`\epsilon_t + \theta \epsilon_{t-1} = e_t`, with
:math:`e_t = y_t - \mu - \phi y_{t-1}` (:math:`y_0 = \mu`), is linear: the residuals solve the
lower-bidiagonal system :math:`(I + \theta S) \epsilon = e` (:math:`S` the shift matrix),
done with one triangular solve instead of a Python loop.

Sites
-----
``"mu"``, ``"phi"``, ``"theta"``
    latent, scalars.
``"sigma"``
    latent, scalar, positive.
``"y"``
    observed, shape ``(T,)``, in the plate ``"data"`` (dim -1), with mean ``nu``.

Data
----
``data.json`` fields ``T`` (200; implied by the length of ``y``) and ``y`` (the series). The
reference arrays ``mu``, ``phi``, ``theta``, ``sigma`` (each ``(n,)``) are all sampled
parameters; none is derived.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, version 0.5 (2023), https://github.com/stan-dev/posteriordb
(posterior ``arma-arma11``; simulated data from the Stan ``stat_comp_benchmarks`` suite).
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
    "residuals",
    "data_from_json",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "arma-arma11"
HAS_IMPROPER_PRIOR = False


def residuals(
    y: torch.Tensor, mu: torch.Tensor, phi: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """The ARMA(1, 1) residuals ``err`` of the recursion (see the module docstring).

    Parameters
    ----------
    y : torch.Tensor
        The series, shape ``(T,)``.
    mu, phi, theta : torch.Tensor
        Scalars, or batched with shape ``(..., 1)``.

    Returns
    -------
    torch.Tensor
        Shape ``(T,)``, or ``(..., T)`` for batched parameters.
    """
    T = y.shape[-1]
    first = torch.zeros(T, dtype=y.dtype, device=y.device)
    first[0] = 1.0
    y_lag = torch.cat([y.new_zeros(1), y[:-1]])
    e = y - mu - phi * (y_lag + mu * first)  # y_0 = mu
    shift = torch.diag(y.new_ones(T - 1), -1)
    eye = torch.eye(T, dtype=y.dtype, device=y.device)
    A = eye + theta.unsqueeze(-1) * shift  # (T, T) or (..., T, T)
    batch = torch.broadcast_shapes(A.shape[:-2], e.shape[:-1])
    A, e = A.expand(batch + (T, T)), e.expand(batch + (T,))
    err = torch.linalg.solve_triangular(A, e.unsqueeze(-1), upper=False, unitriangular=True)
    return err.squeeze(-1)


def model(y: torch.Tensor) -> torch.Tensor:
    """ARMA(1, 1) with recursive residual likelihood.

    Parameters
    ----------
    y : torch.Tensor
        The observed series, shape ``(T,)``.

    Returns
    -------
    torch.Tensor
        The one-step predictions ``nu``.
    """
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), y.new_tensor(10.0)))
    phi = pyro.sample("phi", dist.Normal(y.new_zeros(()), y.new_tensor(2.0)))
    theta = pyro.sample("theta", dist.Normal(y.new_zeros(()), y.new_tensor(2.0)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(y.new_tensor(2.5)))
    nu = y - residuals(y, mu, phi, theta)
    with pyro.plate("data", y.shape[-1], dim=-1):
        pyro.sample("y", dist.Normal(nu, sigma), obs=y)
    return nu


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json`` (``y``)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    y = torch.tensor(raw["y"], dtype=dtype)
    if len(y) != int(raw["T"]):
        raise ValueError(f"len(y) = {len(y)} but T = {raw['T']}")
    return {"y": y}


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """The reference draws as the latent sites ``mu``, ``phi``, ``theta``, ``sigma``."""
    return {k: np.asarray(draws[k], dtype=np.float64) for k in ("mu", "phi", "theta", "sigma")}


def init_values(y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Initial values: ``mu`` = 0, ``phi`` = ``theta`` = 0, ``sigma`` = sd of the series."""
    return {
        "mu": y.new_zeros(()),
        "phi": y.new_zeros(()),
        "theta": y.new_zeros(()),
        "sigma": y.std(),
    }
