# %% [markdown]
# # 7. Stein operators: kernel Stein discrepancy and operator VI
#
# The KL divergence needs $\log q$ and the (unnormalised) $\log p$. Stein's method offers
# discrepancies that need only the **score** of the target, $s_p(u) = \nabla_u \log p(u)$, which
# does not depend on the normalising constant, and only *draws* from $q$. The Langevin-Stein
# operator acts on a smooth vector field $f: \mathbb{R}^d \to \mathbb{R}^d$ as
#
# $$
# (\mathcal{A}_p f)(u) = s_p(u)^\top f(u) + \nabla_u \cdot f(u),
# $$
#
# and integration by parts gives **Stein's identity**: $\mathbb{E}_{p}[(\mathcal{A}_p f)(u)] = 0$
# for every $f$ that decays fast enough (the boundary term vanishes). Under any other $q$,
# $\mathbb{E}_q[\mathcal{A}_p f] = \mathbb{E}_q[(s_p - s_q)^\top f]$ is nonzero for some $f$, so
#
# $$
# \mathbb{S}(q, p) = \sup_{f \in \mathcal{F}} \mathbb{E}_q[(\mathcal{A}_p f)(u)]
# $$
#
# is a discrepancy. Taking $\mathcal{F}$ the unit ball of a reproducing-kernel Hilbert space
# gives the **kernel Stein discrepancy** (Liu, Lee & Jordan, 2016; Chwialkowski, Strathmann &
# Gretton, 2016), with the closed form $\mathrm{KSD}^2 = \mathbb{E}_{u, u' \sim q}[u_p(u, u')]$
# for a *Stein kernel* $u_p$ built from $k$, $s_p$ and the derivatives of $k$; from $K$ draws it
# is estimated by the U-statistic $\frac{1}{K(K-1)}\sum_{i \ne j} u_p(u_i, u_j)$
# (`ppl_vi.elbos.stein.stein_kernel`, `kernel_stein_discrepancy`). **Operator variational
# inference** (Ranganath, Tran, Altosaar & Blei, 2016) instead takes $f$ a neural network and
# plays a min-max game: the guide minimises what the network maximises (here the normalised
# objective $(\mathbb{E}_q \mathcal{A}_p f)^2 / \mathbb{E}_q\|f\|^2$, `ovi_objective`).
#
# In ppl-vi both are `elbo="stein"` (`SteinOperatorELBO`, `test_function="kernel"` or
# `"neural"`), working on the unconstrained latent vector. Its *loss is the discrepancy*, not a
# negative ELBO: near zero at a good fit, occasionally slightly negative (a U-statistic), and
# not comparable with ELBO losses.

# %%
import logging
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro.distributions as dist
import torch

import ppl_vi
from ppl_vi import Polish
from ppl_vi.elbos.stein import SteinOperatorELBO, kernel_stein_discrepancy
from ppl_vi.models import bayes_linear_regression as blr
from ppl_vi.models import correlated_gaussian as cg
from ppl_vi.models import normal_normal
from ppl_vi.notebooks import steps

warnings.filterwarnings("ignore", message="IProgress not found")
logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" notes
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

NUM_DRAWS = steps(20_000, 500)  # draws for the Stein-identity check
KSD_PARTICLES = steps(400, 40)  # particles per KSD estimate in plots and callbacks
GRID = steps(25, 4)  # points per curve of the KSD-vs-misfit plot
KSD_STEPS = steps(300, 20)  # kernel Stein fits (normal_normal)
OVI_STEPS = steps(1000, 20)  # operator VI with a neural test function
KL_STEPS = steps(1000, 20)  # the ordinary ELBO
CG_STEPS = steps(600, 20)  # correlated Gaussian fits
BLR_STEPS = steps(1500, 20)  # linear regression, KSD fit
BLR_KL_STEPS = steps(5000, 20)  # linear regression, ELBO fit (the default budget)
EVERY = steps(10, 5)  # record the KSD every EVERY steps

# %% [markdown]
# ## Stein's identity, numerically
#
# Target: the correlated Gaussian $\mathcal{N}(\mu, \Sigma)$ with $\rho = 0.9$, score
# $s_p(u) = -\Sigma^{-1}(u - \mu)$. Test function $f(u) = \tanh(u)$ (element-wise), whose
# divergence is $\sum_d (1 - \tanh^2 u_d)$. Under exact draws the sample mean of $\mathcal{A}_p f$
# should be zero within its standard error; under a shifted or a too-narrow $q$ it should not.

# %%
target = cg.exact_posterior(**cg.load_data(rho=0.9))["z"]
precision = torch.linalg.inv(target.covariance_matrix)


def score(u):
    return -(u - target.loc) @ precision


def stein_operator_tanh(u):
    t = torch.tanh(u)
    return (score(u) * t).sum(-1) + (1 - t**2).sum(-1)


torch.manual_seed(0)
exact_draws = target.sample((NUM_DRAWS,))
candidates = {
    "exact p": exact_draws,
    "p shifted by (0.5, 0)": exact_draws + torch.tensor([0.5, 0.0]),
    "p scaled by 0.5": target.loc + 0.5 * (exact_draws - target.loc),
    "mean-field optimum": dist.Normal(target.loc, (1 - 0.81) ** 0.5).sample((NUM_DRAWS,)),
}
for name, u in candidates.items():
    a = stein_operator_tanh(u)
    print(f"{name:>22}: E[A_p f] = {a.mean():+.4f} (se {a.std() / len(a) ** 0.5:.4f})")

# %% [markdown]
# One test function can miss a discrepancy (the mean-field optimum is symmetric about the mean,
# as is $\tanh$, so $\mathbb{E}_q[\mathcal{A}_p f]$ may come out near zero for it); the KSD takes
# the supremum over a whole RKHS ball and sees every difference. Below, $\mathrm{KSD}^2$ (IMQ
# kernel, median bandwidth, U-statistic over 400 draws) of a Normal $q$ moved away from the
# target in three ways: its mean shifted along $z_1$, its scale multiplied by a factor, and its
# correlation changed from the true 0.9.


# %%
def ksd2(u):
    return kernel_stein_discrepancy(u, score(u), kernel="imq").item()


torch.manual_seed(1)
eps = torch.randn(KSD_PARTICLES, 2)
L = target.scale_tril
shifts = np.linspace(-2, 2, GRID)
factors = np.linspace(0.3, 2.0, GRID)
rhos = np.linspace(-0.5, 0.99, GRID)
ksd_shift = [ksd2(target.loc + eps @ L.T + torch.tensor([d, 0.0])) for d in shifts]
ksd_scale = [ksd2(target.loc + c * eps @ L.T) for c in factors]
ksd_rho = []
for r in rhos:
    Lr = torch.linalg.cholesky(torch.tensor([[1.0, r], [r, 1.0]]))
    ksd_rho.append(ksd2(target.loc + eps @ Lr.T))
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=False)
for ax, x, y, lab, ref in zip(
    axes,
    (shifts, factors, rhos),
    (ksd_shift, ksd_scale, ksd_rho),
    ("shift of the mean of $z_1$", "scale factor", "correlation of q"),
    (0.0, 1.0, 0.9),
    strict=True,
):
    ax.plot(x, y, "o-", ms=3)
    ax.axvline(ref, color="k", ls=":", lw=1, label="target")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xlabel(lab)
    ax.legend()
axes[0].set_ylabel(r"$\widehat{\mathrm{KSD}^2}(q, p)$")
fig.suptitle("the kernel Stein discrepancy needs only draws of q and the score of p")
plt.tight_layout()
plt.show()

# %% [markdown]
# Each curve should bottom out at the target (zero, within the estimator's noise) and rise on
# both sides. Note how slowly it rises for over-wide $q$ (scale factors above 1) compared with
# shifts: a known weakness of score-based discrepancies is that they see the regions $q$ covers
# through the kernel's smoothing, so some misfits are penalised only mildly.
#
# ## Fitting with the discrepancy, and watching it shrink
#
# On `normal_normal` (a Normal mean with known noise; exact Normal posterior, which the
# mean-field family contains) we fit three ways: KSD (IMQ kernel), operator VI (neural test
# function), and the ordinary ELBO. A callback measures the $\mathrm{KSD}^2$ of the current guide
# every few steps with 400 fresh draws, the same yardstick for all three. The Stein fits use a
# polish phase over the second half (learning rate decay and iterate averaging), as in the test
# suite.

# %%
data = normal_normal.load_data()
exact = normal_normal.exact_posterior(**data)["mu"]
probe = SteinOperatorELBO(kernel="imq", num_particles=KSD_PARTICLES)


def ksd_recorder(record):
    def callback(state):
        if state.step % EVERY == 0:
            with torch.random.fork_rng(devices=[]):  # leave the fit's random stream alone
                torch.manual_seed(123)
                u, s = probe.unconstrained_particles(normal_normal.model, state.guide, **data)
                record.append((state.step, kernel_stein_discrepancy(u, s, "imq").item()))

    return callback


runs = {
    "KSD (IMQ kernel)": dict(
        elbo=SteinOperatorELBO(kernel="imq"), num_steps=KSD_STEPS, lr=0.05, polish=Polish(0.5)
    ),
    "operator VI (neural f)": dict(
        elbo=SteinOperatorELBO(test_function="neural"),
        num_steps=OVI_STEPS,
        lr=0.02,
        polish=Polish(0.5),
    ),
    "ELBO (KL)": dict(elbo="elbo", num_steps=KL_STEPS, lr=0.01),
}
trajectories, nn_fits = {}, {}
for name, kw in runs.items():
    trajectories[name] = []
    nn_fits[name] = ppl_vi.fit(
        normal_normal.model,
        **data,
        progress=False,
        convergence=None,
        seed=0,
        callbacks=[ksd_recorder(trajectories[name])],
        **kw,
    )
print(f"exact posterior: mean {exact.loc.item():.4f}, sd {exact.scale.item():.4f}")
for name, res in nn_fits.items():
    loc, sd = res.params["MeanField.locs.mu"].item(), res.params["MeanField.scales.mu"].item()
    print(
        f"{name:>22}: mean {loc:.4f} ({(loc - exact.loc.item()) / exact.scale.item():+.3f} sd), "
        f"sd {sd:.4f} (ratio {sd / exact.scale.item():.3f}), "
        f"final KSD^2 {trajectories[name][-1][1]:.2e}, {res.wall_time:.1f} s"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for name, traj in trajectories.items():
    st, val = np.array(traj).T
    axes[0].plot(st, np.abs(val), label=name)
axes[0].set_yscale("log")
axes[0].set_xlabel("step")
axes[0].set_ylabel(r"$|\widehat{\mathrm{KSD}^2}|$ of the guide (400 draws)")
axes[0].set_title("the discrepancy during each fit")
axes[0].legend()
ksd_fit = nn_fits["KSD (IMQ kernel)"]
axes[1].plot(ksd_fit.losses, color="0.6", lw=0.6, label="per-step loss (16 particles)")
axes[1].axhline(0, color="k", lw=0.8)
axes[1].set_xlabel("step")
axes[1].set_ylabel(r"$\widehat{\mathrm{KSD}^2}$")
axes[1].set_title("the KSD fit's own loss is the discrepancy")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The left panel is on a log scale of $|\widehat{\mathrm{KSD}^2}|$: once a fit is close, the
# U-statistic fluctuates around zero, and its absolute value is noise at the level set by 400
# draws. What matters is the fall from the initial guide (mean-field Normal at its default
# start) to that noise floor, and how many steps each method needs for it. The right panel
# shows the KSD fit's per-step loss with 16 particles: an unbiased but noisy estimate of the
# same quantity, which crosses zero freely.
#
# ## Mean field on a correlated Gaussian: two divergences, two answers
#
# When the family does not contain the target, the divergence chooses *which* wrong answer you
# get. Both fits below are mean field on the $\rho = 0.9$ Gaussian; the KL optimum is known
# (marginal sds $\sqrt{1 - \rho^2} = 0.44$); the KSD optimum has no closed form, and we only
# report it.

# %%
cdata = cg.load_data(rho=0.9)
cg_fits = {
    "KSD (IMQ)": ppl_vi.fit(
        cg.model,
        **cdata,
        elbo=SteinOperatorELBO(kernel="imq"),
        num_steps=CG_STEPS,
        lr=0.05,
        polish=Polish(0.5),
        convergence=None,
        progress=False,
        seed=0,
    ),
    "ELBO (KL)": ppl_vi.fit(cg.model, **cdata, num_steps=CG_STEPS, progress=False, seed=0),
}
print("exact sds [1, 1]; KL-optimal mean-field sds", (1 - 0.81) ** 0.5)
cg_draws = {}
for name, res in cg_fits.items():
    z = res.sample(NUM_DRAWS, seed=1)["z"]
    cg_draws[name] = z.numpy()
    u = z[:KSD_PARTICLES]
    print(
        f"{name:>10}: means {z.mean(0).numpy().round(3)}, sds {z.std(0).numpy().round(3)}, "
        f"KSD^2 against the target {ksd2(u):.4f}"
    )

# %%
grid = np.linspace(-3.5, 3.5, 200)
g1, g2 = np.meshgrid(grid, grid)
dens = target.log_prob(torch.as_tensor(np.stack([g1, g2], -1))).exp().numpy()
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True)
for ax, (name, z) in zip(axes, cg_draws.items(), strict=True):
    ax.contour(g1, g2, dens, levels=6, colors="k", linewidths=0.8)
    ax.scatter(z[:1500, 0], z[:1500, 1], s=3, alpha=0.3)
    ax.set_title(f"mean field fitted by {name}\nsds {z.std(0).round(2)}")
    ax.set_xlabel("$z_1$")
    ax.set_aspect("equal")
axes[0].set_ylabel("$z_2$")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A known failure: KSD with mean field on Bayesian linear regression
#
# The test suite records that minimising the KSD with a mean-field guide on
# `bayes_linear_regression` (diabetes data, 11 strongly correlated coefficients, exact
# Gaussian posterior) stalls far from the posterior means: measured 1.5-1.7 posterior sds for
# RBF and IMQ kernels, 16 or 32 particles, 5000-10000 steps (the test is marked as an expected
# failure). We reproduce the shape of that result with a shorter run and set it next to the
# ordinary ELBO with fit's default budget, whose mean-field optimum has the exact means.

# %%
bdata = blr.load_data()
bpost = blr.exact_posterior(**bdata)["beta"]
bsd = bpost.covariance_matrix.diagonal().sqrt()
blr_fits = {
    "KSD (IMQ)": ppl_vi.fit(
        blr.model,
        **bdata,
        elbo=SteinOperatorELBO(kernel="imq"),
        num_steps=BLR_STEPS,
        lr=0.02,
        convergence=None,
        progress=False,
        seed=0,
    ),
    "ELBO (KL)": ppl_vi.fit(blr.model, **bdata, num_steps=BLR_KL_STEPS, progress=False, seed=0),
}
blr_err = {}
for name, res in blr_fits.items():
    loc = res.params["MeanField.locs.beta"]
    blr_err[name] = ((loc - bpost.loc) / bsd).numpy()
    print(
        f"{name:>10}: |mean error| in exact posterior sds: max {np.abs(blr_err[name]).max():.2f}, "
        f"median {np.median(np.abs(blr_err[name])):.2f} ({res.num_steps} steps, "
        f"{res.wall_time:.0f} s)"
    )

# %%
idx = np.arange(len(bsd))
plt.figure(figsize=(8, 3.5))
for k, (name, err) in enumerate(blr_err.items()):
    plt.bar(idx + 0.4 * k - 0.2, err, 0.4, label=name)
plt.axhline(0, color="k", lw=0.8)
plt.xticks(idx, [f"$\\beta_{{{i}}}$" for i in idx])
plt.ylabel("(fitted mean - exact mean) / exact sd")
plt.title("mean field on Bayesian linear regression: KSD misses the means")
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the bars as a reproduction of the recorded failure only if the KSD bars are far from
# zero while the ELBO bars sit near it (the printed maxima say how far). The test suite does not
# establish *why* the KSD stalls; one plausible reading is that with 11 correlated coordinates and
# a narrow mean-field $q$ the kernel, whose bandwidth is set by the particles, carries little
# signal about the location along the posterior's long correlated directions. A longer run does
# not fix it (the recorded 5000-10000 steps), so treat it as a limitation of KSD + mean field on
# this kind of posterior, not as an optimisation budget problem.
#
# **What to take away.** Stein's identity turns "is $q$ the posterior?" into "do $q$'s draws
# satisfy $\mathbb{E}[\mathcal{A}_p f] = 0$ for all test functions?", which needs only the score
# of the unnormalised posterior. The kernel Stein discrepancy is a closed-form, sample-based
# answer and works both as a diagnostic of any set of draws and as a training objective; operator
# VI replaces the kernel by a learned test function. As objectives they work well in small,
# well-conditioned problems (normal_normal) but can stall in higher-dimensional correlated ones
# (linear regression with mean field), and when the family is too small they choose a different
# approximation from the KL divergence's.
#
# **References.** Stein, C. (1972). A bound for the error in the normal approximation to the
# distribution of a sum of dependent random variables. *Proc. Sixth Berkeley Symposium* 2,
# 583-602. Liu, Q., Lee, J. D. & Jordan, M. I. (2016). A kernelized Stein discrepancy for
# goodness-of-fit tests. *ICML*. Chwialkowski, K., Strathmann, H. & Gretton, A. (2016). A
# kernel test of goodness of fit. *ICML*. Gorham, J. & Mackey, L. (2017). Measuring sample
# quality with kernels. *ICML*. Ranganath, R., Tran, D., Altosaar, J. & Blei, D. M. (2016).
# Operator variational inference. *NeurIPS*.
