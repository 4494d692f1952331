r"""posteriordb ``nes2000-nes``: party identification regression, National Election Study 2000.

Linear regression of 7-point party identification on ideology, race, age group, education,
gender and income for the respondents of the year 2000 (Gelman & Hill 2007, ch. 4); posteriordb
model ``nes``, data ``nes2000``:

.. math::

    \beta &\sim \text{flat on } \mathbb{R}^9 \quad (\text{improper}), \\
    \sigma &\sim \text{flat on } (0, \infty) \quad (\text{improper}), \\
    \mathrm{partyid7}_n &\sim \mathcal{N}(x_n^\top \beta, \sigma^2), \qquad n = 1, \dots, N,

with covariate row :math:`x_n = (1, \mathrm{real\_ideo}_n, \mathrm{race\_adj}_n,
[\mathrm{age}_n = 2], [\mathrm{age}_n = 3], [\mathrm{age}_n = 4], \mathrm{educ1}_n,
\mathrm{gender}_n, \mathrm{income}_n)`, where :math:`\mathrm{age}_n` = ``age_discrete[n]``
and the brackets are indicators (age dummies for 30-44, 45-64 and 65+). All other covariates
are used exactly as stored (no recoding).

Sites
-----
``"beta"``
    latent, shape ``(9,)``, ``ImproperUniform(real)`` with event shape ``(9,)``; coefficients
    in the order of :math:`x_n` above.
``"sigma"``
    latent, scalar, ``ImproperUniform(positive)``.
``"partyid7"``
    observed, shape ``(N,)``, in the plate ``"data"`` (dim -1).

Data
----
``N`` (int, 476), ``partyid7`` (response), ``real_ideo``, ``race_adj``, ``age_discrete``,
``educ1``, ``gender``, ``income`` (each N). The field ``year`` of ``data.json`` (all 2000) is
ignored.

Reference draws
---------------
``beta`` (n, 9) and ``sigma`` (n,), both sampled; no derived arrays.

Notes
-----
The flat priors cannot be sampled: initialise with ``init_to_value(values=init_values(**data))``
and pass ``max_plate_nesting=1`` to NUTS/Predictive.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, 2023. https://github.com/stan-dev/posteriordb.
Data: Gelman, A. & Hill, J. (2007), *Data Analysis Using Regression and Multilevel/Hierarchical
Models*, Cambridge University Press (National Election Study).
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

POSTERIOR = "nes2000-nes"
HAS_IMPROPER_PRIOR = True

_COVARIATES = ("real_ideo", "race_adj", "age_discrete", "educ1", "gender", "income")


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json``.

    Parameters
    ----------
    raw : dict
        Parsed ``data.json``; ``year`` is ignored.
    dtype : torch.dtype, optional
        Tensor dtype; default ``torch.get_default_dtype()``.

    Returns
    -------
    dict
        ``N`` (int) and ``partyid7``, ``real_ideo``, ``race_adj``, ``age_discrete``, ``educ1``,
        ``gender``, ``income`` (tensors of shape ``(N,)``).
    """
    dtype = dtype or torch.get_default_dtype()
    data: dict = {"N": int(raw["N"])}
    for key in (*_COVARIATES, "partyid7"):
        data[key] = torch.tensor(raw[key], dtype=dtype)
    return data


def _design(
    real_ideo: torch.Tensor,
    race_adj: torch.Tensor,
    age_discrete: torch.Tensor,
    educ1: torch.Tensor,
    gender: torch.Tensor,
    income: torch.Tensor,
) -> torch.Tensor:
    """Design matrix ``(N, 9)`` with intercept and age dummies (categories 2, 3, 4)."""
    age = age_discrete.round()
    columns = [
        torch.ones_like(real_ideo),
        real_ideo,
        race_adj,
        (age == 2).to(real_ideo.dtype),
        (age == 3).to(real_ideo.dtype),
        (age == 4).to(real_ideo.dtype),
        educ1,
        gender,
        income,
    ]
    return torch.stack(columns, dim=-1)


def model(
    N: int,
    real_ideo: torch.Tensor,
    race_adj: torch.Tensor,
    age_discrete: torch.Tensor,
    educ1: torch.Tensor,
    gender: torch.Tensor,
    income: torch.Tensor,
    partyid7: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear regression with flat priors on the coefficients and on ``sigma``.

    Parameters
    ----------
    N : int
        Number of respondents.
    real_ideo, race_adj, age_discrete, educ1, gender, income : torch.Tensor
        Covariates as stored, shape ``(N,)``.
    partyid7 : torch.Tensor, optional
        Response, shape ``(N,)``; sampled when ``None``.

    Returns
    -------
    torch.Tensor
        The linear predictor, shape ``(N,)``.
    """
    X = _design(real_ideo, race_adj, age_discrete, educ1, gender, income)
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (9,)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    # (X * beta).sum(-1) keeps any batch dims of beta left of the data plate.
    mean = (X * beta).sum(-1)
    with pyro.plate("data", N, dim=-1):
        pyro.sample("partyid7", dist.Normal(mean, sigma), obs=partyid7)
    return mean


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """Reference draws as the latent sites ``beta`` (n, 9) and ``sigma`` (n,)."""
    return {name: np.asarray(draws[name]) for name in ("beta", "sigma")}


def init_values(
    N: int,
    real_ideo: torch.Tensor,
    race_adj: torch.Tensor,
    age_discrete: torch.Tensor,
    educ1: torch.Tensor,
    gender: torch.Tensor,
    income: torch.Tensor,
    partyid7: torch.Tensor | None = None,
) -> dict:
    """Initial values: the least-squares fit and its residual standard deviation.

    Returns
    -------
    dict
        ``beta`` (9,) and ``sigma`` (), in the dtype/device of the data. Without a response,
        ``beta = 0`` and ``sigma = 1``.
    """
    X = _design(real_ideo, race_adj, age_discrete, educ1, gender, income)
    return least_squares_init(X, partyid7, 9)
