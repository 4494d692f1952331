# %% [markdown]
# # 12. Ladder VAEs: a hierarchical guide that shares the model's top-down path
#
# Notebook 5 added structure to $q$ with a hierarchy *inside the guide*: the hierarchical
# variational model draws mean-field parameters $\lambda \sim q(\lambda)$ and then
# $z \mid \lambda$, and pays for the intractable marginal $q(z)$ with an auxiliary bound. This
# notebook is about the other place a hierarchy lives, the *model*. A hierarchical VAE stacks
# latent layers, top first:
#
# $$
# z_L \sim \mathcal{N}(0, I), \qquad
# z_i \mid z_{i+1} \sim \mathcal{N}\big(\mu_{p,i}(z_{i+1}), \operatorname{diag}
#   \sigma_{p,i}(z_{i+1})^2\big), \qquad
# x \mid z_1 \sim p_\theta(x \mid z_1),
# $$
#
# here `ppl_vi.models.ladder_vae` with two layers on the binarised digits of notebook 3 ($z_1$
# of 8 units next to the pixels, $z_2$ of 4 on top). The usual inference network runs the
# other way, **bottom up**: $q(z_1 \mid x)\, q(z_2 \mid z_1)$, each factor a Normal whose
# parameters an MLP computes from the layer below. The top layer then sees the data only
# through a noisy draw of $z_1$, and the guide and the model's top-down path never exchange
# information: in practice the upper layers often collapse onto the prior (their units become
# *inactive*).
#
# The **ladder VAE** (Sønderby, Raiko, Maaløe, Sønderby & Winther, 2016) keeps a bottom-up
# pass, but deterministic, $d_1 = f_1(x)$, $d_{i+1} = f_{i+1}(d_i)$, with heads giving a
# data-driven estimate $(\hat\mu_i, \hat\sigma_i)$ for every layer. It then samples **top down,
# in the model's own order**, merging each estimate with the model's conditional at the guide's
# draw of the layer above:
#
# $$
# q(z_L \mid x) = \mathcal{N}(\hat\mu_L, \hat\sigma_L^2), \qquad
# q(z_i \mid z_{i+1}, x) = \mathcal{N}(\mu_{q,i}, \sigma_{q,i}^2), \qquad
# \sigma_{q,i}^{2} = \frac{1}{\hat\sigma_i^{-2} + \sigma_{p,i}^{-2}}, \quad
# \mu_{q,i} = \big(\hat\mu_i\, \hat\sigma_i^{-2} + \mu_{p,i}\, \sigma_{p,i}^{-2}\big)\,
#   \sigma_{q,i}^2 .
# $$
#
# This is the product of two Gaussians, renormalised: precisions add, and the location is the
# precision-weighted average. It is also what exact inference does in a linear-Gaussian chain:
# if $p(x \mid z_i)$ seen as a function of $z_i$ is $\propto \mathcal{N}(z_i; \hat\mu_i,
# \hat\sigma_i^2)$, then $p(z_i \mid z_{i+1}, x) \propto p(z_i \mid z_{i+1})\, p(x \mid z_i)$ is
# exactly the merge. The guide's density stays a product of Normals, evaluated in closed form:
# unlike the HVM, no auxiliary bound is needed, because the guide samples in the order of its
# own factorisation. And $\mu_{p,i}, \sigma_{p,i}$ are the *model's* networks: the generative
# parameters get gradient from the guide too.
#
# `ppl_vi.guides.ladder.Ladder` builds this guide for any model whose per-datum latent sites
# are Normal layers in a data plate. It reads $p(z_i \mid z_{i+1})$ by running the model,
# conditioned on its draws so far, up to site $z_i$. With `inference="bottom_up"` the same class
# is the plain hierarchical guide, with the same widths, which we train alongside.

# %%
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch

import ppl_vi
from ppl_vi.diagnostics import active_units
from ppl_vi.elbos import IWAE
from ppl_vi.guides.ladder import Ladder, merge_gaussians
from ppl_vi.models import ladder_vae
from ppl_vi.notebooks import steps

warnings.filterwarnings("ignore", message=".*IProgress.*")
torch.set_num_threads(1)

NUM_STEPS = steps(3000, 30)  # Adam steps of each fit
PARTICLES = steps(1000, 20)  # IWAE draws per held-out image
AU_DRAWS = steps(100, 5)  # guide draws per image for the active units
WARMUP = steps(1000, 10)  # KL warm-up steps
GUIDES = {"ladder": "ladder", "plain (bottom up)": "bottom_up"}

# %% [markdown]
# ## The merge is a renormalised product
#
# A numerical check of the formula: for any $z$, $\log \mathcal{N}(z; \hat\mu, \hat\sigma^2) +
# \log \mathcal{N}(z; \mu_p, \sigma_p^2) - \log \mathcal{N}(z; \mu_q, \sigma_q^2)$ must be one
# constant, the log normaliser $\log \mathcal{N}(\hat\mu; \mu_p, \hat\sigma^2 + \sigma_p^2)$.
# A vague data estimate ($\hat\sigma \to \infty$) leaves the prior conditional untouched.

# %%
loc_hat, scale_hat, loc_p, scale_p = (
    torch.tensor(v, dtype=torch.float64) for v in (1.5, 0.4, -0.5, 1.0)
)
loc_q, scale_q = merge_gaussians(loc_hat, scale_hat, loc_p, scale_p)
z = torch.linspace(-5, 5, 11, dtype=torch.float64)
residual = (
    dist.Normal(loc_hat, scale_hat).log_prob(z)
    + dist.Normal(loc_p, scale_p).log_prob(z)
    - dist.Normal(loc_q, scale_q).log_prob(z)
)
normaliser = dist.Normal(loc_p, (scale_hat**2 + scale_p**2).sqrt()).log_prob(loc_hat)
print(f"merged: mu_q = {loc_q:.4f}, sigma_q = {scale_q:.4f}")
print(f"max |residual - log normaliser| over z: {(residual - normaliser).abs().max():.1e}")
vague = merge_gaussians(loc_hat, torch.tensor(1e6, dtype=torch.float64), loc_p, scale_p)
print(f"sigma_hat = 1e6: mu_q = {vague[0]:.6f}, sigma_q = {vague[1]:.6f} (prior: -0.5, 1.0)")

# %% [markdown]
# ## Training both guides, without and with a KL warm-up
#
# The same generative model (two layers, 128 hidden units per network) and the same widths in
# both guides (128 per layer); 1500 training images in mini-batches of 100, Adam at
# $3 \cdot 10^{-3}$, `Trace_ELBO`, the same seed. Sønderby et al. train with a *warm-up*: the
# KL part of the ELBO, $\log p(z) - \log q(z \mid x)$, is multiplied by $\beta$ rising linearly
# from 0 to 1, so that the decoder learns to use the latents before the KL term pulls them
# onto the prior. `ppl_vi.fit(..., kl_anneal=1000)` does this over the first 1000 steps; the
# fitted objective from then on is the ELBO itself. We train each guide both ways. The ladder's
# step runs the model's conditional inside the guide, so it costs more per step.

# %%
train, test = ladder_vae.load_data(), ladder_vae.load_data("test")
n_train, n_test = train["x"].shape[0], test["x"].shape[0]
fits = {}
for warmup in (None, WARMUP):
    for label, inference in GUIDES.items():
        key = (label, "no warm-up" if warmup is None else "warm-up")
        fits[key] = ppl_vi.fit(
            ladder_vae.model,
            **train,
            subsample_size=100,
            guide=Ladder,
            guide_kwargs={"hidden_dims": 128, "inference": inference},
            num_steps=NUM_STEPS,
            lr=3e-3,
            kl_anneal=warmup,
            progress=False,
            convergence=None,
            polish=None,
            seed=0,
        )
        loss = fits[key].losses[-100:].mean() / n_train
        print(f"{key[0]:18s} {key[1]:11s} {fits[key].wall_time:5.1f} s, training -ELBO {loss:.2f}")

# %% [markdown]
# ## Held-out log-likelihood and active units
#
# On the 297 held-out images, $\log p(x)$ per image is estimated with the importance-weighted
# bound with $K$ = 1000 draws from each guide (notebook 4); the standard error is over images,
# and the difference ladder $-$ plain is paired (the same images). Active units follow Burda,
# Grosse & Salakhutdinov (2016): unit $u$ is active if $A_u = \operatorname{Cov}_x\big(
# \mathbb{E}_{q}[u \mid x]\big) > 0.01$, i.e. if its posterior mean moves with the image
# (`ppl_vi.diagnostics.active_units`, which averages guide draws per image and removes their
# own spread). A collapsed unit has $q(u \mid x) \approx p(u)$ for every image.

# %%
per_image, units = {}, {}
for key, result in fits.items():
    with result.param_scope(), torch.no_grad():
        pyro.set_rng_seed(1)
        iwae = IWAE(num_particles=PARTICLES, max_plate_nesting=1)
        log_w = iwae.particles(ladder_vae.model, result.guide, (), test).log_weights  # (K, N)
    per_image[key] = torch.logsumexp(log_w, 0) - math.log(PARTICLES)
    units[key] = active_units(result, **test, num_samples=AU_DRAWS, seed=2)
    lp = per_image[key]
    print(
        f"{key[0]:18s} {key[1]:11s} log p(x) {lp.mean():7.3f} +- "
        f"{lp.std() / math.sqrt(n_test):.3f}, ELBO {log_w.mean():7.3f}; active units: "
        f"top z2 {units[key].active['z2']} of 4, z1 {units[key].active['z1']} of 8"
    )
for setting in ("no warm-up", "warm-up"):
    diff = per_image[("ladder", setting)] - per_image[("plain (bottom up)", setting)]
    print(
        f"ladder - plain, {setting}: {diff.mean():+.3f} +- "
        f"{diff.std() / math.sqrt(n_test):.3f} nats/image"
    )

# %% [markdown]
# ## What the ladder's merge does, unit by unit
#
# `Ladder.layer_params` returns, for one draw, the parts of each merge. The share of the
# precision that comes from the data, $w = \hat\sigma^{-2} / (\hat\sigma^{-2} +
# \sigma_p^{-2})$, says per unit of $z_1$ how much the posterior listens to the image ($w \to
# 1$) or to the top layer's prediction ($w \to 0$). The left panel shows $A_u$ per unit for
# the four fits (log scale; the dashed line is the 0.01 threshold), the right panel $w$ for the
# ladder's $z_1$, averaged over the held-out images.

# %%
shares = {}
for setting in ("no warm-up", "warm-up"):
    result = fits[("ladder", setting)]
    with result.param_scope(), torch.no_grad():
        pyro.set_rng_seed(3)
        z1 = result.guide.layer_params(**test)["z1"]
    precision_data, precision_prior = z1["data_scale"] ** -2, z1["prior_scale"] ** -2
    shares[setting] = (precision_data / (precision_data + precision_prior)).mean(0)
    print(f"ladder, {setting}: z1 units, mean over images of")
    print("  data share w:        ", shares[setting].numpy().round(3))
    print("  model's cond. scale: ", z1["prior_scale"].mean(0).numpy().round(3))

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
width = 0.2
for k, (key, au) in enumerate(units.items()):
    values = np.concatenate([au.variances["z2"], au.variances["z1"]])
    xs = np.arange(values.size) + (k - 1.5) * width
    color = "tab:blue" if key[0] == "ladder" else "tab:orange"
    hatch = "" if key[1] == "no warm-up" else "//"
    kwargs = {"color": color, "hatch": hatch, "edgecolor": "white", "label": ", ".join(key)}
    ax.bar(xs, np.clip(values, 1e-4, None), width, **kwargs)
ax.axhline(0.01, color="k", ls="--", lw=1)
ax.axvline(3.5, color="0.6", lw=1)
ax.set_yscale("log")
names = [f"z2[{i}]" for i in range(4)] + [f"z1[{i}]" for i in range(8)]
ax.set_xticks(range(12), names, rotation=60)
ax.set_ylabel(r"$A_u = \mathrm{Cov}_x(\mathbb{E}_q[u \mid x])$")
ax.set_title("activity per unit, held-out images (clipped at 1e-4)")
ax.legend(fontsize=8)
for k, (setting, share) in enumerate(shares.items()):
    hatch = "" if setting == "no warm-up" else "//"
    ax2.bar(
        np.arange(8) + (k - 0.5) * 0.4,
        share.numpy(),
        0.4,
        color="tab:blue",
        hatch=hatch,
        edgecolor="white",
        label=f"ladder, {setting}",
    )
ax2.set_ylim(0, 1)
ax2.set_xticks(range(8), names[4:], rotation=60)
ax2.set_ylabel("data share of the precision $w$")
ax2.set_title("ladder's z1: data vs top-down prior")
ax2.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Reading the results
#
# On these 1500 small images, with two shallow layers, the ladder does *not* beat the plain
# bottom-up guide. Without a warm-up it is clearly worse, by about 1.9 nats per image (more
# than ten paired standard errors), and its top layer collapses entirely: no unit of $z_2$ is
# active. The right panel shows what happened below it: six of the eight units of $z_1$ have a
# data share $w \approx 0$. The model made their conditional $p(z_1 \mid z_2)$ almost
# deterministic (scale 0.01 or less), the merge then copies the top-down prediction, and their
# KL term costs nothing. That is a cheap way to lower the KL early in training, and a trap:
# such a unit carries no information about the image of its own (its $A_u$ is above the
# threshold only because its mean follows the faint dependence of $z_2$ on $x$), and with
# $w \approx 0$ the merged location hardly depends on the data head, so the head gets almost no
# gradient to pull the unit back.
#
# The warm-up is the remedy Sønderby et al. prescribe: while $\beta$ is small the KL term cannot
# win, and the warmed-up ladder keeps three of the four top units active, with five units of
# $z_1$ listening mostly to the image ($w$ between 0.65 and 0.78). The gap to the plain guide
# shrinks to about 0.4 nats, still a few standard errors in the plain guide's favour. The plain
# guide hardly needs the warm-up here: its bound and its active units barely move.
# (`benchmarks/ladder.py` runs the same comparison. In exploratory runs without a warm-up, at
# 3000 and 10000 steps and for latent sizes up to 32 and 16 units, the ladder stayed 0.5 to 2
# nats behind.)
#
# The paper's gains come with two more ingredients: batch normalisation, and depth (up to five
# stochastic layers on MNIST), where a bottom-up guide must infer the top layers through a
# chain of noisy draws. With two shallow layers on 8x8 digits there is little at the top of the
# hierarchy for the ladder to rescue. A caution on the measure, finally: $A_u$ counts a unit
# whose posterior mean moves with $x$ for any reason, and in a ladder a unit with $w \approx 0$
# inherits its movement from the layer above.
#
# Practical notes:
#
# * `Ladder` needs Normal conditionals below the top (`dist.Normal(...).to_event(1)`, checked
#   when the guide is built); `inference="bottom_up"` works for any real-valued layers.
# * The generative parameters sit in both the model and the guide, so IWAE's DReG/STL gradients
#   do not apply (`gradient="reparam"`, the default, does).
# * A guide step runs the model up to each layer below the top (and once for the data), so a
#   ladder step costs 1.4 to 2 times a plain one here.
#
# **References.** Sønderby, C. K., Raiko, T., Maaløe, L., Sønderby, S. K. & Winther, O. (2016).
# Ladder variational autoencoders. NeurIPS. Burda, Y., Grosse, R. & Salakhutdinov, R. (2016).
# Importance weighted autoencoders. ICLR. Ranganath, R., Tran, D. & Blei, D. M. (2016).
# Hierarchical variational models. ICML.
