# %% [markdown]
# # 11. Bayesian neural networks: weight uncertainty and local reparameterization
#
# A Bayesian neural network (MacKay, 1992; Neal, 1996) puts a prior on every weight of a
# network $f_W$ and predicts with the posterior over weights instead of one fitted value:
#
# $$
# p(y^\ast \mid x^\ast, \mathcal{D}) = \int p(y^\ast \mid f_W(x^\ast))\, p(W \mid \mathcal{D})\,
#   \mathrm{d}W \approx \frac{1}{S} \sum_{s=1}^S p(y^\ast \mid f_{W^{(s)}}(x^\ast)),
#   \qquad W^{(s)} \sim q(W).
# $$
#
# *Bayes by Backprop* (Blundell et al., 2015) fits a mean-field Gaussian
# $q_\phi(W) = \prod_{ij} \mathcal{N}(W_{ij}; \mu_{ij}, \sigma_{ij}^2)$ by maximizing the ELBO
# with reparameterized gradients, i.e. ppl-vi's `guide="mean_field"`. Compared with a point
# estimate (MAP, the same network trained with the log prior as weight decay) the posterior
# spread widens the predictions where the data do not pin the function down; the price is
# twice the parameters and noisier gradients.
#
# **Local reparameterization** (Kingma, Salimans & Welling, 2015) lowers that noise. With a
# weight matrix drawn once per step, every datum of a mini-batch sees the same $W$, so the
# per-datum gradient terms are correlated and their noise does not average out over the batch.
# For a dense layer the pre-activation of datum $n$ is Gaussian given its input,
#
# $$
# b_n = x_n W \sim \mathcal{N}\big(x_n M,\ x_n^2 S^2\big)
#   \quad (M = [\mu_{ij}],\ S^2 = [\sigma_{ij}^2],\ x_n^2 \text{ elementwise}),
# $$
#
# so one can draw $b_n$ directly, with independent noise per datum. Each datum's expected
# log-likelihood, and hence the ELBO, is unchanged; only the dependence across data goes, and
# with it the part of the gradient variance that does not shrink with the batch size.
# `ppl_vi.local_reparam.LocalReparam(elbo)` applies it to any model whose dense products
# consume draws of a Normal guide site.

# %%
import logging
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta

import ppl_vi
from ppl_vi.local_reparam import LocalReparam
from ppl_vi.models import bnn
from ppl_vi.notebooks import steps
from ppl_vi.stats import expected_calibration_error

warnings.filterwarnings("ignore", message=".*IProgress.*")
logging.getLogger("pyro").setLevel(logging.WARNING)
torch.set_num_threads(1)
NUM_STEPS = steps(5000, 30)
DRAWS = steps(1000, 20)


def fit(x, y, guide="mean_field", elbo="elbo", lr=0.01, num_steps=NUM_STEPS, **model_kwargs):
    """A BNN fit with this notebook's common settings."""
    return ppl_vi.fit(
        bnn.model,
        x,
        y,
        guide=guide,
        elbo=elbo,
        num_steps=num_steps,
        lr=lr,
        convergence=None,
        progress=False,
        seed=0,
        **model_kwargs,
    )


# %% [markdown]
# ## The model
#
# `ppl_vi.models.bnn` is written the way Pyro users write BNNs: a `PyroModule` whose layers are
# `PyroModule[nn.Linear]` with `PyroSample` priors $\mathcal{N}(0, 1)$ on weights and biases,
# ReLU hidden units, a data plate that can subsample, and either a Normal likelihood with a
# latent noise sd $\sigma \sim \mathrm{HalfNormal}(1)$ or Bernoulli logits. Each layer computes
# `x @ W.mT + b` with `torch.matmul`, so that weights with extra dims on the left (vectorized
# particles, parallel `Predictive`) broadcast. `bnn.predictive_metrics` draws from a fit's
# guide with `pyro.infer.Predictive` and returns the predictive mean and sd, the held-out
# log-likelihood per datum $\frac1N \sum_n \log \frac1S \sum_s p(y_n \mid x_n, W^{(s)})$, and
# for classification the predictive probabilities and accuracy.
#
# ## Regression: where the data end
#
# A one-dimensional toy problem makes the difference visible: 120 noisy points of a smooth
# curve with a gap in the middle, a network with one hidden layer of 50 units, fitted by
# mean-field VI and by MAP (`guide=AutoDelta`, the posterior mode). The bands are the central
# 95% of the predictive distribution (mean $\pm 1.96$ sd). MAP's band is its fitted noise only.

# %%
g = torch.Generator().manual_seed(0)
x_toy = torch.cat(
    [torch.rand(60, generator=g) * 1.6 - 2.0, torch.rand(60, generator=g) * 1.6 + 0.4]
)
y_toy = torch.sin(2.0 * x_toy) + 0.2 * x_toy + 0.15 * torch.randn(120, generator=g)
grid = torch.linspace(-3.5, 3.5, 200)
toy = {}
for name, guide in (("mean-field VI", "mean_field"), ("MAP", AutoDelta)):
    result = fit(x_toy[:, None], y_toy, guide=guide, lr=0.05)
    pyro.set_rng_seed(1)
    toy[name] = bnn.predictive_metrics(
        result, grid[:, None], torch.zeros(200), num_samples=DRAWS if guide != AutoDelta else 1
    )

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, (name, m) in zip(axes, toy.items(), strict=True):
    mean, sd = m["mean"].numpy(), m["sd"].numpy()
    ax.fill_between(
        grid, mean - 1.96 * sd, mean + 1.96 * sd, color="C0", alpha=0.25, label="95% band"
    )
    ax.plot(grid, mean, color="C0", label="predictive mean")
    ax.plot(x_toy, y_toy, "k.", ms=4, label="data")
    ax.axvspan(-0.4, 0.4, color="0.9", zorder=-1)
    ax.set(title=name, xlabel="x", ylim=(-4, 4))
axes[0].set_ylabel("y")
axes[0].legend(loc="lower right", fontsize=8)
plt.tight_layout()
plt.show()
for name, m in toy.items():
    sd = m["sd"]
    print(
        f"{name:14s} predictive sd: in the data {sd[60]:.2f}, in the gap {sd[100]:.2f}, "
        f"at x = 3.5 {sd[-1]:.2f}"
    )

# %% [markdown]
# VI's band widens beyond the data, where many networks fit the training points equally
# well; MAP commits to one of them and its band is as narrow there as where it has seen data.
# In the gap between the two clusters, though, VI's band hardly widens: a factorized Gaussian
# over the weights of a one-hidden-layer network cannot represent functions that are certain on
# both clusters and uncertain in between (Foong et al., 2019, 2020), a known limit of mean-field
# BNNs that the exact posterior (sampled with HMC in those papers) does not share.
#
# On the diabetes data (10 standardized features, 353 training and 89 test patients, target
# standardized) the same comparison with held-out numbers: the test log-likelihood per patient,
# and how often the central 95% predictive interval covers the test target.

# %%
train, test = bnn.load_data("regression", "train"), bnn.load_data("regression", "test")
diabetes = {}
for name, guide in (("mean-field VI", "mean_field"), ("MAP", AutoDelta)):
    result = fit(train["x"], train["y"], guide=guide)
    pyro.set_rng_seed(1)
    m = bnn.predictive_metrics(
        result, test["x"], test["y"], num_samples=DRAWS if guide != AutoDelta else 1
    )
    m["coverage"] = float(((test["y"] - m["mean"]).abs() <= 1.96 * m["sd"]).float().mean())
    diabetes[name] = m
    print(
        f"{name:14s} test log-lik {m['log_lik']:9.3f} per patient, RMSE {m['rmse']:.3f}, "
        f"95% interval covers {m['coverage']:.0%} of the test targets"
    )

fig, ax = plt.subplots(figsize=(6, 4))
for name, m in diabetes.items():
    ax.scatter(m["sd"], (test["y"] - m["mean"]).abs(), s=12, label=name)
top = max(float(m["sd"].max()) for m in diabetes.values())
ax.plot([0, top], [0, 1.96 * top], "k--", lw=1, label="|error| = 1.96 sd")
ax.set(xlabel="predictive sd", ylabel="|test error| (standardized)", xscale="log")
ax.set_title("diabetes test patients: error against predicted uncertainty")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# MAP drives the training residuals, and with them its noise estimate $\sigma$, towards zero:
# 50 hidden units can interpolate 353 patients. Its test errors then sit far outside its
# intervals and the log-likelihood collapses. The mean-field posterior keeps a realistic noise
# level. It errs the other way: the ELBO's KL term prunes most hidden units and the fit is
# close to a linear model (its RMSE is about that of linear regression); mean-field BNNs are
# known to underfit in this way (Trippe & Turner, 2018).
#
# ## Classification: calibration
#
# On the breast-cancer data (30 features, 455 training and 114 test tumours) both fits classify
# almost every test tumour correctly, so the question is whether their probabilities mean what
# they say. A *reliability diagram* bins the test predictions by confidence (the predicted
# probability of the predicted class) and plots each bin's accuracy against its mean
# confidence; the expected calibration error (ECE, Guo et al., 2017) is the average gap,
# weighted by the bins' sizes: `ppl_vi.stats.expected_calibration_error`.

# %%
train_c, test_c = bnn.load_data("classification", "train"), bnn.load_data("classification", "test")
cancer = {}
for name, guide in (("mean-field VI", "mean_field"), ("MAP", AutoDelta)):
    result = fit(train_c["x"], train_c["y"], guide=guide, task="classification")
    pyro.set_rng_seed(1)
    m = bnn.predictive_metrics(
        result,
        test_c["x"],
        test_c["y"],
        task="classification",
        num_samples=DRAWS if guide != AutoDelta else 1,
    )
    m["ece"], m["bins"] = expected_calibration_error(
        m["probs"], test_c["y"], num_bins=5, return_bins=True
    )
    cancer[name] = m
    print(
        f"{name:14s} test log-lik {m['log_lik']:.3f} per tumour, accuracy {m['accuracy']:.3f}, "
        f"ECE (5 bins) {m['ece']:.3f}"
    )

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for i, (name, m) in enumerate(cancer.items()):
    b = m["bins"]
    keep = b["count"] > 0
    axes[0].plot(b["confidence"][keep], b["accuracy"][keep], "o-", color=f"C{i}", label=name)
    for c, a, n in zip(b["confidence"][keep], b["accuracy"][keep], b["count"][keep], strict=True):
        axes[0].annotate(f"{n:.0f}", (c, a), textcoords="offset points", xytext=(5, -10 - 8 * i))
    confidence = torch.maximum(m["probs"], 1 - m["probs"]).numpy()
    axes[1].hist(confidence, bins=np.linspace(0.5, 1, 26), alpha=0.5, color=f"C{i}", label=name)
axes[0].plot([0.5, 1], [0.5, 1], "k--", lw=1, label="calibrated")
axes[0].set(
    xlabel="mean confidence in bin",
    ylabel="accuracy in bin",
    title="reliability diagram (numbers: test tumours in the bin)",
)
axes[1].set(
    xlabel="confidence", ylabel="test tumours", yscale="log", title="confidence of the predictions"
)
axes[0].legend(fontsize=8)
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# With 114 test tumours and one or two errors, the bins below 0.9 confidence hold a handful of
# predictions each, so the diagram and the ECE are noisy (one tumour moves the ECE by up to
# 0.01); the histogram shows the systematic part: averaging over the posterior pulls
# predictions away from 0 and 1.
#
# ## Local reparameterization: less gradient noise per step
#
# At the parameters of the diabetes VI fit, the gradient of the loss with respect to the first
# layer's weight means $M$ (a 50 x 10 matrix), estimated with one weight draw on a random
# mini-batch of $B$ patients, repeated many times: its total variance $\sum_{ij}
# \mathrm{Var}(\hat g_{ij})$, with plain weight sampling and with local reparameterization
# (`LocalReparam(Trace_ELBO())`). Both estimate the same gradient; error bars are 2 standard
# errors of the variance estimates.

# %%
GRAD_DRAWS = steps(200, 10)
vi_fit = fit(train["x"], train["y"])


def total_variance(elbo, batch):
    """sum_ij Var(g_ij) over GRAD_DRAWS draws, and its standard error."""
    loc = dict(vi_fit.guide.named_parameters())["locs.layers.0.weight_unconstrained"]
    grads = []
    for _ in range(GRAD_DRAWS):
        loss = elbo.differentiable_loss(
            bnn.model, vi_fit.guide, train["x"], train["y"], subsample_size=batch
        )
        grads.append(torch.autograd.grad(loss, loc)[0].reshape(-1))
    g = torch.stack(grads)
    sq = ((g - g.mean(0)) ** 2).sum(1) * GRAD_DRAWS / (GRAD_DRAWS - 1)
    return float(sq.mean()), float(sq.std() / GRAD_DRAWS**0.5)


batches = [8, 32, 128, 353]
variances = {"plain weight sampling": [], "local reparameterization": []}
with vi_fit.param_scope():
    for batch in batches:
        pyro.set_rng_seed(2)
        variances["plain weight sampling"].append(total_variance(Trace_ELBO(), batch))
        pyro.set_rng_seed(2)
        variances["local reparameterization"].append(total_variance(LocalReparam(), batch))

fig, ax = plt.subplots(figsize=(6, 4))
for name, values in variances.items():
    v, se = np.array(values).T
    ax.errorbar(batches, v, yerr=2 * se, fmt="o-", capsize=3, label=name)
ax.set(xscale="log", yscale="log", xlabel="mini-batch size B", ylabel="total gradient variance")
ax.set_xticks(batches)
ax.set_xticklabels(batches)
ax.set_title("first-layer weight means, diabetes BNN (50 hidden units)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for batch, (vp, _), (vl, _) in zip(batches, *variances.values(), strict=True):
    print(f"B = {batch:3d}: local / plain variance = {vl / vp:.3f}")

# %% [markdown]
# With plain sampling the variance levels off as $B$ grows: the part due to the shared weight
# draw does not average out over the batch (and is there even with all 353 patients, the
# full-data gradient). With local reparameterization it keeps falling roughly as $1/B$.
# A lower-variance gradient lets the same number of steps get further. Both fits below train on
# mini-batches of 32 for the same steps and learning rate.

# %%
curves = {}
for name, elbo in (("plain", Trace_ELBO()), ("local reparam.", LocalReparam(Trace_ELBO()))):
    result = fit(train["x"], train["y"], elbo=elbo, subsample_size=32, num_steps=steps(3000, 30))
    pyro.set_rng_seed(1)
    m = bnn.predictive_metrics(result, test["x"], test["y"], num_samples=DRAWS)
    curves[name] = result.losses / len(train["y"])
    print(
        f"{name:15s} test log-lik {m['log_lik']:.3f}, final loss per patient "
        f"{np.mean(curves[name][-200:]):.3f}, {result.wall_time:.1f} s "
        f"({result.method_info['jit']['main']['path']})"
    )

fig, ax = plt.subplots(figsize=(7, 3.5))
w = max(1, min(100, len(curves["plain"]) // 5))
for name, losses in curves.items():
    ax.plot(np.arange(w - 1, len(losses)), np.convolve(losses, np.ones(w) / w, "valid"), label=name)
low = min(np.percentile(c, 1) for c in curves.values())
ax.set(xlabel="step", ylabel="-ELBO per patient (moving average)")
ax.set_ylim(low - 0.1, np.percentile(curves["plain"], 90) + 0.5)
ax.set_title("mini-batches of 32")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **What to take away.** A mean-field Gaussian over the weights gives a network whose
# predictive spread grows away from the data and whose held-out log-likelihood does not
# collapse the way a MAP network's can; its probabilities are pulled away from 0 and 1. It
# tends to underfit (the KL term prunes units), which the comparison with NUTS on a small
# network in `benchmarks/bnn.py` shows. Local reparameterization is a free improvement for
# such guides: the same ELBO, a gradient whose variance falls with the batch size, and the
# step still compiles (`fit` records the replaced products).
#
# **References.** Blundell, C., Cornebise, J., Kavukcuoglu, K. & Wierstra, D. (2015). Weight
# uncertainty in neural networks. *ICML*.
# Kingma, D. P., Salimans, T. & Welling, M. (2015). Variational dropout and the local
# reparameterization trick. *NeurIPS*.
# MacKay, D. J. C. (1992). A practical Bayesian framework for backpropagation networks.
# *Neural Computation* 4(3).
# Neal, R. M. (1996). *Bayesian learning for neural networks*. Springer.
# Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. (2017). On calibration of modern neural
# networks. *ICML*.
# Trippe, B. & Turner, R. (2018). Overpruning in variational Bayesian neural networks.
# *arXiv:1801.06230*.
# Foong, A. Y. K., Li, Y., Hernández-Lobato, J. M. & Turner, R. E. (2019). 'In-between'
# uncertainty in Bayesian neural networks. *ICML Workshop on Uncertainty and Robustness in Deep
# Learning*.
# Foong, A. Y. K., Burt, D. R., Li, Y. & Turner, R. E. (2020). On the expressiveness of
# approximate inference in Bayesian neural networks. *NeurIPS*.
# Ritter, H. & Karaletsos, T. (2022). TyXe: Pyro-based Bayesian neural nets for PyTorch.
# *MLSys*.
