r"""posteriordb ``kidiq-kidscore_interaction``: kid score on mother's schooling, IQ, interaction.

Linear regression of a child's cognitive test score on the mother's high-school completion, the
mother's IQ and their interaction (Gelman & Hill 2007, ch. 3); posteriordb model
``kidscore_interaction``, data ``kidiq``:

.. math::

    \beta &\sim \text{flat on } \mathbb{R}^4 \quad (\text{improper}), \\
    \sigma &\sim \mathrm{HalfCauchy}(2.5), \\
    \mathrm{kid\_score}_n &\sim \mathcal{N}\big(\beta_1 + \beta_2\,\mathrm{hs}_n
        + \beta_3\,\mathrm{iq}_n + \beta_4\,\mathrm{hs}_n \mathrm{iq}_n,\ \sigma^2\big),
        \qquad n = 1, \dots, N,

with :math:`\mathrm{hs}_n` = ``mom_hs[n]`` and :math:`\mathrm{iq}_n` = ``mom_iq[n]``
(uncentred, hence posterior correlations of about 0.99 between coefficients).

Sites
-----
``"beta"``
    latent, shape ``(4,)``, ``ImproperUniform(real)`` with event shape ``(4,)``; order
    intercept, ``mom_hs``, ``mom_iq``, interaction.
``"sigma"``
    latent, scalar, positive.
``"kid_score"``
    observed, shape ``(N,)``, in the plate ``"data"`` (dim -1).

Data
----
``N`` (int, 434), ``kid_score`` (N), ``mom_hs`` (N, in {0, 1}), ``mom_iq`` (N). The fields
``mom_hs_new`` and ``mom_iq_new`` of ``data.json`` are prediction inputs and are ignored.

Reference draws
---------------
``beta`` (n, 4) and ``sigma`` (n,), both sampled; no derived arrays.

Notes
-----
The flat prior cannot be sampled: initialise with ``init_to_value(values=init_values(**data))``
and pass ``max_plate_nesting=1`` to NUTS/Predictive.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, 2023. https://github.com/stan-dev/posteriordb.
Data: Gelman, A. & Hill, J. (2007), *Data Analysis Using Regression and Multilevel/Hierarchical
Models*, Cambridge University Press.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ._common import least_squares_init

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "data_from_json",
    "model",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "kidiq-kidscore_interaction"
HAS_IMPROPER_PRIOR = True


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json``.

    Parameters
    ----------
    raw : dict
        Parsed ``data.json``; ``mom_hs_new`` and ``mom_iq_new`` are ignored.
    dtype : torch.dtype, optional
        Tensor dtype; default ``torch.get_default_dtype()``.

    Returns
    -------
    dict
        ``{"N": int, "mom_hs": (N,), "mom_iq": (N,), "kid_score": (N,)}``.
    """
    dtype = dtype or torch.get_default_dtype()
    return {
        "N": int(raw["N"]),
        "mom_hs": torch.tensor(raw["mom_hs"], dtype=dtype),
        "mom_iq": torch.tensor(raw["mom_iq"], dtype=dtype),
        "kid_score": torch.tensor(raw["kid_score"], dtype=dtype),
    }


def _design(mom_hs: torch.Tensor, mom_iq: torch.Tensor) -> torch.Tensor:
    """Design matrix ``(N, 4)``: intercept, ``mom_hs``, ``mom_iq``, ``mom_hs * mom_iq``."""
    return torch.stack([torch.ones_like(mom_iq), mom_hs, mom_iq, mom_hs * mom_iq], dim=-1)


def model(
    N: int,
    mom_hs: torch.Tensor,
    mom_iq: torch.Tensor,
    kid_score: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear regression with interaction and a flat prior on the coefficients.

    Parameters
    ----------
    N : int
        Number of children.
    mom_hs, mom_iq : torch.Tensor
        Covariates, shape ``(N,)``.
    kid_score : torch.Tensor, optional
        Response, shape ``(N,)``; sampled when ``None``.

    Returns
    -------
    torch.Tensor
        The linear predictor, shape ``(N,)``.
    """
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(mom_iq.new_tensor(2.5)))
    # (X * beta).sum(-1) keeps any batch dims of beta left of the data plate.
    mean = (_design(mom_hs, mom_iq) * beta).sum(-1)
    with pyro.plate("data", N, dim=-1):
        pyro.sample("kid_score", dist.Normal(mean, sigma), obs=kid_score)
    return mean


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """Reference draws as the latent sites ``beta`` (n, 4) and ``sigma`` (n,)."""
    return {name: np.asarray(draws[name]) for name in ("beta", "sigma")}


def init_values(
    N: int,
    mom_hs: torch.Tensor,
    mom_iq: torch.Tensor,
    kid_score: torch.Tensor | None = None,
) -> dict:
    """Initial values: the least-squares fit and its residual standard deviation.

    Returns
    -------
    dict
        ``beta`` (4,) and ``sigma`` (), in the dtype/device of the data. Without a response,
        ``beta = 0`` and ``sigma = 1``.
    """
    return least_squares_init(_design(mom_hs, mom_iq), kid_score, 4)
