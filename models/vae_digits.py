r"""Variational autoencoder's generative model (a deep latent Gaussian model) on binarised digits.

The model of Kingma & Welling (2014) and Rezende, Mohamed & Wierstra (2014):

.. math::

    z_n &\sim \mathcal{N}(0, I_L), \\
    x_{nj} \mid z_n &\sim \mathrm{Bernoulli}\big(\sigma(g_\theta(z_n)_j)\big),
        \qquad j = 1, \dots, 64, \quad n = 1, \dots, N,

with latent size :math:`L` (``latent_dim``, default 8), :math:`\sigma` the logistic sigmoid and
decoder :math:`g_\theta` an MLP ``Linear(L, H) -> ReLU -> Linear(H, 64)`` returning pixel logits,
:math:`H` = ``hidden_dim`` (default 128). The decoder weights :math:`\theta` are point-estimated
Pyro parameters (maximum ELBO), registered with ``pyro.module("vae_decoder", ...)``. Pair the
model with :class:`ppl_vi.guides.Amortized` (an encoder) to obtain a VAE.

Images live in a ``pyro.plate`` named ``"data"`` (dim -1) that can subsample: with
``subsample_size=B`` each call uses ``B`` random images and Pyro scales their log densities by
``N / B``.

Sites
-----
``"z"``
    latent, shape ``(N, L)`` (``(B, L)`` when subsampling), one vector site per image
    (``.to_event(1)``) in the plate ``"data"``.
``"x"``
    observed, shape ``(N, 64)``, one vector site per image (``.to_event(1)``).

Parameters (``pyro.param``)
---------------------------
``"vae_decoder$$$0.weight"`` ``(H, L)``, ``"vae_decoder$$$0.bias"`` ``(H,)``,
``"vae_decoder$$$2.weight"`` ``(64, H)``, ``"vae_decoder$$$2.bias"`` ``(64,)``. The decoder for
each ``(latent_dim, hidden_dim)`` is built once with PyTorch's default initialisation under a
fixed-seed generator, and kept as a template: each model call registers a copy, so the param
store (not the template) holds the trained values, and every fresh param store starts from the
same initial weights. Call ``pyro.clear_param_store()`` before changing sizes (the model raises
a ``ValueError`` on a shape mismatch).

No exact posterior or evidence is known; estimate :math:`\log p(x)` with the importance-weighted
bound (``ppl_vi.elbos.IWAE`` with many particles).

Data
----
The UCI optical recognition of handwritten digits data (Alpaydin & Kaynak, 1998), as bundled
with scikit-learn (``sklearn.datasets.load_digits``): 1797 images of 8 x 8 = 64 pixels with
values 0..16, flattened row by row; a pixel is 1.0 when its value is **greater than 8**. The
split is fixed and contiguous: the **first 1500 images are "train"**, the **last 297 are
"test"** (the same split as :mod:`ppl_vi.models.sigmoid_belief_net`).

References
----------
Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic backpropagation and approximate
inference in deep generative models. ICML.

Examples
--------
>>> import pyro
>>> from ppl_vi.models import vae_digits
>>> data = vae_digits.load_data(split="train")
>>> data["x"].shape
torch.Size([1500, 64])
>>> trace = pyro.poutine.trace(vae_digits.model).get_trace(**data, subsample_size=32)
>>> trace.nodes["z"]["value"].shape, trace.nodes["x"]["value"].shape
(torch.Size([32, 8]), torch.Size([32, 64]))
>>> sorted(pyro.get_param_store())[0]
'vae_decoder$$$0.bias'
>>> pyro.clear_param_store()
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = [
    "model",
    "load_data",
    "decoder_template",
    "NUM_PIXELS",
    "NUM_TRAIN",
    "THRESHOLD",
    "DEFAULT_LATENT_DIM",
    "DEFAULT_HIDDEN_DIM",
]

#: Pixels per image (8 x 8).
NUM_PIXELS = 64

#: The first ``NUM_TRAIN`` images are the training split, the rest the test split.
NUM_TRAIN = 1500

#: A pixel (0..16) is binarised to 1 when it is greater than ``THRESHOLD``.
THRESHOLD = 8

#: Default sizes.
DEFAULT_LATENT_DIM = 8
DEFAULT_HIDDEN_DIM = 128

_INIT_SEED = 2014
_TEMPLATES: dict[tuple[int, int], nn.Module] = {}


def decoder_template(latent_dim: int = DEFAULT_LATENT_DIM, hidden_dim: int = DEFAULT_HIDDEN_DIM):
    """The decoder's initial network for these sizes (float64, CPU), built once per sizes.

    Do not train it: :func:`model` registers copies.
    """
    key = (int(latent_dim), int(hidden_dim))
    if key not in _TEMPLATES:
        if key[0] < 1 or key[1] < 1:
            raise ValueError(
                f"latent_dim and hidden_dim must be >= 1 (got latent_dim={latent_dim}, "
                f"hidden_dim={hidden_dim})"
            )
        state = torch.random.get_rng_state()
        torch.manual_seed(_INIT_SEED)
        try:
            net = nn.Sequential(
                nn.Linear(key[0], key[1]), nn.ReLU(), nn.Linear(key[1], NUM_PIXELS)
            ).double()
        finally:
            torch.random.set_rng_state(state)
        for p in net.parameters():
            p.requires_grad_(False)
        _TEMPLATES[key] = net
    return _TEMPLATES[key]


def _decoder(ref: torch.Tensor, latent_dim: int, hidden_dim: int) -> nn.Module:
    import copy

    net = copy.deepcopy(decoder_template(latent_dim, hidden_dim)).to(
        dtype=ref.dtype, device=ref.device
    )
    for p in net.parameters():
        p.requires_grad_(True)
    store = pyro.get_param_store()
    for name, p in net.named_parameters():
        full = f"vae_decoder$$${name}"
        # (a shape check: skipped while a graph is recorded, where shapes are fixed anyway)
        if not torch.jit.is_tracing() and full in store and store[full].shape != p.shape:
            raise ValueError(
                f"the param store holds {full!r} with shape {tuple(store[full].shape)}, but "
                f"latent_dim={latent_dim}, hidden_dim={hidden_dim} need shape {tuple(p.shape)}; "
                "call pyro.clear_param_store() before changing sizes"
            )
    return pyro.module("vae_decoder", net, update_module_params=True)


def model(
    x: torch.Tensor | None = None,
    latent_dim: int = DEFAULT_LATENT_DIM,
    hidden_dim: int = DEFAULT_HIDDEN_DIM,
    subsample_size: int | None = None,
    num_data: int | None = None,
) -> torch.Tensor:
    """Deep latent Gaussian model with a Bernoulli decoder.

    Parameters
    ----------
    x : torch.Tensor, optional
        Binary images as floats 0.0 / 1.0, shape ``(N, 64)``. When ``None`` the model samples
        them (in the default dtype) and ``num_data`` gives ``N``.
    latent_dim, hidden_dim : int
        Latent size :math:`L` and decoder hidden width :math:`H`.
    subsample_size : int, optional
        Mini-batch size passed to ``pyro.plate("data", N, subsample_size=...)``.
    num_data : int, optional
        Number of images when ``x`` is ``None``.

    Returns
    -------
    torch.Tensor
        Pixel logits of the images used, ``(N, 64)`` or ``(B, 64)``.
    """
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n, ref = num_data, torch.zeros(())
    else:
        n, ref = x.shape[-2], x
    decoder = _decoder(ref, latent_dim, hidden_dim)
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        prior = dist.Normal(ref.new_zeros(latent_dim), ref.new_ones(latent_dim)).to_event(1)
        z = pyro.sample("z", prior)  # (..., B, L)
        logits = decoder(z)  # (..., B, 64)
        # all rows in order need no copy; a mini-batch gathers its rows
        x_batch = x if x is None or subsample_size is None else x.index_select(-2, idx.to(x.device))
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x_batch)
    return logits


def load_data(split: str = "train", n: int | None = None) -> dict[str, torch.Tensor]:
    """Binarised scikit-learn digits.

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
