r"""posteriordb ``kilpisjarvi_mod-kilpisjarvi``: linear trend of Kilpisjärvi summer temperature.

Linear trend model for the mean summer temperature at Kilpisjärvi, 1952-2013, on a year
covariate shifted by +2000 (x = 3952 ... 4013) so that intercept and slope are extremely
correlated (Bales et al. 2019); posteriordb model ``kilpisjarvi``, data ``kilpisjarvi_mod``:

.. math::

    \alpha &\sim \mathcal{N}(\mu_\alpha, s_\alpha^2), \\
    \beta &\sim \mathcal{N}(\mu_\beta, s_\beta^2), \\
    \sigma &\sim \text{flat on } (0, \infty) \quad (\text{improper}), \\
    y_n &\sim \mathcal{N}(\alpha + \beta x_n, \sigma^2), \qquad n = 1, \dots, N,

with the prior hyper-parameters :math:`\mu_\alpha` = ``pmualpha``, :math:`s_\alpha` =
``psalpha``, :math:`\mu_\beta` = ``pmubeta``, :math:`s_\beta` = ``psbeta`` taken from the data.
The posterior correlation of :math:`(\alpha, \beta)` is about -0.99999.

Sites
-----
``"alpha"``, ``"beta"``
    latent, scalar.
``"sigma"``
    latent, scalar, positive, ``ImproperUniform(positive)`` (flat on sigma, not on log sigma).
``"y"``
    observed, shape ``(N,)``, in the plate ``"data"`` (dim -1).

Data
----
``N`` (int, 62), ``x`` (N shifted years), ``y`` (N temperatures), ``pmualpha``, ``psalpha``,
``pmubeta``, ``psbeta`` (scalars). The field ``xpred`` of ``data.json`` is ignored.

Reference draws
---------------
``alpha`` (n,), ``beta`` (n,), ``sigma`` (n,), all sampled; no derived arrays.

Notes
-----
The flat prior cannot be sampled: initialise with ``init_to_value(values=init_values(**data))``
and pass ``max_plate_nesting=1`` to NUTS/Predictive.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, 2023. https://github.com/stan-dev/posteriordb.
Data: Finnish Meteorological Institute (Kilpisjärvi summer temperatures); modified version from
Bales, B., Pourzanjani, A., Vehtari, A. & Petzold, L. (2019), "Selecting the metric in
Hamiltonian Monte Carlo", arXiv:1905.11916.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "data_from_json",
    "model",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "kilpisjarvi_mod-kilpisjarvi"
HAS_IMPROPER_PRIOR = True

_SCALARS = ("pmualpha", "psalpha", "pmubeta", "psbeta")


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json``.

    Parameters
    ----------
    raw : dict
        Parsed ``data.json``; ``xpred`` is ignored.
    dtype : torch.dtype, optional
        Tensor dtype; default ``torch.get_default_dtype()``.

    Returns
    -------
    dict
        ``{"N": int, "x": (N,), "y": (N,)}`` and the four prior hyper-parameters as 0-d tensors.
    """
    dtype = dtype or torch.get_default_dtype()
    data = {
        "N": int(raw["N"]),
        "x": torch.tensor(raw["x"], dtype=dtype),
        "y": torch.tensor(raw["y"], dtype=dtype),
    }
    data.update({k: torch.tensor(raw[k], dtype=dtype) for k in _SCALARS})
    return data


def model(
    N: int,
    x: torch.Tensor,
    pmualpha: torch.Tensor,
    psalpha: torch.Tensor,
    pmubeta: torch.Tensor,
    psbeta: torch.Tensor,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear trend with Normal priors on intercept and slope and a flat prior on ``sigma``.

    Parameters
    ----------
    N : int
        Number of years.
    x : torch.Tensor
        Shifted years, shape ``(N,)``.
    pmualpha, psalpha, pmubeta, psbeta : torch.Tensor
        Prior means and standard deviations of ``alpha`` and ``beta`` (0-d).
    y : torch.Tensor, optional
        Temperatures, shape ``(N,)``; sampled when ``None``.

    Returns
    -------
    torch.Tensor
        The linear predictor, shape ``(N,)``.
    """
    as_data = {"dtype": x.dtype, "device": x.device}
    alpha = pyro.sample(
        "alpha",
        dist.Normal(torch.as_tensor(pmualpha, **as_data), torch.as_tensor(psalpha, **as_data)),
    )
    beta = pyro.sample(
        "beta",
        dist.Normal(torch.as_tensor(pmubeta, **as_data), torch.as_tensor(psbeta, **as_data)),
    )
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    mean = alpha + beta * x
    with pyro.plate("data", N, dim=-1):
        pyro.sample("y", dist.Normal(mean, sigma), obs=y)
    return mean


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """Reference draws as the latent sites ``alpha``, ``beta``, ``sigma`` (each (n,))."""
    return {name: np.asarray(draws[name]) for name in ("alpha", "beta", "sigma")}


def init_values(
    N: int,
    x: torch.Tensor,
    pmualpha: torch.Tensor,
    psalpha: torch.Tensor,
    pmubeta: torch.Tensor,
    psbeta: torch.Tensor,
    y: torch.Tensor | None = None,
) -> dict:
    """Initial values: the least-squares line and its residual standard deviation.

    Returns
    -------
    dict
        ``alpha``, ``beta``, ``sigma`` (0-d tensors in the dtype/device of ``x``). Without a
        response, the prior means and ``sigma = 1``.
    """
    if y is None:
        return {
            "alpha": torch.as_tensor(pmualpha, dtype=x.dtype, device=x.device),
            "beta": torch.as_tensor(pmubeta, dtype=x.dtype, device=x.device),
            "sigma": x.new_ones(()),
        }
    xc = x - x.mean()
    beta = (xc * (y - y.mean())).sum() / (xc * xc).sum()
    alpha = y.mean() - beta * x.mean()
    sigma = (y - alpha - beta * x).std()
    return {"alpha": alpha, "beta": beta, "sigma": sigma}
