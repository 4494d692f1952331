r"""Bayesian linear regression with known noise on the diabetes data (conjugate).

The model is

.. math::

    \beta &\sim \mathcal{N}(0, s_0^2 I_D), \\
    y_i \mid \beta &\sim \mathcal{N}(x_i^\top \beta, s^2), \qquad i = 1, \dots, N,

with prior scale :math:`s_0` (``prior_scale``) and a *known* noise scale :math:`s`
(``noise_scale``; a fixed constant of the model, not estimated). The design matrix ``X`` is
passed in whole; its first column is the constant 1, so ``beta[0]`` is the intercept and
``beta[1:]`` are the slopes. The observations live in a ``pyro.plate`` named ``"data"``.

Sites
-----
``"beta"``
    latent, one vector site of shape ``(D,)`` (``.to_event(1)``), intercept included.
``"y"``
    observed, shape ``(N,)``.

Exact posterior and evidence
----------------------------
The posterior is Gaussian (Bishop, 2006, *Pattern Recognition and Machine Learning*,
sec. 3.3.1, eqs. 3.53-3.54):

.. math::

    \beta \mid y \sim \mathcal{N}(m_N, S_N), \qquad
    S_N^{-1} = s_0^{-2} I + s^{-2} X^\top X, \qquad m_N = s^{-2} S_N X^\top y,

and it is strongly correlated here (the diabetes serum measurements ``s1`` and ``s2`` have
correlation 0.90). The marginal likelihood is :math:`y \sim \mathcal{N}(0, s^2 I + s_0^2 X
X^\top)` (Bishop, 2006, sec. 3.5.1; Rasmussen & Williams, 2006, *Gaussian Processes for
Machine Learning*, eq. 2.30). Both are computed in float64 through Cholesky factors and
returned in the dtype of the data.

Default data
------------
The diabetes data of Efron, Hastie, Johnstone & Tibshirani (2004), "Least Angle Regression",
*Annals of Statistics* 32(2), as bundled with scikit-learn (``sklearn.datasets.load_diabetes``,
raw ``scaled=False`` version): N = 442 patients, 10 baseline features (age, sex, bmi, bp,
s1-s6), target a measure of disease progression one year later. Each feature and the target
are standardized to mean 0 and standard deviation 1 (population sd, ``ddof=0``), and a column
of ones is prepended, so ``X`` is 442 x 11 (see :data:`COLUMNS`).

``noise_scale`` defaults to 0.7: the ordinary-least-squares residual standard deviation on
this standardized scale is 0.7032 (residual sum of squares / (442 - 11)), rounded to one
decimal. ``prior_scale`` defaults to 1.0, one standard deviation of the target per standard
deviation of a feature.

Examples
--------
>>> from ppl_vi.models import bayes_linear_regression as blr
>>> data = blr.load_data()
>>> data["X"].shape, data["y"].shape
(torch.Size([442, 11]), torch.Size([442]))
>>> post = blr.exact_posterior(**data)["beta"]   # MultivariateNormal over 11 coefficients
>>> logz = blr.log_evidence(**data)
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "model",
    "load_data",
    "exact_posterior",
    "log_evidence",
    "COLUMNS",
    "NOISE_SCALE",
    "PRIOR_SCALE",
]

#: Names of the columns of the default design matrix ``X``.
COLUMNS = ("intercept", "age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")

#: Default known noise scale (OLS residual sd 0.7032 on the standardized scale, rounded).
NOISE_SCALE = 0.7

#: Default prior scale of every coefficient.
PRIOR_SCALE = 1.0


def model(
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    prior_scale: float = PRIOR_SCALE,
    noise_scale: float = NOISE_SCALE,
) -> torch.Tensor:
    """Linear regression with a Gaussian prior and known Gaussian noise.

    Parameters
    ----------
    X : torch.Tensor
        Design matrix, shape ``(N, D)`` (include a column of ones for an intercept).
    y : torch.Tensor, optional
        Targets, shape ``(N,)``; sampled when ``None``.
    prior_scale : float
        Standard deviation of the iid Normal prior on each coefficient.
    noise_scale : float
        Known standard deviation of the observation noise.

    Returns
    -------
    torch.Tensor
        The sampled (or conditioned) coefficient vector ``beta``.
    """
    n, d = X.shape[-2], X.shape[-1]
    beta = pyro.sample("beta", dist.Normal(X.new_zeros(d), X.new_tensor(prior_scale)).to_event(1))
    with pyro.plate("data", n, dim=-1):
        # one matrix product; a batched beta of shape (..., 1, D) (vectorized particles,
        # parallel Predictive) gives (..., 1, N), whose row dim is dropped
        eta = beta @ X.mT
        mean = eta.squeeze(-2) if eta.dim() > 1 else eta
        pyro.sample("y", dist.Normal(mean, X.new_tensor(noise_scale)), obs=y)
    return beta


def load_data(n: int | None = None) -> dict[str, torch.Tensor]:
    """Standardized diabetes data with an intercept column.

    Parameters
    ----------
    n : int, optional
        Keep only the first ``n`` rows. Standardization always uses the statistics of all
        442 rows, so coefficients mean the same thing whatever ``n`` is.

    Returns
    -------
    dict
        ``{"X": (n, 11), "y": (n,)}`` in ``torch.get_default_dtype()``.
    """
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True, scaled=False)
    features = (features - features.mean(0)) / features.std(0)
    target = (target - target.mean()) / target.std()
    design = np.column_stack([np.ones(len(target)), features])
    if n is not None:
        design, target = design[:n], target[:n]
    dtype = torch.get_default_dtype()
    return {
        "X": torch.as_tensor(design, dtype=torch.float64).to(dtype),
        "y": torch.as_tensor(target, dtype=torch.float64).to(dtype),
    }


def exact_posterior(
    X: torch.Tensor,
    y: torch.Tensor,
    prior_scale: float = PRIOR_SCALE,
    noise_scale: float = NOISE_SCALE,
) -> dict[str, torch.distributions.Distribution]:
    """Exact Gaussian posterior of the coefficients.

    Returns
    -------
    dict
        ``{"beta": torch.distributions.MultivariateNormal}`` of dimension ``D``, in the dtype and
        on the device of ``X``.
    """
    X64, y64 = X.double(), y.double()
    d = X.shape[-1]
    precision = (
        X64.T @ X64 / noise_scale**2
        + torch.eye(d, dtype=torch.float64, device=X.device) / prior_scale**2
    )
    prec_tril = torch.linalg.cholesky(precision)
    cov = torch.cholesky_inverse(prec_tril)
    mean = torch.cholesky_solve((X64.T @ y64 / noise_scale**2).unsqueeze(-1), prec_tril)
    scale_tril = torch.linalg.cholesky(cov)
    return {
        "beta": dist.MultivariateNormal(
            mean.squeeze(-1).to(X.dtype), scale_tril=scale_tril.to(X.dtype)
        )
    }


def log_evidence(
    X: torch.Tensor,
    y: torch.Tensor,
    prior_scale: float = PRIOR_SCALE,
    noise_scale: float = NOISE_SCALE,
) -> torch.Tensor:
    """Exact log marginal likelihood ``log N(y; 0, noise_scale^2 I + prior_scale^2 X X^T)``.

    Computed in float64 with an N x N Cholesky factorization.

    Returns
    -------
    torch.Tensor
        Scalar, in the dtype and on the device of ``y``.
    """
    X64, y64 = X.double(), y.double()
    n = X.shape[-2]
    cov = prior_scale**2 * (X64 @ X64.T) + noise_scale**2 * torch.eye(
        n, dtype=torch.float64, device=X.device
    )
    marginal = torch.distributions.MultivariateNormal(
        torch.zeros(n, dtype=torch.float64, device=X.device), covariance_matrix=cov
    )
    return marginal.log_prob(y64).to(y.dtype)
