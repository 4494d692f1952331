r"""Coin flips with a Beta prior on the success probability (conjugate).

The model is

.. math::

    p &\sim \mathrm{Beta}(a, b), \\
    y_i \mid p &\sim \mathrm{Bernoulli}(p), \qquad i = 1, \dots, n,

with prior concentrations :math:`a` (``alpha``) and :math:`b` (``beta``). The flips live in a
``pyro.plate`` named ``"data"``.

Sites
-----
``"p"``
    latent, scalar in (0, 1).
``"y"``
    observed, shape ``(n,)``, values 0.0 / 1.0.

Exact posterior and evidence
----------------------------
With :math:`k = \sum_i y_i` successes the posterior is
:math:`\mathrm{Beta}(a + k, b + n - k)` and the log marginal likelihood of the *sequence* is
:math:`\log B(a + k, b + n - k) - \log B(a, b)` (Gelman et al., 2013, *Bayesian Data
Analysis*, 3rd ed., secs. 2.1 and 2.4; Murphy, 2012, *Machine Learning: A Probabilistic
Perspective*, secs. 3.3 and 5.3.2).

Default data
------------
:func:`load_data` returns ``n = 50`` deterministic flips with exactly ``k = 18`` ones: a vector
of 18 ones followed by 32 zeros, shuffled by ``torch.randperm`` with
``torch.Generator().manual_seed(1234)``. The default prior is ``Beta(2, 2)``, so the exact
posterior is ``Beta(20, 34)`` (mean 0.370).

Examples
--------
>>> import pyro
>>> from ppl_vi.models import beta_bernoulli as bb
>>> data = bb.load_data()
>>> int(data["y"].sum())
18
>>> round(float(bb.exact_posterior(**data)["p"].mean), 3)   # Beta(20, 34)
0.37
>>> logz = bb.log_evidence(**data)
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["model", "load_data", "exact_posterior", "log_evidence"]

_SEED = 1234
_N = 50
_K = 18


def model(
    y: torch.Tensor | None = None,
    alpha: float = 2.0,
    beta: float = 2.0,
    num_data: int | None = None,
) -> torch.Tensor:
    """Beta-Bernoulli model.

    Parameters
    ----------
    y : torch.Tensor, optional
        Flips as floats 0.0 / 1.0, shape ``(n,)``. When ``None`` they are sampled and
        ``num_data`` gives ``n``.
    alpha, beta : float
        Concentrations of the Beta prior on ``p``.
    num_data : int, optional
        Number of flips when ``y`` is ``None``.

    Returns
    -------
    torch.Tensor
        The sampled (or conditioned) value of ``p``.
    """
    if y is None:
        if num_data is None:
            raise ValueError("pass either y or num_data")
        n = num_data
        ref = torch.zeros(())
    else:
        n = y.shape[-1]
        ref = y
    p = pyro.sample("p", dist.Beta(ref.new_tensor(alpha), ref.new_tensor(beta)))
    with pyro.plate("data", n, dim=-1):
        pyro.sample("y", dist.Bernoulli(probs=p), obs=y)
    return p


def load_data() -> dict[str, torch.Tensor]:
    """Default data: 50 deterministic flips with 18 ones.

    Returns
    -------
    dict
        ``{"y": tensor of shape (50,)}`` with values 0.0 / 1.0 in ``torch.get_default_dtype()``.
    """
    gen = torch.Generator().manual_seed(_SEED)
    flips = torch.cat([torch.ones(_K), torch.zeros(_N - _K)])
    perm = torch.randperm(_N, generator=gen)
    return {"y": flips[perm].to(torch.get_default_dtype())}


def exact_posterior(
    y: torch.Tensor, alpha: float = 2.0, beta: float = 2.0
) -> dict[str, torch.distributions.Distribution]:
    """Exact posterior ``p(p | y) = Beta(alpha + k, beta + n - k)``.

    Returns
    -------
    dict
        ``{"p": torch.distributions.Beta}`` in the dtype and on the device of ``y``.
    """
    n = y.shape[-1]
    k = y.sum(-1)
    return {"p": dist.Beta(alpha + k, beta + n - k)}


def _log_beta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def log_evidence(y: torch.Tensor, alpha: float = 2.0, beta: float = 2.0) -> torch.Tensor:
    """Exact log marginal likelihood ``log B(alpha + k, beta + n - k) - log B(alpha, beta)``.

    Returns
    -------
    torch.Tensor
        Scalar, in the dtype and on the device of ``y``.
    """
    n = y.shape[-1]
    k = y.sum(-1)
    a = y.new_tensor(alpha)
    b = y.new_tensor(beta)
    return _log_beta(a + k, b + n - k) - _log_beta(a, b)
