r"""posteriordb ``sblrc-blr``: Bayesian linear regression without intercept, simulated data.

Bayesian linear regression without intercept on simulated data whose design makes the
coefficients correlated in the posterior (pairwise correlations about 0.8); posteriordb model
``blr``, data ``sblrc`` (true :math:`\beta = 1`, :math:`\sigma = 1`):

.. math::

    \beta_d &\sim \mathcal{N}(0, 10^2), \qquad d = 1, \dots, D, \\
    \sigma &\sim \mathrm{HalfNormal}(10), \\
    y_n &\sim \mathcal{N}\Big(\sum_d X_{nd} \beta_d,\ \sigma^2\Big), \qquad n = 1, \dots, N.

Sites
-----
``"beta"``
    latent, shape ``(D,)`` (``.to_event(1)``).
``"sigma"``
    latent, scalar, positive.
``"y"``
    observed, shape ``(N,)``, in the plate ``"data"`` (dim -1).

Data
----
``N`` (int, 100), ``D`` (int, 5), ``X`` (N x D design matrix, stored as a list of rows),
``y`` (N). ``data.json`` has no unused fields.

Reference draws
---------------
``beta`` (n, 5) and ``sigma`` (n,), both sampled; no derived arrays. The posterior sd of each
``beta`` is about 1e-3 (the entries of ``X`` are in the hundreds), that of ``sigma`` about 0.08.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, 2023. https://github.com/stan-dev/posteriordb.
Data: simulated by posteriordb (data set ``sblrc``).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ._common import least_squares_init

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "data_from_json",
    "model",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "sblrc-blr"
HAS_IMPROPER_PRIOR = False


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json``.

    Parameters
    ----------
    raw : dict
        Parsed ``data.json`` (``N``, ``D``, ``X``, ``y``).
    dtype : torch.dtype, optional
        Tensor dtype; default ``torch.get_default_dtype()``.

    Returns
    -------
    dict
        ``{"N": int, "D": int, "X": (N, D), "y": (N,)}``.
    """
    dtype = dtype or torch.get_default_dtype()
    return {
        "N": int(raw["N"]),
        "D": int(raw["D"]),
        "X": torch.tensor(raw["X"], dtype=dtype),
        "y": torch.tensor(raw["y"], dtype=dtype),
    }


def model(N: int, D: int, X: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Linear regression without intercept, Normal(0, 10) coefficients, HalfNormal(10) noise.

    Parameters
    ----------
    N, D : int
        Number of observations and of predictors.
    X : torch.Tensor
        Design matrix, shape ``(N, D)``.
    y : torch.Tensor, optional
        Response, shape ``(N,)``; sampled when ``None``.

    Returns
    -------
    torch.Tensor
        The linear predictor, shape ``(N,)``.
    """
    zero, ten = X.new_zeros(()), X.new_tensor(10.0)
    beta = pyro.sample("beta", dist.Normal(zero, ten).expand([D]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(ten))
    # (X * beta).sum(-1) keeps any batch dims of beta left of the data plate.
    mean = (X * beta).sum(-1)
    with pyro.plate("data", N, dim=-1):
        pyro.sample("y", dist.Normal(mean, sigma), obs=y)
    return mean


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """Reference draws as the latent sites ``beta`` (n, D) and ``sigma`` (n,)."""
    return {name: np.asarray(draws[name]) for name in ("beta", "sigma")}


def init_values(N: int, D: int, X: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """Initial values: the least-squares fit and its residual standard deviation.

    Returns
    -------
    dict
        ``beta`` (D,) and ``sigma`` (), in the dtype/device of ``X``. Without a response,
        ``beta = 0`` and ``sigma = 1``.
    """
    return least_squares_init(X, y, D)
