r"""Gaussian-process regression, latent function integrated out (posteriordb
``gp_pois_regr-gp_regr``).

Eleven simulated responses :math:`y_i` at inputs :math:`x_i = -10, -8, \dots, 10`, with a
squared-exponential kernel and the marginal likelihood:

.. math::

    \rho &\sim \mathrm{Gamma}(25, 4) \ \text{(shape, rate)}, \qquad
    \alpha \sim \mathrm{HalfNormal}(2), \qquad \sigma \sim \mathrm{HalfNormal}(1), \\
    C_{ij} &= \alpha^2 \exp\!\Big(-\frac{(x_i - x_j)^2}{2 \rho^2}\Big) + \sigma [i = j], \\
    y &\sim \mathcal{N}(0, C).

Note that :math:`\sigma` is added to the diagonal **unsquared**: it plays the role of the noise
variance (as in posteriordb's model). There is no mean function and no other jitter.

Sites
-----
``"rho"``, ``"alpha"``, ``"sigma"``
    latent, scalars, positive.
``"y"``
    observed, shape ``(N,)``, one multivariate normal (the responses are not conditionally
    independent given the hyper-parameters, so there is no data plate).

Data
----
``data.json`` fields ``N`` (11; implied by the length of ``x``), ``x`` (inputs) and ``y``
(responses); the field ``k`` is used by ``gp_pois_regr`` only and is ignored. The reference
arrays ``rho``, ``alpha``, ``sigma`` (each ``(n,)``) are all sampled; none is derived.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, version 0.5 (2023), https://github.com/stan-dev/posteriordb
(posterior ``gp_pois_regr-gp_regr``; simulated data from the Stan ``stat_comp_benchmarks``
suite).
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
    "covariance",
    "data_from_json",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "gp_pois_regr-gp_regr"
HAS_IMPROPER_PRIOR = False


def covariance(
    x: torch.Tensor, alpha: torch.Tensor, rho: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Squared-exponential kernel matrix with ``sigma`` (unsquared) added to the diagonal.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, shape ``(N,)``.
    alpha, rho, sigma : torch.Tensor
        Hyper-parameters of a common (broadcastable) batch shape ``b``.

    Returns
    -------
    torch.Tensor
        Shape ``b + (N, N)``.
    """
    sq_dist = (x.unsqueeze(-1) - x.unsqueeze(-2)) ** 2
    alpha, rho, sigma = (v[..., None, None] for v in (alpha, rho, sigma))
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return alpha**2 * torch.exp(-sq_dist / (2 * rho**2)) + sigma * eye


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """GP regression with the marginal likelihood.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, shape ``(N,)``.
    y : torch.Tensor, optional
        Responses, shape ``(N,)``; sampled when ``None``.

    Returns
    -------
    torch.Tensor
        The covariance matrix ``C``.
    """
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), x.new_tensor(4.0)))
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    # Batch shape () or (..., 1) (vectorized particles), kept by the multivariate normal.
    C = covariance(x, alpha, rho, sigma)
    loc = x.new_zeros(x.shape[-1])
    pyro.sample("y", dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(C)), obs=y)
    return C


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json`` (``x``, ``y``; ``k`` is unused)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    x = torch.tensor(raw["x"], dtype=dtype)
    if len(x) != int(raw["N"]):
        raise ValueError(f"len(x) = {len(x)} but N = {raw['N']}")
    return {"x": x, "y": torch.tensor(raw["y"], dtype=dtype)}


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """The reference draws as the latent sites ``rho``, ``alpha``, ``sigma`` (all sampled)."""
    return {k: np.asarray(draws[k], dtype=np.float64) for k in ("rho", "alpha", "sigma")}


def init_values(x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Initial values: ``rho`` = 6.25 (prior mean), ``alpha`` = ``sigma`` = 1."""
    return {"rho": x.new_tensor(6.25), "alpha": x.new_tensor(1.0), "sigma": x.new_tensor(1.0)}
