# %% [markdown]
# # 3. Reparameterisation and the variational autoencoder
#
# The score-function estimator of notebook 2 treats $\log p(x, z)$ as a black box and only
# uses its *values*. When the guide's draws can be written as a differentiable function of
# parameter-free noise, $z = g_\lambda(\varepsilon)$ with $\varepsilon \sim r(\varepsilon)$,
# e.g. $z = \mu + \sigma \odot \varepsilon$ with $\varepsilon \sim \mathcal{N}(0, I)$ for a
# diagonal Normal, the expectation no longer depends on $\lambda$ through the sampling
# distribution, and the gradient moves inside:
#
# $$
# \nabla_\lambda \mathbb{E}_{q_\lambda}[f_\lambda(z)]
#   = \mathbb{E}_{r(\varepsilon)}\big[\nabla_\lambda f_\lambda(g_\lambda(\varepsilon))\big]
#   \approx \frac{1}{K}\sum_{k=1}^K \nabla_\lambda f_\lambda\big(g_\lambda(\varepsilon_k)\big),
#   \qquad f_\lambda(z) = \log p(x, z) - \log q_\lambda(z).
# $$
#
# This *reparameterisation* (pathwise) gradient (Kingma & Welling, 2014; Rezende, Mohamed &
# Wierstra, 2014) uses $\nabla_z \log p(x, z)$, i.e. which direction improves the joint density,
# and is usually orders of magnitude less noisy than the score function. Pyro uses it
# automatically for every guide distribution that has `rsample`.
#
# **Amortisation.** A model with one latent $z_n$ per datum $x_n$ would need $N$ sets of
# variational parameters. An *amortised* guide instead learns an encoder network
# $f_\phi$ with $q_\phi(z_n \mid x_n) = \mathcal{N}(\mu_\phi(x_n), \mathrm{diag}\,
# \sigma_\phi(x_n)^2)$, so its cost does not grow with $N$ and a new datum is encoded in one
# forward pass. Paired with a generative network $p_\theta(x \mid z)$ (the decoder) and trained
# jointly on the ELBO, this is the variational autoencoder (VAE). ppl-vi's `guide="amortized"`
# (`ppl_vi.guides.Amortized`) builds the encoder from the shapes of the observed sites in the
# model's data plate.
#
# **Mini-batches.** With `subsample_size=B` the data plate draws $B$ of the $N$ images per
# step and Pyro scales their log densities by $N / B$, which gives an unbiased estimate of the
# full-data ELBO and its gradient at a cost independent of $N$ (Hoffman et al., 2013).

# %%
import logging
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from sklearn.datasets import load_digits

import ppl_vi
from ppl_vi.diagnostics import active_units
from ppl_vi.elbos import IWAE
from ppl_vi.guides.amortized import amortization_gap
from ppl_vi.models import vae_digits
from ppl_vi.notebooks import steps

warnings.filterwarnings("ignore", message=".*IProgress.*")
logging.getLogger("pyro").setLevel(logging.WARNING)
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
NUM_STEPS = steps(3000, 30)
DRAWS = steps(100_000, 1000)
EVAL_PARTICLES = steps(200, 4)

# %% [markdown]
# ## The two estimators on a one-line example
#
# Take $q = \mathcal{N}(\mu, \sigma^2)$ and $f(z) = z^2$, so
# $\partial_\mu \mathbb{E}_q[z^2] = 2\mu$. The score-function estimate of one draw is
# $f(z)\,(z - \mu)/\sigma^2$, the reparameterised one $f'(\mu + \sigma\varepsilon) =
# 2(\mu + \sigma\varepsilon)$. Both are unbiased; compare their spread.

# %%
gen = torch.Generator().manual_seed(0)
mu, sigma = 1.5, 1.0
eps = torch.randn(DRAWS, generator=gen)
z = mu + sigma * eps
score = z**2 * (z - mu) / sigma**2
reparam = 2 * z
print(f"exact gradient 2 mu = {2 * mu:.3f}; {DRAWS} single-draw estimates each")
print(f"score function:    mean {score.mean():.3f}, sd {score.std():.3f}")
print(f"reparameterised:   mean {reparam.mean():.3f}, sd {reparam.std():.3f}")
print(f"variance ratio score / reparam: {score.var() / reparam.var():.1f}")

# %% [markdown]
# ## A VAE on binarised digits
#
# `ppl_vi.models.vae_digits` is the VAE's generative model on scikit-learn's 8x8 digits,
# binarised at pixel value 8: $z_n \sim \mathcal{N}(0, I_L)$ and each of the 64 pixels
# $x_{nj} \mid z_n \sim \mathrm{Bernoulli}(\sigma(g_\theta(z_n)_j))$, with an MLP decoder
# $g_\theta$ (one hidden layer of 128 units). Its `latent_dim` option sets $L$; we use $L = 2$,
# so that the latent space can be drawn directly. The first 1500 images train, the last 297
# are held out. The guide is an `Amortized` encoder with one hidden layer of 128 ReLU units;
# each step uses a mini-batch of 100 images and one reparameterised draw per image.

# %%
labels = load_digits().target
train = vae_digits.load_data(split="train")
test = vae_digits.load_data(split="test")
y_train, y_test = labels[: vae_digits.NUM_TRAIN], labels[vae_digits.NUM_TRAIN :]
LATENT = 2
vae = ppl_vi.fit(
    vae_digits.model,
    **train,
    latent_dim=LATENT,
    subsample_size=100,
    guide="amortized",
    guide_kwargs={"hidden_dims": (128,)},
    num_steps=NUM_STEPS,
    lr=0.01,
    convergence=None,
    progress=False,
    seed=0,
)
print(vae)
print(f"training time: {vae.wall_time:.1f} s")

# %% [markdown]
# Each loss is a mini-batch estimate of the negative ELBO of all 1500 training images. On the
# held-out images we estimate, per image, the ELBO and the tighter importance-weighted bound
# (notebook 4) with many particles, and the *amortisation gap* (Cremer, Li & Duvenaud, 2018):
# how much ELBO per image is lost because the encoder's output is not the best Normal for that
# image (found by optimising each image's guide parameters separately, the decoder frozen).
# In the plot that follows, the held-out $-$ELBO (dashed) against the training curve shows how
# much the networks have fitted the 1500 training images more closely than new ones.

# %%
n_test = test["x"].shape[0]
with vae.param_scope(), torch.no_grad():
    pyro.set_rng_seed(1)
    elbo_test = (
        -Trace_ELBO(
            num_particles=EVAL_PARTICLES, vectorize_particles=True, max_plate_nesting=1
        ).loss(vae_digits.model, vae.guide, **test, latent_dim=LATENT)
        / n_test
    )
    iwae_test = (
        -IWAE(num_particles=EVAL_PARTICLES, max_plate_nesting=1).loss(
            vae_digits.model, vae.guide, **test, latent_dim=LATENT
        )
        / n_test
    )
gap = amortization_gap(
    vae,
    vae_digits.model,
    **test,
    latent_dim=LATENT,
    num_steps=steps(300, 5),
    num_particles=EVAL_PARTICLES,
)
print(
    f"held-out, per image: ELBO {elbo_test:.3f} nats, IWAE bound (K = {EVAL_PARTICLES}) "
    f"{iwae_test:.3f} nats"
)
print(
    f"amortisation gap: {gap.gap:.3f} +- {gap.stderr:.3f} nats per image "
    f"(optimised ELBO {gap.optimized_elbo:.3f})"
)

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(vae.losses / train["x"].shape[0], color="0.7", lw=0.4, label="mini-batch estimate")
w = max(1, min(100, len(vae.losses) // 5))
ax.plot(
    np.arange(w - 1, len(vae.losses)),
    np.convolve(vae.losses, np.ones(w) / w, "valid") / train["x"].shape[0],
    color="k",
    label=f"moving average ({w} steps)",
)
ax.axhline(-elbo_test, color="tab:red", ls="--", label="held-out -ELBO")
lo = np.percentile(vae.losses / train["x"].shape[0], 1)
ax.set_ylim(lo - 2, np.percentile(vae.losses / train["x"].shape[0], 99.5) + 2)
ax.set_xlabel("step")
ax.set_ylabel("-ELBO per image (nats)")
ax.set_title("VAE training on 1500 digits, mini-batches of 100")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The latent space
#
# The encoder's mean $\mu_\phi(x_n)$ places every image in the 2-D latent space. The model was
# never told the digit labels, yet images of the same digit should land close together, since
# the decoder must reconstruct them from two numbers. The dashed circles mark 1 and 2 standard
# deviations of the prior $\mathcal{N}(0, I)$, which the encodings are pulled towards by the KL
# term of the ELBO.

# %%
with vae.param_scope(), torch.no_grad():
    loc_train, scale_train = vae.guide.local_params(**train, latent_dim=LATENT)["z"]
    loc_test, scale_test = vae.guide.local_params(**test, latent_dim=LATENT)["z"]
print(
    f"mean encoder sd (train): {scale_train.mean(0).numpy().round(3)}; "
    f"sd of the encoder means: {loc_train.std(0).numpy().round(3)}"
)

fig, ax = plt.subplots(figsize=(7.5, 6.5))
cmap = plt.get_cmap("tab10")
for d in range(10):
    sel = y_train == d
    ax.scatter(loc_train[sel, 0], loc_train[sel, 1], s=6, color=cmap(d), alpha=0.6)
    cx, cy = np.median(loc_train[sel].numpy(), axis=0)
    ax.text(
        cx,
        cy,
        str(d),
        fontsize=16,
        weight="bold",
        color=cmap(d),
        ha="center",
        va="center",
        bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": cmap(d)},
    )
t = np.linspace(0, 2 * np.pi, 200)
for r in (1, 2):
    ax.plot(r * np.cos(t), r * np.sin(t), "k--", lw=0.6)
ax.set_aspect("equal")
ax.set_xlabel(r"$z_1$ (encoder mean)")
ax.set_ylabel(r"$z_2$ (encoder mean)")
ax.set_title("training images in latent space, coloured by digit (label at class median)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Reconstructions of held-out digits
#
# A held-out image is encoded to $\mu_\phi(x)$ and decoded back to pixel probabilities
# $\sigma(g_\theta(\mu_\phi(x)))$: we condition the model's `"z"` site on the encoder means and
# read the pixel logits the model returns. With only two latent dimensions the reconstruction
# keeps the digit's identity and rough shape, not every pixel.

# %%
with vae.param_scope(), torch.no_grad():
    logits = poutine.condition(vae_digits.model, data={"z": loc_test})(**test, latent_dim=LATENT)
recon = torch.sigmoid(logits).numpy()
pix_err = np.abs((recon > 0.5) - test["x"].numpy()).mean()
print(f"held-out pixels wrong after thresholding the reconstruction at 0.5: {pix_err:.3f}")

show = [int(np.flatnonzero(y_test == d)[0]) for d in range(10)]
fig, axes = plt.subplots(2, 10, figsize=(12, 2.8))
for j, i in enumerate(show):
    axes[0, j].imshow(test["x"][i].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
    axes[1, j].imshow(recon[i].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
    axes[0, j].set_title(f"digit {y_test[i]}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("original", fontsize=9)
axes[1, 0].set_ylabel("reconstr.", fontsize=9)
plt.suptitle("held-out digits (top) and their reconstructions from the 2-D code (bottom)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Decoding a grid of latent points
#
# Because the decoder is a generative model, every point of the latent space decodes to an
# image. Decoding a regular grid over the region where the prior has its mass shows how the
# digits morph into each other along the latent axes.

# %%
n_grid = 10
grid = torch.linspace(-2.0, 2.0, n_grid)
zz = torch.stack(torch.meshgrid(grid, grid.flip(0), indexing="xy"), -1).reshape(-1, 2)
with vae.param_scope(), torch.no_grad():
    logits = poutine.condition(vae_digits.model, data={"z": zz})(
        num_data=zz.shape[0], latent_dim=LATENT
    )
images = torch.sigmoid(logits).reshape(n_grid, n_grid, 8, 8).numpy()
fig, axes = plt.subplots(n_grid, n_grid, figsize=(7, 7))
for i in range(n_grid):
    for j in range(n_grid):
        axes[i, j].imshow(images[i, j], cmap="gray_r", vmin=0, vmax=1)
        axes[i, j].set_xticks([])
        axes[i, j].set_yticks([])
for j in range(n_grid):
    axes[-1, j].set_xlabel(f"{grid[j]:.1f}", fontsize=7)
for i in range(n_grid):
    axes[i, 0].set_ylabel(f"{grid.flip(0)[i]:.1f}", fontsize=7, rotation=0, labelpad=12)
fig.supxlabel(r"$z_1$")
fig.supylabel(r"$z_2$")
fig.suptitle("decoder pixel probabilities on a latent grid")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## KL warm-up and inactive units
#
# Early in training the decoder is poor, so the cheapest way to raise the ELBO is to make
# $q(z_n \mid x_n)$ equal the prior: the KL term drops to zero and the latent unit carries no
# information, and a unit that has collapsed this way rarely recovers. *KL annealing* (a
# "warm-up"; Bowman et al., 2016; Sønderby et al., 2016) trains on
#
# $$
# \mathcal{L}_\beta = \mathbb{E}_q\big[\log p_\theta(x \mid z)\big]
#   - \beta_t\, \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big),
# \qquad \beta_t = \min\big(1, (t + 1) / T\big),
# $$
#
# so the reconstruction term dominates while the decoder learns; at $\beta = 1$ it is the ELBO
# again. `fit(..., kl_anneal=T)` scales every latent site's $\log p - \log q$ by $\beta_t$
# (observed sites keep weight 1); `result.losses` holds the annealed losses that the steps
# minimised and `result.full_losses` the negative ELBO on the same draws.
#
# We count *active units* (Burda, Grosse & Salakhutdinov, 2016): unit $u$ is active when
# $A_u = \mathrm{Cov}_x\big(\mathbb{E}_{q(u \mid x)}[u]\big) > 0.01$, i.e. when the encoder's
# mean for that unit changes with the image (`ppl_vi.diagnostics.active_units`). With 16
# latent units, more than this small data set needs, we train the same VAE twice, with and
# without a warm-up over the first third of the steps.

# %%
WIDE = 16
warm = {}
for label, anneal in (("no warm-up", None), ("warm-up", max(1, NUM_STEPS // 3))):
    fitted = ppl_vi.fit(
        vae_digits.model,
        **train,
        latent_dim=WIDE,
        subsample_size=100,
        guide="amortized",
        guide_kwargs={"hidden_dims": (128,)},
        num_steps=NUM_STEPS,
        lr=3e-3,
        kl_anneal=anneal,
        convergence=None,
        progress=False,
        seed=0,
    )
    with fitted.param_scope(), torch.no_grad():
        pyro.set_rng_seed(2)
        bound = -IWAE(num_particles=EVAL_PARTICLES, max_plate_nesting=1).loss(
            vae_digits.model, fitted.guide, **test, latent_dim=WIDE
        )
    units = active_units(fitted, **test, latent_dim=WIDE)
    warm[label] = (fitted, units)
    print(
        f"{label:10s}: held-out IWAE bound (K = {EVAL_PARTICLES}) {bound / n_test:.3f} nats per "
        f"image, active units {units.total} of {WIDE}"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for (label, (fitted, units)), color in zip(warm.items(), ("tab:blue", "tab:orange"), strict=True):
    a_u = np.sort(units.variances["z"])[::-1]
    axes[0].bar(
        np.arange(WIDE) + (0.2 if label == "warm-up" else -0.2), a_u, width=0.4, color=color,
        label=f"{label} ({units.total} active)",
    )  # fmt: skip
    per_image = train["x"].shape[0]
    w = max(1, min(100, len(fitted.losses) // 5))
    smooth = np.convolve(fitted.losses, np.ones(w) / w, "valid") / per_image
    axes[1].plot(np.arange(w - 1, len(fitted.losses)), smooth, color=color, label=f"{label}: loss")
    if label == "warm-up":
        full = np.convolve(fitted.full_losses, np.ones(w) / w, "valid") / per_image
        axes[1].plot(
            np.arange(w - 1, len(fitted.losses)), full, color=color, ls="--",
            label="warm-up: -ELBO (beta = 1)",
        )  # fmt: skip
axes[0].axhline(0.01, color="k", lw=0.8, ls=":", label="threshold 0.01")
axes[0].set_yscale("log")
axes[0].set_xlabel("latent unit (sorted by $A_u$)")
axes[0].set_ylabel("$A_u$ on held-out images")
axes[0].legend(fontsize=8)
axes[1].set_xlabel("step")
axes[1].set_ylabel("per image (nats)")
axes[1].set_ylim(
    np.percentile(warm["no warm-up"][0].losses / per_image, 1) - 2,
    np.percentile(warm["no warm-up"][0].losses / per_image, 99) + 5,
)
axes[1].legend(fontsize=8)
axes[1].set_title("annealed loss and full -ELBO (moving averages)")
plt.tight_layout()
plt.show()

# %% [markdown]
# During the warm-up the annealed loss (solid) sits below the full negative ELBO (dashed):
# the missing part is $(1 - \beta_t)$ times the KL term. Whether a warm-up keeps more units
# alive depends on the data and the budget; on these small images the printout above gives the
# answer for this run, and `benchmarks/dying_units.py` repeats the comparison with 32 units
# (README, "Dying units").

# %% [markdown]
# **What to take away.** Reparameterisation moves the gradient inside the expectation and uses
# the model's own gradient, which makes it far less noisy than the score function (the toy
# example above and notebook 2). An amortised encoder replaces per-datum variational
# parameters with one network, so mini-batch training scales to large data sets and a new
# datum costs a single forward pass; the price is the amortisation gap measured above, the
# ELBO lost because one network cannot be optimal for every datum (Cremer et al., 2018;
# semi-amortised refinement, `guide_kwargs={"refine_steps": k}`, narrows it). The 2-D latent
# space of the VAE organises the digits by class without ever seeing a label. A KL warm-up
# (`kl_anneal=T`) lets the decoder learn before the KL term pulls the posterior onto the prior.
#
# **References.** Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. *ICLR*.
# Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic backpropagation and approximate
# inference in deep generative models. *ICML*.
# Hoffman, M. D., Blei, D. M., Wang, C. & Paisley, J. (2013). Stochastic variational inference.
# *JMLR* 14, 1303-1347.
# Cremer, C., Li, X. & Duvenaud, D. (2018). Inference suboptimality in variational
# autoencoders. *ICML*.
# Bowman, S. R., Vilnis, L., Vinyals, O., Dai, A. M., Jozefowicz, R. & Bengio, S. (2016).
# Generating sentences from a continuous space. *CoNLL*.
# Sønderby, C. K., Raiko, T., Maaløe, L., Sønderby, S. K. & Winther, O. (2016). Ladder
# variational autoencoders. *NeurIPS*.
# Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. *ICLR*.
# Kim, Y., Wiseman, S., Miller, A. C., Sontag, D. & Rush, A. M. (2018). Semi-amortized
# variational autoencoders. *ICML*.
