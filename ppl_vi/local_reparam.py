r"""Local reparameterization of dense layers with Gaussian weights (Kingma et al., 2015).

A mean-field Gaussian guide over the weights of a dense layer, :math:`W_{ij} \sim
\mathcal{N}(M_{ij}, S_{ij}^2)` independently, makes each pre-activation of a datum :math:`x_n`
Gaussian:

.. math::

    b_{nj} = \sum_i x_{ni} W_{ij} \sim \mathcal{N}\Big(\sum_i x_{ni} M_{ij},\
        \sum_i x_{ni}^2 S_{ij}^2\Big), \qquad
    b_{nj} = (x_n M)_j + \sqrt{(x_n^2 S^2)_j}\;\varepsilon_{nj}, \quad
    \varepsilon_{nj} \sim \mathcal{N}(0, 1),

with :math:`x_n^2` and :math:`S^2` elementwise squares. Drawing :math:`b_{nj}` with noise of its
own for every datum, instead of one weight matrix :math:`W` shared by the mini-batch, leaves the
expected log-likelihood of every datum, and so the ELBO, unchanged (each datum's
pre-activations have the same distribution, only their dependence across data changes), and
makes the data's gradient contributions independent: the gradient variance then falls as
:math:`1/B` with the batch size :math:`B`, without the covariance term that a shared weight
draw adds (Kingma, Salimans & Welling, 2015, section 2.3). A deeper layer's input :math:`x_n`
is itself random; given it, the same holds layer by layer.

:class:`LocalReparamMessenger` does this for a Pyro model and guide, following TyXe's design
(Ritter & Karaletsos, 2022): while it is active, every value drawn at a sample site from a
Normal (or ``Independent``/masked Normal, or a ``Delta`` at such a draw, as
``AutoNormal``/``MeanField`` guides make) is recorded with its ``loc`` and ``scale``, and so are
shape-only views of it (``.mT``, ``.T``, ``transpose``, ``permute``, ``squeeze``, ``unsqueeze``,
``reshape``, ``view``, basic slicing, and ``expand`` that only adds dims on the left). A dense
product that consumes such a value as its weight, ``torch.matmul(x, W)`` / ``x @ W`` with the
weight as **second** operand, or ``F.linear(x, W, b)`` (what ``nn.Linear`` calls), returns a
draw of the pre-activation from the distribution above instead of the product with the drawn
weight. ``F.linear``'s bias, when it is also a recorded Normal draw, joins the local draw
(mean :math:`+\mu_b`, variance :math:`+s_b^2`); any other bias, and a bias added after a
``matmul``, is added as drawn. The weight's own draw still enters the ELBO's
:math:`\log p(W) - \log q(W)` (or the analytic KL of ``TraceMeanField_ELBO``), so the bound
and its other terms are untouched. :class:`LocalReparam` wraps an ELBO so that every loss and
gradient it computes runs inside the messenger: ``ppl_vi.fit(..., elbo=LocalReparam())``.

Requirements, not checked: each weight draw feeds one product per model run (a weight used
twice, as in tied weights or a recurrent layer, would get two independent local draws), and
the rows of the first operand are conditionally independent data (a plate, or rows that the
likelihood treats as independent): the per-datum distributions are exact, the dependence
between rows is dropped. A product whose weight is not a recorded draw runs unchanged.

References
----------
Kingma, D. P., Salimans, T. & Welling, M. (2015). Variational dropout and the local
reparameterization trick. NeurIPS.

Blundell, C., Cornebise, J., Kavukcuoglu, K. & Wierstra, D. (2015). Weight uncertainty in
neural networks. ICML.

Ritter, H. & Karaletsos, T. (2022). TyXe: Pyro-based Bayesian neural nets for PyTorch. MLSys.

Examples
--------
>>> import pyro
>>> from pyro.infer import Trace_ELBO
>>> import ppl_vi
>>> from ppl_vi.local_reparam import LocalReparam
>>> from ppl_vi.models import bnn
>>> data = bnn.load_data(task="classification")
>>> result = ppl_vi.fit(bnn.model, **data, hidden_dims=(8,), subsample_size=64,
...                     elbo=LocalReparam(Trace_ELBO()), num_steps=20, progress=False)
>>> sorted(result.params)[:2]
['MeanField.locs.layers.0.bias', 'MeanField.locs.layers.0.weight']
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO
from pyro.poutine.messenger import Messenger
from torch.distributions import transforms
from torch.overrides import TorchFunctionMode

from ppl_vi.jit import JitELBO, JitUnsupported, trace_elbo_terms, unsupported_reason

__all__ = ["LocalReparam", "LocalReparamMessenger"]

#: Dense products whose second operand (the weight) may be a recorded Gaussian draw.
_MATMULS = frozenset({torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__})
_LINEAR = F.linear

#: Shape-only functions: each output entry is one input entry, and no entry appears twice.
_VIEWS = frozenset(
    {
        torch.Tensor.mT.__get__,
        torch.Tensor.T.__get__,
        torch.Tensor.transpose,
        torch.transpose,
        torch.Tensor.swapaxes,
        torch.swapaxes,
        torch.Tensor.t,
        torch.t,
        torch.Tensor.permute,
        torch.permute,
        torch.Tensor.squeeze,
        torch.squeeze,
        torch.Tensor.unsqueeze,
        torch.unsqueeze,
        torch.Tensor.reshape,
        torch.reshape,
        torch.Tensor.view,
        torch.Tensor.contiguous,
        torch.Tensor.clone,
        torch.Tensor.to,
        torch.Tensor.double,
        torch.Tensor.float,
    }
)
_EXPANDS = frozenset({torch.Tensor.expand, torch.Tensor.expand_as})
_GETITEM = torch.Tensor.__getitem__


@dataclass
class _Draw:
    """A recorded draw: its site, and its Gaussian ``loc``/``scale`` (broadcast to its shape),
    or ``None`` with the distribution's description when the draw is not Gaussian."""

    ref: weakref.ref
    site: str
    loc: torch.Tensor | None
    scale: torch.Tensor | None
    what: str = "Normal"


def _gaussian(fn):
    """``(loc, scale)`` when ``fn`` is a Normal up to Independent/masking/expansion/identity
    transforms, else None."""
    while True:
        if isinstance(fn, (dist.Independent, MaskedDistribution, ExpandedDistribution)):
            fn = fn.base_dist
        elif isinstance(fn, torch.distributions.TransformedDistribution) and all(
            _is_identity(t) for t in fn.transforms
        ):
            fn = fn.base_dist
        else:
            break
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc, fn.scale
    return None


def _is_identity(t) -> bool:
    if isinstance(t, transforms.ComposeTransform):
        return all(_is_identity(p) for p in t.parts)
    if isinstance(t, transforms.IndependentTransform):
        return _is_identity(t.base_transform)
    return False


def _basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(
        p is None
        or p is Ellipsis
        or isinstance(p, int)
        or (isinstance(p, slice) and p.step in (None, 1))
        for p in parts
    )


class _DenseMode(TorchFunctionMode):
    """Tracks views of recorded draws and replaces the dense products that consume them."""

    def __init__(self, owner: LocalReparamMessenger):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        if func in _MATMULS and len(args) == 2 and not kwargs:
            draw = owner._lookup(args[1])
            if draw is not None:
                return owner._matmul(args[0], draw)
        elif func is _LINEAR:
            out = owner._linear(args, kwargs)
            if out is not None:
                return out
        out = func(*args, **kwargs)
        if (
            args
            and isinstance(out, torch.Tensor)
            and (func in _VIEWS or func in _EXPANDS or func is _GETITEM)
        ):
            draw = owner._lookup(args[0])
            if draw is not None and _keeps_entries(func, args, kwargs, out):
                owner._record(out, draw.site, *_apply(func, draw, args, kwargs), draw.what)
        return out


def _keeps_entries(func, args, kwargs, out) -> bool:
    """Whether each entry of ``out`` is a distinct entry of ``args[0]`` (up to copies along
    new leading dims, which only join batch dims)."""
    if func is _GETITEM:
        return len(args) == 2 and _basic_index(args[1])
    if func in _EXPANDS:
        src = args[0].shape
        return tuple(out.shape[out.dim() - len(src) :]) == tuple(src)
    return True


def _apply(func, draw: _Draw, args, kwargs):
    if draw.loc is None:
        return None, None
    rest = args[1:]
    return func(draw.loc, *rest, **kwargs), func(draw.scale, *rest, **kwargs)


class LocalReparamMessenger(Messenger):
    r"""Context manager (a Pyro messenger) that applies the local reparameterization trick.

    Around anything that runs a guide and then the model replayed on its draws (an ELBO's
    loss, ``pyro.infer.SVI.step``), each dense product
    ``x @ W`` / ``torch.matmul(x, W)`` / ``F.linear(x, W, b)`` whose weight :math:`W` (or a
    shape-only view of it) was drawn from a Normal guide site, :math:`W \sim \mathcal{N}(M,
    S^2)` elementwise, returns

    .. math::

        x M + \sqrt{x^2 S^2} \odot \varepsilon, \qquad \varepsilon \sim \mathcal{N}(0, I),

    a fresh draw for every row of ``x`` (see :mod:`ppl_vi.local_reparam`), with :math:`M`,
    :math:`S` the guide's ``loc`` and ``scale`` at the site.

    Raises
    ------
    ValueError
        (while a product runs) when its weight is a draw of a site whose guide distribution
        is not a Normal (e.g. ``AutoDelta``'s point mass, or one block of a full-rank
        Gaussian): local reparameterization needs a mean-field Gaussian over the weights.

    Attributes
    ----------
    sites : set of str
        The sites whose products were replaced, collected while active (reset on entry, kept
        after exit).

    Examples
    --------
    >>> import pyro
    >>> from pyro.infer import SVI, Trace_ELBO
    >>> from ppl_vi.guides import MeanField
    >>> from ppl_vi.local_reparam import LocalReparamMessenger
    >>> from ppl_vi.models import bnn
    >>> pyro.clear_param_store()
    >>> data = bnn.load_data(task="classification")
    >>> guide = MeanField(bnn.model)
    >>> svi = SVI(bnn.model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    >>> with LocalReparamMessenger() as lr:
    ...     loss = svi.step(**data, hidden_dims=(8,), subsample_size=32)
    >>> sorted(lr.sites)
    ['layers.0.weight', 'layers.1.weight']
    >>> pyro.clear_param_store()
    """

    def __init__(self):
        super().__init__()
        self._draws: dict[int, _Draw] = {}
        self._fresh: set[int] = set()
        self._mode = _DenseMode(self)
        self.sites: set[str] = set()

    def __enter__(self):
        self._draws, self._fresh, self.sites = {}, set(), set()
        self._mode.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._mode.__exit__(None, None, None)
            raise

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            return super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._mode.__exit__(exc_type, exc_value, traceback)
            self._draws, self._fresh = {}, set()

    # ------------------------------------------------------------------ recording draws
    def _pyro_sample(self, msg) -> None:
        # the outermost handler sees a site last: a value set by then (replay, condition,
        # observed) was not drawn from this site's distribution
        if msg["value"] is None and not msg["done"] and not msg["is_observed"]:
            self._fresh.add(id(msg))

    def _pyro_post_sample(self, msg) -> None:
        if id(msg) not in self._fresh:
            return
        self._fresh.discard(id(msg))
        value = msg["value"]
        if not isinstance(value, torch.Tensor) or msg["is_observed"]:
            return
        known = self._lookup(value)
        if known is not None:  # a Delta at a recorded draw (AutoNormal): that draw, this name
            self._record(value, msg["name"], known.loc, known.scale, known.what)
            return
        params = _gaussian(msg["fn"])
        if params is None:
            self._record(value, msg["name"], None, None, type(msg["fn"]).__name__)
        else:
            loc, scale = params
            self._record(value, msg["name"], loc.expand_as(value), scale.expand_as(value))

    def _record(self, value, site, loc, scale, what="Normal") -> None:
        key = id(value)
        draws = self._draws

        def forget(ref, key=key):
            entry = draws.get(key)
            if entry is not None and entry.ref is ref:
                del draws[key]

        draws[key] = _Draw(weakref.ref(value, forget), site, loc, scale, what)

    def _lookup(self, value) -> _Draw | None:
        entry = self._draws.get(id(value))
        if entry is None or entry.ref() is not value:
            return None
        return entry

    # ------------------------------------------------------------------ the products
    def _gaussian_draw(self, draw: _Draw) -> _Draw:
        if draw.loc is None:
            raise ValueError(
                f"local reparameterization: a dense product's weight is the draw of site "
                f"{draw.site!r} from a {draw.what}, not from a Normal. It needs a mean-field "
                "Gaussian guide over the weights (a Normal per site, e.g. guide='mean_field' / "
                "ppl_vi.guides.MeanField); for other guides (AutoDelta, full-rank, flows) use "
                "the ELBO without LocalReparam"
            )
        self.sites.add(draw.site)
        return draw

    def _matmul(self, x, draw: _Draw) -> torch.Tensor:
        draw = self._gaussian_draw(draw)
        mean = torch.matmul(x, draw.loc)
        var = torch.matmul(x * x, draw.scale * draw.scale)
        return _draw(mean, var)

    def _linear(self, args, kwargs):
        names = ("input", "weight", "bias")
        given = dict(zip(names, args, strict=False)) | kwargs
        x, w, b = given.get("input"), given.get("weight"), given.get("bias")
        draw = self._lookup(w)
        if draw is None:
            return None
        draw = self._gaussian_draw(draw)
        mean = F.linear(x, draw.loc)
        var = F.linear(x * x, draw.scale * draw.scale)
        if b is not None:
            bias = self._lookup(b)
            if bias is not None and bias.loc is not None:
                self.sites.add(bias.site)
                mean, var = mean + bias.loc, var + bias.scale * bias.scale
            else:
                mean = mean + b
        return _draw(mean, var)


def _changes_objective(elbo) -> bool:
    """Whether local draws would change what ``elbo`` estimates (see ``LocalReparam``)."""
    from pyro.infer import RenyiELBO, TraceTailAdaptive_ELBO

    from ppl_vi.elbos import SteinOperatorELBO

    if getattr(elbo, "particles_define_objective", False):  # ppl-vi's IWAE and Renyi bounds
        return True
    return isinstance(elbo, (RenyiELBO, TraceTailAdaptive_ELBO, SteinOperatorELBO))


def _draw(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    # a zero variance (an all-zero input row) has no noise and, clamped, no gradient: the
    # square root's derivative at 0 is infinite
    tiny = torch.finfo(var.dtype).tiny
    return mean + var.clamp_min(tiny).sqrt() * torch.randn_like(mean)


class LocalReparam(ELBO):
    r"""An ELBO whose estimates use the local reparameterization trick.

    Every ``loss``, ``loss_and_grads`` and ``differentiable_loss`` of the wrapped ELBO runs
    inside a :class:`LocalReparamMessenger`: the same bound (the expected log-likelihood is
    unchanged, the weights' :math:`\log p(W) - \log q(W)` or KL terms use the weight draws as
    before), with lower-variance gradients for the Gaussian weights of dense layers.

    .. math::

        \mathcal{L}(\phi) = \sum_n \mathbb{E}_{q_\phi(W)}\big[\log p(y_n \mid x_n, W)\big]
            - \mathrm{KL}\big(q_\phi(W) \,\|\, p(W)\big),

    estimated with the pre-activations of each datum drawn from their Gaussian distribution
    under :math:`q_\phi` (:math:`\phi`: the guide's parameters).

    Parameters
    ----------
    elbo : pyro.infer.ELBO, default Trace_ELBO()
        The estimator to wrap (an instance) of the ELBO itself: ``Trace_ELBO``,
        ``TraceMeanField_ELBO``, ``TraceGraph_ELBO``, ``RBScoreFunctionELBO``. Bounds that are
        nonlinear in the likelihood (IWAE, Rényi) are refused: per-datum draws keep each
        datum's expected log-likelihood, not the expectation of a product over data. Its
        ``num_particles``, ``vectorize_particles`` and ``max_plate_nesting`` are read and set
        through the wrapper.

    Notes
    -----
    ``ppl_vi.fit`` compiles the step of a wrapped ``Trace_ELBO`` or ppl-vi ELBO as it
    compiles the plain one (:mod:`ppl_vi.compiled`, checked against the eager step): the
    products to replace are found while the step is recorded, and the graph holds the local
    draws. An ELBO that cannot be compiled unwrapped (``TraceMeanField_ELBO``) runs eagerly
    wrapped too, with the reason in ``result.method_info["jit"]``. The first estimate warns
    once when no product was replaced (then the wrapper has no effect: no weight is drawn
    from a Normal guide site, or the model multiplies it in a way that is not intercepted).

    Examples
    --------
    >>> from pyro.infer import Trace_ELBO
    >>> import ppl_vi
    >>> from ppl_vi.local_reparam import LocalReparam
    >>> from ppl_vi.models import bnn
    >>> data = bnn.load_data(task="regression")
    >>> result = ppl_vi.fit(bnn.model, **data, hidden_dims=(8,), subsample_size=64,
    ...                     elbo=LocalReparam(Trace_ELBO(num_particles=4, max_plate_nesting=1,
    ...                                                  vectorize_particles=True)),
    ...                     num_steps=20, progress=False)
    >>> len(result.losses)
    20
    """

    def __init__(self, elbo: ELBO | None = None):
        if elbo is None:
            elbo = Trace_ELBO()
        if isinstance(elbo, type):
            raise TypeError(
                f"elbo must be an ELBO instance, e.g. LocalReparam({elbo.__name__}()) (got the "
                f"class {elbo.__name__})"
            )
        if not isinstance(elbo, ELBO):
            raise TypeError(f"elbo must be a pyro.infer.ELBO instance (got {type(elbo).__name__})")
        if isinstance(elbo, LocalReparam):
            raise ValueError("elbo is already a LocalReparam; wrap the plain ELBO once")
        if isinstance(elbo, (JitELBO, JitTrace_ELBO)) or type(elbo).__name__.startswith("Jit"):
            raise TypeError(
                f"elbo must be an uncompiled ELBO (got {type(elbo).__name__}); wrap the plain "
                "ELBO, e.g. LocalReparam(Trace_ELBO()): ppl_vi.fit compiles the wrapped step "
                "itself"
            )
        if _changes_objective(elbo):
            raise ValueError(
                f"LocalReparam cannot wrap {type(elbo).__name__}: local draws keep each datum's "
                "expected log-likelihood, so they keep the ELBO (a sum of such expectations) but "
                "change any objective that is nonlinear in the likelihood (IWAE, Renyi bounds, "
                "tail-adaptive weights) or that uses the likelihood's gradient with respect to "
                "the weights (Stein). Wrap Trace_ELBO, TraceMeanField_ELBO, TraceGraph_ELBO or "
                "RBScoreFunctionELBO"
            )
        self.elbo = elbo
        #: The wrapped ELBO's class and particle settings (part of checkpoint fingerprints).
        self.wrapped = (
            f"{type(elbo).__name__}(num_particles={elbo.num_particles}, "
            f"vectorize_particles={elbo.vectorize_particles})"
        )
        self._checked = False

    # the settings every ELBO has live on the wrapped one
    num_particles = property(
        lambda self: self.elbo.num_particles,
        lambda self, v: setattr(self.elbo, "num_particles", v),
    )
    vectorize_particles = property(
        lambda self: self.elbo.vectorize_particles,
        lambda self, v: setattr(self.elbo, "vectorize_particles", v),
    )
    max_plate_nesting = property(
        lambda self: self.elbo.max_plate_nesting,
        lambda self, v: setattr(self.elbo, "max_plate_nesting", v),
    )

    def _run(self, method: str, model, guide, args, kwargs):
        with LocalReparamMessenger() as messenger:
            if method == "terms":
                out = trace_elbo_terms(self.elbo, model, guide, args, kwargs)
            else:
                out = getattr(self.elbo, method)(model, guide, *args, **kwargs)
        if not self._checked:
            self._checked = True
            if not messenger.sites:
                warnings.warn(
                    "LocalReparam replaced no dense product: no weight drawn from a Normal "
                    "guide site reaches torch.matmul(x, W), x @ W or F.linear(x, W) as its "
                    "second operand, so the estimates are those of the wrapped ELBO",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return out

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The wrapped ELBO's ``loss`` (an estimate of -ELBO) with local reparameterization."""
        return self._run("loss", model, guide, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The wrapped ELBO's ``loss_and_grads`` with local reparameterization."""
        return self._run("loss_and_grads", model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The wrapped ELBO's ``differentiable_loss`` with local reparameterization."""
        return self._run("differentiable_loss", model, guide, args, kwargs)

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        """``(loss, surrogate)`` of the wrapped ELBO with local reparameterization (what
        :mod:`ppl_vi.compiled` records). Raises :class:`~ppl_vi.jit.JitUnsupported` when the
        wrapped ELBO does not say what to differentiate."""
        reason = unsupported_reason(self.elbo)
        if reason is not None:
            raise JitUnsupported(reason)
        if type(self.elbo) is Trace_ELBO:
            return self._run("terms", model, guide, args, kwargs)
        return self._run("loss_and_surrogate", model, guide, args, kwargs)

    def jit_unsupported(self) -> str | None:
        """Why the step cannot be compiled: the wrapped ELBO's reason (None when it can)."""
        return unsupported_reason(self.elbo)

    def _get_trace(self, model, guide, args, kwargs):
        with LocalReparamMessenger():
            return self.elbo._get_trace(model, guide, args, kwargs)

    def _get_traces(self, model, guide, args, kwargs):
        with LocalReparamMessenger():
            traces = list(self.elbo._get_traces(model, guide, args, kwargs))
        return iter(traces)
