r"""Eight schools, non-centred parameterization.

The hierarchical model of Rubin (1981), "Estimation in parallel randomized experiments",
*Journal of Educational Statistics* 6(4), 377-401, as analysed in Gelman et al. (2013),
*Bayesian Data Analysis*, 3rd ed., sec. 5.5, written in the non-centred form:

.. math::

    \mu &\sim \mathcal{N}(0, 5^2), \\
    \tau &\sim \mathrm{HalfCauchy}(5), \\
    \tilde\theta_j &\sim \mathcal{N}(0, 1), \qquad j = 1, \dots, J, \\
    \theta_j &= \mu + \tau \tilde\theta_j, \\
    y_j \mid \theta_j &\sim \mathcal{N}(\theta_j, \sigma_j^2),

with :math:`J = 8` schools, estimated coaching effects :math:`y_j` and their known standard
errors :math:`\sigma_j`. The priors are exactly those of ArviZ's bundled ``non_centered_eight``
example (sampled with PyMC 4.2.2); we checked that the ``lp`` recorded in its
``sample_stats`` equals this model's log joint density plus the log-Jacobian
:math:`\log\tau` of PyMC's log transform, to 2e-9, at all 2000 draws.

Sites
-----
``"mu"``
    latent, scalar.
``"tau"``
    latent, scalar, positive.
``"theta_t"``
    latent, shape ``(J,)``, in the plate ``"school"`` (dim -1).
``"theta"``
    deterministic (``pyro.deterministic``), shape ``(J,)``.
``"y"``
    observed, shape ``(J,)``, in the plate ``"school"``.

There is no closed-form posterior; :func:`reference_draws` returns ArviZ's bundled NUTS draws
(4 chains x 500 draws) as a reference.

Data
----
``y = [28, 8, -3, 7, -1, 1, 18, 12]``, ``sigma = [15, 10, 16, 11, 9, 11, 10, 18]`` for the
schools in :data:`SCHOOLS` (Rubin, 1981; Gelman et al., 2013, Table 5.2).

Examples
--------
>>> import pyro
>>> from ppl_vi.models import eight_schools as es
>>> data = es.load_data()
>>> trace = pyro.poutine.trace(es.model).get_trace(**data)
>>> trace.nodes["theta"]["value"].shape
torch.Size([8])
>>> ref = es.reference_draws()
>>> ref["theta_t"].shape
(2000, 8)
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch

__all__ = ["model", "load_data", "reference_draws", "SCHOOLS", "Y", "SIGMA"]

#: School names, in the order of the data (and of ArviZ's ``school`` coordinate).
SCHOOLS = (
    "Choate",
    "Deerfield",
    "Phillips Andover",
    "Phillips Exeter",
    "Hotchkiss",
    "Lawrenceville",
    "St. Paul's",
    "Mt. Hermon",
)

#: Estimated coaching effects.
Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)

#: Standard errors of the estimated effects.
SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def model(J: int, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Non-centred eight schools model.

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
        The school effects ``theta``.
    """
    mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), sigma.new_tensor(5.0)))
    tau = pyro.sample("tau", dist.HalfCauchy(sigma.new_tensor(5.0)))
    with pyro.plate("school", J, dim=-1):
        theta_t = pyro.sample("theta_t", dist.Normal(sigma.new_zeros(()), sigma.new_tensor(1.0)))
        theta = pyro.deterministic("theta", mu + tau * theta_t)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
    return theta


def load_data() -> dict[str, int | torch.Tensor]:
    """The eight schools data.

    Returns
    -------
    dict
        ``{"J": 8, "sigma": (8,), "y": (8,)}``, tensors in ``torch.get_default_dtype()``.
    """
    dtype = torch.get_default_dtype()
    return {
        "J": len(SCHOOLS),
        "sigma": torch.tensor(SIGMA, dtype=dtype),
        "y": torch.tensor(Y, dtype=dtype),
    }


def reference_draws() -> dict[str, np.ndarray]:
    """ArviZ's bundled NUTS draws of the non-centred model, chains concatenated.

    Loads ``arviz.load_arviz_data("non_centered_eight")`` (a netCDF file shipped inside the
    ArviZ package; no network access) and flattens chain and draw, chain-major.

    Returns
    -------
    dict
        float64 arrays ``mu (2000,)``, ``tau (2000,)``, ``theta_t (2000, 8)`` and
        ``theta (2000, 8)``, schools in the order of :data:`SCHOOLS`.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning
        )
        import arviz as az

        idata = az.load_arviz_data("non_centered_eight")
    post = idata.posterior
    schools = tuple(str(s) for s in post["school"].values)
    if schools != SCHOOLS:
        raise RuntimeError(f"unexpected school order in ArviZ data: {schools}")
    out = {}
    for name in ("mu", "tau", "theta_t", "theta"):
        values = np.asarray(post[name].transpose("chain", "draw", ...).values, dtype=np.float64)
        out[name] = values.reshape((-1,) + values.shape[2:])
    return out
