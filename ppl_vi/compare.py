"""VI against NUTS (or reference draws): per-parameter table, global figures, one figure."""

from __future__ import annotations

import difflib
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde, wasserstein_distance

from ppl_vi.diagnostics import (
    KHAT_BAD,
    KHAT_GOOD,
    draw_losses,
    khat_verdict,
    psis_resample,
    underdispersion,
)
from ppl_vi.nuts import NUTSResult
from ppl_vi.stats import arviz as _arviz

__all__ = ["Report", "compare", "components", "recommend"]

#: The VI methods the demo, model reports and benchmarks compare with NUTS:
#: label -> (guide, ELBO, ELBO options, compare PSIS-resampled draws).
STANDARD_METHODS = {
    "mean-field + ELBO": ("mean_field", "elbo", {}, False),
    "IAF + ELBO": ("iaf", "elbo", {}, False),
    "mean-field + IWAE (K=8, DReG), PSIS-resampled": (
        "mean_field",
        "iwae",
        {"num_particles": 8, "gradient": "dreg"},
        True,
    ),
}

#: The fastest accurate recipe measured by ``benchmarks/time_to_accuracy.py`` (label, ``fit``
#: arguments): a full-rank Gaussian, 32 vectorized particles per step, lr 0.1, compiled steps;
#: read it through PSIS (``resample=True`` in :func:`compare`, or ``importance_means``).
FAST_METHOD = (
    "full-rank + ELBO (K=32, lr 0.1, compiled step, 500 steps), PSIS-resampled",
    {"guide": "full_rank", "elbo": "elbo", "num_particles": 32, "lr": 0.1, "jit": "auto"},
    500,
)

#: Mean errors beyond this many reference sds are flagged.
MEAN_ERROR_FLAG = 0.5
#: sd ratios below this are flagged as under-dispersion (intervals at least 10% too narrow).
SD_RATIO_FLAG = 0.9
#: A reference whose R-hat exceeds this has not converged (Vehtari et al. 2021).
RHAT_FLAG = 1.01


def components(draws: dict) -> dict[str, np.ndarray]:
    """Flatten draws ``{site: (S, *shape)}`` into scalar components ``{"theta[0]": (S,)}``.

    Names follow ArviZ: 0-based indices in brackets, comma-separated for matrices.
    """
    out = {}
    for name, value in draws.items():
        arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, float)
        shape = arr.shape[1:]
        if not shape:
            out[name] = arr
            continue
        flat = arr.reshape(len(arr), -1)
        for j, idx in enumerate(np.ndindex(*shape)):
            out[f"{name}[{','.join(map(str, idx))}]"] = flat[:, j]
    return out


def _reference_draws(reference):
    """(draws, wall_time, label) of a NUTSResult, a posteriordb Posterior or a dict."""
    if isinstance(reference, NUTSResult):
        return reference.samples, reference.wall_time, "NUTS"
    if hasattr(reference, "reference") and hasattr(reference, "posterior_name"):
        return reference.reference, None, f"posteriordb {reference.posterior_name}"
    if isinstance(reference, dict):
        return reference, None, "reference draws"
    raise TypeError(
        "reference must be a NUTSResult (ppl_vi.run_nuts), a posteriordb Posterior "
        f"(ppl_vi.models.posteriordb.load) or a dict of draws (got {type(reference).__name__})"
    )


@dataclass
class Report:
    """The outcome of :func:`compare`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scalar component: ``vi_mean``, ``ref_mean``, ``mean_error`` (VI minus
        reference mean, in reference sds), ``vi_sd``, ``ref_sd``, ``sd_ratio`` (VI / reference),
        ``w1`` (Wasserstein-1 distance of the two marginals after standardising both with the
        reference mean and sd) and ``ref_mcse`` (the reference mean's Monte Carlo standard error
        in reference sds, ``1/sqrt(ESS)``).
    khat, khat_se : float
        PSIS k-hat of the VI approximation (on the fit's shared importance set,
        :meth:`ppl_vi.VIResult.importance`) and its Monte Carlo standard error.
    elbo, elbo_se : float
        Mean of ``log p(x, z) - log q(z)`` over the VI draws, and its standard error.
    vi_time, ref_time : float or None
        Wall times (training; sampling incl. warm-up); ``speedup`` = ref_time / vi_time.
    flags : list of str
        Plain-language warnings: large mean errors, under-dispersion, k-hat.
    """

    table: pd.DataFrame
    khat: float
    elbo: float
    elbo_se: float
    vi_time: float | None
    ref_time: float | None
    ref_label: str
    vi_label: str
    flags: list = field(default_factory=list)
    losses: np.ndarray | None = None
    vi_draws: dict = field(default_factory=dict, repr=False)
    ref_draws: dict = field(default_factory=dict, repr=False)
    khat_se: float = float("nan")

    @property
    def speedup(self) -> float | None:
        if self.vi_time and self.ref_time:
            return self.ref_time / self.vi_time
        return None

    @property
    def khat_verdict(self) -> str:
        return khat_verdict(self.khat, self.khat_se)

    @property
    def max_mean_error(self) -> float:
        return float(self.table["mean_error"].abs().max())

    @property
    def worst_sd_ratio(self) -> tuple[str, float]:
        """The component whose sd ratio is furthest from 1 (on the log scale), and the ratio."""
        ratios = self.table["sd_ratio"]
        distance = np.abs(np.log(ratios.clip(lower=1e-12)))
        name = distance.idxmax()
        return str(name), float(ratios[name])

    def summary(self) -> dict:
        """The global figures as a dict (for JSON)."""
        return {
            "vi": self.vi_label,
            "reference": self.ref_label,
            "max_abs_mean_error_sd": self.max_mean_error,
            "median_sd_ratio": float(self.table["sd_ratio"].median()),
            "worst_sd_ratio": self.worst_sd_ratio[1],
            "khat": self.khat,
            "khat_se": self.khat_se,
            "elbo": self.elbo,
            "vi_time_s": self.vi_time,
            "ref_time_s": self.ref_time,
            "speedup": self.speedup,
            "flags": list(self.flags),
        }

    def to_markdown(self, digits: int = 3) -> str:
        """The global figures, the flags and the table as Markdown."""
        lines = [
            f"**{self.vi_label}** vs **{self.ref_label}**",
            "",
            f"- PSIS k-hat: {self.khat_verdict}",
            f"- ELBO: {self.elbo:.2f} ± {self.elbo_se:.2f}",
            f"- max |mean error|: {self.max_mean_error:.3f} reference sd; median sd ratio "
            f"{self.table['sd_ratio'].median():.2f}",
        ]
        if self.vi_time is not None:
            lines.append(f"- VI wall time: {self.vi_time:.1f} s")
        if self.ref_time is not None:
            lines.append(f"- {self.ref_label} wall time: {self.ref_time:.1f} s")
        if self.speedup is not None:
            lines.append(f"- speed-up (reference time / VI time): {self.speedup:.1f}x")
        if self.flags:
            lines += ["", "**Warnings**", ""] + [f"- {f}" for f in self.flags]
        lines += ["", self.table.round(digits).to_markdown()]
        return "\n".join(lines) + "\n"

    def shown_components(self, max_params: int = 12) -> list[str]:
        """The components a figure shows: every scalar site first (hyperparameters such as
        ``tau``), then the worst of the rest by |mean error| and by |log sd ratio|."""
        table = self.table
        scalars = [n for n in table.index if "[" not in n]
        errors = table["mean_error"].abs().sort_values(ascending=False).index
        ratios = np.abs(np.log(table["sd_ratio"].clip(lower=1e-12))).sort_values(ascending=False)
        chosen = list(dict.fromkeys(scalars))[:max_params]
        for a, b in zip(errors, ratios.index, strict=True):
            for name in (a, b):
                if len(chosen) < max_params and name not in chosen:
                    chosen.append(name)
        return chosen

    def plot(self, path: str | os.PathLike | None = None, max_params: int = 12) -> Figure:
        """Overlaid marginal densities, a forest plot, the loss curve and the k-hat panel.

        Shows at most ``max_params`` components (:meth:`shown_components`: every scalar site,
        then the worst by mean error and by sd ratio) and says so when some are left out.
        Every panel names the method. Saves a PNG when ``path`` is given.

        Drawn with matplotlib directly: ArviZ's plots each make their own figure through
        pyplot, and this is one composite figure made without pyplot (no display needed).
        """
        names = self.shown_components(max_params)
        vi, ref = self.vi_label, self.ref_label
        ncol = 4
        nrow_marg = math.ceil(len(names) / ncol)
        fig = Figure(figsize=(13, 2.4 * nrow_marg + 4.6), layout="constrained")
        omitted = len(self.table) - len(names)
        note = (
            f" (showing {len(names)} of {len(self.table)} components: the scalar sites and the "
            "largest errors; the report's table has all)"
            if omitted
            else ""
        )
        fig.suptitle(f"{vi} vs {ref}{note}", fontsize=10)
        grid = fig.add_gridspec(nrow_marg + 2, ncol)
        for k, name in enumerate(names):
            self._marginal(fig.add_subplot(grid[k // ncol, k % ncol]), name, legend=k == 0)
        self._forest(fig.add_subplot(grid[nrow_marg:, :2]), names)
        self._loss(fig.add_subplot(grid[nrow_marg:, 2]))
        self._khat(fig.add_subplot(grid[nrow_marg:, 3]))
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

    def _marginal(self, ax, name: str, legend: bool) -> None:
        ref, vi = self.ref_draws[name], self.vi_draws[name]
        finite = np.concatenate([ref, vi])
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = np.quantile(finite, [0.005, 0.995])
            xs = np.linspace(lo, hi, 200)
            for draws, label, color in ((ref, self.ref_label, "0.3"), (vi, self.vi_label, "C0")):
                if np.isfinite(draws).all() and np.std(draws) > 0:
                    ax.plot(xs, gaussian_kde(draws)(xs), color=color, label=label, lw=1.4)
        row = self.table.loc[name]
        ax.set_title(
            f"{name}: err {row.mean_error:+.2f} sd, sd ratio {row.sd_ratio:.2f}", fontsize=8
        )
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
        if legend:
            ax.legend(fontsize=6)

    def _forest(self, ax, names: list[str]) -> None:
        rows = self.table.loc[names]
        y = np.arange(len(names))[::-1]
        for offset, (draws, color, label) in enumerate(
            ((self.ref_draws, "0.3", self.ref_label), (self.vi_draws, "C0", self.vi_label))
        ):
            z = np.array(
                [
                    (np.quantile(draws[n], [0.05, 0.5, 0.95]) - rows.loc[n, "ref_mean"])
                    / rows.loc[n, "ref_sd"]
                    for n in names
                ]
            )
            yy = y + (0.15 if offset == 0 else -0.15)
            ax.hlines(yy, z[:, 0], z[:, 2], color=color, lw=2, label=f"{label}: 90% interval")
            ax.plot(z[:, 1], yy, "o", color=color, ms=4)
        ax.set_yticks(y, names, fontsize=7)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set_xlabel("(value - reference mean) / reference sd")
        ax.set_title(f"{self.vi_label} vs {self.ref_label}: standardised intervals", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")

    def _loss(self, ax) -> None:
        if self.losses is not None and len(self.losses):
            draw_losses(ax, self.losses)
        ax.set_xlabel("step")
        ax.set_title(f"{self.vi_label}: loss (negative bound)", fontsize=8)

    def _khat(self, ax) -> None:
        """The k-hat with its Monte Carlo interval against the bands of Yao et al. (2018)."""
        top = 1.2
        for lo, hi, color, label in (
            (0.0, KHAT_GOOD, "C2", "good"),
            (KHAT_GOOD, KHAT_BAD, "C1", "usable with care"),
            (KHAT_BAD, top, "C3", "do not trust"),
        ):
            ax.axhspan(lo, hi, color=color, alpha=0.15)
            ax.text(0.98, (lo + hi) / 2, label, fontsize=7, ha="right", va="center",
                    transform=ax.get_yaxis_transform())  # fmt: skip
        khat = self.khat if np.isfinite(self.khat) else np.nan
        se = self.khat_se if np.isfinite(self.khat_se) else 0.0
        if np.isfinite(khat):
            shown = min(khat, top - 0.05)
            ax.errorbar([0.3], [shown], yerr=[[2 * se], [2 * se]], fmt="o", color="k", capsize=4)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, top)
        ax.set_xticks([])
        se_text = f" +- {2 * se:.2f} (2 se)" if se else ""
        ax.set_title(f"{self.vi_label}: PSIS k-hat {khat:.2f}{se_text}", fontsize=8)


def compare(
    vi_result,
    reference,
    num_samples: int = 4000,
    seed: int | None = 0,
    vi_label: str | None = None,
    warn: bool = True,
    resample: bool = False,
) -> Report:
    """Compare a VI fit with NUTS draws or reference draws, component by component.

    Parameters
    ----------
    vi_result : ppl_vi.VIResult
    reference : ppl_vi.nuts.NUTSResult, posteriordb Posterior or dict
        NUTS run, a posteriordb reference (:func:`ppl_vi.models.posteriordb.load`), or draws
        ``{site: array (S, *shape)}``. Sites present in both are compared.
    num_samples : int, default 4000
        VI draws compared with the reference. The k-hat and the ELBO come from the fit's
        shared importance set (:meth:`ppl_vi.VIResult.importance`), so every report of the
        same fit gives the same k-hat.
    seed : int, optional
    vi_label : str, optional
        Name of the VI method in the report (default: guide and ELBO classes).
    warn : bool, default True
        Issue a ``UserWarning`` listing the flags (under-dispersion, large errors, k-hat).
    resample : bool, default False
        Compare PSIS-resampled draws (:func:`ppl_vi.diagnostics.psis_resample`) instead of
        raw guide draws: the right comparison for guides trained as importance-sampling
        proposals (IWAE, Rényi with alpha < 0), which are wider than the posterior on purpose.

    Returns
    -------
    Report
    """
    ref, ref_time, ref_label = _reference_draws(reference)
    samples = vi_result._draws(num_samples, seed)[0]
    if resample:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # k-hat is reported below
            samples = psis_resample(vi_result, num_samples, seed=seed)
    shared = [k for k in ref if k in samples]
    if not shared:
        raise ValueError(
            f"the reference has no site in common with the fit (reference sites "
            f"{sorted(ref)}, fitted sites {sorted(samples)})"
        )
    site_flags = _site_flags(ref, samples, vi_result)
    vi_comp = components({k: samples[k] for k in shared})
    ref_comp = components({k: ref[k] for k in shared})
    rows = {}
    for name, r in ref_comp.items():
        v = vi_comp[name]
        ref_mean, ref_sd = float(np.mean(r)), float(np.std(r, ddof=1))
        scale = ref_sd if ref_sd > 0 else 1.0
        rows[name] = {
            "vi_mean": float(np.mean(v)),
            "ref_mean": ref_mean,
            "mean_error": (float(np.mean(v)) - ref_mean) / scale,
            "vi_sd": float(np.std(v, ddof=1)),
            "ref_sd": ref_sd,
            "sd_ratio": float(np.std(v, ddof=1)) / scale,
            "w1": wasserstein_distance((v - ref_mean) / scale, (r - ref_mean) / scale),
            "ref_mcse": _mcse_sd(r, reference),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    imp = vi_result.importance()  # the fit's shared set: the same k-hat as psis_khat
    khat, lw = imp.khat, imp.log_weights
    guide = vi_result.guide_spec.get("name") or type(vi_result.guide).__name__
    elbo_name = vi_result.elbo_spec.get("name") or vi_result.elbo_spec.get("class")
    label = vi_label or (f"{guide} + {elbo_name}" if elbo_name else str(guide))
    flags = list(site_flags)
    missing = table[table[["mean_error", "sd_ratio"]].isna().any(axis=1)]
    for name in missing.index:
        flags.append(f"{name}: NaN in the comparison (non-finite VI or reference draws)")
    flags += _reference_flags(reference)
    big = table[table["mean_error"].abs() > MEAN_ERROR_FLAG]
    for name, row in big.iterrows():
        flags.append(f"{name}: VI mean is {row.mean_error:+.2f} reference sd off")
    flags += underdispersion(table, SD_RATIO_FLAG)
    if not (khat + 2 * np.nan_to_num(imp.khat_se) < KHAT_GOOD):
        flags.append(khat_verdict(khat, imp.khat_se))
    report = Report(
        table=table,
        khat=khat,
        khat_se=imp.khat_se,
        elbo=float(lw.mean()),
        elbo_se=float(lw.std(ddof=1) / math.sqrt(len(lw))),
        vi_time=getattr(vi_result, "wall_time", None),
        ref_time=ref_time,
        ref_label=ref_label,
        vi_label=label,
        flags=flags,
        losses=getattr(vi_result, "losses", None),
        vi_draws=vi_comp,
        ref_draws=ref_comp,
    )
    if warn and flags:
        warnings.warn(f"{label} vs {ref_label}: " + "; ".join(flags), UserWarning, stacklevel=2)
    return report


def _site_flags(ref: dict, samples: dict, vi_result) -> list[str]:
    """Sites compared with nothing: in the reference but not in the fit (often misspelled),
    and latent sites of the fit without reference draws."""
    flags = []
    for name in sorted(set(ref) - set(samples)):
        close = difflib.get_close_matches(name, list(samples), n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        flags.append(f"reference site {name!r} is not a site of the fit{hint}; not compared")
    unmatched = sorted(set(vi_result.info.latent) - set(ref))
    if unmatched:
        flags.append(f"fitted sites {unmatched} have no reference draws; not compared")
    return flags


def _reference_flags(reference) -> list[str]:
    """A NUTS reference's own health: chains, R-hat, divergences."""
    if not isinstance(reference, NUTSResult):
        return []
    flags = []
    if reference.num_divergences:
        flags.append(
            f"the reference NUTS run has {reference.num_divergences} divergent transitions: "
            "its draws may be biased (reparameterize, or raise target_accept_prob)"
        )
    if reference.num_chains < 2:
        flags.append(
            "the reference NUTS run has one chain, so R-hat cannot check its convergence; run "
            "num_chains >= 2"
        )
    else:
        rhat = {k: v for k, v in reference.rhat().items() if np.isfinite(v)}
        worst = max(rhat, key=rhat.get, default=None)
        if worst is not None and rhat[worst] > RHAT_FLAG:
            flags.append(
                f"the reference NUTS run has R-hat up to {rhat[worst]:.3f} (> {RHAT_FLAG}, on "
                f"{worst}): its chains disagree; run longer"
            )
    return flags


def _mcse_sd(draws: np.ndarray, reference) -> float:
    """Monte Carlo SE of the reference mean in reference sds: 1/sqrt(ESS).

    NUTS draws use ArviZ's bulk ESS (autocorrelation-aware); reference draws are treated as
    independent (posteriordb thins to near-independence).
    """
    n = len(draws)
    if isinstance(reference, NUTSResult):
        chains = reference.settings["num_chains"]
        ess = float(_arviz().ess(np.asarray(draws).reshape(chains, -1), method="bulk"))
        n = max(ess, 1.0)
    return 1.0 / math.sqrt(n)


#: What :func:`recommend` calls accurate enough (in reference sds / as ratios).
ACCURATE_ERROR, ACCURATE_SD_RATIO = 0.2, (0.8, 1.25)


def recommend(reports: dict) -> str:
    """A recommendation derived from several :class:`Report` objects against one reference.

    A method is *accurate* when, component by component (scalar hyperparameters included),
    every mean is within 0.2 reference sd and every sd ratio within [0.8, 1.25], and the PSIS
    k-hat (upper end of its interval) is below 0.7. The fastest accurate method is
    recommended; when none is accurate, the reference sampler is, with the closest VI method's
    worst component quoted so the reader sees how far off VI was.
    """
    if not reports:
        raise ValueError("recommend needs at least one Report")
    lo, hi = ACCURATE_SD_RATIO
    checks = (
        f"every mean within {ACCURATE_ERROR} sd, every sd ratio in [{lo}, {hi}], k-hat < {KHAT_BAD}"
    )

    def accurate(r: Report) -> bool:
        ratios = r.table["sd_ratio"]
        return (
            r.max_mean_error <= ACCURATE_ERROR
            and bool(((ratios >= lo) & (ratios <= hi)).all())
            and r.khat + 2 * np.nan_to_num(r.khat_se) < KHAT_BAD
        )

    good = {k: r for k, r in reports.items() if accurate(r)}
    if good:
        label, best = min(good.items(), key=lambda kv: kv[1].vi_time or float("inf"))
        speed = f", {best.speedup:.1f}x the reference's speed" if best.speedup else ""
        others = sorted(set(good) - {label})
        also = f" Also accurate: {', '.join(others)}." if others else ""
        name, ratio = best.worst_sd_ratio
        return (
            f"Use {label}: every mean within {best.max_mean_error:.2f} reference sd, sd ratios "
            f"within [{best.table['sd_ratio'].min():.2f}, {best.table['sd_ratio'].max():.2f}], "
            f"k-hat {best.khat:.2f}{speed}; it is the fastest method that passes every check "
            f"({checks}).{also}"
        )
    label, best = min(reports.items(), key=lambda kv: kv[1].max_mean_error)
    name, ratio = best.worst_sd_ratio
    return (
        f"Use {best.ref_label}: no VI method passed the accuracy checks ({checks}). The "
        f"closest, {label}, is off by up to {best.max_mean_error:.2f} sd in its means, with its "
        f"worst sd ratio {ratio:.2f} ({name}) and k-hat {best.khat:.2f}. "
        + ("Its flags: " + "; ".join(best.flags[:3]) + "." if best.flags else "")
    )
