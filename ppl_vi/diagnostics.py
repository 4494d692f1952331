"""Plots and checks built on matplotlib and ArviZ."""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

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
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    draw_losses(ax, losses)
    ax.set_ylabel("loss = -ELBO (nats)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def draw_losses(ax, losses) -> None:
    """The losses per step (1, 2, ...) on ``ax``, their running mean over a twentieth of the run
    (2 to 100 steps; none under 40 steps) and a y range from the 1st to the 99th percentile
    padded by 5%, so that the first steps' large losses do not flatten the rest."""
    losses = np.asarray(losses, dtype=float)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.75", lw=0.6, label="loss per step")
    window = min(100, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", lw=1.5, label=f"mean of {window} steps")
    if len(losses):
        lo, hi = np.percentile(losses, [1, 99])
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("step")


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


# ------------------------------------------------------------------------ active units
class ActiveUnits(NamedTuple):
    """Result of :func:`active_units`.

    Attributes
    ----------
    variances : dict
        Local latent site (one layer of a hierarchy) -> :math:`A_u` per unit, a float64 array of
        the site's per-datum shape (``(L,)`` for a vector site), in the unconstrained space.
    active : dict
        Site -> number of units with :math:`A_u` above ``threshold``.
    total : int
        Active units over all sites.
    threshold : float
        The threshold used.
    method : str
        ``"exact"`` (the encoder's means) or ``"monte carlo"`` (``num_samples`` guide draws per
        datum, corrected for their own spread).
    num_data : int
        Number of data the covariance is taken over.
    num_samples : int or None
        Guide draws per datum (None for ``"exact"``).
    """

    variances: dict
    active: dict
    total: int
    threshold: float
    method: str
    num_data: int
    num_samples: int | None

    @property
    def num_units(self) -> int:
        """Units over all sites."""
        return int(sum(v.size for v in self.variances.values()))

    def __str__(self) -> str:
        sites = ", ".join(
            f"{name}: {self.active[name]} of {v.size}" for name, v in self.variances.items()
        )
        return (
            f"{self.total} of {self.num_units} units active (A_u > {self.threshold:g}; "
            f"{self.method}, {self.num_data} data): {sites}"
        )


_AU_METHODS = ("auto", "exact", "monte carlo")


def active_units(
    result,
    *model_args,
    threshold: float = 0.01,
    num_samples: int = 100,
    seed: int | None = 0,
    method: str = "auto",
    data_plate: str | None = None,
    **model_kwargs,
) -> ActiveUnits:
    r"""Active latent units of a fit with per-datum latents (Burda, Grosse & Salakhutdinov 2016).

    .. math::

        A_u = \operatorname{Cov}_x\big(\mathbb E_{q(u \mid x)}[u]\big), \qquad
        \text{unit } u \text{ is active} \iff A_u > \tau,

    where :math:`u` runs over the scalar components ("units") of every local latent site (a
    latent sample site inside the data plate; each site of a hierarchical model is one layer and
    is reported on its own), in the site's unconstrained space (the values themselves for
    real-valued latents), :math:`q` is the fitted guide, the covariance is the sample variance
    (divisor :math:`N - 1`) over the :math:`N` data, and :math:`\tau` is ``threshold``
    (Burda et al. use :math:`10^{-2}`). A unit whose posterior ignores the datum, typically
    because it collapsed onto the prior, has :math:`A_u \approx 0`.

    Two estimators of :math:`\mu_n = \mathbb E_q[u \mid x_n]`:

    ``"exact"``
        An :class:`~ppl_vi.guides.Amortized` guide without refinement gives :math:`\mu_n` as its
        encoder's locations (``local_params``), so :math:`A_u` is computed exactly.
    ``"monte carlo"``
        Any other guide (e.g. a ladder network, whose upper layers' means depend on draws of the
        others) is run :math:`S` = ``num_samples`` times on all the data. With :math:`\bar u_n`
        and :math:`v_n` the mean and the sample variance of datum :math:`n`'s :math:`S` draws,
        :math:`\mathbb E[\widehat{\operatorname{Var}}_n(\bar u_n)] = A_u +
        \overline{\operatorname{Var}_q(u \mid x_n)} / S`: the noise of the draws inflates the
        between-data variance, most for the inactive units whose :math:`q` is the prior
        (:math:`1 / S`, as large as :math:`\tau` at :math:`S = 100`). The estimate

        .. math::

            \hat A_u = \widehat{\operatorname{Var}}_n(\bar u_n) - \frac{1}{N S}
                \sum_{n=1}^N v_n

        removes it and is unbiased when the draws of different data are independent given the
        data (it may come out slightly below 0 for a dead unit).

    Parameters
    ----------
    result : VIResult
        A fit whose model has latent sites in a data plate.
    *model_args, **model_kwargs
        The data to measure on (e.g. held-out data), as for the model; by default the fit's own.
        Subsampled plates run at full size.
    threshold : float, default 0.01
        :math:`\tau`.
    num_samples : int, default 100
        Guide draws per datum :math:`S` (``"monte carlo"`` only), at least 2.
    seed : int or None, default 0
        Seed of the draws (the global random state is restored afterwards).
    method : {"auto", "exact", "monte carlo"}
        ``"auto"`` uses ``"exact"`` where the guide gives the means, else ``"monte carlo"``.
    data_plate : str, optional
        The plate that indexes the data; by default the guide's ``data_plate``, else the single
        plate holding the observed sites.

    Returns
    -------
    ActiveUnits
        Per-site :math:`A_u` and active counts, the total, the threshold and the method.

    Raises
    ------
    TypeError
        If ``result`` is not a fit.
    ValueError
        For a bad ``threshold``, ``num_samples`` or ``method``, ``method="exact"`` with a guide
        that does not give exact means, a model without a data plate, or one without latent
        sites inside it.

    References
    ----------
    Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. ICLR
    (section 5.2).

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.diagnostics import active_units
    >>> from ppl_vi.guides import Amortized
    >>> from ppl_vi.models import ppca
    >>> fit = ppl_vi.fit(ppca.model, **ppca.load_data(n=100), guide=Amortized, num_steps=10,
    ...                  progress=False)
    >>> au = active_units(fit)
    >>> au.method, au.variances["z"].shape, au.total == sum(au.active.values())
    ('exact', (2,), True)
    """
    import math

    from pyro import poutine

    from ppl_vi.guides.amortized import Amortized
    from ppl_vi.infer_util import full_plates
    from ppl_vi.runtime import seeded

    if not (hasattr(result, "param_scope") and hasattr(result, "guide")):
        raise TypeError(
            f"active_units needs a fit (the VIResult of ppl_vi.fit) (got {type(result).__name__})"
        )
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise ValueError(f"threshold must be a finite number >= 0 (got threshold={threshold!r})")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(
            "num_samples must be an integer >= 2 (the spread of each datum's draws is needed) "
            f"(got num_samples={num_samples!r})"
        )
    if method not in _AU_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(repr(m) for m in _AU_METHODS)} (got "
            f"method={method!r})"
        )
    guide = result.guide
    exact_ok = isinstance(guide, Amortized) and guide.refine_steps == 0
    if method == "exact" and not exact_ok:
        why = (
            "its refinement steps are random"
            if isinstance(guide, Amortized)
            else f"a {type(guide).__name__} guide has no encoder means"
        )
        raise ValueError(
            f"method='exact' needs an Amortized guide without refinement ({why}); use "
            "method='monte carlo'"
        )
    exact = method == "exact" or (method == "auto" and exact_ok)
    if not model_args and not model_kwargs:
        model_args, model_kwargs = result.model_args, result.model_kwargs
    if data_plate is None and isinstance(getattr(guide, "data_plate", None), str):
        data_plate = guide.data_plate
    with result.param_scope(), full_plates(result.info), seeded(seed), torch.no_grad():
        with poutine.block():
            trace = poutine.trace(result.model).get_trace(*model_args, **model_kwargs)
        sites = _local_latent_sites(trace, data_plate)
        if exact:
            locs = guide.local_params(*model_args, **model_kwargs)
            means = {name: _units(locs[name][0], info) for name, info in sites.items()}
            variances = {name: m.var(0) for name, m in means.items()}  # (U,), divisor N - 1
        else:
            variances = _mc_variances(result.guide, sites, model_args, model_kwargs, num_samples)
    num_data = next(iter(sites.values()))["num_data"]
    out = {
        name: variances[name].cpu().numpy().reshape(info["unit_shape"])
        for name, info in sites.items()
    }
    active = {name: int((v > threshold).sum()) for name, v in out.items()}
    return ActiveUnits(
        variances=out,
        active=active,
        total=sum(active.values()),
        threshold=float(threshold),
        method="exact" if exact else "monte carlo",
        num_data=num_data,
        num_samples=None if exact else num_samples,
    )


def _local_latent_sites(trace, data_plate: str | None) -> dict:
    """Latent sample sites inside the data plate: name -> how to read their units."""
    from pyro.distributions.transforms import biject_to

    from ppl_vi.guides._base import find_data_plate

    found = find_data_plate(trace, data_plate, "active_units")
    out = {}
    for s in found.local:
        support = s["fn"].support
        transform = None if support.is_discrete else biject_to(support)
        value = s["value"]
        u = value if transform is None else transform.inv(value)
        event_dim = s["fn"].event_dim + u.dim() - value.dim()
        pos = found.dim - event_dim  # tensor dim of the data plate in u
        out[s["name"]] = {
            "transform": transform,
            "pos": pos,
            "num_data": u.shape[pos],
            "unit_shape": tuple(u.movedim(pos, 0).shape[1:]),
        }
    if not out:
        latent = [s["name"] for s in found.outside]
        raise ValueError(
            f"active_units measures latent sample sites inside the data plate {found.name!r} "
            f"(per-datum latents such as a VAE's z), but the model's latent sites {latent} all "
            "lie outside it; pass data_plate= if another plate indexes the data"
        )
    return out


def _units(u: torch.Tensor, info: dict) -> torch.Tensor:
    """A site's unconstrained values (plate dim at ``info["pos"]``) -> ``(N, units)``, float64."""
    u = u.movedim(info["pos"], 0)
    return u.reshape(u.shape[0], -1).double()


def _mc_variances(guide, sites: dict, args, kwargs, num: int) -> dict:
    """Between-data variance of the means of ``num`` guide draws per datum, minus the draws'
    own contribution (see :func:`active_units`). Running sums in float64: O(N U) memory."""
    from pyro import poutine

    sum1 = dict.fromkeys(sites, 0.0)
    sum2 = dict.fromkeys(sites, 0.0)
    for _ in range(num):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        for name, info in sites.items():
            if name not in trace.nodes:
                raise ValueError(
                    f"the guide does not sample the local latent site '{name}'; active_units "
                    "reads the guide's draws of every latent site in the data plate"
                )
            value = trace.nodes[name]["value"]
            if info["transform"] is not None:
                value = info["transform"].inv(value)
            u = _units(value, info)  # (N, U)
            sum1[name] = sum1[name] + u
            sum2[name] = sum2[name] + u * u
    out = {}
    for name in sites:
        mean = sum1[name] / num  # (N, U): per-datum mean of the draws
        within = (sum2[name] - num * mean * mean).clamp_min(0) / (num - 1)  # (N, U)
        out[name] = mean.var(0) - within.mean(0) / num
    return out
