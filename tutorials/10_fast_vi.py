# %% [markdown]
# # 10. Fast variational inference: compiled steps, batched particles, corrected means
#
# VI's case against MCMC is speed, and speed has three parts in a Pyro program.
#
# 1. **Per-step overhead.** Each step of `pyro.infer.SVI` runs the model and the guide as
#    Python code: every `pyro.sample` passes through Pyro's messenger stack. For a small model
#    that Python work, not arithmetic, is the cost. Recording the whole step once (the
#    guide's draw, the model's log density, the gradient and the optimizer's update) as one
#    graph and replaying it removes most of it: `fit` does so by default for fits of 200 or
#    more steps (`jit="auto"`; `jit=True` always, `jit=False` never).
# 2. **Particles.** More particles per step (IWAE, Rényi bounds, or just a less noisy ELBO)
#    cost little when they are evaluated as one batch over an extra plate instead of a loop;
#    `fit` finds the model's plates and does that by default.
# 3. **What is computed from the fit.** A Gaussian guide can be close to the posterior without
#    having exactly its means. Importance sampling with the guide as proposal corrects them,
#    $\hat E[f] = \sum_s \tilde w_s f(z_s)$ with Pareto-smoothed self-normalised weights
#    $\tilde w_s \propto p(x, z_s)/q(z_s)$ (Vehtari et al., 2024), and says through $\hat k$
#    when the correction can be trusted: `VIResult.importance_means()`.
#
# This notebook measures each part on the eight-schools model and ends with the question that
# matters: how long until every posterior mean is within 0.1 posterior sd of the truth, for VI
# and for NUTS.

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from pyro.infer import SVI

import ppl_vi
from ppl_vi.elbos import IWAE
from ppl_vi.guides import MeanField
from ppl_vi.models import eight_schools
from ppl_vi.notebooks import smoke, steps

torch.set_num_threads(1)
data = eight_schools.load_data()
reference = eight_schools.reference_draws()
NUM_STEPS = steps(1000, 30)


def max_error(means):
    """Largest |mean - reference mean| / reference sd over mu, tau and theta_t."""
    return max(
        float(np.max(np.abs(np.asarray(means[k]) - reference[k].mean(0)) / reference[k].std(0)))
        for k in ("mu", "tau", "theta_t")
    )


# %% [markdown]
# ## 1. Compiled steps
#
# The same fit twice, eager (`jit=False`) and compiled (`jit=True`). The first step runs
# eagerly; at the second, `torch.fx` records the step by running Pyro's own code once (the
# parameter store's tensors, the data and the mini-batch indices are the graph's inputs,
# random draws are operations of the graph), and the recording is checked against an eager
# step with the same random numbers: the loss, every gradient and the Adam update. From then
# on the recorded graph runs as a TorchScript function. Recording draws no random numbers and
# the graph repeats the eager arithmetic, so both fits see the same particles and end at
# exactly the same parameters. `result.method_info["jit"]` says what ran.

# %%
runs = {}
for jit in (False, True):
    start = time.process_time()
    runs[jit] = ppl_vi.fit(
        eight_schools.model, **data, num_steps=NUM_STEPS, jit=jit, progress=False, seed=0
    )
    print(f"jit={jit!s:5}: {NUM_STEPS / (time.process_time() - start):7.0f} steps per CPU second")
difference = max(
    float((runs[False].params[k] - runs[True].params[k]).abs().max()) for k in runs[False].params
)
print(f"largest parameter difference between the two fits: {difference:.1e}")
print(runs[True].method_info["jit"])

# %% [markdown]
# Models whose structure depends on drawn values (`if z > 0:`, `.item()`) cannot be recorded:
# the recording would freeze one branch. `fit` notices (the recording reads a tensor as a
# Python number, or the check fails) and runs that model eagerly; with `jit=True` it says so
# in a warning that names the line, by default only in `method_info`. A recorded step also no
# longer runs the model's Python code: a model that keeps Python state between steps (a
# counter, a global a callback changes) needs `jit=False`.


# %%
def branching_model():
    z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
    scale = 1.0 if z.item() > 0 else 3.0
    pyro.sample("x", pyro.distributions.Normal(z, scale), obs=torch.tensor(1.0))


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ppl_vi.fit(branching_model, num_steps=5, jit=True, progress=False, polish=None)
print([str(w.message) for w in caught if "jit" in str(w.message)][0])

# %% [markdown]
# ## 2. Particles in one batch
#
# IWAE with $K$ particles per step, evaluated as a batch (`vectorize_particles=True`, what `fit`
# chooses) or one particle at a time. CPU milliseconds per `pyro.infer.SVI` step:


# %%
SVI_STEPS = steps(100, 5)


def ms_per_step(k, vectorize, n=SVI_STEPS):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = IWAE(num_particles=k, vectorize_particles=vectorize, max_plate_nesting=1)
    svi = SVI(
        eight_schools.model, MeanField(eight_schools.model), pyro.optim.Adam({"lr": 0.01}), elbo
    )
    svi.step(**data)
    start = time.process_time()
    for _ in range(n):
        svi.step(**data)
    return (time.process_time() - start) / n * 1e3


ks = [1, 4, 16, 64]
batched = [ms_per_step(k, True) for k in ks]
looped = [ms_per_step(k, False) for k in ks]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(ks, looped, "o-", label="one particle at a time")
ax.plot(ks, batched, "o-", label="one batch (vectorized)")
ax.set(xscale="log", yscale="log", xlabel="particles K", ylabel="ms per step", xticks=ks)
ax.set_xticklabels(ks)
ax.legend()
ax.set_title("IWAE on eight schools")
plt.show()
print(
    f"K=64: batched {batched[-1] / batched[0]:.1f}x the time of K=1, "
    f"looped {looped[-1] / looped[0]:.0f}x"
)

# %% [markdown]
# ## 3. Time to accuracy: VI against NUTS
#
# The recipe: a full-rank Gaussian guide (`guide="full_rank"`: the posterior's correlations
# matter on the way to its means), 32 batched particles per step (a less noisy gradient lets a
# larger learning rate work), compiled steps, and importance-corrected means. For a ladder of
# step counts, each fit's wall time (set-up and 16,000 importance draws included) and its
# largest mean error in reference sds; NUTS (1 chain, 500 warm-up + 1000 draws) for comparison.

# %%
ladder = [20, 40] if smoke() else [125, 250, 500, 1000]
vi_times, vi_errors, khats = [], [], []
for num_steps in ladder:
    start = time.perf_counter()
    result = ppl_vi.fit(
        eight_schools.model,
        **data,
        guide="full_rank",
        num_particles=32,
        lr=0.1,
        jit=True,
        num_steps=num_steps,
        convergence=None,
        progress=False,
        seed=0,
    )
    means, khat = result.importance_means(steps(16000, 2000), seed=0)
    vi_times.append(time.perf_counter() - start)
    vi_errors.append(max_error({k: v.numpy() for k, v in means.items()}))
    khats.append(khat)
plain = result.sample(steps(16000, 2000), seed=0)
plain_error = max_error({k: v.numpy().mean(0) for k, v in plain.items()})
print(
    f"the last fit's own means: {plain_error:.3f} sd off; "
    f"importance-corrected: {vi_errors[-1]:.3f} sd (k-hat {khats[-1]:.2f})"
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    nuts = ppl_vi.run_nuts(
        eight_schools.model,
        **data,
        num_warmup=steps(500, 20),
        num_samples=steps(1000, 20),
        progress=False,
        seed=0,
    )
nuts_error = max_error({k: v.numpy().mean(0) for k, v in nuts.samples.items()})

fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.plot(vi_times, vi_errors, "o-", label="ppl-vi: full rank, jit, PSIS means")
for i, (t, e, n) in enumerate(zip(vi_times, vi_errors, ladder, strict=True)):
    offset = (0, 8) if i % 2 == 0 else (0, -14)  # alternate above and below the line
    ax.annotate(f"{n}", (t, e), textcoords="offset points", xytext=offset, fontsize=8, ha="center")
ax.plot([nuts.wall_time], [nuts_error], "s", color="C3", label="Pyro NUTS")
ax.axhline(0.1, color="grey", ls="--", lw=1, label="0.1 reference sd")
ax.set(xscale="log", xlabel="wall seconds", ylabel="max |mean error| (reference sd)")
ax.set_ylim(0, max(0.15, 1.1 * max(vi_errors + [nuts_error])))
ax.set_title("labels: VI steps")
ax.legend()
plt.show()
reached = [t for t, e in zip(vi_times, vi_errors, strict=True) if e <= 0.1]
if reached:
    print(
        f"VI: {reached[0]:.2f} s to 0.1 sd; NUTS: {nuts.wall_time:.1f} s "
        f"({nuts_error:.3f} sd): {nuts.wall_time / reached[0]:.0f}x"
    )

# %% [markdown]
# The errors level off near 0.05 sd for both methods: that floor is the Monte Carlo error of the
# reference itself (2000 NUTS draws from ArviZ, about $1/\sqrt{\mathrm{ESS}}$ sd per mean), not
# a bias of either method.
#
# `benchmarks/run_all.py` repeats this over three seeds, on logistic regression and on twelve
# posteriordb posteriors, and against NumPyro's NUTS; its table is in the README. Two caveats
# from there: the recipe is only as good as $\hat k$ says (on a funnel or a posterior with
# correlations near $\pm 1$ it does not reach 0.1 sd, and $\hat k > 0.7$ says so), and
# NumPyro's sampler, compiled whole by XLA, is faster still on these small models.

# %% [markdown]
# ## 5. Without stochastic gradients: Pathfinder and batch-and-match
#
# Everything above still climbs the ELBO with noisy gradients and Adam, which is what makes VI
# slow and sensitive to its learning rate. Two newer methods fit a Gaussian with far fewer
# log-density gradients:
#
# - **Pathfinder** (Zhang et al., 2022) runs L-BFGS on $\log p$ from a random start. At each
#   iterate $x_l$ the L-BFGS history gives an inverse-Hessian estimate $\Sigma_l$ (a diagonal
#   plus a rank-$2J$ term), and $q_l = \mathcal N(x_l + \Sigma_l \nabla \log p(x_l),
#   \Sigma_l)$ is one Newton step away. Each $q_l$'s ELBO is estimated from a few draws and the
#   best is kept: often an iterate *before* the mode, where the Gaussian still has the
#   posterior's width. Several paths from different starts give a mixture, and draws are
#   importance-resampled with PSIS. `fit(guide="pathfinder")`.
# - **Batch and match** (Cai et al., 2024) draws a batch from $\mathcal N(\mu, \Sigma)$,
#   evaluates the scores $\nabla \log p$ there, and solves in closed form for the Gaussian
#   that matches them (a quadratic matrix equation), with a proximal step size
#   $\lambda_t = BD/t$. On a Gaussian target the target is a fixed point of every update.
#   `fit(guide="bam")`.
#
# Below, on the Bayesian linear regression of the zoo (11 coefficients, exact Gaussian
# posterior), each method's error against the number of log-density gradients it used:
# the worst mean error in posterior sds and the worst relative sd error.

# %%
from ppl_vi.models import bayes_linear_regression as blr  # noqa: E402

blr_data = blr.load_data()
exact = blr.exact_posterior(**blr_data)["beta"]


def errors(result):
    """Worst |mean error| (posterior sds) and worst |sd ratio - 1| of 4000 draws."""
    beta = result.sample(4000, seed=1)["beta"].double()
    mean_error = ((beta.mean(0) - exact.mean) / exact.stddev).abs().max()
    sd_error = (beta.std(0) / exact.stddev - 1).abs().max()
    return float(mean_error), float(sd_error)


curves = {"full-rank ADVI (Adam)": [], "batch and match": [], "Pathfinder": []}
quiet = {"progress": False, "seed": 0}
for n in [steps(k, 10) for k in (250, 500, 1000, 2000, 4000)]:
    r = ppl_vi.fit(blr.model, **blr_data, guide="full_rank", num_steps=n, **quiet)
    grads = int(0.8 * n) + (n - int(0.8 * n)) * 16  # the final phase uses 16 particles
    curves["full-rank ADVI (Adam)"].append((grads, *errors(r)))
for n in [steps(k, 5) for k in (5, 10, 20, 40, 80)]:
    r = ppl_vi.fit(blr.model, **blr_data, guide="bam", num_steps=n, convergence=None, **quiet)
    curves["batch and match"].append((n * 32, *errors(r)))
for iters in [steps(k, 5) for k in (5, 10, 20, 40, 1000)]:
    r = ppl_vi.fit(blr.model, **blr_data, guide="pathfinder",
                   guide_kwargs={"num_paths": 1, "max_iters": iters}, **quiet)  # fmt: skip
    curves["Pathfinder"].append((r.method_info["num_grads"], *errors(r)))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
for label, points in curves.items():
    g, m, sd = np.array(points).T
    axes[0].plot(g, m, "o-", label=label)
    axes[1].plot(g, sd, "o-", label=label)
for ax, ylabel, title in zip(
    axes, ("max |mean error| (posterior sd)", "max |sd ratio - 1|"), ("means", "sds"), strict=True
):
    ax.axhline(0.1, color="grey", ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="log-density gradients", ylabel=ylabel, title=title)
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()
for label, points in curves.items():
    g, m, sd = points[-1]
    print(f"{label:22s}: {g:6d} gradients -> mean error {m:.3f} sd, sd error {sd:.3f}")

# %% [markdown]
# Pathfinder gets within 0.05 sd in means and 5% in sds with a few dozen gradients, batch
# and match within 0.03 and 1.3% with a few thousand, while full-rank ADVI with Adam, after
# 4000 steps (16,000 gradients), has its means but still has sds a third off (the errors'
# floor, about 0.02-0.05, is the Monte Carlo error of 4000 draws, resampled ones for
# Pathfinder). Neither new method is magic:
# Pathfinder's Gaussian is only as good as the L-BFGS curvature estimate where it stops, and
# batch and match only fits Gaussians. That is why `fit(guide="auto")` checks each result
# before trusting it: Pathfinder first, batch and match from Pathfinder's Gaussian, then
# full-rank ADVI and an IAF, each judged by PSIS $\hat k$ (with its Monte Carlo error) and by
# whether importance weighting moves the sds. The verdict is on the result:

# %%
for name, model, model_data in (("linear regression", blr.model, blr_data),
                                 ("eight schools", eight_schools.model, data)):  # fmt: skip
    r = ppl_vi.fit(model, **model_data, guide="auto", progress=False)
    print(f"{name}: {r.verdict}\n")

# %% [markdown]
# On the linear regression batch and match lands on the exact Gaussian posterior (every
# importance weight equal: $\hat k = -\infty$). On eight schools no stage passes ($\hat k$
# of 0.7 or more: the posterior of $\tau$ is skewed and the school effects funnel towards it),
# and the verdict says so and says what to do: run NUTS. `benchmarks/gaussian_vi.py` runs all
# of these on the twelve posteriordb posteriors and a 100-dimensional logistic regression; its
# table is in the README.
#
# **References.** Zhang, L., Carpenter, B., Gelman, A. & Vehtari, A. (2022). Pathfinder:
# parallel quasi-Newton variational inference. *JMLR* 23(306). Cai, D., Modi, C.,
# Pillaud-Vivien, L., Margossian, C. C., Gower, R. M., Blei, D. M. & Saul, L. K. (2024). Batch
# and match: black-box variational inference with a score-based divergence. *ICML*.
# Vehtari, A., Simpson, D., Gelman, A., Yao, Y. & Gabry, J. (2024). Pareto
# smoothed importance sampling. *JMLR* 25(72). Kucukelbir, A., Tran, D., Ranganath, R., Gelman,
# A. & Blei, D. M. (2017). Automatic differentiation variational inference. *JMLR* 18(14).
# Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. *ICLR*.
