r"""Poisson regression with a latent Gaussian process, whitened (posteriordb
``gp_pois_regr-gp_pois_regr``).

Eleven simulated counts :math:`k_i` at inputs :math:`x_i = -10, -8, \dots, 10`, with a latent
squared-exponential GP written in whitened (non-centred) form:

.. math::

    \rho &\sim \mathrm{Gamma}(25, 4) \ \text{(shape, rate)}, \qquad
    \alpha \sim \mathrm{HalfNormal}(2), \qquad
    \tilde f_i \sim \mathcal{N}(0, 1), \quad i = 1, \dots, N, \\
    C_{ij} &= \alpha^2 \exp\!\Big(-\frac{(x_i - x_j)^2}{2 \rho^2}\Big) + 10^{-10} [i = j],
    \qquad L = \operatorname{chol}(C), \qquad f = L \tilde f, \\
    k_i \mid f_i &\sim \mathrm{Poisson}(e^{f_i}) \text{ independently}.

Sites
-----
``"rho"``, ``"alpha"``
    latent, scalars, positive.
``"f_tilde"``
    latent, shape ``(N,)`` (one site, ``to_event(1)``).
``"f"``
    deterministic (``pyro.deterministic``), shape ``(N,)``, in the plate ``"data"`` (dim -1).
``"k"``
    observed counts (as floats), shape ``(N,)``, in the plate ``"data"``.

Data
----
``data.json`` fields ``N`` (11; implied by the length of ``x``), ``x`` (inputs) and ``k``
(counts); the field ``y`` is used by ``gp_regr`` only and is ignored. Of the reference arrays,
``rho (n,)`` and ``alpha (n,)`` are sampled, and ``f (n, 11)`` is **derived**
(``f = L f_tilde``); :func:`sampled_from_reference` recovers ``f_tilde`` by solving
``L f_tilde = f`` with ``L`` built from each draw's ``(alpha, rho)``.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, version 0.5 (2023), https://github.com/stan-dev/posteriordb
(posterior ``gp_pois_regr-gp_pois_regr``; simulated data from the Stan
``stat_comp_benchmarks`` suite).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "JITTER",
    "model",
    "cholesky_factor",
    "data_from_json",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "gp_pois_regr-gp_pois_regr"
HAS_IMPROPER_PRIOR = False

#: Diagonal jitter added to the kernel matrix.
JITTER = 1e-10


def cholesky_factor(x: torch.Tensor, alpha: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of the squared-exponential kernel matrix plus :data:`JITTER`.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, shape ``(N,)``.
    alpha, rho : torch.Tensor
        Marginal sd and length-scale: scalars, or batched with shape ``b + (1,)`` (the trailing
        1 is the slot of the ``"data"`` plate, as for scalar sites under vectorized particles).

    Returns
    -------
    torch.Tensor
        Shape ``(N, N)``, or ``b + (N, N)`` for batched parameters.
    """
    sq_dist = (x.unsqueeze(-1) - x.unsqueeze(-2)) ** 2
    alpha, rho = alpha.unsqueeze(-1), rho.unsqueeze(-1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    C = alpha**2 * torch.exp(-sq_dist / (2 * rho**2)) + JITTER * eye
    return torch.linalg.cholesky(C)


def model(x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """Latent-GP Poisson regression, whitened.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, shape ``(N,)``.
    k : torch.Tensor, optional
        Counts as floats, shape ``(N,)``; sampled when ``None``.

    Returns
    -------
    torch.Tensor
        The latent log-rates ``f``.
    """
    n = x.shape[-1]
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), x.new_tensor(4.0)))
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    f_tilde = pyro.sample("f_tilde", dist.Normal(x.new_zeros(n), x.new_tensor(1.0)).to_event(1))
    # Scalars have batch shape () or (..., 1), so L is (N, N) or (..., N, N); f_tilde of shape
    # (N,) or (..., 1, N) broadcasts along the rows of L, so that
    # f[..., i] = sum_j L[..., i, j] f_tilde[..., j] has shape (N,) or (..., N).
    L = cholesky_factor(x, alpha, rho)
    with pyro.plate("data", n, dim=-1):
        f = pyro.deterministic("f", (L * f_tilde).sum(-1))
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)
    return f


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json`` (``x``, ``k``; ``y`` is unused)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    x = torch.tensor(raw["x"], dtype=dtype)
    if len(x) != int(raw["N"]):
        raise ValueError(f"len(x) = {len(x)} but N = {raw['N']}")
    return {"x": x, "k": torch.tensor(raw["k"], dtype=dtype)}


def sampled_from_reference(draws: dict, x: torch.Tensor | np.ndarray | None = None) -> dict:
    """The reference draws as the latent sites ``rho``, ``alpha`` and ``f_tilde``.

    ``f_tilde = solve(L, f)`` per draw, with ``L`` from :func:`cholesky_factor` in float64.

    Parameters
    ----------
    draws : dict
        Reference arrays ``rho (n,)``, ``alpha (n,)``, ``f (n, N)``.
    x : array, optional
        Inputs; default ``-10, -8, ..., 10`` (posteriordb's ``x`` for this data set).
    """
    f = torch.as_tensor(np.asarray(draws["f"]), dtype=torch.float64)
    if x is None:
        x = torch.arange(-10.0, 11.0, 2.0, dtype=torch.float64)
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.shape[-1] != f.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} inputs but f has {f.shape[-1]} components")
    alpha = torch.as_tensor(np.asarray(draws["alpha"]), dtype=torch.float64)
    rho = torch.as_tensor(np.asarray(draws["rho"]), dtype=torch.float64)
    L = cholesky_factor(x, alpha.unsqueeze(-1), rho.unsqueeze(-1))
    f_tilde = torch.linalg.solve_triangular(L, f.unsqueeze(-1), upper=False).squeeze(-1)
    return {
        "rho": rho.numpy(),
        "alpha": alpha.numpy(),
        "f_tilde": f_tilde.numpy(),
    }


def init_values(x: torch.Tensor, k: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Initial values: ``rho`` = 6.25 (prior mean), ``alpha`` = 1, ``f_tilde`` = 0."""
    return {
        "rho": x.new_tensor(6.25),
        "alpha": x.new_tensor(1.0),
        "f_tilde": x.new_zeros(x.shape[-1]),
    }
