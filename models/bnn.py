r"""Bayesian neural networks (a multilayer perceptron with a Normal prior on every weight).

The model of Neal (1996), MacKay (1992) and Blundell et al. (2015), for an MLP with layer widths
:math:`d_0 = D, d_1, \dots, d_L, d_{L+1} = 1`:

.. math::

    W_l &\sim \mathcal{N}(0, s_0^2 I), \quad b_l \sim \mathcal{N}(0, s_0^2 I),
        \qquad W_l \in \mathbb{R}^{d_{l} \times d_{l-1}},\ l = 1, \dots, L + 1, \\
    h_{n,0} &= x_n, \quad h_{n,l} = \phi(W_l h_{n,l-1} + b_l), \quad
        f(x_n) = W_{L+1} h_{n,L} + b_{L+1}, \\
    \text{regression:}\quad \sigma &\sim \mathrm{HalfNormal}(1), \quad
        y_n \mid W, \sigma \sim \mathcal{N}\big(f(x_n), \sigma^2\big), \\
    \text{classification:}\quad & y_n \mid W \sim \mathrm{Bernoulli}\big(
        \operatorname{logit}^{-1} f(x_n)\big), \qquad n = 1, \dots, N,

with prior scale :math:`s_0` (``prior_scale``, default 1.0), hidden widths
:math:`d_1, \dots, d_L` (``hidden_dims``, default ``(50,)``) and activation :math:`\phi`
(``activation``: ``"relu"`` or ``"tanh"``). The noise scale :math:`\sigma` of the regression
task is a latent site (on the standardized scale of ``y``, where a linear model leaves a
residual sd of about 0.7, the HalfNormal(1) prior is weakly informative): a fixed noise would
have to be chosen by hand, and a too small one makes every predictive band too narrow.

The network is written the way Pyro users write BNNs: :class:`BNN` is a
:class:`pyro.nn.PyroModule` whose layers are ``PyroModule[nn.Linear]`` with their ``weight``
and ``bias`` replaced by ``PyroSample(dist.Normal(0, s0).expand([...]).to_event(k))`` priors.
Each layer computes ``x @ W.mT + b`` with :func:`torch.matmul` instead of ``nn.Linear``'s
``F.linear``, which needs a 2-D weight: under vectorized particles
(``Trace_ELBO(num_particles=K, vectorize_particles=True)``) or ``Predictive(parallel=True)`` the
weights carry extra dims on the left, shape ``(K, 1, d_out, d_in)`` (the 1 is the data plate's
dim), and the hidden units become ``(K, N, d)``. Local reparameterization
(:mod:`ppl_vi.local_reparam`) intercepts these products.

The data live in a ``pyro.plate`` named ``"data"`` (dim -1) that can subsample: with
``subsample_size=B`` each call uses ``B`` random rows and Pyro scales their log likelihood by
``N / B``. Every weight is drawn before the plate is entered, so no weight gets the plate's dim.

Sites
-----
``"layers.{l}.weight"``
    latent, shape ``(d_{l+1}, d_l)`` (``.to_event(2)``), for ``l = 0, ..., L``.
``"layers.{l}.bias"``
    latent, shape ``(d_{l+1},)`` (``.to_event(1)``).
``"sigma"``
    latent noise scale (regression only), scalar, positive.
``"y"``
    observed, shape ``(N,)`` (``(B,)`` when subsampling).

The model returns :math:`f(x_n)` for the rows used (the regression mean, or the
classification logits), shape ``(N,)``. No exact posterior is known; compare with NUTS on a
small network (``hidden_dims=(8,)``).

Data
----
``task="regression"``: the diabetes data of Efron, Hastie, Johnstone & Tibshirani (2004), as
bundled with scikit-learn (``sklearn.datasets.load_diabetes``): N = 442 patients, D = 10
features, target a disease-progression score. ``task="classification"``: the Wisconsin
diagnostic breast-cancer data of Street, Wolberg & Mangasarian (1993)
(``sklearn.datasets.load_breast_cancer``): N = 569, D = 30, ``y = 1`` benign, ``y = 0``
malignant.

The split is fixed: rows are permuted with ``numpy.random.RandomState(0)`` (:data:`SPLIT_SEED`)
and the first 80 % (:data:`TRAIN_FRACTION`, rounded down: 353 diabetes and 455 breast-cancer
rows) are ``"train"``, the rest ``"test"`` (89 and 114 rows). Features are standardized with
the training rows' mean and population sd (``ddof=0``), and so is the regression target, on
both splits: predictive log densities of ``y`` are on that standardized scale (subtract
``log`` of the target's training sd, :func:`target_scale`, for the original units).

References
----------
Blundell, C., Cornebise, J., Kavukcuoglu, K. & Wierstra, D. (2015). Weight uncertainty in
neural networks. ICML.

Neal, R. M. (1996). Bayesian learning for neural networks. Springer.

MacKay, D. J. C. (1992). A practical Bayesian framework for backpropagation networks. Neural
Computation 4(3).

Examples
--------
>>> import pyro
>>> from ppl_vi.models import bnn
>>> data = bnn.load_data(task="classification")
>>> data["x"].shape, data["task"]
(torch.Size([455, 30]), 'classification')
>>> trace = pyro.poutine.trace(bnn.model).get_trace(**data, subsample_size=32)
>>> trace.nodes["layers.0.weight"]["value"].shape, trace.nodes["y"]["value"].shape
(torch.Size([50, 30]), torch.Size([32]))
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroSample
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "BNN",
    "DEFAULT_HIDDEN_DIMS",
    "PRIOR_SCALE",
    "SIGMA_PRIOR_SCALE",
    "SPLIT_SEED",
    "TASKS",
    "TRAIN_FRACTION",
    "latent_shapes",
    "load_data",
    "model",
    "network",
    "predictive_metrics",
    "target_scale",
]

#: The two tasks and their data sets.
TASKS = ("regression", "classification")

#: Hidden-layer activations by name.
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}

#: Default hidden widths (one hidden layer of 50 units, as in Hernandez-Lobato & Adams, 2015).
DEFAULT_HIDDEN_DIMS = (50,)

#: Default prior standard deviation of every weight and bias.
PRIOR_SCALE = 1.0

#: Seed of the fixed permutation that splits the rows into train and test.
SPLIT_SEED = 0

#: Fraction of the (permuted) rows in the training split (rounded down).
TRAIN_FRACTION = 0.8

#: Scale of the HalfNormal prior on the regression noise sd.
SIGMA_PRIOR_SCALE = 1.0


def _dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight.mT + bias`` for a weight ``(out, in)`` and a bias ``(out,)``, or batched.

    Batched weights come in two layouts. Under vectorized particles (and any plate left of
    the data plate) a weight is ``(..., 1, out, in)`` and its bias ``(..., 1, out)``: the 1 is
    the data plate's dim, which is dropped from the weight so that its batch dims line up with
    those of ``x`` ``(..., N, in)``. ``pyro.infer.Predictive(parallel=True)`` conditions the
    model on draws ``(S, out, in)`` and ``(S, out)`` instead (it pads only sites with fewer
    dims than the plates): there the bias gets the data plate's dim.
    """
    if weight.dim() > 2:
        if weight.shape[-3] == 1:
            weight = weight.squeeze(-3)
        else:
            bias = bias.unsqueeze(-2)
    return torch.matmul(x, weight.mT) + bias  # (..., N, out)


class BNN(PyroModule):
    """An MLP with ``PyroSample`` priors on its weights and biases, and its likelihood.

    Parameters
    ----------
    in_dim : int
        Number of input features ``D``.
    hidden_dims : sequence of int
        Widths of the hidden layers (may be empty: then the network is linear).
    task : {"regression", "classification"}
        Normal likelihood with a latent noise sd ``"sigma"``, or Bernoulli logits.
    prior_scale : float
        Standard deviation of the Normal prior of every weight and bias.
    activation : {"relu", "tanh"}
        Hidden-layer nonlinearity.
    dtype, device
        Of the prior's tensors (and so of prior draws); :func:`model` uses the data's.

    Examples
    --------
    >>> import torch
    >>> from ppl_vi.models.bnn import BNN
    >>> net = BNN(in_dim=3, hidden_dims=(4,), task="classification")
    >>> net(torch.zeros(5, 3)).shape   # logits of the 5 rows, weights drawn from the prior
    torch.Size([5])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: tuple[int, ...] = DEFAULT_HIDDEN_DIMS,
        task: str = "regression",
        prior_scale: float = PRIOR_SCALE,
        activation: str = "relu",
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        hidden_dims = _check_options(hidden_dims, task, prior_scale, activation)
        if isinstance(in_dim, bool) or not isinstance(in_dim, int) or in_dim < 1:
            raise ValueError(f"in_dim must be an integer >= 1 (got in_dim={in_dim!r})")
        self.task, self.activation = task, activation
        self.dims = (in_dim, *hidden_dims, 1)
        zero = torch.zeros((), dtype=dtype or torch.get_default_dtype(), device=device)
        scale = zero + prior_scale
        self.sigma_prior = dist.HalfNormal(zero + SIGMA_PRIOR_SCALE)
        layers = []
        for d_in, d_out in zip(self.dims[:-1], self.dims[1:], strict=True):
            # built on the meta device: no storage and no draws from the random stream, since
            # both tensors are replaced by priors at once
            layer = PyroModule[nn.Linear](d_in, d_out, device="meta")
            layer.weight = PyroSample(dist.Normal(zero, scale).expand([d_out, d_in]).to_event(2))
            layer.bias = PyroSample(dist.Normal(zero, scale).expand([d_out]).to_event(1))
            layers.append(layer)
        self.layers = PyroModule[nn.ModuleList](layers)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        subsample_size: int | None = None,
    ) -> torch.Tensor:
        """The model: draw the weights, then the observations of the rows used.

        Shapes
        ------
        ``x`` ``(N, D)``, ``y`` ``(N,)``; returns ``f(x)`` of the rows used, ``(..., N)`` or
        ``(..., B)`` (extra dims on the left under vectorized particles).
        """
        if x.dim() != 2 or x.shape[-1] != self.dims[0]:
            raise ValueError(
                f"x must have shape (N, {self.dims[0]}) (got x of shape {tuple(x.shape)})"
            )
        n = x.shape[-2]
        # Each PyroSample site is drawn at its first access in a call (and cached for the call):
        # draw them all here, outside the data plate, whose batch dim they must not get.
        weights = [(layer.weight, layer.bias) for layer in self.layers]
        sigma = pyro.sample("sigma", self.sigma_prior) if self.task == "regression" else None
        with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
            if subsample_size is None:  # all rows in order: no copy of the data
                x_batch, y_batch = x, y
            else:
                x_batch = x.index_select(-2, idx.to(x.device))
                y_batch = None if y is None else y.index_select(-1, idx.to(y.device))
            out = self.predictor(x_batch, weights)  # (..., B)
            if sigma is None:
                pyro.sample("y", dist.Bernoulli(logits=out), obs=y_batch)
            else:
                pyro.sample("y", dist.Normal(out, sigma), obs=y_batch)
        return out

    def predictor(self, x: torch.Tensor, weights) -> torch.Tensor:
        """``f(x)`` for given ``[(W_1, b_1), ..., (W_{L+1}, b_{L+1})]``, shape ``(..., N)``."""
        act = ACTIVATIONS[self.activation]
        h = x
        for i, (w, b) in enumerate(weights):
            h = _dense(h, w, b)
            if i < len(weights) - 1:
                h = act(h)
        return h.squeeze(-1)


def _check_options(hidden_dims, task: str, prior_scale: float, activation: str) -> tuple:
    if task not in TASKS:
        raise ValueError(f"task must be 'regression' or 'classification' (got task={task!r})")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)} (got activation={activation!r})"
        )
    try:
        dims = tuple(hidden_dims)
    except TypeError:
        dims = None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(
            "hidden_dims must be a sequence of integers >= 1, e.g. (50,) (got "
            f"hidden_dims={hidden_dims!r})"
        )
    if not (
        isinstance(prior_scale, (int, float)) and math.isfinite(prior_scale) and prior_scale > 0
    ):
        raise ValueError(
            f"prior_scale must be a finite number > 0 (got prior_scale={prior_scale!r})"
        )
    return dims


#: Networks by configuration: built once, reused by every call of :func:`model` (a ``BNN``
#: holds no parameters, only its priors, so sharing it is safe).
_NETS: dict[tuple, BNN] = {}


def network(
    in_dim: int,
    hidden_dims: tuple[int, ...] = DEFAULT_HIDDEN_DIMS,
    task: str = "regression",
    prior_scale: float = PRIOR_SCALE,
    activation: str = "relu",
    dtype: torch.dtype | None = None,
    device=None,
) -> BNN:
    """The :class:`BNN` that :func:`model` runs for these settings (built once, then reused)."""
    dims = _check_options(hidden_dims, task, prior_scale, activation)
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device or "cpu")
    key = (in_dim, dims, task, float(prior_scale), activation, dtype, device)
    if key not in _NETS:
        _NETS[key] = BNN(in_dim, dims, task, float(prior_scale), activation, dtype, device)
    return _NETS[key]


def model(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    hidden_dims: tuple[int, ...] = DEFAULT_HIDDEN_DIMS,
    task: str = "regression",
    prior_scale: float = PRIOR_SCALE,
    activation: str = "relu",
    subsample_size: int | None = None,
) -> torch.Tensor:
    """A Bayesian MLP for regression or binary classification (see the module docstring).

    Parameters
    ----------
    x : torch.Tensor
        Features, shape ``(N, D)``.
    y : torch.Tensor, optional
        Targets, shape ``(N,)`` (0.0 / 1.0 for classification); sampled when ``None``.
    hidden_dims : sequence of int, default (50,)
        Hidden-layer widths.
    task : {"regression", "classification"}
    prior_scale : float, default 1.0
        Prior sd of every weight and bias.
    activation : {"relu", "tanh"}
    subsample_size : int, optional
        Mini-batch size passed to ``pyro.plate("data", N, subsample_size=...)``.

    Returns
    -------
    torch.Tensor
        ``f(x)`` of the rows used: the regression mean or the classification logits,
        ``(N,)`` or ``(B,)`` (with extra dims on the left under vectorized particles).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, D) (got {type(x).__name__})")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, D) (got x of shape {tuple(x.shape)})")
    # int(): under torch.jit.trace (NUTS with jit_compile=True) a size is a traced tensor
    in_dim = int(x.shape[-1])
    net = network(in_dim, hidden_dims, task, prior_scale, activation, x.dtype, x.device)
    return net(x, y, subsample_size=subsample_size)


def _split_rows(n: int) -> tuple:
    import numpy as np

    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    n_train = int(TRAIN_FRACTION * n)
    return perm[:n_train], perm[n_train:]


def _raw(task: str):
    from sklearn.datasets import load_breast_cancer, load_diabetes

    if task not in TASKS:
        raise ValueError(f"task must be 'regression' or 'classification' (got task={task!r})")
    return (load_diabetes if task == "regression" else load_breast_cancer)(return_X_y=True)


def target_scale(task: str = "regression") -> float:
    """The training rows' sd of the raw regression target (1.0 for classification).

    A predictive log density of the standardized ``y`` minus ``log(target_scale())`` is the
    log density in the original units.
    """
    if task == "classification":
        return 1.0
    _, target = _raw(task)
    train, _ = _split_rows(len(target))
    return float(target[train].std())


def load_data(
    task: str = "regression", split: str = "train", n: int | None = None
) -> dict[str, torch.Tensor | str]:
    """Standardized diabetes (regression) or breast-cancer (classification) data.

    Parameters
    ----------
    task : {"regression", "classification"}
    split : {"train", "test"}
        The fixed split of the module docstring.
    n : int, optional
        Keep only the first ``n`` rows of the split.

    Returns
    -------
    dict
        ``{"x": (N, D), "y": (N,), "task": task}`` with tensors in
        ``torch.get_default_dtype()``; ``model(**load_data(...))`` runs the matching task.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (got split={split!r})")
    features, target = _raw(task)
    train, test = _split_rows(len(target))
    rows = train if split == "train" else test
    if n is not None:
        rows = rows[:n]
    mean, sd = features[train].mean(0), features[train].std(0)
    x = (features[rows] - mean) / sd
    y = target[rows].astype(float)
    if task == "regression":
        y = (y - target[train].mean()) / target[train].std()
    dtype = torch.get_default_dtype()
    return {
        "x": torch.as_tensor(x, dtype=torch.float64).to(dtype),
        "y": torch.as_tensor(y, dtype=torch.float64).to(dtype),
        "task": task,
    }


def predictive_metrics(
    posterior,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 1000,
    **model_kwargs,
) -> dict:
    r"""Posterior predictive performance on held-out data.

    .. math::

        \text{log\_lik} = \frac{1}{N} \sum_{n=1}^N \log \frac{1}{S} \sum_{s=1}^S
            p(y_n \mid x_n, W^{(s)}), \qquad W^{(s)} \sim q \text{ (or NUTS draws)},

    the test log-likelihood per datum of the posterior predictive, with :math:`S`
    ``num_samples`` posterior draws (all the draws given, for a dict).

    Parameters
    ----------
    posterior : VIResult or dict
        A fit (anything with ``.guide`` and ``.param_scope()``, e.g. ``ppl_vi.fit``'s result:
        draws come from ``pyro.infer.Predictive(model, guide=result.guide, ...)`` under
        ``result.param_scope()``), or posterior draws ``{site: (S, *site_shape)}`` of every
        latent site (e.g. ``run_nuts(...).samples``).
    x, y : torch.Tensor
        Held-out features ``(N, D)`` and targets ``(N,)``.
    num_samples : int, default 1000
        Draws from a fit's guide (a dict's draws are all used).
    **model_kwargs
        ``task``, ``hidden_dims``, ``prior_scale``, ``activation`` as given to :func:`model`.

    Returns
    -------
    dict
        ``"log_lik"`` (float, above), ``"log_lik_per_datum"`` ``(N,)``, ``"mean"`` ``(N,)`` (the
        predictive mean of ``y``: of ``f(x)`` for regression, of the probability of ``y = 1``
        for classification), and for regression ``"sd"`` ``(N,)`` (predictive sd,
        :math:`\sqrt{\mathrm{Var}_s f^{(s)}(x_n) + \mathbb{E}_s \sigma^{(s)2}}`) and
        ``"rmse"``; for classification ``"probs"`` ``(N,)`` (= ``"mean"``) and ``"accuracy"``
        (of the class with predictive probability above 1/2).
    """
    model_kwargs = {k: v for k, v in model_kwargs.items() if k not in ("x", "y")}
    task = model_kwargs.get("task", "regression")
    model_kwargs.pop("subsample_size", None)
    if isinstance(posterior, dict):
        draws = dict(posterior)
    elif hasattr(posterior, "guide") and hasattr(posterior, "param_scope"):
        draws = _guide_draws(posterior, x, num_samples, model_kwargs)
    else:
        raise TypeError(
            "posterior must be a fit result (with .guide and .param_scope()) or a dict of "
            f"posterior draws {{site: (S, ...)}} (got {type(posterior).__name__})"
        )
    num = next(iter(draws.values())).shape[0]

    def batched(*args, **kwargs):
        with pyro.plate("draws", num, dim=-2):
            return model(*args, **kwargs)

    # every draw as a batch over a plate left of the data plate: site values (S, 1, *shape)
    data = {k: v.unsqueeze(1) for k, v in draws.items()}
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(batched, data=data)).get_trace(x, y, **model_kwargs)
    site = trace.nodes["y"]
    log_lik = site["fn"].log_prob(y)  # (S, N)
    per_datum = torch.logsumexp(log_lik, 0) - math.log(num)
    out = trace.nodes["_RETURN"]["value"]  # (S, N)
    result = {"log_lik": float(per_datum.mean()), "log_lik_per_datum": per_datum}
    if task == "classification":
        probs = torch.sigmoid(out).mean(0)
        result.update(
            mean=probs, probs=probs, accuracy=float(((probs > 0.5) == (y > 0.5)).double().mean())
        )
    else:
        mean = out.mean(0)
        noise = site["fn"].scale.pow(2).mean(0)  # E_s sigma_s^2, broadcast to (N,)
        result.update(
            mean=mean,
            sd=(out.var(0, correction=0) + noise).sqrt(),
            rmse=float((mean - y).pow(2).mean().sqrt()),
        )
    return result


def _guide_draws(result, x, num_samples: int, model_kwargs: dict) -> dict:
    """Draws of every latent site from a fit's guide, ``{site: (S, *shape)}``."""
    shapes = latent_shapes(x.shape[-1], **model_kwargs)
    predictive = pyro.infer.Predictive(
        model, guide=result.guide, num_samples=num_samples, return_sites=list(shapes),
        parallel=True,
    )  # fmt: skip
    with result.param_scope(), torch.no_grad():
        samples = predictive(x, **model_kwargs)
        # parallel draws keep the draw plate's size-1 dim left of each site's shape; a point
        # mass guide's draws are views of its parameters: copy them
        return {k: samples[k].reshape(num_samples, *shape).clone() for k, shape in shapes.items()}


def latent_shapes(
    in_dim: int,
    hidden_dims: tuple[int, ...] = DEFAULT_HIDDEN_DIMS,
    task: str = "regression",
    prior_scale: float = PRIOR_SCALE,
    activation: str = "relu",
) -> dict[str, tuple]:
    """Name and shape of every latent site of :func:`model` for these settings."""
    dims = (in_dim, *_check_options(hidden_dims, task, prior_scale, activation), 1)
    shapes = {}
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        shapes[f"layers.{i}.weight"] = (d_out, d_in)
        shapes[f"layers.{i}.bias"] = (d_out,)
    if task == "regression":
        shapes["sigma"] = ()
    return shapes
