r"""Bayesian logistic regression on the Wisconsin breast-cancer data.

The model is

.. math::

    \alpha &\sim \mathcal{N}(0, s_0^2), \\
    \beta &\sim \mathcal{N}(0, s_0^2 I_D), \\
    y_i \mid \alpha, \beta &\sim \mathrm{Bernoulli}\big(\operatorname{logit}^{-1}
        (\alpha + x_i^\top \beta)\big), \qquad i = 1, \dots, N,

with prior scale :math:`s_0` (``prior_scale``, default 1.0). The observations live in a
``pyro.plate`` named ``"data"`` that can subsample: with ``subsample_size=B`` each call uses
``B`` random rows and Pyro scales their log likelihood by ``N / B``, so mini-batch fits work
unchanged.

Sites
-----
``"alpha"``
    latent intercept, scalar.
``"beta"``
    latent coefficients, one vector site of shape ``(D,)`` (``.to_event(1)``).
``"y"``
    observed, shape ``(N,)`` (or ``(B,)`` when subsampling), values 0.0 / 1.0.

No exact posterior is known for this model (the logistic likelihood has no conjugate prior),
so the module has no ``exact_posterior`` / ``log_evidence``; compare against NUTS instead.

Default data
------------
The Wisconsin Diagnostic Breast Cancer data of Street, Wolberg & Mangasarian (1993), "Nuclear
feature extraction for breast tumor diagnosis", *Proc. SPIE* 1905, as bundled with
scikit-learn (``sklearn.datasets.load_breast_cancer``): N = 569 tumours, D = 30 features,
``y = 1`` for benign (357) and ``y = 0`` for malignant (212), scikit-learn's coding. Each
feature is standardized to mean 0 and standard deviation 1 (population sd, ``ddof=0``). The
classes are close to linearly separable, so the prior (scale 1 on the standardized scale) is
what keeps the posterior proper and well-conditioned.

Examples
--------
>>> import pyro
>>> from ppl_vi.models import logistic_regression as lr
>>> data = lr.load_data()
>>> data["X"].shape
torch.Size([569, 30])
>>> trace = pyro.poutine.trace(lr.model).get_trace(**data, subsample_size=32)
>>> trace.nodes["y"]["value"].shape
torch.Size([32])
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["model", "load_data", "PRIOR_SCALE"]

#: Default prior scale of the intercept and of every coefficient.
PRIOR_SCALE = 1.0


def model(
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    prior_scale: float = PRIOR_SCALE,
    subsample_size: int | None = None,
) -> torch.Tensor:
    """Logistic regression with independent Normal priors.

    Parameters
    ----------
    X : torch.Tensor
        Features, shape ``(N, D)`` (no intercept column; the intercept is ``alpha``).
    y : torch.Tensor, optional
        Labels as floats 0.0 / 1.0, shape ``(N,)``; sampled when ``None``.
    prior_scale : float
        Standard deviation of the Normal priors on ``alpha`` and each entry of ``beta``.
    subsample_size : int, optional
        Mini-batch size passed to ``pyro.plate("data", N, subsample_size=...)``.

    Returns
    -------
    torch.Tensor
        The logits of the rows used (all rows, or the mini-batch).
    """
    n, d = X.shape[-2], X.shape[-1]
    scale = X.new_tensor(prior_scale)
    alpha = pyro.sample("alpha", dist.Normal(X.new_zeros(()), scale))
    beta = pyro.sample("beta", dist.Normal(X.new_zeros(d), scale).to_event(1))
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        if subsample_size is None:  # all rows, in order: no copy of the data
            X_batch, y_batch = X, y
        else:
            X_batch = X.index_select(-2, idx.to(X.device))
            y_batch = None if y is None else y.index_select(-1, idx.to(y.device))
        # one matrix product; a batched beta of shape (..., 1, D) (vectorized particles,
        # parallel Predictive) gives (..., 1, B), whose row dim is dropped
        eta = beta @ X_batch.mT
        logits = alpha + (eta.squeeze(-2) if eta.dim() > 1 else eta)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y_batch)
    return logits


def load_data() -> dict[str, torch.Tensor]:
    """Standardized breast-cancer data.

    Returns
    -------
    dict
        ``{"X": (569, 30), "y": (569,)}`` in ``torch.get_default_dtype()``; ``y`` is 1.0 for
        benign and 0.0 for malignant.
    """
    from sklearn.datasets import load_breast_cancer

    features, target = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    dtype = torch.get_default_dtype()
    return {
        "X": torch.as_tensor(features, dtype=torch.float64).to(dtype),
        "y": torch.as_tensor(target, dtype=torch.float64).to(dtype),
    }
