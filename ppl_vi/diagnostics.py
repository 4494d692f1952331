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
    site_dims,
    site_draws,
)
from ppl_vi.stats import (  # noqa: F401 - public names of this module
    KHAT_BAD,
    KHAT_GOOD,
    khat_se,
    khat_verdict,
    psis,
    resample_indices,
)
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
    idx = torch.as_tensor(resample_indices(lw, num_samples, seed))
    return {k: v[idx.to(v.device)] for k, v in samples.items()}


# ------------------------------------------------------------------------ LOO
def loo(result, num_samples: int = 4000, seed: int | None = 0, var_name: str | None = None):
    r"""PSIS-LOO of a fit (VI or NUTS) as ArviZ's ``ELPDData``, ready for :func:`arviz.compare`.

    For a :class:`~ppl_vi.nuts.NUTSResult` this is :func:`arviz.loo` on its InferenceData. For
    a VI fit the draws come from q, not from the posterior, so each leave-one-out ratio carries
    the importance correction of Magnusson et al. (2019),
    :math:`r_{is} \propto p(x, z_s) / (q(z_s)\, p(y_i \mid z_s))`, Pareto-smoothed per datum
    (ArviZ's ``psislw``); ``az.loo`` on VI draws would leave the correction out. Both warn, with
    ArviZ's words, when a datum's k-hat exceeds ``good_k = min(1 - 1/log10(S), 0.7)``.

    Parameters
    ----------
    num_samples, seed
        Draws from the guide (VI only).
    var_name : str, optional
        The observed site, when the model has several.

    Returns
    -------
    arviz.ELPDData
        ``elpd_loo``, ``se``, ``p_loo``, ``n_samples``, ``n_data_points``, ``warning``,
        ``loo_i`` and ``pareto_k`` (per datum, with the site's plate dims), ``scale`` ("log"),
        ``good_k``; ``az.compare({"vi": loo(vi), "nuts": loo(nuts)})`` works.

    References
    ----------
    Vehtari, A., Gelman, A. & Gabry, J. (2017). Practical Bayesian model evaluation using
    leave-one-out cross-validation and WAIC. Statistics and Computing.
    Magnusson, M., Andersen, M. R., Jonasson, J. & Vehtari, A. (2019). Bayesian leave-one-out
    cross-validation for large data. ICML.
    """
    az = _arviz()
    if not hasattr(result, "_draws"):  # MCMC draws: ArviZ's PSIS-LOO
        return az.loo(result.to_inference_data(log_likelihood=True), pointwise=True,
                      var_name=var_name)  # fmt: skip
    from scipy.special import logsumexp
    from xarray import DataArray

    samples, log_p, log_q = result._draws(num_samples, seed)
    latent = {k: v for k, v in samples.items() if k in result.info.latent}
    loglik = pointwise_log_likelihood(
        result.model, latent, result.model_args, result.model_kwargs, result.info
    )
    if var_name is None and len(loglik) != 1:
        raise ValueError(
            f"the model has several observed sites {sorted(loglik)}; pass var_name= to choose one"
        )
    name = var_name or next(iter(loglik))
    if name not in loglik:
        raise ValueError(f"var_name={name!r} is not an observed site ({sorted(loglik)})")
    ll = loglik[name]  # (S, *batch)
    batch = ll.shape[1:]
    ll = ll.reshape(len(ll), -1).astype(np.float64)  # (S, N)
    num, n_data = ll.shape
    log_ratio = (log_p - log_q).detach().cpu().double().numpy()  # log p(x, z) - log q(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lw, khat = az.psislw((log_ratio[None, :] - ll.T).copy(), reff=1.0)  # (N, S), (N,)
    loo_i = logsumexp(lw + ll.T, axis=1)
    lw_full = psis(log_ratio)[0]  # the posterior weights themselves, for lppd
    lppd = logsumexp(lw_full[None, :] + ll.T, axis=1)
    good_k = min(1 - 1 / np.log10(num), 0.7)
    warn = bool(np.any(khat > good_k))
    if warn:
        warnings.warn(
            f"Estimated shape parameter of Pareto distribution is greater than {good_k:.2f} for "
            f"one or more samples ({int((khat > good_k).sum())} of {n_data} data). The "
            "importance-weighted leave-one-out terms of those data are not reliable: the guide "
            "(or the model) is far from their leave-one-out posteriors.",
            UserWarning,
            stacklevel=2,
        )
    dims = site_dims(result.model, latent, result.model_args, result.model_kwargs, result.info)
    names = (dims.get(name) or [f"{name}_dim_{i}" for i in range(len(batch))])[: len(batch)]
    as_data = {"dims": names, "name": None}
    return az.ELPDData(
        data=[
            float(loo_i.sum()),
            float(np.sqrt(n_data * loo_i.var())),
            float((lppd - loo_i).sum()),
            num,
            n_data,
            warn,
            DataArray(loo_i.reshape(batch), **{**as_data, "name": "loo_i"}),
            DataArray(khat.reshape(batch), **{**as_data, "name": "pareto_shape"}),
            "log",
            good_k,
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
        ],
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
