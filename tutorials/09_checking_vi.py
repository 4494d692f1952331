# %% [markdown]
# # 9. Checking a variational fit
#
# Every earlier notebook ended with a fitted $q$. This one asks whether to believe it. The ELBO
# alone cannot say: its gap to $\log p(x)$ is $\mathrm{KL}(q \,\|\, p)$, and $\log p(x)$ is
# unknown. Two kinds of checks are available.
#
# **Importance weights (no reference needed).** For draws $z_s \sim q$ the ratios
# $w_s = p(x, z_s) / q(z_s)$ are importance weights for the posterior. If $q$ is close to
# $p(z \mid x)$ they are nearly constant; if $q$ misses part of the posterior (typically: $q$
# too narrow in some direction) a few draws get huge weights. Yao, Vehtari, Simpson & Gelman
# (2018) fit a generalized Pareto distribution to the largest weights (Pareto-smoothed
# importance sampling, PSIS; Vehtari et al., 2024); its shape estimate $\hat k$ says how heavy
# the tail is. The weights have finite variance only for $k < 1/2$, and PSIS estimates are
# practically reliable up to $0.7$:
#
# - $\hat k < 0.5$: $q$ is close to the posterior; its estimates can be trusted;
# - $0.5 \le \hat k < 0.7$: usable with care; reweight the draws (PSIS) first;
# - $\hat k \ge 0.7$: $q$ is far from the posterior in its tails; do not trust it.
#
# **A reference posterior.** For models small enough to run MCMC, compare $q$'s marginals with
# NUTS draws (Hoffman & Gelman, 2014), or with the reference draws of posteriordb (Magnusson et
# al., 2023): means in units of the reference sd, sd ratios, Wasserstein distances.
#
# ppl-vi has both: `ppl_vi.diagnostics.psis`, `khat_verdict`, `psis_resample`,
# `VIResult.psis_khat()`, and `ppl_vi.run_nuts` + `ppl_vi.compare`.

# %%
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import ppl_vi
from ppl_vi import diagnostics
from ppl_vi.compare import recommend
from ppl_vi.models import eight_schools, posteriordb
from ppl_vi.notebooks import steps

warnings.filterwarnings("ignore", message=".*IProgress.*")
torch.set_num_threads(1)
NUM_STEPS = steps(3000, 30)
NUM_DRAWS = steps(4000, 200)
NUM_WARMUP = steps(400, 20)
NUM_NUTS = steps(600, 50)
NUM_REPEATS = steps(5, 2)
NUM_CHAINS = 2

# %% [markdown]
# ## k-hat on a toy problem
#
# Before any model: the target is $p = \mathcal{N}(0, 1)$ and the proposal
# $q = \mathcal{N}(0, s^2)$ for a range of widths $s$ ($s = 1$ is left out: all weights are then
# equal and there is no tail to fit). A $q$ wider than $p$ gives bounded
# weights; a $q$ narrower than $p$ (what mean-field VI tends to produce) gives weights that
# grow like $\exp\{z^2 (1/s^2 - 1)/2\}$ in the tails. `diagnostics.psis` returns the smoothed
# log weights and $\hat k$.

# %%
rng = np.random.default_rng(0)
widths = np.array([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.5, 2.0, 3.0])
khats = np.zeros((len(widths), NUM_REPEATS))  # NUM_REPEATS independent sets of draws
for i, s in enumerate(widths):
    for r in range(NUM_REPEATS):
        z = s * rng.standard_normal(NUM_DRAWS)
        log_w = (-0.5 * z**2) - (-0.5 * (z / s) ** 2 - np.log(s))  # log N(z; 0, 1) / N(z; 0, s)
        khats[i, r] = diagnostics.psis(log_w)[1]
med = np.median(khats, 1)
for s, k in zip(widths, med, strict=True):
    print(f"q sd {s:3.1f}, median over {NUM_REPEATS} repeats: {diagnostics.khat_verdict(k)}")

plt.figure(figsize=(6.5, 3.8))
plt.errorbar(
    widths,
    med,
    yerr=[med - khats.min(1), khats.max(1) - med],
    fmt="o-",
    capsize=3,
    label=f"median and range of {NUM_REPEATS} repeats",
)
plt.axhspan(-0.5, 0.5, color="C2", alpha=0.15, label="k < 0.5: good")
plt.axhspan(0.5, 0.7, color="C1", alpha=0.2, label="0.5-0.7: with care")
plt.axhspan(0.7, max(1.2, khats.max() + 0.1), color="C3", alpha=0.15, label="k > 0.7: bad")
plt.axvline(1.0, color="k", ls=":", lw=1)
plt.ylim(min(-0.3, khats.min() - 0.1), max(1.2, khats.max() + 0.1))
plt.xlabel("sd s of the proposal q (target sd = 1, dotted)")
plt.ylabel(r"PSIS $\hat k$")
plt.legend(loc="upper right", fontsize=8)
plt.title(r"too narrow a $q$ shows up as a large $\hat k$")
plt.tight_layout()
plt.show()

# %% [markdown]
# The printed verdicts trace the asymmetry: as $q$ narrows below the target's sd, $\hat k$
# climbs through the thresholds, while wider proposals stay far below 0.5 (they waste draws
# but miss nothing; a negative $\hat k$ means bounded weights). The error bars show that
# $\hat k$ is itself an estimate: near a threshold, a different set of draws can give a
# different verdict. This asymmetry is exactly what matters for VI, whose
# $\mathrm{KL}(q \,\|\, p)$ objective prefers $q$ too narrow to too wide.
#
# ## Eight schools: mean-field VI against NUTS
#
# The non-centred eight-schools model (Rubin, 1981): $\mu \sim \mathcal{N}(0, 5^2)$,
# $\tau \sim \mathrm{HalfCauchy}(5)$, $\tilde\theta_j \sim \mathcal{N}(0, 1)$,
# $y_j \sim \mathcal{N}(\mu + \tau \tilde\theta_j, \sigma_j^2)$. The posterior of $\tau$ is
# skewed, with a lot of mass near 0, and it is correlated with the $\tilde\theta_j$: a
# mean-field Gaussian in $\log\tau$ cannot represent that exactly. Fit it, then run NUTS
# as the reference (`run_nuts`; two chains).

# %%
data = eight_schools.load_data()
mf = ppl_vi.fit(eight_schools.model, **data, num_steps=NUM_STEPS, progress=False, seed=0)
print(mf)
print(f"mean-field: {diagnostics.khat_verdict(mf.psis_khat(NUM_DRAWS, seed=1))}")
nuts = ppl_vi.run_nuts(
    eight_schools.model,
    **data,
    num_warmup=NUM_WARMUP,
    num_samples=NUM_NUTS,
    num_chains=NUM_CHAINS,
    progress=False,
    seed=0,
)
print(nuts)
print(f"NUTS divergences: {nuts.num_divergences}")
nuts.summary().loc[["mu", "tau"]]

# %% [markdown]
# The NUTS summary shows $\hat R$ and effective sample sizes; with $\hat R$ near 1 and a few
# hundred effective draws the reference is good enough to judge VI's means to a small fraction
# of a posterior sd (the `ref_mcse` column of the table below gives that precision).
#
# `ppl_vi.compare` puts the two side by side, one row per scalar component: the mean error in
# NUTS sds, the ratio of sds, and the Wasserstein-1 distance of the standardised marginals.
# Its flags say in words what is wrong.

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # the flags are shown below instead
    rep_mf = ppl_vi.compare(mf, nuts, num_samples=NUM_DRAWS, vi_label="mean-field + ELBO")
rep_mf.table.round(3)

# %%
display(Markdown(rep_mf.to_markdown()))
tau = rep_mf.table.loc["tau"]
print(f"tau: VI sd / NUTS sd = {tau.sd_ratio:.2f}, mean error {tau.mean_error:+.2f} NUTS sd")
tab = rep_mf.table
print(
    f"smallest sd ratio: {tab.sd_ratio.idxmin()} ({tab.sd_ratio.min():.2f}); largest |mean "
    f"error|: {tab.mean_error.abs().idxmax()} ({tab.mean_error.abs().max():.2f} NUTS sd)"
)
print("flags:", *rep_mf.flags, sep="\n  ")

# %%
fig = rep_mf.plot(max_params=6)
display(fig)
plt.close(fig)

# %% [markdown]
# What to read in the table and the report figure: the component with the smallest `sd_ratio`
# (printed above) is where mean field is most *under-dispersed*, its intervals too narrow;
# `compare` flags every ratio below 0.9. For eight schools that is expected to be $\tau$, whose
# skewed posterior with mass near 0 a log-Normal with no correlations cannot follow (see the
# top-left panel); the $\tilde\theta_j$ rows stay close to 1, since their posteriors are
# nearly standard Normal. The k-hat panel and the
# printed verdict say how far the importance weights trust $q$ overall.
#
# ## IWAE-trained guides: compare after resampling
#
# An importance-weighted bound (IWAE, Burda et al., 2016; notebook 4) trains $q$ as a
# *proposal*: with $K$ particles the optimum is wider than the posterior, on purpose. Its raw
# draws are therefore over-dispersed; what approximates the posterior is $q$ reweighted by
# $p/q$. `compare(..., resample=True)` compares PSIS-resampled draws
# (`diagnostics.psis_resample`: draw $4\times$ as many from $q$, resample with smoothed
# weights).

# %%
iwae = ppl_vi.fit(
    eight_schools.model,
    **data,
    elbo="iwae",
    elbo_kwargs={"num_particles": 8, "gradient": "dreg"},
    num_steps=NUM_STEPS,
    progress=False,
    seed=0,
)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    rep_iwae_raw = ppl_vi.compare(iwae, nuts, num_samples=NUM_DRAWS, vi_label="IWAE, raw draws")
    rep_iwae = ppl_vi.compare(
        iwae, nuts, num_samples=NUM_DRAWS, vi_label="IWAE, PSIS-resampled", resample=True
    )
    rep_mf_rs = ppl_vi.compare(
        mf, nuts, num_samples=NUM_DRAWS, vi_label="mean-field, PSIS-resampled", resample=True
    )
eight = {
    "mean-field + ELBO": rep_mf,
    "mean-field, PSIS-resampled": rep_mf_rs,
    "IWAE (K=8), raw": rep_iwae_raw,
    "IWAE (K=8), PSIS-resampled": rep_iwae,
}
rows = {
    k: {
        "max |mean error|": r.max_mean_error,
        "tau mean error": r.table.loc["tau", "mean_error"],
        "tau sd ratio": r.table.loc["tau", "sd_ratio"],
        "median sd ratio": r.table["sd_ratio"].median(),
        "k-hat": r.khat,
        "flags": len(r.flags),
    }
    for k, r in eight.items()
}
pd.DataFrame(rows).T.round(3)

# %%
nuts_tau = nuts.samples["tau"].numpy().ravel()
warnings.simplefilter("ignore", UserWarning)  # psis_resample repeats the k-hat verdicts above
panels = {
    "mean-field, raw": mf.sample(NUM_DRAWS, seed=2)["tau"],
    "mean-field, PSIS-resampled": diagnostics.psis_resample(mf, NUM_DRAWS, seed=2)["tau"],
    "IWAE (K=8), raw": iwae.sample(NUM_DRAWS, seed=2)["tau"],
    "IWAE (K=8), PSIS-resampled": diagnostics.psis_resample(iwae, NUM_DRAWS, seed=2)["tau"],
}
bins = np.linspace(0, np.quantile(nuts_tau, 0.99), 50)
fig, axes = plt.subplots(1, 4, figsize=(15, 3.2), sharey=True)
for ax, (name, draws) in zip(axes, panels.items(), strict=True):
    ax.hist(nuts_tau, bins=bins, density=True, color="0.6", alpha=0.6, label="NUTS")
    ax.hist(draws.numpy(), bins=bins, density=True, histtype="step", lw=1.8, label=name)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(r"$\tau$")
    ax.legend(fontsize=7)
axes[0].set_ylabel("density")
plt.tight_layout()
plt.show()

# %% [markdown]
# The table and the histograms should tell one story. Read the raw IWAE row first: its draws
# are wider than NUTS (sd ratios above 1), which would look like a bad fit if read naively.
# Its resampled row is the one to judge it by. Compare also the k-hat column: a proposal
# trained by IWAE is wider, and wider proposals have lighter-tailed weights (the toy plot
# above). Resampling improves the mean-field draws too, but it can only reweight draws that
# $q$ proposes: a too-narrow $q$ rarely proposes the small values of $\tau$ it is missing
# (look at the left edge of the histograms).
#
# ## A posteriordb posterior: Gaussian-process regression
#
# posteriordb ships reference posterior draws (computed with Stan) for its posteriors;
# ppl-vi has Pyro translations of twelve of them. `gp_regr` is a GP with a squared-exponential
# kernel on 11 points, the latent function integrated out, and three positive
# hyper-parameters: length scale $\rho$, marginal sd $\alpha$ and noise $\sigma$.
# The data and draws are read from a local posteriordb folder; the next cell looks for it
# (the `PPL_VI_POSTERIORDB` variable, else a folder `shared/posteriordb` in the working
# directory or one of its parents) and skips this section if it is absent.


# %%
def find_posteriordb() -> Path | None:
    env = os.environ.get("PPL_VI_POSTERIORDB")
    if env and Path(env).is_dir():
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "shared" / "posteriordb"
        if candidate.is_dir():
            return candidate
    return None


pdb_dir = find_posteriordb()
gp_report = None
if pdb_dir is None:
    display(
        Markdown(
            "**posteriordb folder not found**: set `PPL_VI_POSTERIORDB` to the folder holding "
            "`gp_pois_regr-gp_regr/` to run this section; it is skipped."
        )
    )
else:
    post = posteriordb.load("gp_regr", reference_dir=pdb_dir)
    print(f"{post.posterior_name}: {len(post.reference['rho'])} reference draws")
    gp_fit = ppl_vi.fit(post.model, **post.data, num_steps=NUM_STEPS, progress=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gp_report = ppl_vi.compare(gp_fit, post, num_samples=NUM_DRAWS, vi_label="mean-field")
    display(Markdown(gp_report.to_markdown()))

# %%
if gp_report is not None:
    fig = gp_report.plot()
    display(fig)
    plt.close(fig)

# %% [markdown]
# Three hyper-parameters on 11 data points give right-skewed marginals (top row of the figure),
# which a mean-field Normal on the log scale can follow; the table says how close it gets,
# component by component, against a reference that did not come from our own sampler. Note
# that the k-hat, which needs no reference at all, and the comparison with the reference
# should point the same way; when they disagree, trust the more pessimistic one.
#
# ## When to trust VI: a checklist from the numbers
#
# `ppl_vi.compare.recommend` applies three accuracy checks to each report (every mean within
# 0.2 reference sd, median sd ratio within [0.8, 1.25], $\hat k < 0.7$) and recommends the
# fastest method that passes all three, or the reference sampler when none does. Below, the
# checks are printed per method, then the recommendation.


# %%
def checklist(reports: dict) -> None:
    for name, r in reports.items():
        ratio = float(r.table["sd_ratio"].median())
        checks = [
            ("means within 0.2 sd", r.max_mean_error <= 0.2, f"{r.max_mean_error:.2f}"),
            ("median sd ratio in [0.8, 1.25]", 0.8 <= ratio <= 1.25, f"{ratio:.2f}"),
            ("k-hat < 0.7", r.khat < 0.7, f"{r.khat:.2f}"),
            ("no under-dispersed component", not any("VI sd" in f for f in r.flags), ""),
        ]
        marks = "; ".join(
            f"[{'x' if ok else ' '}] {c} ({v})" if v else f"[{'x' if ok else ' '}] {c}"
            for c, ok, v in checks
        )
        print(f"{name}:\n    {marks}")


checklist(eight)
display(Markdown("**Eight schools:** " + recommend(eight)))
if gp_report is not None:
    checklist({"gp_regr, mean-field": gp_report})
    display(Markdown("**gp_regr:** " + recommend({"mean-field": gp_report})))

# %% [markdown]
# **When to trust VI**, as these numbers suggest:
#
# 1. **Look at $\hat k$ first**; it needs no reference. Below 0.5, use $q$; between 0.5 and
#    0.7, use PSIS-resampled draws; above 0.7, do not use $q$ for anything but a starting
#    point (and compare with MCMC).
# 2. **Expect mean field to be under-dispersed** on scale parameters of hierarchical models
#    (like $\tau$ here): read the `sd_ratio` column, not just the means.
# 3. **Read IWAE-trained guides through their weights** (`resample=True`): raw draws are
#    over-dispersed on purpose.
# 4. **When MCMC is affordable, compare once** (`run_nuts` + `compare`) for a model class, then
#    rely on $\hat k$ for new data sets of the same model; `recommend` turns the comparison
#    into a decision that includes speed.
#
# **References.** Yao, Y., Vehtari, A., Simpson, D. & Gelman, A. (2018). Yes, but did it work?
# Evaluating variational inference. *ICML*. Vehtari, A., Simpson, D., Gelman, A., Yao, Y. &
# Gabry, J. (2024). Pareto smoothed importance sampling. *JMLR* 25(72). Hoffman, M. D. &
# Gelman, A. (2014). The No-U-Turn sampler. *JMLR* 15, 1593-1623. Burda, Y., Grosse, R. &
# Salakhutdinov, R. (2016). Importance weighted autoencoders. *ICLR*. Magnusson, M., Bürkner,
# P. & Vehtari, A. (2023). posteriordb: a set of posteriors for Bayesian inference and
# probabilistic programming. Rubin, D. B. (1981). Estimation in parallel randomized
# experiments. *Journal of Educational Statistics* 6, 377-401.
