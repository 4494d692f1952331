"""Plots and checks built on matplotlib and ArviZ."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from matplotlib.figure import Figure

from ppl_vi.predictive import (  # noqa: F401 - public names of this module
    add_posterior_predictive,
    pointwise_log_likelihood,
    posterior_predictive,
    site_draws,
    traces_per_draw,
)
from ppl_vi.stats import KHAT_BAD, KHAT_GOOD, psis  # noqa: F401 - public names of this module
from ppl_vi.stats import arviz as _arviz


def plot_losses(losses, path: str | os.PathLike | None = None, title: str = "Training loss"):
    """Plot the loss (-ELBO) per step with a running mean; save to ``path`` when given.

    Returns the :class:`matplotlib.figure.Figure` (made without pyplot, so it works on machines
    without a display).
    """
    losses = np.asarray(losses, dtype=float)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.75", lw=0.6, label="loss per step")
    window = max(1, min(100, len(losses) // 20))
    if len(losses) >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", lw=1.5, label=f"mean of {window} steps")
    if len(losses):
        lo, hi = np.percentile(losses, [1, 99])
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("step")
    ax.set_ylabel("loss = -ELBO (nats)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# ---------------------------------------------------------------------------------- PSIS
def khat_verdict(khat: float) -> str:
    """A plain-language reading of a PSIS Pareto k-hat (Yao et al., 2018).

    >>> khat_verdict(0.3)
    'k-hat 0.3 < 0.5: the approximation is close to the posterior; estimates can be trusted'
    """
    if np.isnan(khat) or khat == np.inf:
        return (
            f"k-hat {khat}: could not be estimated (too few draws, or non-finite importance "
            "weights); do not read it as good"
        )
    if khat < KHAT_GOOD:
        return (
            f"k-hat {khat:.3g} < {KHAT_GOOD}: the approximation is close to the posterior; "
            "estimates can be trusted"
        )
    if khat < KHAT_BAD:
        return (
            f"k-hat {khat:.3f} in [{KHAT_GOOD}, {KHAT_BAD}): usable with care; PSIS-corrected "
            "estimates (psis_resample) are more reliable than the raw draws"
        )
    return (
        f"k-hat {khat:.3f} >= {KHAT_BAD}: the approximation is far from the posterior in its "
        "tails; do not trust its means and variances, and compare with NUTS"
    )


def psis_resample(
    result, num_samples: int = 1000, num_proposals: int | None = None, seed: int | None = 0
) -> dict:
    """Importance-corrected draws: guide draws resampled with PSIS weights.

    ``num_proposals`` draws (default ``4 * num_samples``) come from the fitted guide; their
    Pareto-smoothed weights p(x, z)/q(z) pick ``num_samples`` of them with replacement
    (Yao et al., 2018, sec. 3). The k-hat says how far to trust the result; with k-hat >= 0.7
    a ``UserWarning`` says so.

    Returns
    -------
    dict
        Site name -> tensor ``(num_samples, *shape)``, as :meth:`ppl_vi.VIResult.sample`.
    """
    num_proposals = num_proposals or 4 * num_samples
    samples, log_p, log_q = result._draws(num_proposals, seed)
    lw, khat = psis((log_p - log_q).detach().cpu().numpy())
    if khat >= KHAT_BAD:
        warnings.warn("PSIS resampling with " + khat_verdict(khat), UserWarning, stacklevel=2)
    rng = np.random.default_rng(seed)
    prob = np.exp(lw - lw.max())
    idx = torch.as_tensor(rng.choice(len(lw), size=num_samples, p=prob / prob.sum()))
    return {k: v[idx.to(v.device)] for k, v in samples.items()}


# ------------------------------------------------------------------------ LOO
def loo(result, num_samples: int = 1000, seed: int | None = 0):
    """PSIS-LOO expected log predictive density of a fit (VI or NUTS).

    For a :class:`~ppl_vi.nuts.NUTSResult` this is :func:`arviz.loo` on its draws. For a VI fit
    the draws come from q, so the leave-one-out ratios carry the importance correction of
    Magnusson et al. (2019): :math:`r_{is} \\propto p(x, z_s) / (q(z_s)\\, p(y_i \\mid z_s))`,
    Pareto-smoothed per datum. The model must have one observed site whose plate dims index
    the data.

    Returns
    -------
    pandas.Series
        ``elpd_loo``, ``se``, ``p_loo``, ``n_data``, ``max_khat`` and ``n_bad_khat`` (data
        with k-hat >= 0.7, whose LOO terms are unreliable).

    References
    ----------
    Vehtari, A., Gelman, A. & Gabry, J. (2017). Practical Bayesian model evaluation using
    leave-one-out cross-validation and WAIC. Statistics and Computing.
    Magnusson, M., Andersen, M. R., Jonasson, J. & Vehtari, A. (2019). Bayesian leave-one-out
    cross-validation for large data. ICML.
    """
    import pandas as pd
    from scipy.special import logsumexp

    if not hasattr(result, "_draws"):  # MCMC draws: ArviZ's PSIS-LOO
        az = _arviz()
        idata = add_posterior_predictive(result.to_inference_data(), result)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            elpd = az.loo(idata, pointwise=True)
        khats = np.asarray(elpd.pareto_k).ravel()
        return pd.Series(
            {
                "elpd_loo": float(elpd.elpd_loo),
                "se": float(elpd.se),
                "p_loo": float(elpd.p_loo),
                "n_data": int(elpd.n_data_points),
                "max_khat": float(khats.max()),
                "n_bad_khat": int((khats >= KHAT_BAD).sum()),
            }
        )
    samples, log_p, log_q = result._draws(num_samples, seed)
    log_ratio = (log_p - log_q).detach().cpu().double().numpy()
    loglik = pointwise_log_likelihood(
        result.model, samples, result.model_args, result.model_kwargs, result.info
    )
    if len(loglik) != 1:
        raise ValueError(
            f"loo needs a model with exactly one observed site (got {sorted(loglik)}); "
            "combine the observations or compute LOO per site with pointwise_log_likelihood"
        )
    ll = next(iter(loglik.values()))
    ll = ll.reshape(len(ll), -1)  # (S, N)
    num, n_data = ll.shape
    elpd = np.empty(n_data)
    lppd = np.empty(n_data)
    khats = np.empty(n_data)
    base = np.zeros(num) if log_ratio is None else log_ratio
    # Full-posterior weights (for lppd): PSIS of p/q for VI, uniform for MCMC.
    lw_full = np.full(num, -np.log(num)) if log_ratio is None else psis(base)[0]
    for i in range(n_data):
        lw, khats[i] = psis(base - ll[:, i])
        elpd[i] = logsumexp(lw + ll[:, i])
        lppd[i] = logsumexp(lw_full + ll[:, i])
    return pd.Series(
        {
            "elpd_loo": elpd.sum(),
            "se": float(np.sqrt(n_data * elpd.var())),
            "p_loo": float((lppd - elpd).sum()),
            "n_data": n_data,
            "max_khat": float(khats.max()),
            "n_bad_khat": int((khats >= KHAT_BAD).sum()),
        }
    )


# ------------------------------------------------------------------------ dispersion
def underdispersion(table, threshold: float = 0.9) -> list[str]:
    """Parameters whose VI sd is below ``threshold`` times the reference sd.

    ``table`` is a :attr:`ppl_vi.compare.Report.table`. Mean-field VI minimises KL(q || p),
    which under-estimates posterior variances (Blei et al., 2017, sec. 2.4); a ratio this low
    means credible intervals from the fit are too narrow.
    """
    low = table[table["sd_ratio"] < threshold]
    return [
        f"{name}: VI sd is {row.sd_ratio:.2f}x the reference sd (under-dispersed; intervals "
        "too narrow)"
        for name, row in low.iterrows()
    ]
