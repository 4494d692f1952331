r"""Normal mean with a Normal prior and known noise scale (conjugate).

The model is

.. math::

    \mu &\sim \mathcal{N}(m_0, s_0^2), \\
    x_i \mid \mu &\sim \mathcal{N}(\mu, s^2), \qquad i = 1, \dots, N,

with prior location :math:`m_0` (``prior_loc``), prior scale :math:`s_0` (``prior_scale``) and
known noise scale :math:`s` (``noise_scale``). The observations live in a ``pyro.plate`` named
``"data"``.

Sites
-----
``"mu"``
    latent, scalar.
``"x"``
    observed, shape ``(N,)``.

Exact posterior and evidence
----------------------------
The posterior is Normal with precision :math:`\lambda_N = 1/s_0^2 + N/s^2` and mean
:math:`m_N = (m_0/s_0^2 + \sum_i x_i/s^2)/\lambda_N` (Gelman et al., 2013, *Bayesian Data
Analysis*, 3rd ed., sec. 2.5; Murphy, 2007, "Conjugate Bayesian analysis of the Gaussian
distribution", sec. 2). Marginally :math:`x \sim \mathcal{N}(m_0 \mathbf{1},
s^2 I + s_0^2 \mathbf{1}\mathbf{1}^\top)`, whose density :func:`log_evidence` evaluates in closed
form with the matrix determinant lemma and the Sherman-Morrison formula.

Default data
------------
:func:`load_data` returns ``N = 20`` draws from :math:`\mathcal{N}(1.5, 1)` (true
:math:`\mu = 1.5`, ``noise_scale = 1``), simulated in float64 with
``torch.Generator().manual_seed(20240)`` and then cast to the default dtype. The default prior
:math:`\mathcal{N}(0, 2^2)` has a prior precision of 1/4 against a data precision of 20, so it
shrinks the posterior mean visibly towards 0 but does not dominate.

Examples
--------
>>> import pyro
>>> from ppl_vi.models import normal_normal as nn
>>> data = nn.load_data()
>>> trace = pyro.poutine.trace(nn.model).get_trace(**data)
>>> trace.nodes["x"]["value"].shape
torch.Size([20])
>>> post = nn.exact_posterior(**data)["mu"]          # torch.distributions.Normal
>>> logz = nn.log_evidence(**data)                    # scalar tensor
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

__all__ = ["model", "load_data", "exact_posterior", "log_evidence", "TRUE_MU"]

#: The value of ``mu`` used to simulate the default data.
TRUE_MU = 1.5

_SEED = 20240
_N = 20


def model(
    x: torch.Tensor | None = None,
    prior_loc: float = 0.0,
    prior_scale: float = 2.0,
    noise_scale: float = 1.0,
    num_data: int | None = None,
) -> torch.Tensor:
    """Normal-Normal model.

    Parameters
    ----------
    x : torch.Tensor, optional
        Observations, shape ``(N,)``. When ``None`` the model samples them (prior predictive)
        and ``num_data`` gives ``N``.
    prior_loc, prior_scale : float
        Location and scale of the Normal prior on ``mu``.
    noise_scale : float
        Known standard deviation of each observation.
    num_data : int, optional
        Number of observations when ``x`` is ``None``.

    Returns
    -------
    torch.Tensor
        The sampled (or conditioned) value of ``mu``.
    """
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n = num_data
        ref = torch.zeros(())
    else:
        n = x.shape[-1]
        ref = x
    loc = ref.new_tensor(prior_loc)
    mu = pyro.sample("mu", dist.Normal(loc, ref.new_tensor(prior_scale)))
    with pyro.plate("data", n, dim=-1):
        pyro.sample("x", dist.Normal(mu, ref.new_tensor(noise_scale)), obs=x)
    return mu


def load_data(num_data: int = _N) -> dict[str, torch.Tensor]:
    """Simulated default data set.

    Parameters
    ----------
    num_data : int
        Number of draws (default 20).

    Returns
    -------
    dict
        ``{"x": tensor of shape (num_data,)}`` in ``torch.get_default_dtype()``.
    """
    gen = torch.Generator().manual_seed(_SEED)
    x = TRUE_MU + torch.randn(num_data, generator=gen, dtype=torch.float64)
    return {"x": x.to(torch.get_default_dtype())}


def _posterior_params(
    x: torch.Tensor, prior_loc: float, prior_scale: float, noise_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    prior_prec = 1.0 / prior_scale**2
    noise_prec = 1.0 / noise_scale**2
    post_prec = prior_prec + n * noise_prec
    post_loc = (prior_loc * prior_prec + x.sum(-1) * noise_prec) / post_prec
    return post_loc, x.new_tensor(post_prec).rsqrt()


def exact_posterior(
    x: torch.Tensor,
    prior_loc: float = 0.0,
    prior_scale: float = 2.0,
    noise_scale: float = 1.0,
) -> dict[str, torch.distributions.Distribution]:
    """Exact posterior ``p(mu | x)``.

    Returns
    -------
    dict
        ``{"mu": torch.distributions.Normal}`` in the dtype and on the device of ``x``.
    """
    loc, scale = _posterior_params(x, prior_loc, prior_scale, noise_scale)
    return {"mu": dist.Normal(loc, scale)}


def log_evidence(
    x: torch.Tensor,
    prior_loc: float = 0.0,
    prior_scale: float = 2.0,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    r"""Exact log marginal likelihood :math:`\log p(x)`.

    Evaluates :math:`\log \mathcal{N}(x; m_0 \mathbf{1}, s^2 I + s_0^2 \mathbf{1}\mathbf{1}^\top)`
    in closed form (O(N)).

    Returns
    -------
    torch.Tensor
        Scalar, in the dtype and on the device of ``x``.
    """
    n = x.shape[-1]
    s2 = noise_scale**2
    t2 = prior_scale**2
    r = x - prior_loc
    denom = s2 + n * t2
    # det(s2 I + t2 11^T) = s2^(n-1) (s2 + n t2)
    logdet = (n - 1) * math.log(s2) + math.log(denom)
    # (s2 I + t2 11^T)^{-1} = (I - t2 11^T / denom) / s2
    quad = (r.pow(2).sum(-1) - t2 * r.sum(-1).pow(2) / denom) / s2
    return -0.5 * (n * math.log(2 * math.pi) + logdet + quad)
