r"""Hierarchical VAE's generative model (stacked Gaussian latent layers) on binarised digits.

The generative model of a ladder VAE (Sønderby et al. 2016, eq. 1-3 and 17-19), and equally of
the plain hierarchical VAE it is compared with: the two differ only in the inference model
(:class:`ppl_vi.guides.ladder.Ladder`, ``inference="ladder"`` or ``"bottom_up"``). With
:math:`L` latent layers, layer 1 next to the data,

.. math::

    z_{L,n} &\sim \mathcal{N}(0, I_{d_L}), \\
    z_{i,n} \mid z_{i+1,n} &\sim \mathcal{N}\big(\mu_{\theta,i}(z_{i+1,n}),
        \operatorname{diag} \sigma_{\theta,i}(z_{i+1,n})^2\big),
        \qquad i = L-1, \dots, 1, \\
    x_{nj} \mid z_{1,n} &\sim \mathrm{Bernoulli}\big(\sigma(g_\theta(z_{1,n})_j)\big),
        \qquad j = 1, \dots, 64, \quad n = 1, \dots, N,

with :math:`d_i` = ``latent_dims[i - 1]`` (**listed bottom to top**: ``latent_dims[0]`` is the
size of ``"z1"``, next to the data; default ``(8, 4)``), :math:`\sigma` the logistic sigmoid.
Each conditional is an MLP ``Linear(d_{i+1}, H) -> ReLU -> Linear(H, 2 d_i)`` whose first half
is :math:`\mu_{\theta,i}` and whose second half gives :math:`\sigma_{\theta,i} =
\operatorname{softplus}(\cdot) + 10^{-3}` (the floor keeps the density bounded); the decoder
:math:`g_\theta` is ``Linear(d_1, H) -> ReLU -> Linear(H, 64)`` returning pixel logits;
:math:`H` = ``hidden_dim`` (default 128). The weights :math:`\theta` are point-estimated Pyro
parameters (maximum ELBO), registered with ``pyro.module("ladder_vae", ...)``.

Images live in a ``pyro.plate`` named ``"data"`` (dim -1) that can subsample: with
``subsample_size=B`` each call uses ``B`` random images and Pyro scales their log densities by
``N / B``. Latent values may carry extra dims on the left (vectorized particles).

Sites
-----
``"z{L}"``, ..., ``"z1"``
    latent, in this order (top first, the order the model samples them); ``"zi"`` has shape
    ``(N, d_i)`` (``(B, d_i)`` when subsampling), one vector site per image (``.to_event(1)``) in
    the plate ``"data"``.
``"x"``
    observed, shape ``(N, 64)``, one vector site per image (``.to_event(1)``).

Parameters (``pyro.param``)
---------------------------
``"ladder_vae$$$x.0.weight"`` ``(H, d_1)``, ``"ladder_vae$$$x.0.bias"``,
``"ladder_vae$$$x.2.weight"`` ``(64, H)``, ``"ladder_vae$$$x.2.bias"`` (the decoder :math:`g`),
and for each :math:`i < L` ``"ladder_vae$$$zi.0.weight"`` ``(H, d_{i+1})``, ``...zi.0.bias``,
``"ladder_vae$$$zi.2.weight"`` ``(2 d_i, H)``, ``...zi.2.bias`` (the conditional of
``"zi"``). The networks for each ``(latent_dims, hidden_dim)`` are built once with PyTorch's
default initialisation under a fixed-seed generator and kept as a template: the model
registers template values for the names missing from the param store and otherwise runs the
store's tensors, so the param store (not the template) holds the trained values, and every
fresh param store starts from the same initial weights. Call ``pyro.clear_param_store()``
before changing sizes (the model raises a ``ValueError`` on a shape mismatch).

No exact posterior or evidence is known; estimate :math:`\log p(x)` with the importance-weighted
bound (``ppl_vi.elbos.IWAE`` with many particles).

Data
----
The UCI optical recognition of handwritten digits data (Alpaydin & Kaynak, 1998), as bundled
with scikit-learn (``sklearn.datasets.load_digits``), exactly as in
:mod:`ppl_vi.models.vae_digits`: 1797 images of 8 x 8 = 64 pixels, a pixel is 1.0 when its
value 0..16 is **greater than 8**; the **first 1500 images are "train"**, the **last 297
"test"**. (The loader is repeated here because zoo modules import only torch and Pyro.)

References
----------
Sønderby, C. K., Raiko, T., Maaløe, L., Sønderby, S. K. & Winther, O. (2016). Ladder
variational autoencoders. NeurIPS.

Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Examples
--------
>>> import pyro
>>> from ppl_vi.models import ladder_vae
>>> data = ladder_vae.load_data(split="train")
>>> trace = pyro.poutine.trace(ladder_vae.model).get_trace(**data, subsample_size=32)
>>> [name for name, site in trace.nodes.items() if site["type"] == "sample"]
['data', 'z2', 'z1', 'x']
>>> trace.nodes["z2"]["value"].shape, trace.nodes["z1"]["value"].shape
(torch.Size([32, 4]), torch.Size([32, 8]))
>>> pyro.clear_param_store()
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "model",
    "load_data",
    "decoder_template",
    "site_names",
    "NUM_PIXELS",
    "NUM_TRAIN",
    "THRESHOLD",
    "DEFAULT_LATENT_DIMS",
    "DEFAULT_HIDDEN_DIM",
    "SCALE_FLOOR",
]

#: Pixels per image (8 x 8).
NUM_PIXELS = 64

#: The first ``NUM_TRAIN`` images are the training split, the rest the test split.
NUM_TRAIN = 1500

#: A pixel (0..16) is binarised to 1 when it is greater than ``THRESHOLD``.
THRESHOLD = 8

#: Default sizes: latent layers bottom to top (``"z1"`` has 8 units, ``"z2"`` 4), hidden width.
DEFAULT_LATENT_DIMS = (8, 4)
DEFAULT_HIDDEN_DIM = 128

#: Added to ``softplus`` in every conditional scale.
SCALE_FLOOR = 1e-3

_INIT_SEED = 2016
_TEMPLATES: dict[tuple[tuple[int, ...], int], nn.Module] = {}
_WORKING: dict[tuple, nn.Module] = {}


def _check_sizes(latent_dims, hidden_dim) -> tuple[tuple[int, ...], int]:
    if not isinstance(latent_dims, (tuple, list)):
        raise TypeError(
            "latent_dims must be a sequence of layer sizes, bottom (next to the data) to top "
            f"(got latent_dims={latent_dims!r}); e.g. latent_dims=(8, 4)"
        )
    dims = tuple(latent_dims)
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or d < 1]
    if not dims or bad:
        raise ValueError(
            "latent_dims must hold one or more integers >= 1 (got "
            f"latent_dims={latent_dims!r}); e.g. latent_dims=(8, 4)"
        )
    if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
        raise ValueError(f"hidden_dim must be an integer >= 1 (got hidden_dim={hidden_dim!r})")
    return dims, hidden_dim


def site_names(latent_dims: tuple[int, ...] = DEFAULT_LATENT_DIMS) -> list[str]:
    """The latent sites in the order the model samples them: ``["zL", ..., "z1"]``."""
    dims, _ = _check_sizes(latent_dims, 1)
    return [f"z{i}" for i in range(len(dims), 0, -1)]


def decoder_template(
    latent_dims: tuple[int, ...] = DEFAULT_LATENT_DIMS, hidden_dim: int = DEFAULT_HIDDEN_DIM
) -> nn.ModuleDict:
    """The generative networks' initial weights for these sizes (float64, CPU), built once.

    A ``ModuleDict`` with ``"x"`` (the decoder :math:`g`) and ``"zi"`` for each layer
    :math:`i < L` (the conditional of ``"zi"`` given ``"z{i+1}"``). Do not train it:
    :func:`model` registers copies.
    """
    key = _check_sizes(latent_dims, hidden_dim)
    if key not in _TEMPLATES:
        dims, h = key
        state = torch.random.get_rng_state()
        torch.manual_seed(_INIT_SEED)
        try:
            nets = {"x": nn.Sequential(nn.Linear(dims[0], h), nn.ReLU(), nn.Linear(h, NUM_PIXELS))}
            for i in range(1, len(dims)):  # "zi" given z_{i+1}: dims[i] -> 2 * dims[i - 1]
                nets[f"z{i}"] = nn.Sequential(
                    nn.Linear(dims[i], h), nn.ReLU(), nn.Linear(h, 2 * dims[i - 1])
                )
            net = nn.ModuleDict(nets).double()
        finally:
            torch.random.set_rng_state(state)
        for p in net.parameters():
            p.requires_grad_(False)
        _TEMPLATES[key] = net
    return _TEMPLATES[key]


def _networks(ref: torch.Tensor, dims: tuple[int, ...], hidden_dim: int) -> nn.Module:
    template = decoder_template(dims, hidden_dim)
    key = (dims, hidden_dim, ref.dtype, ref.device)
    net = _WORKING.get(key)
    if net is None:  # one working copy per sizes, dtype and device (a copy per call is slow)
        import copy

        net = copy.deepcopy(template).to(dtype=ref.dtype, device=ref.device)
        for p in net.parameters():
            p.requires_grad_(True)
        _WORKING[key] = net
    initial = dict(template.named_parameters())
    store = pyro.get_param_store()
    for name, p in list(net.named_parameters()):
        full = f"ladder_vae$$${name}"
        if full not in store:
            # a new param store starts from the template's weights, not from the working
            # copy's (which pyro.module pointed at the last store's tensors)
            owner, leaf = net.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
            value = initial[name].detach().to(dtype=ref.dtype, device=ref.device, copy=True)
            owner._parameters[leaf] = nn.Parameter(value)
        # (a shape check: skipped while a graph is recorded, where shapes are fixed anyway)
        elif not torch.jit.is_tracing() and store[full].shape != p.shape:
            raise ValueError(
                f"the param store holds {full!r} with shape {tuple(store[full].shape)}, but "
                f"latent_dims={dims}, hidden_dim={hidden_dim} need shape {tuple(p.shape)}; "
                "call pyro.clear_param_store() before changing sizes"
            )
    return pyro.module("ladder_vae", net, update_module_params=True)


def model(
    x: torch.Tensor | None = None,
    latent_dims: tuple[int, ...] = DEFAULT_LATENT_DIMS,
    hidden_dim: int = DEFAULT_HIDDEN_DIM,
    subsample_size: int | None = None,
    num_data: int | None = None,
) -> torch.Tensor:
    """Hierarchical latent Gaussian model with a Bernoulli decoder.

    Parameters
    ----------
    x : torch.Tensor, optional
        Binary images as floats 0.0 / 1.0, shape ``(N, 64)``. When ``None`` the model samples
        them (in the default dtype) and ``num_data`` gives ``N``.
    latent_dims : sequence of int
        Sizes of the latent layers, **bottom to top** (``latent_dims[0]`` is ``"z1"``).
    hidden_dim : int
        Hidden width :math:`H` of every network.
    subsample_size : int, optional
        Mini-batch size passed to ``pyro.plate("data", N, subsample_size=...)``.
    num_data : int, optional
        Number of images when ``x`` is ``None``.

    Returns
    -------
    torch.Tensor
        Pixel logits of the images used, ``(..., N, 64)`` or ``(..., B, 64)``.
    """
    dims, hidden_dim = _check_sizes(latent_dims, hidden_dim)
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n, ref = num_data, torch.zeros(())
    else:
        n, ref = x.shape[-2], x
    nets = _networks(ref, dims, hidden_dim)
    top = len(dims)
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        prior = dist.Normal(ref.new_zeros(dims[-1]), ref.new_ones(dims[-1])).to_event(1)
        z = pyro.sample(f"z{top}", prior)  # (..., B, d_L)
        for i in range(top - 1, 0, -1):
            out = nets[f"z{i}"](z)  # (..., B, 2 d_i)
            loc, raw = out[..., : dims[i - 1]], out[..., dims[i - 1] :]
            scale = F.softplus(raw) + SCALE_FLOOR
            z = pyro.sample(f"z{i}", dist.Normal(loc, scale).to_event(1))  # (..., B, d_i)
        logits = nets["x"](z)  # (..., B, 64)
        # all rows in order need no copy; a mini-batch gathers its rows
        x_batch = x if x is None or subsample_size is None else x.index_select(-2, idx.to(x.device))
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x_batch)
    return logits


def load_data(split: str = "train", n: int | None = None) -> dict[str, torch.Tensor]:
    """Binarised scikit-learn digits, the split of :mod:`ppl_vi.models.vae_digits`.

    Parameters
    ----------
    split : {"train", "test"}
        The first 1500 images, or the last 297.
    n : int, optional
        Keep only the first ``n`` images of the split.

    Returns
    -------
    dict
        ``{"x": (N, 64)}`` in ``torch.get_default_dtype()``, values 0.0 / 1.0.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (got split={split!r})")
    from sklearn.datasets import load_digits

    pixels = load_digits().data
    pixels = pixels[:NUM_TRAIN] if split == "train" else pixels[NUM_TRAIN:]
    if n is not None:
        pixels = pixels[:n]
    x = torch.as_tensor(pixels > THRESHOLD, dtype=torch.get_default_dtype())
    return {"x": x}
