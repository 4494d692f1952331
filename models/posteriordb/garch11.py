r"""GARCH(1, 1) volatility model with constant mean (posteriordb ``garch-garch11``).

A simulated series of length :math:`T = 200` with known initial volatility :math:`\sigma_1`:

.. math::

    p(\mu) &\propto 1, \qquad p(\alpha_0) \propto 1 \ (\alpha_0 > 0), \\
    p(\alpha_1, \beta_1) &\propto 1 \ \text{on} \
        \{\alpha_1 > 0, \beta_1 > 0, \alpha_1 + \beta_1 < 1\}, \\
    s_1 &= \sigma_1, \qquad
    s_t^2 = \alpha_0 + \alpha_1 (y_{t-1} - \mu)^2 + \beta_1 s_{t-1}^2, \quad t = 2, \dots, T, \\
    y_t \mid \mu, s_t &\sim \mathcal{N}(\mu, s_t^2) \text{ independently}, \quad t = 1, \dots, T.

The priors on :math:`\mu` and :math:`\alpha_0` are improper and flat
(``dist.ImproperUniform``). The flat prior on the triangle is written as
:math:`w \sim \mathrm{Dirichlet}(1, 1, 1)` with :math:`\alpha_1 = w_1`, :math:`\beta_1 = w_2`
(the uniform distribution on the simplex is flat in :math:`(\alpha_1, \beta_1)`); nested
uniform priors would give the wrong density :math:`1 / (1 - \alpha_1)`.

The variance recursion is linear in :math:`s^2` with constant coefficient :math:`\beta_1`, so
:math:`s^2` solves the lower-bidiagonal system :math:`(I - \beta_1 S) s^2 = c`
(:math:`S` the shift matrix, :math:`c_1 = \sigma_1^2`,
:math:`c_t = \alpha_0 + \alpha_1 (y_{t-1} - \mu)^2`): one triangular solve, no Python loop.

Sites
-----
``"mu"``
    latent, scalar, improper flat prior on the real line.
``"alpha0"``
    latent, scalar, improper flat prior on :math:`(0, \infty)`.
``"w"``
    latent, shape ``(3,)``, Dirichlet(1, 1, 1) (one site, event shape ``(3,)``).
``"alpha1"``, ``"beta1"``
    deterministic (``pyro.deterministic``), scalars: ``w[0]`` and ``w[1]``.
``"y"``
    observed, shape ``(T,)``, in the plate ``"data"`` (dim -1).

Because of the improper priors the model cannot be run forward; initialise inference with
``init_to_value(values=init_values(**data))`` and pass ``max_plate_nesting=1``.

Data
----
``data.json`` fields ``T`` (200; implied by the length of ``y``), ``y`` (the series) and
``sigma1`` (the known volatility at time 1, 0.5). The reference arrays ``mu``, ``alpha0``,
``alpha1``, ``beta1`` (each ``(n,)``) are parameters; here ``alpha1`` and ``beta1`` are derived
from the sampled ``w = (alpha1, beta1, 1 - alpha1 - beta1)``.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, version 0.5 (2023), https://github.com/stan-dev/posteriordb
(posterior ``garch-garch11``; simulated data from the Stan ``stat_comp_benchmarks`` suite).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "model",
    "volatility",
    "data_from_json",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "garch-garch11"
HAS_IMPROPER_PRIOR = True


def volatility(
    y: torch.Tensor,
    sigma1: torch.Tensor,
    mu: torch.Tensor,
    alpha0: torch.Tensor,
    alpha1: torch.Tensor,
    beta1: torch.Tensor,
) -> torch.Tensor:
    """The GARCH(1, 1) volatilities ``s`` (see the module docstring).

    Parameters
    ----------
    y : torch.Tensor
        The series, shape ``(T,)``.
    sigma1 : torch.Tensor
        Volatility at time 1, scalar.
    mu, alpha0, alpha1, beta1 : torch.Tensor
        Scalars, or batched with shape ``(..., 1)``.

    Returns
    -------
    torch.Tensor
        Shape ``(T,)``, or ``(..., T)`` for batched parameters.
    """
    T = y.shape[-1]
    first = torch.zeros(T, dtype=y.dtype, device=y.device)
    first[0] = 1.0
    y_lag = torch.cat([y[:1], y[:-1]])  # the first entry is replaced by sigma1^2 below
    c = (1.0 - first) * (alpha0 + alpha1 * (y_lag - mu) ** 2) + first * sigma1**2
    shift = torch.diag(y.new_ones(T - 1), -1)
    eye = torch.eye(T, dtype=y.dtype, device=y.device)
    A = eye - beta1.unsqueeze(-1) * shift  # (T, T) or (..., T, T)
    batch = torch.broadcast_shapes(A.shape[:-2], c.shape[:-1])
    A, c = A.expand(batch + (T, T)), c.expand(batch + (T,))
    s2 = torch.linalg.solve_triangular(A, c.unsqueeze(-1), upper=False, unitriangular=True)
    return s2.squeeze(-1).sqrt()


def model(y: torch.Tensor, sigma1: torch.Tensor) -> torch.Tensor:
    """GARCH(1, 1) with flat priors.

    Parameters
    ----------
    y : torch.Tensor
        The observed series, shape ``(T,)``.
    sigma1 : torch.Tensor
        Known volatility at time 1, scalar.

    Returns
    -------
    torch.Tensor
        The volatilities ``s``.
    """
    mu = pyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    alpha0 = pyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
    w = pyro.sample("w", dist.Dirichlet(y.new_ones(3)))
    alpha1 = pyro.deterministic("alpha1", w[..., 0])
    beta1 = pyro.deterministic("beta1", w[..., 1])
    s = volatility(y, sigma1, mu, alpha0, alpha1, beta1)
    with pyro.plate("data", y.shape[-1], dim=-1):
        pyro.sample("y", dist.Normal(mu, s), obs=y)
    return s


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json`` (``y``, ``sigma1``)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    y = torch.tensor(raw["y"], dtype=dtype)
    if len(y) != int(raw["T"]):
        raise ValueError(f"len(y) = {len(y)} but T = {raw['T']}")
    return {"y": y, "sigma1": torch.tensor(raw["sigma1"], dtype=dtype)}


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """The reference draws as the latent sites ``mu``, ``alpha0`` and
    ``w = (alpha1, beta1, 1 - alpha1 - beta1)``."""
    alpha1 = np.asarray(draws["alpha1"], dtype=np.float64)
    beta1 = np.asarray(draws["beta1"], dtype=np.float64)
    return {
        "mu": np.asarray(draws["mu"], dtype=np.float64),
        "alpha0": np.asarray(draws["alpha0"], dtype=np.float64),
        "w": np.stack([alpha1, beta1, 1.0 - alpha1 - beta1], axis=-1),
    }


def init_values(y: torch.Tensor, sigma1: torch.Tensor) -> dict[str, torch.Tensor]:
    """Initial values: ``mu`` = mean of ``y``, ``w = (0.2, 0.6, 0.2)`` and ``alpha0`` chosen so
    that the stationary variance ``alpha0 / (1 - alpha1 - beta1)`` equals the sample variance."""
    w = y.new_tensor([0.2, 0.6, 0.2])
    return {"mu": y.mean(), "alpha0": w[2] * y.var(), "w": w}
