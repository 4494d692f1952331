"""Importance-sampling statistics shared by results and diagnostics (PSIS via ArviZ)."""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["KHAT_BAD", "KHAT_GOOD", "MIN_PSIS_DRAWS", "arviz", "psis"]

#: Pareto k-hat thresholds of Yao et al. (2018): below the first the approximation is good,
#: between them usable with care, above the second unreliable.
KHAT_GOOD, KHAT_BAD = 0.5, 0.7

#: Fewest draws from which a k-hat can be estimated. ArviZ fits the generalized Pareto
#: distribution to the largest ceil(min(S / 5, 3 sqrt(S))) weights and needs at least 5 of them
#: (below that it reports k = inf), which first happens at S = 21.
MIN_PSIS_DRAWS = 21


def arviz():
    """Import ArviZ without its one-time refactoring notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz as az

    return az


def psis(log_weights) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance weights via :func:`arviz.psislw`.

    Parameters
    ----------
    log_weights : array-like, shape (S,)
        ``log p(x, z_s) - log q(z_s)`` for draws ``z_s ~ q``.

    Returns
    -------
    (numpy.ndarray, float)
        Normalised smoothed log weights (logsumexp 0) and the Pareto k-hat: ``-inf`` when all
        weights are equal (the proposal is the target), NaN with a warning when there are fewer
        than :data:`MIN_PSIS_DRAWS` draws (then the weights are normalised, not smoothed) or a
        weight is not finite.
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    if lw.size == 0:
        raise ValueError("psis needs at least one log weight (got an empty array)")
    if lw.size < MIN_PSIS_DRAWS:
        warnings.warn(
            f"k-hat needs at least {MIN_PSIS_DRAWS} draws (the Pareto tail fit needs 5 tail "
            f"draws); got {lw.size}, so k-hat is NaN and the weights are not smoothed. Use more "
            "draws (num_samples).",
            UserWarning,
            stacklevel=3,
        )
        return _normalised(lw), math.nan
    if not np.isfinite(lw).all():
        bad = int((~np.isfinite(lw)).sum())
        warnings.warn(
            f"{bad} of {lw.size} log importance weights are not finite (the model's or the "
            "guide's log density failed at those draws); k-hat is NaN",
            UserWarning,
            stacklevel=3,
        )
        return _normalised(lw), math.nan
    if np.ptp(lw) == 0:  # q = p: every weight equal, no tail at all
        return np.full_like(lw, -np.log(lw.size)), float("-inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        smoothed, khat = arviz().psislw(lw.copy(), reff=1.0)
    return np.asarray(smoothed), float(khat)


def _normalised(lw: np.ndarray) -> np.ndarray:
    finite = np.where(np.isnan(lw), -np.inf, lw)
    top = finite.max()
    if not np.isfinite(top):
        return np.full_like(lw, -np.log(lw.size))
    return finite - (top + np.log(np.exp(finite - top).sum()))
