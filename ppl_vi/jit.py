"""Compiled loss steps: :class:`JitELBO` runs an ELBO's loss and surrogate through Pyro's JIT.

Pyro's :func:`pyro.ops.jit.trace` records one evaluation of a function of the parameters with
:func:`torch.jit.trace` and replays the recorded graph on later calls. Random draws are ops of the
graph, so every call still draws fresh particles; Python control flow, ``.item()`` calls and
validation checks are frozen at (or left out of) the recorded evaluation. For a small model this
removes most of the per-step Python overhead of tracing the model and the guide (about 2.5x
fewer CPU seconds per step on ``eight_schools`` and ``logistic_regression``).

:class:`JitELBO` wraps any ELBO that can say what to differentiate, i.e. that defines
``loss_and_surrogate(model, guide, *args, **kwargs) -> (loss, surrogate)`` (all of ppl-vi's
bounds do) or is Pyro's :class:`~pyro.infer.Trace_ELBO`. Its first call checks the recorded graph
against an eager evaluation with the same random numbers; if the values differ (a model whose
structure depends on the values it draws), or the ELBO cannot be recorded at all, it warns once
and runs the ELBO uncompiled from then on.

The random-number stream is the same as the uncompiled ELBO's: compiling consumes no draws, so a
fit with ``jit=True`` sees the same particles as one without, step for step.
"""

from __future__ import annotations

import math
import warnings
import weakref

import pyro
import pyro.ops.jit
import torch
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero, torch_item
from pyro.util import warn_if_nan

from ppl_vi.infer_util import is_user_file, place, user_stacklevel


class JitUnsupported(Exception):
    """Raised by ``loss_and_surrogate`` when an ELBO's step cannot be recorded as a graph."""


def trace_elbo_terms(elbo: Trace_ELBO, model, guide, args, kwargs):
    """``(loss, surrogate)`` of Pyro's :class:`~pyro.infer.Trace_ELBO` as tensors.

    The same estimator as ``Trace_ELBO.loss_and_grads`` (and Pyro's own ``JitTrace_ELBO``): the
    gradient of ``surrogate`` is the reparameterized gradient plus the score-function term of
    non-reparameterized guide sites. The loss is accumulated as ``loss_and_grads`` does it,
    site by site in double precision, so that it equals Pyro's loss bit for bit.
    """
    loss, surrogate = 0.0, 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        elbo_particle, surrogate_particle, log_r = 0.0, 0.0, None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo_particle = elbo_particle + _double(site["log_prob_sum"])
                surrogate_particle = surrogate_particle + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            elbo_particle = elbo_particle - _double(site["log_prob_sum"])
            if not is_identically_zero(entropy_term):
                surrogate_particle = surrogate_particle - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                weight = log_r.sum_to(site["cond_indep_stack"])
                surrogate_particle = surrogate_particle + (weight * score_function_term).sum()
        loss = loss + (-elbo_particle) / elbo.num_particles
        surrogate = surrogate - surrogate_particle / elbo.num_particles
    return loss, surrogate


def _double(value):
    """A site's log density as Pyro's ``torch_item`` sees it: float64 (Python floats)."""
    return value.detach().double() if isinstance(value, torch.Tensor) else float(value)


def unsupported_reason(elbo) -> str | None:
    """Why ``elbo`` cannot be wrapped by :class:`JitELBO` (None when it can)."""
    if isinstance(elbo, (JitELBO, JitTrace_ELBO)):
        return f"{type(elbo).__name__} is already compiled"
    if type(elbo) is Trace_ELBO or hasattr(elbo, "loss_and_surrogate"):
        reason = getattr(elbo, "jit_unsupported", None)
        return reason() if callable(reason) else None
    return (
        f"{type(elbo).__name__} does not define loss_and_surrogate(), so the quantity to "
        "differentiate is not known"
    )


def _split_kwargs(kwargs: dict) -> tuple[list, dict]:
    """Tensor keyword arguments become graph inputs; the rest stay static (part of the key)."""
    names = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    static = {k: v for k, v in kwargs.items() if k not in names}
    return names, static


class JitELBO(ELBO):
    """Any ELBO with its loss step compiled by Pyro's JIT (:func:`pyro.ops.jit.trace`).

    Use it with ``pyro.infer.SVI`` or through ``ppl_vi.fit(..., jit=True)``. The model and the
    guide must have a static structure (the same sample sites and shapes at every step; a
    subsampling plate's random indices are fine) and take every tensor they use as an argument
    or keyword argument. A new graph is recorded for each distinct set of non-tensor arguments.

    Parameters
    ----------
    elbo : pyro.infer.ELBO
        A :class:`~pyro.infer.Trace_ELBO` or an ELBO defining ``loss_and_surrogate`` (every
        ppl-vi ELBO). Other attributes (``num_particles`` etc.) are read from it.
    check : bool, default True
        On the first call, compare the compiled loss with an eager evaluation that uses the same
        random numbers; fall back to the eager ELBO (with a warning) when they differ by more
        than ``rtol``.
    rtol : float, default 1e-4
        Relative tolerance of that check (float32 reassociation moves the last digits).
    ignore_jit_warnings : bool, default True
        Silence ``torch.jit`` tracer warnings while recording.

    Attributes
    ----------
    fallback : str or None
        Why the ELBO runs uncompiled, once that has been decided; None while compiled.

    Examples
    --------
    >>> import pyro
    >>> from pyro.infer import SVI
    >>> from ppl_vi.elbos import IWAE
    >>> from ppl_vi.guides import MeanField
    >>> from ppl_vi.jit import JitELBO
    >>> from ppl_vi.models import normal_normal
    >>> pyro.clear_param_store()
    >>> data = normal_normal.load_data()
    >>> guide = MeanField(normal_normal.model)
    >>> svi = SVI(normal_normal.model, guide, pyro.optim.Adam({"lr": 0.01}),
    ...           JitELBO(IWAE(num_particles=8)))
    >>> loss = svi.step(**data)
    """

    def __init__(self, elbo, *, check: bool = True, rtol: float = 1e-4, ignore_jit_warnings=True):
        if not isinstance(elbo, ELBO):
            raise TypeError(f"JitELBO wraps a pyro.infer.ELBO (got {type(elbo).__name__})")
        self.elbo = elbo
        self.check = check
        self.rtol = rtol
        self.ignore_jit_warnings = ignore_jit_warnings
        self.fallback = unsupported_reason(elbo)
        self._compiled = {}  # (model id, guide id, len(args), tensor kwarg names) -> graph
        self._checked = set()
        self._warm = set()
        if self.fallback is not None:
            self._warn()

    def __getattr__(self, name):
        # only called for attributes JitELBO itself lacks: num_particles, max_plate_nesting...
        if name == "elbo":
            raise AttributeError(name)
        return getattr(self.elbo, name)

    @property
    def compiled(self) -> bool:
        """True while the step runs as a compiled graph."""
        return self.fallback is None

    def _warn(self) -> None:
        warnings.warn(
            f"jit: {type(self.elbo).__name__} runs uncompiled: {self.fallback}",
            RuntimeWarning,
            stacklevel=user_stacklevel(),  # the user's line: JitELBO(...), svi.step(), fit(...)
        )

    def _eager_terms(self, model, guide, args, kwargs):
        if type(self.elbo) is Trace_ELBO:
            return trace_elbo_terms(self.elbo, model, guide, args, kwargs)
        return self.elbo.loss_and_surrogate(model, guide, *args, **kwargs)

    def _function(self, model, guide, args, kwargs):
        names, static = _split_kwargs(kwargs)
        # the number of positional arguments is part of the key: ``terms`` splits on it
        key = (id(model), id(guide), len(args), tuple(names))
        fn = self._compiled.get(key)
        if fn is None:
            weakself = weakref.ref(self)
            nargs = len(args)

            def terms(*tensors, **static_kwargs):
                self = weakself()
                call_kwargs = dict(static_kwargs, **dict(zip(names, tensors[nargs:], strict=True)))
                loss, surrogate = self._eager_terms(model, guide, tensors[:nargs], call_kwargs)
                return torch.as_tensor(loss), torch.as_tensor(surrogate)

            fn = pyro.ops.jit.trace(terms)  # tracer warnings are sorted in _first_call
            self._compiled[key] = fn
        tensors = tuple(args) + tuple(kwargs[k] for k in names)
        return fn, key, tensors, static

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        """``(loss, surrogate)`` tensors, from the compiled graph when possible."""
        if self.fallback is not None:
            return self._eager_terms(model, guide, args, kwargs)
        if any(not isinstance(a, torch.Tensor) for a in args):
            if not self._warm:  # step 1 runs eagerly anyway (and fit's compiled step may
                self._warm.add(None)  # take over from step 2)
                return self._eager_terms(model, guide, args, kwargs)
            self.fallback = "positional model arguments must be tensors (pass others by keyword)"
            self._warn()
            return self._eager_terms(model, guide, args, kwargs)
        fn, key, tensors, static = self._function(model, guide, args, kwargs)
        static_key = (key, pyro.ops.jit._hashable_args_kwargs(tensors, static))
        if static_key in self._checked:
            return fn(*tensors, **static)
        if static_key not in self._warm:
            # the first step runs eagerly, exactly as uncompiled: one-time set-up that draws
            # random numbers (building a guide, guessing max_plate_nesting) happens here, so
            # the compiled steps that follow see the same random stream as an uncompiled run
            self._warm.add(static_key)
            return self._eager_terms(model, guide, args, kwargs)
        return self._first_call(fn, static_key, tensors, static, model, guide, args, kwargs)

    def _first_call(self, fn, static_key, tensors, static, model, guide, args, kwargs):
        """Record the graph without consuming random numbers, then check it once."""
        rng = torch.get_rng_state()
        cuda_rng = _cuda_rng_state(tensors)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated")
                # records the graph; the draws are discarded, and one-time set-up (guessing
                # max_plate_nesting, creating parameters) happens here
                fn(*tensors, **static)
            frozen = _user_code_warning(caught)
            if frozen is not None:
                raise JitUnsupported(
                    f"{frozen} turns a traced tensor into a Python value, which a recorded graph "
                    "would freeze at its first value"
                )
            if not self.ignore_jit_warnings:
                for w in caught:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except JitUnsupported as e:
            return self._give_up(str(e), rng, cuda_rng, model, guide, args, kwargs)
        except Exception as e:  # noqa: BLE001 - anything the tracer cannot record
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"torch.jit.trace failed ({type(e).__name__}: {first})"
            return self._give_up(reason, rng, cuda_rng, model, guide, args, kwargs)
        if not self.check:
            _set_rng(rng, cuda_rng)
            self._checked.add(static_key)
            return fn(*tensors, **static)
        params = [pyro.param(name).unconstrained() for name in fn._param_names]
        _set_rng(rng, cuda_rng)
        eager = _value_and_grads(self._eager_terms(model, guide, args, kwargs), params)
        _set_rng(rng, cuda_rng)
        loss, surrogate = fn(*tensors, **static)
        compiled = _value_and_grads((loss, surrogate), params, retain_graph=True)
        problem = _mismatch(compiled, eager, self.rtol)
        if problem is not None:
            reason = (
                f"the compiled step's {problem} differs from the eager step's with the same random "
                "numbers (does the model's structure depend on drawn values, or does the ELBO "
                "rely on torch.no_grad(), which a recorded graph does not keep?)"
            )
            return self._give_up(reason, rng, cuda_rng, model, guide, args, kwargs)
        self._checked.add(static_key)
        return loss, surrogate

    def _give_up(self, reason, rng, cuda_rng, model, guide, args, kwargs):
        self.fallback = reason
        self._compiled.clear()
        self._warn()
        _set_rng(rng, cuda_rng)
        return self._eager_terms(model, guide, args, kwargs)

    # ------------------------------------------------------------------ the ELBO interface

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(model, guide, args, kwargs)

    def _get_traces(self, model, guide, args, kwargs):
        return self.elbo._get_traces(model, guide, args, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The wrapped ELBO's loss (evaluated eagerly: no gradients are needed)."""
        return self.elbo.loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss, surrogate = self.loss_and_surrogate(model, guide, *args, **kwargs)
        loss, surrogate = torch.as_tensor(loss), torch.as_tensor(surrogate)
        return loss.detach() + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        if self.fallback is not None:
            return self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        loss, surrogate = self.loss_and_surrogate(model, guide, *args, **kwargs)
        if getattr(surrogate, "requires_grad", False):
            surrogate.backward()
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss


def _user_code_warning(caught) -> str | None:
    """``file:line`` where code outside torch, Pyro and ppl-vi turned a tensor into a Python value.

    Pyro's own code triggers harmless tracer warnings (shape checks); a model that calls
    ``.item()``, ``.tolist()`` or ``.numpy()`` or branches on a tensor (``if z > 0``) triggers
    one in the model's file.
    """
    for w in caught:
        # shape-based warnings (len(x), iterating) are harmless: shapes are fixed per graph
        if "Converting a tensor to a " not in str(w.message):  # a Python value, a NumPy array
            continue
        if issubclass(w.category, torch.jit.TracerWarning) and is_user_file(w.filename):
            return place(w.filename, w.lineno)
    return None


def _value_and_grads(terms, params, retain_graph=False):
    """The loss value and the surrogate's gradient for each parameter (zeros when unused)."""
    loss, surrogate = (torch.as_tensor(t) for t in terms)
    grads = [torch.zeros_like(p) for p in params]
    if surrogate.requires_grad and params:
        found = torch.autograd.grad(surrogate, params, retain_graph=retain_graph, allow_unused=True)
        grads = [g if f is None else f.detach() for g, f in zip(grads, found, strict=True)]
    return torch_item(loss), grads


def _mismatch(compiled, eager, rtol: float) -> str | None:
    """Which of loss / gradient differ beyond ``rtol`` (relative to their size), or None."""
    (a, ga), (b, gb) = compiled, eager
    if not (math.isfinite(a) and math.isfinite(b)):
        if not (math.isnan(a) and math.isnan(b)) and a != b:
            return f"loss ({a:.8g} vs {b:.8g})"
    elif abs(a - b) > rtol * max(1.0, abs(a), abs(b)):
        return f"loss ({a:.8g} vs {b:.8g})"
    if ga:
        diff = torch.linalg.vector_norm(
            torch.cat([(x - y).flatten() for x, y in zip(ga, gb, strict=True)])
        )
        size = torch.linalg.vector_norm(torch.cat([y.flatten() for y in gb]))
        if not bool(diff <= 10 * rtol * size + 1e-12):
            return f"gradient (relative difference {float(diff / size.clamp_min(1e-30)):.3g})"
    return None


def _cuda_rng_state(tensors):
    devices = {t.device for t in tensors if t.device.type == "cuda"}
    if not devices and torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = {torch.device("cuda", torch.cuda.current_device())}
    return {d: torch.cuda.get_rng_state(d) for d in devices}


def _set_rng(rng, cuda_rng) -> None:
    torch.set_rng_state(rng)
    for device, state in cuda_rng.items():
        torch.cuda.set_rng_state(state, device)
