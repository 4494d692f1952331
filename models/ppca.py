r"""Probabilistic PCA with fixed loadings: exact Gaussian posterior per datum.

The model of Tipping & Bishop (1999) is

.. math::

    z_n &\sim \mathcal{N}(0, I_k), \\
    x_n \mid z_n &\sim \mathcal{N}(W z_n + \mu, \sigma^2 I_d), \qquad n = 1, \dots, N,

with loadings :math:`W \in \mathbb{R}^{d \times k}` (``W``), offset :math:`\mu` (``mu``) and
noise scale :math:`\sigma` (``sigma``) fixed model arguments, not learned, so that each local
latent :math:`z_n` has a known posterior. The data live in a ``pyro.plate`` named ``"data"``
that can subsample (``subsample_size=B``: ``B`` random rows, log densities scaled by
``N / B``). This is the simplest model on which an amortized (encoder) guide can be checked
against the exact answer.

Sites
-----
``"z"``
    latent, shape ``(N, k)`` (``(B, k)`` when subsampling), one vector site per datum
    (``.to_event(1)``) in the plate ``"data"``.
``"x"``
    observed, shape ``(N, d)``, one vector site per datum (``.to_event(1)``).

Exact posterior and evidence
----------------------------
With :math:`M = W^\top W + \sigma^2 I_k`, the posterior of each datum's latent is
:math:`z_n \mid x_n \sim \mathcal{N}\big(M^{-1} W^\top (x_n - \mu),\ \sigma^2 M^{-1}\big)`, and
marginally :math:`x_n \sim \mathcal{N}(\mu, W W^\top + \sigma^2 I_d)` (Tipping & Bishop, 1999,
sec. 3.2 and eq. 6). :func:`exact_posterior` returns the former (a batch of
``MultivariateNormal``, one per datum) and :func:`log_evidence` sums the latter over data.

Default data
------------
:data:`W_DEFAULT` has orthogonal columns of lengths 2 and 1 (an orthonormal ``5 x 2`` basis from
a fixed-seed QR decomposition, times ``diag(2, 1)``), so :math:`M = \operatorname{diag}(4 +
\sigma^2, 1 + \sigma^2)` is diagonal and so is the exact posterior covariance: a mean-field
(diagonal Gaussian) guide then contains the exact posterior. :data:`MU_DEFAULT` is a fixed
``N(0, 1)`` draw, :data:`SIGMA_DEFAULT` = 0.5. :func:`load_data` simulates ``n`` data in float64
from ``torch.Generator().manual_seed(...)`` with one seed for ``"train"`` and another for
``"test"``, then casts to the default dtype.

References
----------
Tipping, M. E. & Bishop, C. M. (1999). Probabilistic principal component analysis. *Journal
of the Royal Statistical Society B* 61(3), 611-622.

Examples
--------
>>> import pyro
>>> from ppl_vi.models import ppca
>>> data = ppca.load_data(n=100)
>>> sorted(data)
['W', 'mu', 'sigma', 'x']
>>> trace = pyro.poutine.trace(ppca.model).get_trace(**data, subsample_size=10)
>>> trace.nodes["z"]["value"].shape, trace.nodes["x"]["value"].shape
(torch.Size([10, 2]), torch.Size([10, 5]))
>>> ppca.exact_posterior(**data)["z"].mean.shape
torch.Size([100, 2])
>>> logz = ppca.log_evidence(**data)                    # scalar tensor
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "model",
    "load_data",
    "exact_posterior",
    "log_evidence",
    "W_DEFAULT",
    "MU_DEFAULT",
    "SIGMA_DEFAULT",
]

_D, _K = 5, 2
_SEEDS = {"train": 19990, "test": 19991}
_PARAM_SEED = 1999


def _default_params() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(_PARAM_SEED)
    q, _ = torch.linalg.qr(torch.randn(_D, _K, generator=gen, dtype=torch.float64))
    w = q * torch.tensor([2.0, 1.0], dtype=torch.float64)
    mu = torch.randn(_D, generator=gen, dtype=torch.float64)
    return w, mu


#: Default loadings, ``(5, 2)``, float64: orthogonal columns of lengths 2 and 1.
#: Default offset ``(5,)``, float64.
W_DEFAULT, MU_DEFAULT = _default_params()

#: Default noise scale.
SIGMA_DEFAULT = 0.5


def _params(ref: torch.Tensor, W, mu, sigma):
    W = W_DEFAULT if W is None else W
    mu = MU_DEFAULT if mu is None else mu
    sigma = SIGMA_DEFAULT if sigma is None else sigma
    as_ref = {"dtype": ref.dtype, "device": ref.device}
    return (
        torch.as_tensor(W).to(**as_ref),
        torch.as_tensor(mu).to(**as_ref),
        torch.as_tensor(sigma).to(**as_ref),
    )


def model(
    x: torch.Tensor | None = None,
    W: torch.Tensor | None = None,
    mu: torch.Tensor | None = None,
    sigma: float | torch.Tensor | None = None,
    subsample_size: int | None = None,
    num_data: int | None = None,
) -> torch.Tensor:
    """Probabilistic PCA with fixed ``W``, ``mu`` and ``sigma``.

    Parameters
    ----------
    x : torch.Tensor, optional
        Observations, shape ``(N, d)``. When ``None`` the model samples them (prior predictive,
        in the default dtype) and ``num_data`` gives ``N``.
    W : torch.Tensor, optional
        Loadings ``(d, k)``; default :data:`W_DEFAULT`.
    mu : torch.Tensor, optional
        Offset ``(d,)``; default :data:`MU_DEFAULT`.
    sigma : float or torch.Tensor, optional
        Noise standard deviation; default :data:`SIGMA_DEFAULT`.
    subsample_size : int, optional
        Mini-batch size passed to ``pyro.plate("data", N, subsample_size=...)``.
    num_data : int, optional
        Number of data when ``x`` is ``None``.

    Returns
    -------
    torch.Tensor
        The latent ``z`` of the rows used, ``(N, k)`` or ``(B, k)``.
    """
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n, ref = num_data, torch.zeros(())
    else:
        n, ref = x.shape[-2], x
    W, mu, sigma = _params(ref, W, mu, sigma)
    k = W.shape[-1]
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        z = pyro.sample("z", dist.Normal(ref.new_zeros(k), ref.new_ones(k)).to_event(1))
        loc = mu + z @ W.mT  # (..., B, k) @ (k, d) -> (..., B, d); broadcasts batched z
        x_batch = _rows(x, idx, subsample_size)
        pyro.sample("x", dist.Normal(loc, sigma).to_event(1), obs=x_batch)
    return z


def load_data(n: int = 1000, split: str = "train") -> dict[str, torch.Tensor]:
    """Simulated data from the default model.

    Parameters
    ----------
    n : int
        Number of data (default 1000).
    split : {"train", "test"}
        Which fixed-seed simulation; the two splits are independent draws.

    Returns
    -------
    dict
        ``{"x": (n, 5), "W": (5, 2), "mu": (5,), "sigma": ()}`` in the default dtype.
    """
    if split not in _SEEDS:
        raise ValueError(f"split must be 'train' or 'test' (got split={split!r})")
    gen = torch.Generator().manual_seed(_SEEDS[split])
    z = torch.randn(n, _K, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, _D, generator=gen, dtype=torch.float64)
    x = z @ W_DEFAULT.T + MU_DEFAULT + SIGMA_DEFAULT * eps
    dtype = torch.get_default_dtype()
    return {
        "x": x.to(dtype),
        "W": W_DEFAULT.to(dtype),
        "mu": MU_DEFAULT.to(dtype),
        "sigma": torch.tensor(SIGMA_DEFAULT, dtype=dtype),
    }


def exact_posterior(
    x: torch.Tensor,
    W: torch.Tensor | None = None,
    mu: torch.Tensor | None = None,
    sigma: float | torch.Tensor | None = None,
) -> dict[str, torch.distributions.Distribution]:
    """Exact posterior of every datum's latent.

    Returns
    -------
    dict
        ``{"z": MultivariateNormal}`` with batch shape ``(N,)`` and event shape ``(k,)``: mean
        :math:`M^{-1} W^\\top (x_n - \\mu)`, covariance :math:`\\sigma^2 M^{-1}`.
    """
    W, mu, sigma = _params(x, W, mu, sigma)
    k = W.shape[-1]
    M = W.T @ W + sigma**2 * torch.eye(k, dtype=x.dtype, device=x.device)
    M_inv = torch.linalg.inv(M)
    mean = (x - mu) @ W @ M_inv  # M_inv is symmetric: (N, k)
    cov = sigma**2 * M_inv
    return {"z": dist.MultivariateNormal(mean, covariance_matrix=cov.expand(x.shape[-2], k, k))}


def log_evidence(
    x: torch.Tensor,
    W: torch.Tensor | None = None,
    mu: torch.Tensor | None = None,
    sigma: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Exact :math:`\log p(x) = \sum_n \log \mathcal{N}(x_n; \mu, W W^\top + \sigma^2 I)`.

    Returns
    -------
    torch.Tensor
        Scalar, in the dtype and on the device of ``x``.
    """
    W, mu, sigma = _params(x, W, mu, sigma)
    d = W.shape[-2]
    cov = W @ W.T + sigma**2 * torch.eye(d, dtype=x.dtype, device=x.device)
    return dist.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x).sum(-1)


def _rows(x, idx, subsample_size):
    """The observed rows of the plate's indices: all of ``x`` (no copy) without subsampling."""
    if x is None or subsample_size is None:
        return x
    return x.index_select(-2, idx.to(x.device))
