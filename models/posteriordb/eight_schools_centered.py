r"""posteriordb ``eight_schools-eight_schools_centered``: eight schools, centred.

The hierarchical normal model for the eight-schools coaching experiment (Rubin 1981; Gelman et
al., *Bayesian Data Analysis*, 3rd ed., sec. 5.5), in the centred parameterisation of
posteriordb's model ``eight_schools_centered`` (data ``eight_schools``):

.. math::

    \mu &\sim \mathcal{N}(0, 5^2), \\
    \tau &\sim \mathrm{HalfCauchy}(5), \\
    \theta_j \mid \mu, \tau &\sim \mathcal{N}(\mu, \tau^2), \qquad j = 1, \dots, J, \\
    y_j \mid \theta_j &\sim \mathcal{N}(\theta_j, \sigma_j^2).

This is the same posterior over :math:`(\mu, \tau, \theta)` as the non-centred model, but the
sampled coordinates form the classic funnel between :math:`\tau` and :math:`\theta`.

Sites
-----
``"mu"``
    latent, scalar.
``"tau"``
    latent, scalar, positive.
``"theta"``
    latent, shape ``(J,)``, in the plate ``"data"`` (dim -1, one entry per school).
``"y"``
    observed, shape ``(J,)``, in the plate ``"data"`` (dim -1).

Data
----
``J`` (int, 8 schools), ``y`` (J estimated effects), ``sigma`` (J known standard errors).
``data.json`` has no unused fields.

Reference draws
---------------
``mu`` (n,), ``tau`` (n,), ``theta`` (n, 8): exactly the sampled parameters (no derived arrays).
posteriordb has no separate draws for this posterior; they are those of
``eight_schools-eight_schools_noncentered``.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, 2023. https://github.com/stan-dev/posteriordb.
Data: Rubin (1981), *Journal of Educational Statistics* 6(4); Gelman et al., *Bayesian Data
Analysis*, 3rd ed.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from . import eight_schools_noncentered as noncentered
from .eight_schools_noncentered import data_from_json

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "data_from_json",
    "model",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "eight_schools-eight_schools_centered"
HAS_IMPROPER_PRIOR = False


def model(J: int, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Centred eight schools model.

    Parameters
    ----------
    J : int
        Number of schools.
    sigma : torch.Tensor
        Known standard errors, shape ``(J,)``.
    y : torch.Tensor, optional
        Observed effects, shape ``(J,)``; sampled when ``None``.

    Returns
    -------
    torch.Tensor
        The school effects ``theta``, shape ``(J,)``.
    """
    zero, one = sigma.new_zeros(()), sigma.new_ones(())
    mu = pyro.sample("mu", dist.Normal(zero, 5.0 * one))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0 * one))
    with pyro.plate("data", J, dim=-1):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
    return theta


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """Reference draws as the latent sites ``mu``, ``tau``, ``theta`` (all stored as sampled).

    Returns
    -------
    dict
        ``mu`` (n,), ``tau`` (n,), ``theta`` (n, J).
    """
    return {name: np.asarray(draws[name]) for name in ("mu", "tau", "theta")}


def init_values(J: int, sigma: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """Initial values: the non-centred start (precision-weighted mean of ``y`` for ``mu``,
    ``tau = 1``) with every ``theta`` at ``mu``.

    Returns
    -------
    dict
        Site name -> tensor in the dtype/device of ``sigma``.
    """
    start = noncentered.init_values(J, sigma, y)
    mu = start["mu"]
    return {"mu": mu, "tau": start["tau"], "theta": mu.expand(J).clone()}
