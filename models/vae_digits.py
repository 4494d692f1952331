r"""Variational autoencoder's generative model (a deep latent Gaussian model) on binarised digits.

The model of Kingma & Welling (2014) and Rezende, Mohamed & Wierstra (2014):

.. math::

    z_n &\sim p_\lambda(z), \\
    x_{nj} \mid z_n &\sim \mathrm{Bernoulli}\big(\sigma(g_\theta(z_n)_j)\big),
        \qquad j = 1, \dots, 64, \quad n = 1, \dots, N,

with latent size :math:`L` (``latent_dim``, default 8), :math:`\sigma` the logistic sigmoid and
decoder :math:`g_\theta` an MLP ``Linear(L, H) -> ReLU -> Linear(H, 64)`` returning pixel logits,
:math:`H` = ``hidden_dim`` (default 128). The decoder weights :math:`\theta` are point-estimated
Pyro parameters (maximum ELBO), registered with ``pyro.module("vae_decoder", ...)``. Pair the
model with :class:`ppl_vi.guides.Amortized` (an encoder) to obtain a VAE.

The prior :math:`p_\lambda(z)` is chosen with ``prior``:

``"standard"`` (default)
    :math:`\mathcal N(0, I_L)`, no parameters.
``"vamp"``
    The VampPrior of Tomczak & Welling (2018), a uniform mixture of the encoder's Gaussians at
    :math:`K` learned pseudo-inputs :math:`u_{1:K}` (``num_pseudo``, default 50),

    .. math::

        p_\lambda(z) = \frac1K \sum_{k=1}^K
            \mathcal N\big(z;\ \mu_\phi(u_k), \operatorname{diag}\sigma_\phi(u_k)^2\big),

    where :math:`(\mu_\phi, \sigma_\phi)` is the model's encoder ``Linear(64, H) -> ReLU ->
    Linear(H, 2L)``, registered with ``pyro.module("vae_encoder", ...)``, whose output is read
    as :class:`~ppl_vi.guides.Amortized` reads its encoder's (first half locations, second half
    raw scales :math:`r`, :math:`\sigma = \operatorname{softplus}(r + c) + 10^{-6}` with
    :math:`c = \operatorname{softplus}^{-1}(0.1)`, the guide's default ``init_scale``). The
    pseudo-inputs are the parameter ``"vae_vamp.pseudo_inputs"``, ``(K, 64)``, constrained to
    :math:`(0, 1)` (pixel probabilities; Tomczak & Welling clip with a hard tanh, a sigmoid keeps
    every pixel's gradient, and Adam's per-coordinate scaling makes its small slope harmless).
    They start, as in Tomczak & Welling's code, at training images: :math:`K` images of ``x``
    picked by a fixed-seed permutation (with wrap-around when :math:`K > N`), moved 5% towards
    0.5 (:math:`0.05 + 0.9\,x`, so that the sigmoid's logit is finite); without data
    (``x=None``), at :math:`0.05 + 0.01\,\epsilon`, their non-data initialisation.

    **Sharing the encoder with the guide.** In a VampPrior VAE the prior's components are the
    guide's own :math:`q_\phi(z \mid u_k)`, so model and guide must run one network. The model
    owns it (the prior is part of the generative model, and the model is traced before any guide
    exists, so it cannot borrow a guide's encoder); :func:`shared_encoder` gives a module that
    runs the same registered network, to pass to the guide::

        ppl_vi.fit(vae_digits.model, **data, prior="vamp", subsample_size=100,
                   guide=Amortized, guide_kwargs={"encoder": vae_digits.shared_encoder()})

    Both then read the param store's ``"vae_encoder$$$..."`` entries, which receive gradients
    from the prior and from the guide. Keep the guide's ``init_scale`` at its default (0.1): the
    prior reads the raw scales with that shift. An ``Amortized`` guide built without
    ``encoder=shared_encoder(...)`` has an encoder of its own, and the prior then uses a second,
    separate network (a valid model, but not the VampPrior of the paper).

Images live in a ``pyro.plate`` named ``"data"`` (dim -1) that can subsample: with
``subsample_size=B`` each call uses ``B`` random images and Pyro scales their log densities by
``N / B``.

Sites
-----
``"z"``
    latent, shape ``(N, L)`` (``(B, L)`` when subsampling), one vector site per image
    (``.to_event(1)``) in the plate ``"data"``; its distribution is a
    :class:`VampMixture` (a ``MixtureSameFamily``) with ``prior="vamp"``.
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
a ``ValueError`` on a shape mismatch). With ``prior="vamp"`` also ``"vae_encoder$$$0.weight"``
``(H, 64)``, ``"vae_encoder$$$0.bias"`` ``(H,)``, ``"vae_encoder$$$2.weight"`` ``(2L, H)``,
``"vae_encoder$$$2.bias"`` ``(2L,)`` (a fixed-seed template, as the decoder's) and
``"vae_vamp.pseudo_inputs"`` ``(K, 64)``.

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

Tomczak, J. M. & Welling, M. (2018). VAE with a VampPrior. AISTATS.

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
>>> trace = pyro.poutine.trace(vae_digits.model).get_trace(**data, prior="vamp", num_pseudo=20)
>>> type(trace.nodes["z"]["fn"]).__name__, pyro.param("vae_vamp.pseudo_inputs").shape
('VampMixture', torch.Size([20, 64]))
>>> pyro.clear_param_store()
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.nn import functional as F

__all__ = [
    "model",
    "load_data",
    "decoder_template",
    "encoder_template",
    "shared_encoder",
    "VampPrior",
    "VampMixture",
    "NUM_PIXELS",
    "NUM_TRAIN",
    "THRESHOLD",
    "DEFAULT_LATENT_DIM",
    "DEFAULT_HIDDEN_DIM",
    "DEFAULT_NUM_PSEUDO",
    "ENCODER_INIT_SCALE",
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

#: Default number of VampPrior pseudo-inputs (``prior="vamp"``).
DEFAULT_NUM_PSEUDO = 50

#: The scale a zero raw encoder output maps to: :class:`~ppl_vi.guides.Amortized`'s default
#: ``init_scale``, with which the VampPrior reads the model's encoder.
ENCODER_INIT_SCALE = 0.1

_PRIORS = ("standard", "vamp")
_INIT_SEED = 2014
_ENCODER_SEED = 2018
_PSEUDO_SEED = 2019
_TEMPLATES: dict[tuple[str, int, int], nn.Module] = {}
_PSEUDO_ROWS: dict[tuple[int, int], torch.Tensor] = {}
_PSEUDO_NOISE: dict[int, torch.Tensor] = {}


def _softplus_inv(y: float) -> float:
    return y + math.log(-math.expm1(-y))


# ---------------------------------------------------------------------------------- VampPrior
class VampMixture(dist.MixtureSameFamily):
    """:class:`~pyro.distributions.MixtureSameFamily` whose ``support`` is its components'.

    PyTorch's mixture reports a ``MixtureSameFamilyConstraint``, for which ``biject_to`` has no
    transform, so guides that build their families from a site's support (``Amortized``,
    ``AutoNormal``) could not take a mixture prior; the components' support (here
    ``independent(real, 1)``) is the same set of values.
    """

    @constraints.dependent_property
    def support(self):
        return self.component_distribution.support


class VampPrior(PyroModule):
    r"""VampPrior: a uniform mixture of the encoder's Gaussians at learned pseudo-inputs.

    .. math::

        p_\lambda(z) = \frac1K \sum_{k=1}^K
            \mathcal N\big(z;\ \mu_\phi(u_k), \operatorname{diag}\sigma_\phi(u_k)^2\big),
        \qquad \lambda = (u_{1:K}, \phi),

    where :math:`K` is ``num_pseudo``, the pseudo-inputs :math:`u_k` (each of shape
    ``input_shape``) are the parameter ``pseudo_inputs`` and :math:`(\mu_\phi, \sigma_\phi)` is
    ``encoder``: the guide's own encoder, so that each component is the guide's
    :math:`q_\phi(z \mid u_k)` (Tomczak & Welling, 2018). Calling the module returns the mixture
    as a :class:`VampMixture` (a :class:`pyro.distributions.MixtureSameFamily`) with batch shape
    ``()`` and event shape ``(L,)``, to use in a model: ``pyro.sample("z", vamp())`` (a plate
    expands it). The mixture weights are uniform and fixed, as in the paper.

    The encoder is **not** owned by this module: it is neither a child module nor copied, so
    its parameters keep the names its owner gives them, and a model and a guide that run it
    read one set of entries of the param store. Its parameters are trained when the guide
    registers them (a :class:`~pyro.nn.PyroModule`, such as an
    :class:`~ppl_vi.guides.Amortized` guide's encoder, or a module the guide passes to
    ``pyro.module``), or when ``encoder_name`` is given: then each call also runs
    ``pyro.module(encoder_name, encoder, update_module_params=True)``, which with the guide's
    ``pyro.module(encoder_name, encoder)`` makes one set of parameters.

    Shapes
    ------
    ``encoder`` maps ``(K, *input_shape)`` to either a pair ``(loc, scale)``, each ``(K, L)``
    (the encoder of Pyro's VAE tutorial), or one tensor ``(K, 2 L)`` of locations and raw scales
    :math:`r` read as :class:`~ppl_vi.guides.Amortized` reads them:
    :math:`\sigma = \operatorname{softplus}(r + \operatorname{softplus}^{-1}(s_0)) + 10^{-6}`,
    :math:`s_0` = ``init_scale``. ``log_prob`` takes ``(..., L)`` and returns ``(...)``.

    Parameters
    ----------
    encoder : torch.nn.Module or callable
        The guide's encoder (see Shapes).
    num_pseudo : int
        Number of pseudo-inputs (mixture components) :math:`K`.
    input_shape : int or tuple of int
        Shape of one input of the encoder (one datum), e.g. ``784`` or ``(1, 28, 28)``.
    init : torch.Tensor, optional
        Initial pseudo-inputs ``(K, *input_shape)`` (constrained values), e.g. training images
        as Tomczak & Welling do. By default small noise: ``0.01`` times standard Normal draws of
        the global generator, mapped through ``constraint``'s bijection.
    constraint : torch.distributions.constraints.Constraint, default real
        Support of the pseudo-inputs (e.g. ``constraints.unit_interval`` for pixel
        probabilities).
    encoder_name : str, optional
        Register ``encoder`` (a ``torch.nn.Module``) under this ``pyro.module`` name at each
        call; use the name the guide registers it under.
    init_scale : float, default 0.1
        :math:`s_0` for raw-scale encoders; keep it equal to the guide's ``init_scale``.
    name : str, default "vamp_prior"
        Prefix of the parameter's name: ``"<name>.pseudo_inputs"`` (as a child of another
        ``PyroModule`` the parent's naming applies).

    Raises
    ------
    TypeError
        For an encoder that is not callable, a constraint that is not one, or an ``init`` or
        ``encoder_name`` of the wrong type.
    ValueError
        For ``num_pseudo < 1``, a bad ``input_shape``, ``init`` of the wrong shape, an
        ``init_scale <= 0``, or (when called) an encoder output of the wrong shape or a param
        store that holds ``"<name>.pseudo_inputs"`` with another shape.

    References
    ----------
    Tomczak, J. M. & Welling, M. (2018). VAE with a VampPrior. AISTATS.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from ppl_vi.models.vae_digits import VampPrior
    >>> encoder = nn.Linear(6, 2 * 3)          # raw output: 3 locations, 3 raw scales
    >>> prior = VampPrior(encoder, num_pseudo=4, input_shape=6, encoder_name="encoder")
    >>> p = prior()
    >>> p.batch_shape, p.event_shape
    (torch.Size([]), torch.Size([3]))
    >>> p.log_prob(torch.zeros(5, 2, 3)).shape
    torch.Size([5, 2])
    >>> sorted(pyro.get_param_store())
    ['encoder$$$bias', 'encoder$$$weight', 'vamp_prior.pseudo_inputs']
    >>> pyro.clear_param_store()
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_pseudo: int,
        input_shape: int | tuple[int, ...],
        *,
        init: torch.Tensor | None = None,
        constraint: constraints.Constraint = constraints.real,
        encoder_name: str | None = None,
        init_scale: float = ENCODER_INIT_SCALE,
        name: str = "vamp_prior",
    ):
        if not callable(encoder):
            raise TypeError(
                "encoder must be a torch.nn.Module or a callable mapping the pseudo-inputs to "
                f"(loc, scale) or to raw (K, 2 * L) outputs (got {type(encoder).__name__})"
            )
        if isinstance(num_pseudo, bool) or not isinstance(num_pseudo, int) or num_pseudo < 1:
            raise ValueError(f"num_pseudo must be an integer >= 1 (got num_pseudo={num_pseudo!r})")
        shape = (input_shape,) if isinstance(input_shape, int) else input_shape
        if not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
        ):
            raise ValueError(
                "input_shape must be an integer >= 1 or a tuple of them, the shape of one "
                f"encoder input (got input_shape={input_shape!r})"
            )
        shape = tuple(shape)
        if not isinstance(constraint, constraints.Constraint):
            raise TypeError(
                "constraint must be a torch.distributions.constraints.Constraint (got "
                f"{type(constraint).__name__})"
            )
        if encoder_name is not None:
            if not isinstance(encoder_name, str):
                raise TypeError(
                    f"encoder_name must be a string or None (got {type(encoder_name).__name__})"
                )
            if not isinstance(encoder, nn.Module):
                raise TypeError(
                    "encoder_name registers a torch.nn.Module with pyro.module; the encoder "
                    f"given is a {type(encoder).__name__} (drop encoder_name for a plain callable)"
                )
        if (
            isinstance(init_scale, bool)
            or not isinstance(init_scale, (int, float))
            or not init_scale > 0
            or not math.isfinite(init_scale)
        ):
            raise ValueError(f"init_scale must be a number > 0 (got init_scale={init_scale!r})")
        if init is None:
            init = torch.distributions.transform_to(constraint)(
                0.01 * torch.randn((num_pseudo, *shape))
            )
        elif not isinstance(init, torch.Tensor):
            raise TypeError(
                f"init must be a tensor of shape {(num_pseudo, *shape)} or None (got "
                f"{type(init).__name__})"
            )
        elif tuple(init.shape) != (num_pseudo, *shape):
            raise ValueError(
                f"init must have shape (num_pseudo, *input_shape) = {(num_pseudo, *shape)} (got "
                f"{tuple(init.shape)})"
            )
        super().__init__(name=name)
        # Not a child module: the encoder keeps its owner's parameter names (see the docstring).
        object.__setattr__(self, "encoder", encoder)
        self.encoder_name = encoder_name
        self.num_pseudo = num_pseudo
        self.input_shape = shape
        self.init_scale = float(init_scale)
        self._scale_shift = _softplus_inv(self.init_scale)
        self.pseudo_inputs = PyroParam(init, constraint)

    def _components(self) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.encoder
        if self.encoder_name is not None:
            encoder = pyro.module(self.encoder_name, encoder, update_module_params=True)
        k = self.num_pseudo
        full, store = self._pyro_get_fullname("pseudo_inputs"), pyro.get_param_store()
        shape = (k, *self.input_shape)
        # (a shape check: skipped while a graph is recorded, where shapes are fixed anyway)
        if not torch.jit.is_tracing() and full in store and tuple(store[full].shape) != shape:
            raise ValueError(
                f"the param store holds {full!r} with shape {tuple(store[full].shape)}, but "
                f"num_pseudo={k}, input_shape={self.input_shape} need shape {shape}; give this "
                "VampPrior another name= or call pyro.clear_param_store()"
            )
        out = encoder(self.pseudo_inputs)
        if isinstance(out, (tuple, list)):
            if len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
                raise ValueError(
                    "an encoder returning a tuple must return (loc, scale), two tensors (got "
                    f"{len(out)} items)"
                )
            loc, scale = out
            if loc.dim() != 2 or loc.shape[0] != k or scale.shape != loc.shape:
                raise ValueError(
                    f"the encoder must map the pseudo-inputs to (loc, scale) of shape (K={k}, L) "
                    f"each (got shapes {tuple(loc.shape)} and {tuple(scale.shape)})"
                )
            return loc, scale
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                "the encoder must return (loc, scale) or one tensor of raw outputs (got "
                f"{type(out).__name__})"
            )
        if out.dim() != 2 or out.shape[0] != k or out.shape[1] % 2:
            raise ValueError(
                f"an encoder with raw outputs must map the pseudo-inputs to (K={k}, 2 * L) (got "
                f"shape {tuple(out.shape)}); return (loc, scale) instead if that is its output"
            )
        latent = out.shape[1] // 2
        loc, raw = out[:, :latent], out[:, latent:]
        return loc, F.softplus(raw + self._scale_shift) + 1e-6  # as Amortized._scale

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Locations and scales of the mixture's components, ``(K, L)`` each, from the active
        param store."""
        with self._pyro_context:
            return self._components()

    def forward(self) -> VampMixture:
        """The prior :math:`p_\\lambda(z)`: batch shape ``()``, event shape ``(L,)``."""
        loc, scale = self._components()  # (K, L) each
        mixture = dist.Categorical(logits=loc.new_zeros(loc.shape[:-1]))  # uniform 1/K
        return VampMixture(mixture, dist.Normal(loc, scale).to_event(1))


# ---------------------------------------------------------------------------------- networks
def _template(kind: str, latent_dim: int, hidden_dim: int) -> nn.Module:
    key = (kind, int(latent_dim), int(hidden_dim))
    if key not in _TEMPLATES:
        if key[1] < 1 or key[2] < 1:
            raise ValueError(
                f"latent_dim and hidden_dim must be >= 1 (got latent_dim={latent_dim}, "
                f"hidden_dim={hidden_dim})"
            )
        state = torch.random.get_rng_state()
        torch.manual_seed(_INIT_SEED if kind == "vae_decoder" else _ENCODER_SEED)
        try:
            if kind == "vae_decoder":
                layers = [nn.Linear(key[1], key[2]), nn.ReLU(), nn.Linear(key[2], NUM_PIXELS)]
            else:
                layers = [nn.Linear(NUM_PIXELS, key[2]), nn.ReLU(), nn.Linear(key[2], 2 * key[1])]
            net = nn.Sequential(*layers).double()
        finally:
            torch.random.set_rng_state(state)
        for p in net.parameters():
            p.requires_grad_(False)
        _TEMPLATES[key] = net
    return _TEMPLATES[key]


def decoder_template(latent_dim: int = DEFAULT_LATENT_DIM, hidden_dim: int = DEFAULT_HIDDEN_DIM):
    """The decoder's initial network for these sizes (float64, CPU), built once per sizes.

    Do not train it: :func:`model` registers copies.
    """
    return _template("vae_decoder", latent_dim, hidden_dim)


def encoder_template(latent_dim: int = DEFAULT_LATENT_DIM, hidden_dim: int = DEFAULT_HIDDEN_DIM):
    """The VampPrior encoder's initial network ``Linear(64, H) -> ReLU -> Linear(H, 2L)`` for
    these sizes (float64, CPU, a fixed-seed PyTorch default initialisation), built once.

    Do not train it: :func:`model` (with ``prior="vamp"``) and :func:`shared_encoder` register
    copies.
    """
    return _template("vae_encoder", latent_dim, hidden_dim)


def _registered(kind: str, ref: torch.Tensor, latent_dim: int, hidden_dim: int) -> nn.Module:
    import copy

    net = copy.deepcopy(_template(kind, latent_dim, hidden_dim)).to(
        dtype=ref.dtype, device=ref.device
    )
    for p in net.parameters():
        p.requires_grad_(True)
    store = pyro.get_param_store()
    for name, p in net.named_parameters():
        full = f"{kind}$$${name}"
        # (a shape check: skipped while a graph is recorded, where shapes are fixed anyway)
        if not torch.jit.is_tracing() and full in store and store[full].shape != p.shape:
            raise ValueError(
                f"the param store holds {full!r} with shape {tuple(store[full].shape)}, but "
                f"latent_dim={latent_dim}, hidden_dim={hidden_dim} need shape {tuple(p.shape)}; "
                "call pyro.clear_param_store() before changing sizes"
            )
    return pyro.module(kind, net, update_module_params=True)


def _decoder(ref: torch.Tensor, latent_dim: int, hidden_dim: int) -> nn.Module:
    return _registered("vae_decoder", ref, latent_dim, hidden_dim)


def _encoder(ref: torch.Tensor, latent_dim: int, hidden_dim: int) -> nn.Module:
    return _registered("vae_encoder", ref, latent_dim, hidden_dim)


class _SharedEncoder(nn.Module):
    """Runs the model's registered ``"vae_encoder"``; holds no parameters of its own."""

    def __init__(self, latent_dim: int, hidden_dim: int):
        super().__init__()
        self.latent_dim, self.hidden_dim = latent_dim, hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _encoder(x, self.latent_dim, self.hidden_dim)(x)  # (B, 2L)

    def extra_repr(self) -> str:
        return f"'vae_encoder', latent_dim={self.latent_dim}, hidden_dim={self.hidden_dim}"


def shared_encoder(
    latent_dim: int = DEFAULT_LATENT_DIM, hidden_dim: int = DEFAULT_HIDDEN_DIM
) -> nn.Module:
    """An encoder for :class:`~ppl_vi.guides.Amortized` that runs the model's own encoder.

    The module has no parameters: each call registers (or finds) the model's
    ``pyro.module("vae_encoder", ...)`` network in the active param store and applies it, so a
    guide built with ``Amortized(model, encoder=shared_encoder(L, H))`` and the VampPrior of
    ``model(..., prior="vamp", latent_dim=L, hidden_dim=H)`` run one network (see the module
    docstring). With ``prior="standard"`` it is simply an encoder with a fixed-seed
    initialisation, which gives fits with either prior the same starting encoder.

    Examples
    --------
    >>> from ppl_vi.guides import Amortized
    >>> from ppl_vi.models import vae_digits
    >>> data = vae_digits.load_data(n=10)
    >>> guide = Amortized(vae_digits.model, encoder=vae_digits.shared_encoder())
    >>> _ = guide(**data, prior="vamp", num_pseudo=3)
    >>> sorted(k for k in pyro.get_param_store() if "encoder" in k)   # one encoder
    ['vae_encoder$$$0.bias', 'vae_encoder$$$0.weight', 'vae_encoder$$$2.bias', \
'vae_encoder$$$2.weight']
    >>> pyro.clear_param_store()
    """
    encoder_template(latent_dim, hidden_dim)  # checks the sizes
    return _SharedEncoder(int(latent_dim), int(hidden_dim))


def _pseudo_init(x: torch.Tensor | None, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Initial pseudo-inputs ``(K, 64)`` in (0, 1) (see the module docstring)."""
    if x is None:
        if k not in _PSEUDO_NOISE:
            gen = torch.Generator().manual_seed(_PSEUDO_SEED)
            noise = torch.randn(k, NUM_PIXELS, generator=gen, dtype=torch.float64)
            _PSEUDO_NOISE[k] = (0.05 + 0.01 * noise).clamp(1e-3, 1 - 1e-3)
        return _PSEUDO_NOISE[k].to(dtype=ref.dtype, device=ref.device)
    n = x.shape[-2]
    if (n, k) not in _PSEUDO_ROWS:
        gen = torch.Generator().manual_seed(_PSEUDO_SEED)
        perm = torch.randperm(n, generator=gen)
        _PSEUDO_ROWS[(n, k)] = perm.repeat(-(-k // n))[:k]  # wraps around when K > N
    return 0.05 + 0.9 * x.index_select(-2, _PSEUDO_ROWS[(n, k)].to(x.device))


def _vamp_prior(x, ref, latent_dim: int, hidden_dim: int, k: int) -> VampMixture:
    encoder = _encoder(ref, latent_dim, hidden_dim)
    prior = VampPrior(
        encoder,
        k,
        NUM_PIXELS,
        init=_pseudo_init(x, ref, k),
        constraint=constraints.unit_interval,
        init_scale=ENCODER_INIT_SCALE,
        name="vae_vamp",
    )
    return prior()


# ---------------------------------------------------------------------------------- model
def model(
    x: torch.Tensor | None = None,
    latent_dim: int = DEFAULT_LATENT_DIM,
    hidden_dim: int = DEFAULT_HIDDEN_DIM,
    subsample_size: int | None = None,
    num_data: int | None = None,
    prior: str = "standard",
    num_pseudo: int | None = None,
) -> torch.Tensor:
    """Deep latent Gaussian model with a Bernoulli decoder.

    Parameters
    ----------
    x : torch.Tensor, optional
        Binary images as floats 0.0 / 1.0, shape ``(N, 64)``. When ``None`` the model samples
        them (in the default dtype) and ``num_data`` gives ``N``.
    latent_dim, hidden_dim : int
        Latent size :math:`L` and hidden width :math:`H` of the decoder (and of the VampPrior's
        encoder).
    subsample_size : int, optional
        Mini-batch size passed to ``pyro.plate("data", N, subsample_size=...)``.
    num_data : int, optional
        Number of images when ``x`` is ``None``.
    prior : {"standard", "vamp"}
        :math:`\\mathcal N(0, I)` or the VampPrior (see the module docstring).
    num_pseudo : int, optional
        Number of VampPrior pseudo-inputs :math:`K` (``prior="vamp"`` only; default
        :data:`DEFAULT_NUM_PSEUDO`).

    Returns
    -------
    torch.Tensor
        Pixel logits of the images used, ``(N, 64)`` or ``(B, 64)``.
    """
    if prior not in _PRIORS:
        raise ValueError(f"prior must be 'standard' or 'vamp' (got prior={prior!r})")
    if prior == "standard" and num_pseudo is not None:
        raise ValueError(
            f"num_pseudo sets the VampPrior's size and needs prior='vamp' (got "
            f"num_pseudo={num_pseudo!r} with prior='standard')"
        )
    if num_pseudo is None:
        num_pseudo = DEFAULT_NUM_PSEUDO
    if isinstance(num_pseudo, bool) or not isinstance(num_pseudo, int) or num_pseudo < 1:
        raise ValueError(f"num_pseudo must be an integer >= 1 (got num_pseudo={num_pseudo!r})")
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n, ref = num_data, torch.zeros(())
    else:
        n, ref = x.shape[-2], x
    decoder = _decoder(ref, latent_dim, hidden_dim)
    vamp = _vamp_prior(x, ref, latent_dim, hidden_dim, num_pseudo) if prior == "vamp" else None
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        if vamp is None:
            z_prior = dist.Normal(ref.new_zeros(latent_dim), ref.new_ones(latent_dim)).to_event(1)
        else:
            z_prior = vamp  # batch shape (), expanded by the plate
        z = pyro.sample("z", z_prior)  # (..., B, L)
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
