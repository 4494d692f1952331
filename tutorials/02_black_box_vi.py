# %% [markdown]
# # 2. Black-box VI: score-function gradients
#
# Notebook 1 maximised the ELBO
# $\mathcal{L}(\lambda) = \mathbb{E}_{q_\lambda}[\log p(x, z) - \log q_\lambda(z)]$ by
# differentiating *through* the draws $z = g_\lambda(\varepsilon)$ (the reparameterisation
# trick, notebook 3). That needs a differentiable sampling path, which discrete latents and
# many distribution families do not have. *Black-box VI* (Ranganath, Gerrish & Blei, 2014)
# only needs to evaluate $\log q_\lambda(z)$ and its gradient. Using
# $\nabla_\lambda q_\lambda = q_\lambda \nabla_\lambda \log q_\lambda$ (the *score-function*,
# *likelihood-ratio* or REINFORCE identity; Williams, 1992),
#
# $$
# \nabla_\lambda \mathcal{L}
#   = \mathbb{E}_{q_\lambda}\big[\nabla_\lambda \log q_\lambda(z)\,
#       \big(\log p(x, z) - \log q_\lambda(z)\big)\big]
#   \approx \frac{1}{K} \sum_{k=1}^{K} \nabla_\lambda \log q_\lambda(z^{(k)})\,
#       \big(\log p(x, z^{(k)}) - \log q_\lambda(z^{(k)})\big),
# $$
#
# (the term $\mathbb{E}_q[\nabla_\lambda \log q_\lambda] = 0$ drops out). The estimator is
# unbiased but its variance is large: every parameter's gradient is multiplied by the *whole*
# learning signal $\log p - \log q$, a sum over every site and every datum. Two classical
# remedies, both in ppl-vi's `elbo="rb_score"` (`ppl_vi.elbos.RBScoreFunctionELBO`):
#
# * **Rao-Blackwellisation.** For a guide that factorises, $q = \prod_s q_s(z_s)$, the score of
#   site $s$ only needs the terms of the signal that depend on $z_s$: the model densities in
#   its Markov blanket $\mathrm{mb}(s)$ and its own guide density,
#   $\nabla_{\lambda_s}\mathcal{L} = \mathbb{E}_q\big[\nabla_{\lambda_s}\log q_s(z_s)
#   \big(\sum_{c \in \mathrm{mb}(s)} \log p_c - \log q_s(z_s)\big)\big]$ (Ranganath et al.,
#   eq. 5). The other terms have zero mean against the score and only add noise. Within a
#   `pyro.plate`, each datum's site keeps only its own slice.
# * **Control variates.** For any scalar $a$,
#   $\mathbb{E}[f - a\,h] = \mathbb{E}[f]$ when $h = \nabla_\lambda \log q_\lambda$ (mean zero).
#   The variance-minimising $a^\star = \mathrm{Cov}(f, h) / \mathrm{Var}(h)$ is estimated per
#   parameter component; ppl-vi estimates it for particle $k$ from the *other* $K - 1$
#   particles, so the estimate stays exactly unbiased.
#
# This notebook measures what each remedy buys, against plain REINFORCE, Pyro's own
# `TraceGraph_ELBO` forced to use score functions, and the reparameterisation gradient; then it
# fits a model with discrete latents, where score functions are the only option.

# %%
import logging
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from matplotlib.patches import Patch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger

import ppl_vi
from ppl_vi.elbos import RBScoreFunctionELBO
from ppl_vi.models import eight_schools
from ppl_vi.models import sigmoid_belief_net as sbn
from ppl_vi.notebooks import steps

warnings.filterwarnings("ignore", message=".*IProgress.*")
logging.getLogger("pyro").setLevel(logging.WARNING)
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
FIT_STEPS = steps(1500, 30)
REPEATS = steps(300, 6)
K = 8  # particles per gradient estimate
SBN_STEPS = steps(1200, 10)
EVAL_PARTICLES = steps(2000, 20)

# %% [markdown]
# ## Gradient variance at fixed guide parameters
#
# Eight schools (non-centred) has three latent sites: $\mu$, $\tau$ and the eight
# $\tilde\theta_j$ in the plate `"school"`. We fit a mean-field guide with the ordinary
# reparameterised ELBO, freeze its parameters, and then draw many independent gradient
# estimates (each from $K = 8$ particles) with each estimator. The spread of these estimates
# around their common mean is the noise the optimiser has to fight.
#
# Pyro decides between pathwise and score-function gradients by whether a guide distribution
# has `rsample`. A small messenger switches `rsample` off for every guide site, which makes
# Pyro's `TraceGraph_ELBO` (and ppl-vi's estimators alike) use score functions on the *same*
# guide; this is how `benchmarks/elbos.py` and the test suite make the comparison
# like-for-like. `TraceGraph_ELBO` Rao-Blackwellises using the model's graph structure but has
# no leave-one-out control variate (it uses an optional baseline per site, off by default).


# %%
class ScoreFunctionOnly(Messenger):
    """Make every random guide site draw with sample(), so Pyro uses score functions."""

    def _pyro_sample(self, msg):
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if not msg["is_observed"] and type(base).__name__ != "Delta":
            msg["fn"].has_rsample_(False)


def score_function_guide(guide):
    def wrapped(*args, **kwargs):
        with ScoreFunctionOnly():
            return guide(*args, **kwargs)

    return wrapped


data = eight_schools.load_data()
fit = ppl_vi.fit(eight_schools.model, **data, num_steps=FIT_STEPS, progress=False, seed=0)
print(fit)

ESTIMATORS = {
    "REINFORCE": (
        lambda: RBScoreFunctionELBO(K, rao_blackwellize=False, control_variates=False),
        True,
    ),
    "TraceGraph_ELBO\n(score fn.)": (
        lambda: TraceGraph_ELBO(num_particles=K, vectorize_particles=True),
        True,
    ),
    "control variates\nonly": (
        lambda: RBScoreFunctionELBO(K, rao_blackwellize=False, control_variates=True),
        True,
    ),
    "Rao-Blackwell.\nonly": (
        lambda: RBScoreFunctionELBO(K, rao_blackwellize=True, control_variates=False),
        True,
    ),
    "rb_score\n(RB + CV)": (lambda: RBScoreFunctionELBO(K), True),
    "reparam.\n(Trace_ELBO)": (
        lambda: Trace_ELBO(num_particles=K, vectorize_particles=True),
        False,
    ),
}


def gradient_draws(guide, make_elbo, score_only, repeats, seed=1):
    """`repeats` independent gradient estimates at the current parameters: (repeats, P)."""
    guide = score_function_guide(guide) if score_only else guide
    elbo = make_elbo()
    out = []
    pyro.set_rng_seed(seed)
    for _ in range(repeats):
        with pyro.poutine.trace(param_only=True) as tr:
            elbo.loss_and_grads(eight_schools.model, guide, **data)
        params = {n: s["value"].unconstrained() for n, s in tr.trace.nodes.items()}
        names = sorted(params)
        out.append(torch.cat([params[n].grad.flatten() for n in names]).clone())
        for p in params.values():
            p.grad = None  # no optimiser step: the parameters stay where they are
    return torch.stack(out), names


grads, total_var, seconds = {"fitted": {}, "initial": {}}, {"fitted": {}, "initial": {}}, {}
for label, (make, score_only) in ESTIMATORS.items():
    start = time.process_time()
    with fit.param_scope():
        grads["fitted"][label], param_names = gradient_draws(fit.guide, make, score_only, REPEATS)
    seconds[label] = (time.process_time() - start) / REPEATS
    with pyro.get_param_store().scope():  # a fresh store: the guide at its initialisation
        pyro.set_rng_seed(0)
        init_guide = ppl_vi.guides.MeanField(eight_schools.model)
        init_guide(**data)
        grads["initial"][label], _ = gradient_draws(init_guide, make, score_only, REPEATS)
for where in grads:
    total_var[where] = {label: g.var(0).sum().item() for label, g in grads[where].items()}
print(
    f"{REPEATS} gradient estimates of K = {K} particles each, "
    f"{grads['fitted']['REINFORCE'].shape[1]} guide parameters"
)
print(f"{'':28s} {'total variance':>27s} {'fitted: x lower':>16s} {'ms per':>8s}")
print(
    f"{'estimator':28s} {'initial':>13s} {'fitted':>13s} {'than REINFORCE':>16s} {'estimate':>8s}"
)
for label in ESTIMATORS:
    v0, v1 = total_var["initial"][label], total_var["fitted"][label]
    ratio = total_var["fitted"]["REINFORCE"] / v1
    name = label.replace("\n", " ")
    print(f"{name:28s} {v0:13.4g} {v1:13.4g} {ratio:15.1f}x {1e3 * seconds[label]:8.2f}")

# %% [markdown]
# The table gives the total variance (summed over the guide's parameter components) at the
# guide's initialisation and at the fitted guide, and how many times smaller it is than plain
# REINFORCE at the fitted guide. Things to look for:
#
# * Rao-Blackwellisation removes, from each site's signal, the terms of the other sites and of
#   the other schools. Its estimate is the one `TraceGraph_ELBO` computes (ppl-vi's test suite
#   checks that they agree on the same draws), so those two rows coincide.
# * The leave-one-out control variate is the larger win on this model, and the two combine in
#   `rb_score`, at about the same cost per estimate.
# * The pathwise gradient of `Trace_ELBO` uses the *gradient* of $\log p$, not just its value.
#   Far from the optimum (the initial guide) it is much quieter than any score-function
#   estimator; near the optimum, where the guide already matches the posterior well, the
#   well-tuned score-function estimator comes close to it.
#
# The left panel below shows the spread of one component, the gradient with respect to the
# location of $\mu$'s guide, at the fitted guide; the right panel the total variances on a log
# scale at both points.

# %%
loc_mu = param_names.index(next(n for n in param_names if n.endswith("locs.mu")))
labels = list(ESTIMATORS)
short = [
    label.replace("TraceGraph_ELBO", "TraceGraph")
    .replace("control variates", "CV")
    .replace("Rao-Blackwell.", "RB")
    for label in labels
]
colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(labels)))
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
values = [grads["fitted"][label][:, loc_mu].numpy() for label in labels]
parts = axes[0].boxplot(values, showfliers=False, patch_artist=True)
for patch, c in zip(parts["boxes"], colors, strict=True):
    patch.set_facecolor(c)
    patch.set_alpha(0.6)
axes[0].set_xticks(range(1, len(labels) + 1), short, fontsize=8)
axes[0].axhline(0.0, color="k", lw=0.5)
axes[0].set_ylabel(r"estimate of $\partial(-\mathrm{ELBO}) / \partial\, \mathrm{loc}_\mu$")
axes[0].set_title(f"{REPEATS} estimates at the fitted guide (whiskers 1.5 IQR)")
x = np.arange(len(labels))
for shift, where, hatch in ((-0.2, "initial", "//"), (0.2, "fitted", None)):
    axes[1].bar(
        x + shift,
        [total_var[where][label] for label in labels],
        width=0.4,
        color=colors,
        hatch=hatch,
        edgecolor="k",
        lw=0.5,
    )
axes[1].legend(
    handles=[
        Patch(facecolor="w", edgecolor="k", hatch="//", label="initial guide"),
        Patch(facecolor="w", edgecolor="k", label="fitted guide"),
    ],
    fontsize=8,
)
axes[1].set_yscale("log")
axes[1].set_xticks(x, short, fontsize=8)
axes[1].set_ylabel("total gradient variance (log scale)")
n_par = grads["fitted"]["REINFORCE"].shape[1]
axes[1].set_title(f"variance summed over {n_par} guide parameters")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Variance reduction pays off in optimisation
#
# Lower variance means the optimiser can take larger, cleaner steps. We fit eight schools from
# scratch with the three score-function variants (the `ScoreFunctionOnly` wrapper around a
# fresh mean-field guide) and the same learning rate, and compare the ELBO trace with the
# reparameterised fit above.


# %%
def score_fit(elbo, seed=0):
    guide = ppl_vi.guides.MeanField(eight_schools.model)
    return ppl_vi.fit(
        eight_schools.model,
        **data,
        guide=score_function_guide(guide),
        elbo=elbo,
        num_steps=FIT_STEPS,
        lr=0.01,
        progress=False,
        seed=seed,
        convergence=None,
    )


runs = {
    "REINFORCE": score_fit(RBScoreFunctionELBO(K, rao_blackwellize=False, control_variates=False)),
    "Rao-Blackwell. only": score_fit(RBScoreFunctionELBO(K, control_variates=False)),
    "rb_score (RB + CV)": score_fit(RBScoreFunctionELBO(K)),
}
runs["reparam. (Trace_ELBO)"] = fit
final = {}
for label, r in runs.items():
    log_p, log_q = r.log_weights(steps(4000, 50), seed=2)
    final[label] = (log_p - log_q).mean().item()
    print(
        f"{label:24s} final ELBO {final[label]:9.3f}   mean loss of last 200 steps "
        f"{r.losses[-200:].mean():9.3f}"
    )


# %%
def smooth(y, width=50):
    width = max(1, min(width, len(y) // 5 or 1))
    return np.convolve(y, np.ones(width) / width, mode="valid")


plt.figure(figsize=(7, 4))
curves = {label: -smooth(r.losses) for label, r in runs.items()}
for (label, y), c in zip(
    curves.items(), plt.cm.viridis(np.linspace(0, 0.9, len(runs))), strict=True
):
    plt.plot(y, color=c, label=label)
top = max(y.max() for y in curves.values())
plt.ylim(max(min(y.min() for y in curves.values()), top - 40) - 2, top + 3)
plt.xlabel("step")
plt.ylabel("ELBO estimate (moving average of 50 steps)")
plt.title("eight schools, mean-field guide, Adam lr 0.01")
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# All four runs optimise the same objective, so they should end near the same ELBO when they
# converge; the printed final ELBOs (4000 fresh draws from each fitted guide) say how close
# each got in the same number of steps. The curves show how noisy and how fast each one is.
#
# ## Discrete latents: a sigmoid belief network
#
# Where score functions are indispensable is a model with discrete latent variables. The
# sigmoid belief network of Neal (1992) (`ppl_vi.models.sigmoid_belief_net`) has two layers of
# binary units above binarised 8x8 digits,
# $h^{(2)} \to h^{(1)} \to x$, each unit Bernoulli with a logistic link. A Bernoulli draw has
# no reparameterisation, so `Trace_ELBO` cannot give the guide a gradient. We learn the
# generative weights (point estimates, variational EM) together with a fully factorised
# Bernoulli guide with free logits per image (`sbn.local_bernoulli_guide`), using small layers
# ($K_1 = 8$, $K_2 = 4$) so that the exact $\log p(x)$ can be computed by summing over all
# $2^{12}$ hidden configurations. Each step uses a mini-batch of 100 of the 500 images
# (`subsample_size`), whose log densities Pyro scales by $N/B$.

# %%
K1, K2 = 8, 4
sbn_data = sbn.load_data(split="train", n=steps(500, 40))
n_img = sbn_data["x"].shape[0]
batch = min(100, n_img)
sbn_runs = {}
for label, elbo in {
    "REINFORCE": RBScoreFunctionELBO(K, rao_blackwellize=False, control_variates=False),
    "rb_score (RB + CV)": RBScoreFunctionELBO(K),
}.items():
    pyro.clear_param_store()
    start = time.perf_counter()
    sbn_runs[label] = ppl_vi.fit(
        sbn.model,
        **sbn_data,
        K1=K1,
        K2=K2,
        subsample_size=batch,
        guide=sbn.local_bernoulli_guide,
        elbo=elbo,
        num_steps=SBN_STEPS,
        lr=0.05,
        progress=False,
        seed=0,
        convergence=None,
        polish=None,
    )
    print(f"{label}: {SBN_STEPS} steps in {time.perf_counter() - start:.1f} s")

# %% [markdown]
# After training, we estimate each image's ELBO with many particles and compare it with the
# exact $\log p(x)$ under the *learned* generative weights of the same run. The difference is
# the KL divergence from the factorised guide to the exact posterior over hidden units.


# %%
def per_image_elbo(result):
    estimator = Trace_ELBO(
        num_particles=EVAL_PARTICLES, vectorize_particles=True, max_plate_nesting=1
    )
    with result.param_scope(), torch.no_grad():
        total = -estimator.loss(sbn.model, sbn.local_bernoulli_guide, **sbn_data, K1=K1, K2=K2)
    return total / n_img


for label, r in sbn_runs.items():
    params = {name: r.params[name] for name in sbn.PARAM_NAMES}
    exact = sbn.exact_log_likelihood(sbn_data["x"], params, K1=K1, K2=K2).mean().item()
    elbo = per_image_elbo(r)
    print(
        f"{label:20s} per image: ELBO {elbo:8.3f}   exact log p(x) {exact:8.3f}   "
        f"gap {exact - elbo:6.3f} nats"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for (label, r), c in zip(sbn_runs.items(), ["tab:orange", "tab:blue"], strict=True):
    axes[0].plot(-r.losses / n_img, color=c, alpha=0.25, lw=0.5)
    axes[0].plot(
        np.arange(len(smooth(r.losses))) + 25, -smooth(r.losses) / n_img, color=c, label=label
    )
axes[0].set_xlabel("step")
axes[0].set_ylabel("ELBO per image (mini-batch estimate)")
lows = [np.percentile(-r.losses / n_img, 5) for r in sbn_runs.values()]
axes[0].set_ylim(min(lows) - 2, max(np.max(-r.losses / n_img) for r in sbn_runs.values()) + 1)
axes[0].legend()
axes[0].set_title("sigmoid belief net, digits (faint: per step)")
r = sbn_runs["rb_score (RB + CV)"]
with r.param_scope():
    probs = torch.sigmoid(pyro.param("q_h1_logits")).detach().numpy()
im = axes[1].imshow(probs[:40].T, aspect="auto", cmap="gray_r", vmin=0, vmax=1)
axes[1].set_xlabel("image")
axes[1].set_ylabel(r"unit of $h^{(1)}$")
axes[1].set_title(r"rb_score guide: $q(h^{(1)}_k = 1)$ for the first 40 images")
plt.colorbar(im, ax=axes[1])
plt.tight_layout()
plt.show()

# %% [markdown]
# On the left, the two runs differ only in the gradient estimator. Look at the direction of
# each curve: the Rao-Blackwellised estimator with control variates should climb steadily,
# while plain REINFORCE can stall or even drift downwards, because the generative weights are
# learned jointly with a guide whose gradient is mostly noise. (The per-step values are
# mini-batch estimates scaled to the full data set, hence their spread.) The printed gap between
# each run's ELBO and the exact $\log p(x)$ under its own weights says how well each guide
# matches the exact posterior. On the right, the guide's probabilities per image and hidden
# unit for the `rb_score` run: values near 0 or 1 mean the guide is confident about which hidden
# causes explain an image, values near 0.5 that it is not; many units are pushed towards 0
# or 1, meaning the guide has become confident about which hidden causes explain each image.
#
# **What to take away.** The score-function estimator works for any guide whose density can be
# evaluated, discrete ones included, but plain REINFORCE is too noisy to be practical beyond
# toy problems. Restricting each site's learning signal to its Markov blanket
# (Rao-Blackwellisation) and subtracting a control variate cut its variance by orders of
# magnitude at the same cost per step. Even so, a pathwise (reparameterised) gradient is
# quieter still whenever it exists (notebook 3); reserve `elbo="rb_score"` for discrete or
# non-reparameterisable guides.
#
# **References.** Williams, R. J. (1992). Simple statistical gradient-following algorithms for
# connectionist reinforcement learning. *Machine Learning* 8, 229-256.
# Neal, R. M. (1992). Connectionist learning of belief networks. *Artificial Intelligence* 56,
# 71-113.
# Paisley, J., Blei, D. M. & Jordan, M. I. (2012). Variational Bayesian inference with
# stochastic search. *ICML*.
# Ranganath, R., Gerrish, S. & Blei, D. M. (2014). Black box variational inference.
# *AISTATS*.
# Mnih, A. & Gregor, K. (2014). Neural variational inference and learning in belief networks.
# *ICML*.
