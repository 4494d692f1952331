r"""Two-layer sigmoid belief network on binarised 8x8 digits.

The directed generative model of Neal (1992), "Connectionist learning of belief networks",
*Artificial Intelligence* 56(1), 71-113, with two layers of binary latent units:

.. math::

    h^{(2)}_{ik} &\sim \mathrm{Bernoulli}\big(\sigma(b^{(2)}_k)\big),
        \qquad k = 1, \dots, K_2, \\
    h^{(1)}_{i} \mid h^{(2)}_i &\sim \mathrm{Bernoulli}\big(\sigma(W_1 h^{(2)}_i + b^{(1)})
        \big) \quad \text{(independently over the } K_1 \text{ units)}, \\
    x_{i} \mid h^{(1)}_i &\sim \mathrm{Bernoulli}\big(\sigma(W_0 h^{(1)}_i + b^{(0)})\big)
        \quad \text{(independently over the } D = 64 \text{ pixels)},

for images :math:`i = 1, \dots, N`, with :math:`\sigma` the logistic sigmoid and hidden sizes
:math:`K_1` (``K1``, default 20) and :math:`K_2` (``K2``, default 10). The generative weights
are point-estimated Pyro parameters (maximum-ELBO / variational EM), not latent variables.
Because the latents are discrete, this is the standard benchmark for score-function (REINFORCE)
gradient estimators: Mnih & Gregor (2014), "Neural variational inference and learning in belief
networks", *ICML*; Ranganath, Gerrish & Blei (2014), "Black box variational inference",
*AISTATS*; and, for the mean-field approximation itself, Saul, Jaakkola & Jordan (1996), "Mean
field theory for sigmoid belief networks", *JAIR* 4, 61-76.

Images live in a ``pyro.plate`` named ``"data"`` (dim -1) that can subsample: with
``subsample_size=B`` each call uses ``B`` random images and Pyro scales their log densities
(latent and observed) by ``N / B``.

Sites
-----
``"h2"``
    latent, shape ``(N, K2)`` (``(B, K2)`` when subsampling): one vector site per image
    (``.to_event(1)``) in the plate ``"data"``, values 0.0 / 1.0.
``"h1"``
    latent, shape ``(N, K1)``, likewise.
``"x"``
    observed, shape ``(N, 64)``, one vector site per image (``.to_event(1)``).

Parameters (``pyro.param``)
---------------------------
``"sbn.b2"`` ``(K2,)``, ``"sbn.W1"`` ``(K1, K2)``, ``"sbn.b1"`` ``(K1,)``, ``"sbn.W0"``
``(64, K1)``, ``"sbn.b0"`` ``(64,)`` (see :data:`PARAM_NAMES`). The weight matrices start from
:math:`\mathcal{N}(0, 0.1^2)` draws of a fixed-seed ``torch.Generator`` (the same values on
every first call), the biases from zero; they are created in the dtype and on the device of
``x``. As with any Pyro parameter, the param store keeps them between calls, so call
``pyro.clear_param_store()`` before changing ``K1`` or ``K2`` (the model raises a
``ValueError`` on a shape mismatch).

:func:`local_bernoulli_guide` is a simple non-amortised, fully factorised Bernoulli guide (a
reference guide for tests and examples). :func:`exact_log_likelihood` computes the exact
:math:`\log p(x_i)` by summing over all :math:`2^{K_1 + K_2}` hidden configurations, for small
networks (:math:`K_1 + K_2 \le 16`) only.

Data
----
The UCI optical recognition of handwritten digits data (Alpaydin & Kaynak, 1998; the copy of
its test set bundled with scikit-learn as ``sklearn.datasets.load_digits``): 1797 images of
8 x 8 = 64 pixels with integer values 0..16, flattened row by row. A pixel is 1.0 when its value
is **greater than 8** and 0.0 otherwise (29.3% ones overall). The split is fixed and
contiguous: the **first 1500 images are "train"**, the **last 297 are "test"** (the images are
not sorted by class; each split has every digit 146-153 times in train, 27-33 times in test).

Examples
--------
>>> import pyro
>>> from ppl_vi.models import sigmoid_belief_net as sbn
>>> data = sbn.load_data(split="train")
>>> data["x"].shape
torch.Size([1500, 64])
>>> guide_trace = pyro.poutine.trace(sbn.local_bernoulli_guide).get_trace(
...     **data, subsample_size=32)
>>> replayed = pyro.poutine.replay(sbn.model, trace=guide_trace)
>>> trace = pyro.poutine.trace(replayed).get_trace(**data, subsample_size=32)
>>> trace.nodes["h1"]["value"].shape, trace.nodes["x"]["value"].shape
(torch.Size([32, 20]), torch.Size([32, 64]))
>>> sorted(n for n in pyro.get_param_store() if n.startswith("sbn."))
['sbn.W0', 'sbn.W1', 'sbn.b0', 'sbn.b1', 'sbn.b2']
>>> pyro.clear_param_store()
>>> tiny = sbn.load_data(split="test", n=5)
>>> sbn.exact_log_likelihood(tiny["x"], K1=3, K2=2).shape     # by enumeration
torch.Size([5])
>>> pyro.clear_param_store()
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

__all__ = [
    "model",
    "load_data",
    "local_bernoulli_guide",
    "exact_log_likelihood",
    "PARAM_NAMES",
    "NUM_PIXELS",
    "NUM_TRAIN",
    "THRESHOLD",
    "DEFAULT_K1",
    "DEFAULT_K2",
    "MAX_ENUM_UNITS",
]

#: Names of the generative parameters in the Pyro param store.
PARAM_NAMES = ("sbn.b2", "sbn.W1", "sbn.b1", "sbn.W0", "sbn.b0")

#: Pixels per image (8 x 8).
NUM_PIXELS = 64

#: The first ``NUM_TRAIN`` images are the training split, the rest the test split.
NUM_TRAIN = 1500

#: A pixel (0..16) is binarised to 1 when it is greater than ``THRESHOLD``.
THRESHOLD = 8

#: Default hidden-layer sizes.
DEFAULT_K1 = 20
DEFAULT_K2 = 10

#: Largest ``K1 + K2`` for which :func:`exact_log_likelihood` enumerates the hidden states.
MAX_ENUM_UNITS = 16

# exact_log_likelihood works on blocks of images of at most this many (image, state) pairs.
_CHUNK_ELEMENTS = 2**22

_INIT_SEED = 1992
_INIT_WEIGHT_SCALE = 0.1


def _param_shapes(K1: int, K2: int, D: int) -> dict[str, tuple[int, ...]]:
    return {
        "sbn.b2": (K2,),
        "sbn.W1": (K1, K2),
        "sbn.b1": (K1,),
        "sbn.W0": (D, K1),
        "sbn.b0": (D,),
    }


def _checked_param(name: str, init, shape: tuple[int, ...], sizes: str) -> torch.Tensor:
    value = pyro.param(name, init)
    if tuple(value.shape) != shape:
        raise ValueError(
            f"the param store holds {name!r} with shape {tuple(value.shape)}, but {sizes} need "
            f"shape {shape}; call pyro.clear_param_store() before changing sizes"
        )
    return value


def _generative_params(ref: torch.Tensor, K1: int, K2: int, D: int) -> dict[str, torch.Tensor]:
    """Fetch (creating on first use) the generative parameters from the param store."""
    params = {}
    for i, (name, shape) in enumerate(_param_shapes(K1, K2, D).items()):

        def init(name=name, shape=shape, i=i):
            if ".W" in name:
                gen = torch.Generator().manual_seed(_INIT_SEED + i)
                w = _INIT_WEIGHT_SCALE * torch.randn(shape, generator=gen, dtype=torch.float64)
                return w.to(dtype=ref.dtype, device=ref.device)
            return ref.new_zeros(shape)

        params[name] = _checked_param(name, init, shape, f"K1={K1}, K2={K2}")
    return params


def _check_sizes(K1: int, K2: int) -> None:
    if int(K1) < 1 or int(K2) < 1:
        raise ValueError(f"K1 and K2 must be positive (got K1={K1}, K2={K2})")


def model(
    x: torch.Tensor | None = None,
    K1: int = DEFAULT_K1,
    K2: int = DEFAULT_K2,
    subsample_size: int | None = None,
    num_data: int | None = None,
) -> torch.Tensor:
    """Two-layer sigmoid belief network.

    Parameters
    ----------
    x : torch.Tensor, optional
        Binary images as floats 0.0 / 1.0, shape ``(N, 64)``. When ``None`` the model samples
        them (the tensors are then in the default dtype) and ``num_data`` gives ``N``.
    K1, K2 : int
        Number of units in the lower (``h1``) and upper (``h2``) hidden layer.
    subsample_size : int, optional
        Mini-batch size passed to ``pyro.plate("data", N, subsample_size=...)``.
    num_data : int, optional
        Number of images when ``x`` is ``None``.

    Returns
    -------
    torch.Tensor
        The pixel logits ``W0 h1 + b0`` of the images used, shape ``(N, 64)`` or ``(B, 64)``.
    """
    _check_sizes(K1, K2)
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n, d = num_data, NUM_PIXELS
        ref = torch.zeros(())
    else:
        n, d = x.shape[-2], x.shape[-1]
        ref = x
    p = _generative_params(ref, K1, K2, d)
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        h2 = pyro.sample("h2", dist.Bernoulli(logits=p["sbn.b2"]).to_event(1))
        # h2 @ W1^T broadcasts over leading batch dims (vectorized particles).
        h1 = pyro.sample("h1", dist.Bernoulli(logits=h2 @ p["sbn.W1"].T + p["sbn.b1"]).to_event(1))
        logits = h1 @ p["sbn.W0"].T + p["sbn.b0"]
        # all rows in order need no copy; a mini-batch gathers its rows
        x_batch = x if x is None or subsample_size is None else x.index_select(-2, idx.to(x.device))
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x_batch)
    return logits


def local_bernoulli_guide(
    x: torch.Tensor | None = None,
    K1: int = DEFAULT_K1,
    K2: int = DEFAULT_K2,
    subsample_size: int | None = None,
    num_data: int | None = None,
) -> None:
    """Fully factorised, non-amortised Bernoulli guide for :func:`model`.

    A reference guide for tests and examples (e.g. score-function ELBOs), not a recommended
    guide for this model: ``q(h2_i) q(h1_i)`` with independent Bernoulli units whose logits are
    free per-image parameters ``"q_h2_logits"`` ``(N, K2)`` and ``"q_h1_logits"`` ``(N, K1)``
    (initialised to zero, i.e. probability 1/2), indexed by the plate's subsample indices. It
    takes the model's arguments, so ``SVI(model, local_bernoulli_guide, ...)`` works as is.
    """
    _check_sizes(K1, K2)
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n, ref = num_data, torch.zeros(())
    else:
        n, ref = x.shape[-2], x
    sizes = f"N={n}, K1={K1}, K2={K2}"
    q_h2 = _checked_param("q_h2_logits", lambda: ref.new_zeros(n, K2), (n, K2), sizes)
    q_h1 = _checked_param("q_h1_logits", lambda: ref.new_zeros(n, K1), (n, K1), sizes)
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        idx = idx.to(q_h2.device)
        pyro.sample("h2", dist.Bernoulli(logits=q_h2.index_select(0, idx)).to_event(1))
        pyro.sample("h1", dist.Bernoulli(logits=q_h1.index_select(0, idx)).to_event(1))


def load_data(split: str = "train", n: int | None = None) -> dict[str, torch.Tensor]:
    """Binarised scikit-learn digits (pixel > 8), first 1500 images train, last 297 test.

    Parameters
    ----------
    split : {"train", "test"}
        Which fixed split to return.
    n : int, optional
        Keep only the first ``n`` images of the split.

    Returns
    -------
    dict
        ``{"x": (N, 64)}`` of 0.0 / 1.0 in ``torch.get_default_dtype()``; ``N`` is 1500 for
        ``"train"`` and 297 for ``"test"`` (or ``n``).
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (got split={split!r})")
    pixels = load_digits().data
    pixels = pixels[:NUM_TRAIN] if split == "train" else pixels[NUM_TRAIN:]
    if n is not None:
        pixels = pixels[:n]
    x = torch.as_tensor(pixels > THRESHOLD, dtype=torch.get_default_dtype())
    return {"x": x}


def _binary_states(k: int, ref: torch.Tensor) -> torch.Tensor:
    """All ``2**k`` vectors of {0, 1}^k, shape ``(2**k, k)``."""
    codes = torch.arange(2**k, device=ref.device)
    bits = torch.arange(k, device=ref.device)
    return ((codes.unsqueeze(-1) >> bits) & 1).to(ref.dtype)


def exact_log_likelihood(
    x: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
    K1: int = DEFAULT_K1,
    K2: int = DEFAULT_K2,
) -> torch.Tensor:
    r"""Exact :math:`\log p(x_i)` of each image, summing over all hidden configurations.

    .. math::

        \log p(x_i) = \log \sum_{h^{(1)}} p(x_i \mid h^{(1)}) \sum_{h^{(2)}}
            p(h^{(1)} \mid h^{(2)})\, p(h^{(2)}),

    computed in float64 with log-sum-exp over the :math:`2^{K_2}` and then the :math:`2^{K_1}`
    states. Feasible for small networks only.

    Parameters
    ----------
    x : torch.Tensor
        Binary images, shape ``(N, D)``.
    params : dict, optional
        The generative parameters by name (:data:`PARAM_NAMES`); by default the current values
        in the Pyro param store (created as the model would if absent).
    K1, K2 : int
        Hidden-layer sizes; ``K1 + K2`` must be at most 16.

    Returns
    -------
    torch.Tensor
        Shape ``(N,)``, in the dtype and on the device of ``x``.

    Raises
    ------
    ValueError
        If ``K1 + K2 > 16`` or a parameter has the wrong shape.
    """
    _check_sizes(K1, K2)
    if K1 + K2 > MAX_ENUM_UNITS:
        raise ValueError(
            f"exact_log_likelihood enumerates all 2**(K1 + K2) hidden states and needs "
            f"K1 + K2 <= {MAX_ENUM_UNITS} (got K1={K1}, K2={K2})"
        )
    d = x.shape[-1]
    if params is None:
        params = _generative_params(x, K1, K2, d)
    for name, shape in _param_shapes(K1, K2, d).items():
        if tuple(params[name].shape) != shape:
            raise ValueError(
                f"params[{name!r}] has shape {tuple(params[name].shape)}, but K1={K1}, "
                f"K2={K2} need shape {shape}"
            )
    p = {name: params[name].to(dtype=torch.float64, device=x.device) for name in PARAM_NAMES}
    x64 = x.to(torch.float64)
    h2 = _binary_states(K2, x64)  # (S2, K2)
    h1 = _binary_states(K1, x64)  # (S1, K1)
    # log Bernoulli(v; logits l) = v * l - softplus(l), summed over units.
    log_p_h2 = h2 @ p["sbn.b2"] - F.softplus(p["sbn.b2"]).sum()  # (S2,)
    logits1 = h2 @ p["sbn.W1"].T + p["sbn.b1"]  # (S2, K1)
    log_p_h1_given_h2 = h1 @ logits1.T - F.softplus(logits1).sum(-1)  # (S1, S2)
    log_p_h1 = torch.logsumexp(log_p_h1_given_h2 + log_p_h2, dim=-1)  # (S1,)
    logits0 = h1 @ p["sbn.W0"].T + p["sbn.b0"]  # (S1, D)
    norm0 = F.softplus(logits0).sum(-1)  # (S1,)
    chunk = max(1, _CHUNK_ELEMENTS // h1.shape[0])
    out = []
    for x_c in x64.split(chunk):
        log_p_x_given_h1 = x_c @ logits0.T - norm0  # (n_c, S1)
        out.append(torch.logsumexp(log_p_x_given_h1 + log_p_h1, dim=-1))
    return torch.cat(out).to(x.dtype)
