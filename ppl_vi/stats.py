"""Importance-sampling statistics shared by results and diagnostics (PSIS via ArviZ)."""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = [
    "KHAT_BAD",
    "KHAT_GOOD",
    "MIN_PSIS_DRAWS",
    "arviz",
    "expected_calibration_error",
    "khat_se",
    "khat_verdict",
    "psis",
    "resample_indices",
]

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
    if np.ptp(lw) <= 1e-9 * max(1.0, float(np.abs(lw).max())):
        # q = p: every weight equal up to float rounding, no tail at all
        return np.full_like(lw, -np.log(lw.size)), float("-inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow inside ArviZ's tail fit
        smoothed, khat = arviz().psislw(lw.copy(), reff=1.0)
    return np.asarray(smoothed), float(khat)


def resample_indices(smoothed_log_weights, num: int, seed: int | None) -> np.ndarray:
    """``num`` indices drawn with replacement with probabilities ``exp(smoothed_log_weights)``
    (normalised here): importance resampling of PSIS-weighted draws."""
    lw = np.asarray(smoothed_log_weights, dtype=np.float64)
    prob = np.exp(lw - lw.max())
    return np.random.default_rng(seed).choice(len(lw), size=num, p=prob / prob.sum())


def _normalised(lw: np.ndarray) -> np.ndarray:
    finite = np.where(np.isnan(lw), -np.inf, lw)
    top = finite.max()
    if not np.isfinite(top):
        return np.full_like(lw, -np.log(lw.size))
    return finite - (top + np.log(np.exp(finite - top).sum()))


#: How the k-hat's Monte Carlo spread shrinks with the number of draws S: as S ** -KHAT_RATE.
#: Measured on eight schools (mean-field fit, 8 seeds each): sd 0.112 at S = 2000, 0.085 at
#: 16000, 0.062 at 64000, 0.036 at 256000, a rate of 0.23 (the tail fit uses ~3 sqrt(S)
#: draws, so about 1/4 is expected).
KHAT_RATE = 0.25


def khat_se(log_weights, batches: int = 8) -> float:
    """Monte Carlo standard error of the k-hat of ``log_weights`` (batch method).

    The draws are split into ``batches`` equal parts; the spread of their k-hats, scaled by
    ``batches ** -KHAT_RATE``, estimates the spread of the k-hat of all draws. NaN when a part
    has fewer than :data:`MIN_PSIS_DRAWS` draws or its k-hat is not finite.
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    size = lw.size // batches
    if size < MIN_PSIS_DRAWS or not np.isfinite(lw).all():
        return math.nan
    ks = np.asarray([psis(lw[b * size : (b + 1) * size])[1] for b in range(batches)])
    if (ks == -np.inf).all():  # every batch's weights are equal: k-hat is exactly -inf
        return 0.0
    if not np.isfinite(ks).all():
        return math.nan
    return float(ks.std(ddof=1) * batches**-KHAT_RATE)


_BANDS = (
    (KHAT_GOOD, "the approximation is close to the posterior; estimates can be trusted"),
    (
        KHAT_BAD,
        "usable with care; PSIS-corrected estimates (psis_resample) are more reliable than "
        "the raw draws",
    ),
    (
        math.inf,
        "the approximation is far from the posterior in its tails; do not trust its means and "
        "variances, and compare with NUTS",
    ),
)


def khat_verdict(khat: float, se: float | None = None) -> str:
    """A plain-language reading of a PSIS Pareto k-hat (Yao et al., 2018).

    With its Monte Carlo standard error ``se``, the verdict is that of the upper end of
    ``khat +- 2 se`` (the conservative reading, and stable across seeds), and a k-hat whose
    interval straddles 0.5 or 0.7 says so.

    >>> khat_verdict(0.3)
    'k-hat 0.3 < 0.5: the approximation is close to the posterior; estimates can be trusted'
    >>> khat_verdict(0.48, 0.02)[:46]
    'k-hat 0.48 +- 0.02 (0.44 to 0.52, across 0.5):'
    """
    if khat is None or np.isnan(khat) or khat == np.inf:
        return (
            f"k-hat {khat}: could not be estimated (too few draws, a point-mass guide, or "
            "non-finite importance weights); do not read it as good"
        )
    if se is None or not np.isfinite(se):
        for bound, text in _BANDS:
            if khat < bound:
                if bound == KHAT_GOOD:
                    return f"k-hat {khat:.3g} < {KHAT_GOOD}: {text}"
                if bound == KHAT_BAD:
                    return f"k-hat {khat:.3f} in [{KHAT_GOOD}, {KHAT_BAD}): {text}"
                return f"k-hat {khat:.3f} >= {KHAT_BAD}: {text}"
    low, high = khat - 2 * se, khat + 2 * se
    crossed = " and ".join(str(b) for b in (KHAT_GOOD, KHAT_BAD) if low < b <= high)
    span = f"({low:.2f} to {high:.2f}" + (f", across {crossed})" if crossed else ")")
    text = next(t for b, t in _BANDS if high < b)
    return f"k-hat {khat:.2f} +- {se:.2f} {span}: {text}"


def expected_calibration_error(probs, labels, num_bins: int = 10, return_bins: bool = False):
    r"""Expected calibration error of predicted class probabilities (Guo et al., 2017).

    Each prediction's confidence is its top-class probability :math:`\hat p_n = \max_c
    p_{nc}` and its prediction that class :math:`\hat y_n`. The confidences are binned into
    ``num_bins`` equal-width intervals :math:`B_m = ((m-1)/M, m/M]` (a confidence on an edge
    goes to the lower bin), and

    .. math::

        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}\,
            \big|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\big|, \qquad
        \mathrm{acc}(B_m) = \frac{1}{|B_m|} \sum_{n \in B_m} [\hat y_n = y_n], \quad
        \mathrm{conf}(B_m) = \frac{1}{|B_m|} \sum_{n \in B_m} \hat p_n,

    with :math:`M` = ``num_bins``, :math:`N` predictions and labels :math:`y_n`; empty bins
    add nothing. It is 0 for a perfectly calibrated predictor, whose confidence equals its
    accuracy in every bin.

    Parameters
    ----------
    probs : array-like or torch.Tensor, shape (N,) or (N, C)
        Binary: the probability of class 1 (class 0 has ``1 - p``). Multiclass: one row of
        class probabilities per prediction (rows sum to 1).
    labels : array-like or torch.Tensor, shape (N,)
        True classes ``0, ..., C - 1`` (0/1, as integers or floats, for binary).
    num_bins : int, default 10
        Number of equal-width confidence bins :math:`M`.
    return_bins : bool, default False
        Also return the reliability diagram's data.

    Returns
    -------
    float, or (float, dict)
        The ECE; with ``return_bins``, also ``{"edges": (M + 1,), "count": (M,),
        "accuracy": (M,), "confidence": (M,)}`` (NaN accuracy and confidence for empty bins).

    References
    ----------
    Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. (2017). On calibration of modern neural
    networks. ICML.

    Naeini, M. P., Cooper, G. F. & Hauskrecht, M. (2015). Obtaining well calibrated
    probabilities using Bayesian binning. AAAI.

    Examples
    --------
    Confidences 0.9, 0.9 (one right), 0.8 and 0.6 (right) in bins of width 0.2:
    :math:`\tfrac{2}{4}|0.5 - 0.9| + \tfrac14|1 - 0.8| + \tfrac14|1 - 0.6| = 0.35`.

    >>> round(expected_calibration_error([0.9, 0.9, 0.2, 0.6], [1, 0, 0, 1], num_bins=5), 3)
    0.35
    """
    p = _as_numpy(probs, "probs")
    y = _as_numpy(labels, "labels")
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1 (got num_bins={num_bins!r})")
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)  # rows sum to 1 up to rounding
    elif p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(
            "probs must have shape (N,) (probability of class 1) or (N, C) with C >= 2 (got "
            f"shape {tuple(p.shape)})"
        )
    n, num_classes = p.shape
    if n == 0:
        raise ValueError("probs must hold at least one prediction (got N = 0)")
    if y.shape != (n,):
        raise ValueError(
            f"labels must have shape ({n},), one per row of probs (got shape {tuple(y.shape)})"
        )
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be probabilities in [0, 1] (got values outside or NaN)")
    if np.abs(p.sum(1) - 1).max() > 1e-6:
        raise ValueError(
            "each row of probs (N, C) must sum to 1 (got row sums off by up to "
            f"{np.abs(p.sum(1) - 1).max():.3g}); pass softmax outputs"
        )
    if (
        not np.all(np.isfinite(y))
        or np.any(y != np.round(y))
        or y.min() < 0
        or y.max() >= num_classes
    ):
        raise ValueError(
            f"labels must be class indices 0, ..., {num_classes - 1} (got values from "
            f"{y.min():g} to {y.max():g})"
        )
    confidence = p.max(1)
    correct = p.argmax(1) == y.astype(np.int64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.digitize(confidence, edges[1:-1], right=True)  # bin m: edges[m] < c <= edges[m+1]
    count = np.bincount(which, minlength=num_bins).astype(np.float64)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=num_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=num_bins)
    ece = float(np.abs(hits - conf_sum).sum() / n)  # sum_m |B_m|/N |acc_m - conf_m|
    if not return_bins:
        return ece
    with np.errstate(invalid="ignore"):  # an empty bin's 0 / 0 is its NaN
        bins = {
            "edges": edges,
            "count": count,
            "accuracy": hits / count,
            "confidence": conf_sum / count,
        }
    return ece, bins


def _as_numpy(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be an array or tensor of numbers (got {type(value).__name__})"
        ) from None
