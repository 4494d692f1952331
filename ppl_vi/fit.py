"""``fit()``: resolve the guide and the ELBO, run :class:`pyro.infer.SVI`, stop, return a result."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, JitTrace_ELBO
from pyro.infer.util import torch_item, zero_grads
from pyro.optim.lr_scheduler import PyroLRScheduler
from pyro.optim.optim import PyroOptim, _load_state_dict
from torch.optim.adam import adam as _adam
from tqdm import tqdm

from ppl_vi import io
from ppl_vi.elbos import ELBOS
from ppl_vi.elbos._base import ParticleELBO
from ppl_vi.guides import GUIDES
from ppl_vi.infer_util import device_context, first_nonfinite_site, model_info
from ppl_vi.jit import JitELBO
from ppl_vi.result import VIResult

DEFAULT_LR = 0.01


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite during :func:`fit`.

    Attributes
    ----------
    step : int
        The step (1-based) whose loss or gradient was not finite.
    site : str or None
        The first sample site found with a non-finite value or log density, when found.
    result : VIResult
        The fit up to the last finite step; its parameters never saw the bad gradient.
    """

    def __init__(self, message: str, step: int, site: str | None, result: VIResult):
        super().__init__(message)
        self.step = step
        self.site = site
        self.result = result


@dataclass(frozen=True)
class Convergence:
    r"""Stop once the smoothed loss has stopped improving (the idea of Stan ADVI's ``tol_rel_obj``).

    Every ``window`` steps (after ``min_steps``), a straight line is fitted by least squares to
    the last ``lag * window`` losses. Its slope :math:`b` (loss per step, with standard error
    :math:`s_b`) gives a plausible upper bound on the relative decrease of the smoothed loss per
    window,

    .. math::

        r = \frac{(|b| + z\, s_b)\, w}{\max(|\bar L_w|, 1)},

    where :math:`w` is ``window``, :math:`\bar L_w` the mean loss of the last window and
    :math:`z` = ``z``. The fit counts as converged once :math:`r <` ``tol``: the loss is then
    confidently flat to relative precision ``tol`` per window. When the loss is too noisy to be
    sure of that, the rule does not fire and the fit runs its full ``num_steps``.

    The default ``tol`` is strict on purpose. A flat loss does not mean the parameters have
    arrived: with one particle the loss noise hides slow drift along flat directions (on
    ``bayes_linear_regression`` the loss looks flat to ~6e-4 per window after 1000 steps, while
    the means are still 0.3 posterior sd away). Loosen ``tol`` (Stan uses 1e-2) to trade accuracy
    for time.
    """

    tol: float = 1e-4
    window: int = 100
    lag: int = 5
    min_steps: int = 1000
    z: float = 2.0

    def __post_init__(self):
        for name in ("window", "lag", "min_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Convergence.{name} must be an integer >= 1 (got {value!r})")
        if self.lag * self.window < 3:
            raise ValueError("Convergence needs lag * window >= 3 losses to fit a slope")
        if not self.tol > 0:
            raise ValueError(f"Convergence.tol must be > 0 (got tol={self.tol!r})")
        if not self.z >= 0:
            raise ValueError(f"Convergence.z must be >= 0 (got z={self.z!r})")

    def relative_decrease(self, losses) -> float | None:
        """The bound :math:`r` above for ``losses`` (one per step so far), or None if too few."""
        span = self.lag * self.window
        if len(losses) < span:
            return None
        y = np.asarray(losses[len(losses) - span :], dtype=np.float64)
        t = np.arange(span, dtype=np.float64) - (span - 1) / 2
        tt = t @ t
        centred = y - y.mean()
        slope = (t @ centred) / tt
        resid = centred - slope * t
        se = math.sqrt(max(resid @ resid, 0.0) / (span - 2) / tt)
        scale = max(abs(y[-self.window :].mean()), 1.0)
        return (abs(slope) + self.z * se) * self.window / scale

    def check(self, losses) -> bool:
        """True when ``losses`` (one per step so far) meet the stopping rule at this step."""
        if len(losses) < self.min_steps or len(losses) % self.window:
            return False
        r = self.relative_decrease(losses)
        return r is not None and r < self.tol


@dataclass(frozen=True)
class Polish:
    r"""The final phase of a fit: learning-rate decay plus iterate averaging.

    Adam at a fixed learning rate leaves the parameters jittering around the optimum by an
    amount set by the learning rate, not by the gradient noise. During the last ``fraction`` of
    the steps (or after the stopping rule fires) the learning rate decays geometrically from
    ``lr`` to ``lr * lr_factor``, each ELBO estimate uses ``num_particles`` vectorized particles
    (when the ELBO was given by name or class and the fit uses fewer), and the parameters are
    averaged over the phase (Polyak & Juditsky 1992); the averages become the fitted parameters.
    More particles raise the signal-to-noise ratio of the gradient, which lets the parameters
    finish drifting along flat directions of the loss that a lower learning rate alone freezes.

    .. math::

        \eta_t = \eta \, f^{(t - t_0)/P}, \qquad
        \bar\phi = \frac{1}{P} \sum_{t = t_0 + 1}^{t_0 + P} \phi_t

    with :math:`f` = ``lr_factor``, :math:`P` = ``fraction * num_steps`` and :math:`t_0` the
    first step of the phase.

    References
    ----------
    Polyak, B. T. & Juditsky, A. B. (1992). Acceleration of stochastic approximation by
    averaging. SIAM J. Control Optim. 30(4).
    """

    fraction: float = 0.2
    lr_factor: float = 0.1
    average: bool = True
    num_particles: int = 16

    def __post_init__(self):
        if (
            isinstance(self.num_particles, bool)
            or not isinstance(self.num_particles, int)
            or (self.num_particles < 1)
        ):
            raise ValueError(
                f"Polish.num_particles must be an integer >= 1 (got {self.num_particles!r})"
            )
        if not 0 < self.fraction < 1:
            raise ValueError(f"Polish.fraction must be in (0, 1) (got {self.fraction!r})")
        if not 0 < self.lr_factor <= 1:
            raise ValueError(f"Polish.lr_factor must be in (0, 1] (got {self.lr_factor!r})")


@dataclass
class FitState:
    """What a callback sees after each step. Return ``True`` from the callback to stop."""

    step: int
    loss: float
    losses: list
    guide: Callable
    phase: str
    lr_factor: float


@dataclass
class _Loop:
    step: int = 0
    losses: list = field(default_factory=list)
    converged: bool = False
    polish_start: int | None = None
    polish_end: int | None = None
    avg: dict | None = None
    avg_count: int = 0
    finished: bool = False

    def to_payload(self) -> dict:
        return {
            "step": self.step,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "converged": self.converged,
            "polish_start": self.polish_start,
            "polish_end": self.polish_end,
            "avg": io.to_cpu(self.avg),
            "avg_count": self.avg_count,
            "finished": self.finished,
        }

    @classmethod
    def from_payload(cls, d: dict, device) -> _Loop:
        avg = None if d["avg"] is None else {k: v.to(device) for k, v in d["avg"].items()}
        return cls(
            step=d["step"],
            losses=d["losses"].tolist(),
            converged=d["converged"],
            polish_start=d["polish_start"],
            polish_end=d["polish_end"],
            avg=avg,
            avg_count=d["avg_count"],
            finished=d["finished"],
        )


class _NonFinite(Exception):
    def __init__(self, loss: float, bad_params: list):
        self.loss = loss
        self.bad_params = bad_params


class _GuardedSVI(SVI):
    """Pyro's SVI step with one addition: a non-finite loss or gradient never reaches the optimizer.

    The check happens between the gradient computation and the parameter update, so the
    parameters always hold the last finite values.
    """

    def __init__(self, model, guide, optim, loss):
        super().__init__(model, guide, optim, loss)
        self.elbo = self.main_elbo = loss
        self.params = None
        self.lr_factor = 1.0
        self._applied_factor = None

    def set_elbo(self, elbo) -> None:
        """Use another ELBO from the next step on (same model, guide and optimizer)."""
        if elbo is not self.elbo:
            self.elbo = elbo
            self.loss = elbo.loss
            self.loss_and_grads = elbo.loss_and_grads

    def _prepare_optim(self, params) -> None:
        """Create the per-parameter optimizers Pyro would create lazily, then set their lr.

        Creating them here (as ``PyroOptim.__call__`` does) lets the learning-rate factor reach
        a parameter's optimizer before its first update, also right after a checkpoint resume.
        """
        optim = self.optim
        new = False
        for p in params:
            if p not in optim.optim_objs:
                new = True
                optim.optim_objs[p] = optim._get_optim(p)
                optim.grad_clip[p] = optim._get_grad_clip(p)
                name = pyro.get_param_store().param_name(p)
                state = optim._state_waiting_to_be_consumed.pop(name, None)
                if state is not None:
                    _load_state_dict(optim.optim_objs[p], state)
        if isinstance(optim, PyroLRScheduler):
            return
        if new or self.lr_factor != self._applied_factor:
            _set_lr_factor(optim, self.lr_factor)
            self._applied_factor = self.lr_factor

    def step(self, *args, **kwargs):
        with poutine.trace(param_only=True) as param_capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        sites = param_capture.trace.nodes.values()
        # unique, in the order the trace met them
        params = list(dict.fromkeys(site["value"].unconstrained() for site in sites))
        loss = torch_item(loss)
        grads = [p.grad for p in params if p.grad is not None]
        finite = math.isfinite(loss)
        if finite and grads:
            finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()))
        if not finite:
            bad = [p for p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
            zero_grads(set(params))
            raise _NonFinite(loss, bad)
        self._prepare_optim(params)
        if not _fused_adam_step(self.optim, params):
            self.optim(params)
        for p in params:  # cheaper than zeroing: the next backward allocates fresh gradients
            p.grad = None
        self.params = params
        return loss


_ADAM_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


def _fused_adam_step(optim, params) -> bool:
    """One Adam update of every parameter with multi-tensor (``foreach``) kernels.

    ``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` per parameter and steps them one by one,
    which costs more than a compiled loss step on a small model. This applies the same update
    (``torch.optim.adam.adam``, the function behind ``torch.optim.Adam.step``) to all parameters
    at once, grouped by their hyper-parameters, reading and writing each per-parameter
    optimizer's own state, so checkpoints and ``get_state`` are unchanged. Returns False (and
    does nothing) unless every optimizer is a plain ``torch.optim.Adam`` on a dense CPU/CUDA
    tensor; the caller then steps the optimizers as Pyro does.
    """
    if type(optim) is not PyroOptim or optim.pt_optim_constructor is not torch.optim.Adam:
        return False
    groups = {}
    for p in params:
        if p.grad is None:
            continue
        opt = optim.optim_objs[p]
        (group,) = opt.param_groups
        if group.get("differentiable") or group.get("fused") or group.get("capturable"):
            return False
        if group.get("decoupled_weight_decay") or p.grad.is_sparse or torch.is_complex(p):
            return False
        key = tuple(group[k] for k in _ADAM_KEYS) + (p.device, p.dtype)
        groups.setdefault(key, []).append((p, opt))
    for p in params:
        if p.grad is not None and optim.grad_clip[p] is not None:
            optim.grad_clip[p](p)
    for key, members in groups.items():
        lr, (beta1, beta2), eps, weight_decay, amsgrad, maximize = key[: len(_ADAM_KEYS)]
        tensors, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = [], [], [], [], [], []
        for p, opt in members:
            state = opt.state[p]
            if not state:  # what torch.optim.Adam creates on its first step
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(p)
            tensors.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            if amsgrad:
                max_sqs.append(state["max_exp_avg_sq"])
        with torch.no_grad():
            _adam(
                tensors,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_sqs,
                steps,
                foreach=True,
                amsgrad=amsgrad,
                beta1=beta1,
                beta2=beta2,
                lr=lr,
                weight_decay=weight_decay,
                eps=eps,
                maximize=maximize,
            )
    return True


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else must name a usable device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got device={device!r})"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but torch.cuda.is_available() is False; use "
                "device='auto' to fall back to the CPU, or device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) "
                "are visible"
            )
    return dev


def move_to_device(obj, device: torch.device):
    """Move every tensor in (nested tuples, lists and dicts of) ``obj`` to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return type(obj)(move_to_device(x, device) for x in obj)
    if isinstance(obj, list):
        return [move_to_device(x, device) for x in obj]
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    return obj


def _class_path(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _from_table(name: str, table: dict, what: str, alternatives: str):
    if name not in table:
        raise ValueError(
            f"unknown {what} {name!r}; available {what}s: {', '.join(table)} (or pass "
            f"{alternatives})"
        )
    return table[name]


def resolve_guide(guide, model, guide_kwargs: dict | None):
    """Build the guide named by ``guide`` (a name, a class, or a ready instance) for ``model``."""
    guide_kwargs = dict(guide_kwargs or {})
    if isinstance(guide, str):
        cls = _from_table(guide, GUIDES, "guide", "a guide class or a guide instance")
        obj = cls(model, **guide_kwargs)
    elif isinstance(guide, type):
        obj = guide(model, **guide_kwargs)
    elif callable(guide):
        if guide_kwargs:
            raise ValueError(
                "guide_kwargs are used to construct a guide from a name or a class; the guide "
                f"given is already an instance of {type(guide).__name__}"
            )
        obj = guide
    else:
        raise TypeError(
            "guide must be a guide name, a guide class or a callable guide (got "
            f"{type(guide).__name__})"
        )
    names = {cls: name for name, cls in GUIDES.items()}
    config = obj.get_config() if hasattr(obj, "get_config") else None
    spec = {"name": names.get(type(obj)), "class": _class_path(obj), "config": config}
    return obj, spec


def resolve_elbo(
    elbo,
    num_particles: int | None,
    max_plate_nesting: int,
    elbo_kwargs: dict | None,
    jit: bool = False,
    undeclared: list | None = None,
):
    """Build the ELBO named by ``elbo`` (a name, a class or an instance of ``pyro.infer.ELBO``).

    Returns ``(elbo, spec, factory)``; ``factory(k)`` builds the same ELBO with ``k`` vectorized
    particles (one at a time when ``undeclared`` names model sites with batch dims that no plate
    declares), or is None for an ELBO instance (whose arguments are not known). With ``jit``,
    both are wrapped in :class:`~ppl_vi.jit.JitELBO` (which warns and runs uncompiled when the
    ELBO cannot be compiled).
    """
    obj, spec, factory = _resolve_elbo(
        elbo, num_particles, max_plate_nesting, elbo_kwargs, undeclared
    )
    spec["jit"] = bool(jit)
    if not jit:
        return obj, spec, factory
    compiled = obj if isinstance(obj, (JitELBO, JitTrace_ELBO)) else JitELBO(obj)
    if factory is not None:
        inner = factory

        def factory(k: int):
            return JitELBO(inner(k))

    return compiled, spec, factory


def _resolve_elbo(elbo, num_particles, max_plate_nesting, elbo_kwargs, undeclared):
    elbo_kwargs = dict(elbo_kwargs or {})
    if isinstance(elbo, str):
        elbo = _from_table(elbo, ELBOS, "elbo", "a pyro.infer.ELBO class or instance")
    if isinstance(elbo, type):
        if not issubclass(elbo, pyro.infer.ELBO):
            raise TypeError(f"elbo class must subclass pyro.infer.ELBO (got {elbo.__name__})")
        cls = elbo
        if num_particles is not None:
            elbo_kwargs.setdefault("num_particles", num_particles)
        requested = elbo_kwargs.pop("vectorize_particles", None)
        vectorize = _vectorize_particles(cls, requested, undeclared or [])
        elbo_kwargs.setdefault("max_plate_nesting", max_plate_nesting)

        def factory(k: int):
            # Pyro's own ELBOs with one particle: no particle plate at all
            vec = vectorize and (k > 1 or issubclass(cls, ParticleELBO))
            return cls(**{**elbo_kwargs, "num_particles": k, "vectorize_particles": vec})

        k = elbo_kwargs.pop("num_particles", None)
        if k is not None:
            obj = factory(k)
        else:  # the class's own default number of particles
            vec = vectorize and issubclass(cls, ParticleELBO)
            obj = cls(**elbo_kwargs, vectorize_particles=vec)

    elif isinstance(elbo, pyro.infer.ELBO):
        if elbo_kwargs:
            raise ValueError("elbo_kwargs cannot be combined with an ELBO instance")
        if num_particles is not None and num_particles != elbo.num_particles:
            raise ValueError(
                f"num_particles={num_particles} disagrees with the ELBO instance given "
                f"(num_particles={elbo.num_particles}); set it on the ELBO instead"
            )
        obj, factory = elbo, None
    else:
        raise TypeError(
            f"elbo must be an ELBO name, a pyro.infer.ELBO class or instance (got "
            f"{type(elbo).__name__})"
        )
    names = {c: name for name, c in ELBOS.items()}
    inner = obj.elbo if isinstance(obj, JitELBO) else obj
    spec = {"name": names.get(type(inner)), "class": _class_path(inner)}
    return obj, spec, factory


def _vectorize_particles(cls, requested: bool | None, undeclared: list) -> bool:
    """Evaluate particles as one batch (over an extra plate) unless the model cannot.

    Every plate the model declares is known from tracing it once (``max_plate_nesting``), so
    the particle plate goes left of them. A site with a batch dim no plate declares would
    collide with it: then particles run one at a time, with a warning.
    """
    if not undeclared:
        return True if requested is None else bool(requested)
    if requested is False:
        return False
    sites = ", ".join(repr(s) for s in undeclared[:5])
    message = (
        f"model site(s) {sites} have batch dims that no pyro.plate declares, so {cls.__name__} "
        "evaluates particles one at a time (slower). Declare those dims with pyro.plate(...) or "
        "make them event dims with .to_event(...) to vectorize particles."
    )
    if requested:
        raise ValueError(f"vectorize_particles=True cannot be used: {message}")
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    return False


def _build_optim(optim, lr, clip_norm):
    if optim is None:
        lr = DEFAULT_LR if lr is None else lr
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number (got lr={lr!r})")
        clip_args = {}
        if clip_norm is not None:
            if not clip_norm > 0:
                raise ValueError(f"clip_norm must be > 0 (got clip_norm={clip_norm!r})")
            clip_args = {"clip_norm": float(clip_norm)}
        return pyro.optim.Adam({"lr": float(lr)}, clip_args=clip_args)
    if not isinstance(optim, PyroOptim):
        raise TypeError(
            "optim must be a pyro.optim optimizer such as pyro.optim.Adam({'lr': 0.01}) (got "
            f"{type(optim).__module__}.{type(optim).__name__}); torch optimizers can be wrapped "
            "with pyro.optim.PyroOptim"
        )
    if lr is not None or clip_norm is not None:
        raise ValueError(
            "lr and clip_norm configure the default Adam optimizer; with optim=... set them on "
            "the optimizer you pass"
        )
    return optim


def _set_lr_factor(optim: PyroOptim, factor: float) -> None:
    for opt in optim.optim_objs.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (got {name}={value!r})")


def _param_names(params) -> list:
    store = pyro.get_param_store()
    return sorted(store.param_name(p) or "<unnamed>" for p in params)


def _validation_failure(err: ValueError) -> bool:
    return "invalid values" in str(err) or "Expected value argument" in str(err)


def _diagnose(svi, args, kwargs, rng_state) -> str | None:
    """Re-run the failing step's sampling with validation off and name the first bad site."""
    torch.set_rng_state(rng_state)
    try:
        with pyro.validation_enabled(False), torch.no_grad():
            for model_trace, guide_trace in svi.elbo._get_traces(
                svi.model, svi.guide, args, kwargs
            ):
                found = first_nonfinite_site([("guide", guide_trace), ("model", model_trace)])
                if found:
                    return found
    except Exception:  # noqa: BLE001 - the diagnosis is best effort; the step is already bad
        return None
    return None


def _current_params(svi) -> list:
    store = pyro.get_param_store()
    params = getattr(svi, "params", None)
    if params is None:
        params = [store._params[name] for name in store.keys()]
    return params


def fit(
    model: Callable,
    *model_args,
    guide="mean_field",
    elbo="elbo",
    num_steps: int = 5000,
    lr: float | None = None,
    optim: PyroOptim | None = None,
    num_particles: int | None = None,
    seed: int | None = 0,
    device="auto",
    progress: bool = True,
    convergence: Convergence | None = Convergence(),  # noqa: B008 - frozen dataclass
    polish: Polish | None = Polish(),  # noqa: B008 - frozen dataclass
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    callbacks: Iterable[Callable] = (),
    clip_norm: float | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    guide_kwargs: dict | None = None,
    elbo_kwargs: dict | None = None,
    jit: bool = False,
    **model_kwargs,
) -> VIResult:
    """Fit a guide to a Pyro model by stochastic variational inference.

    Runs :class:`pyro.infer.SVI` in a parameter store of its own (two fits never share
    parameters), then returns a :class:`~ppl_vi.VIResult`.

    Parameters
    ----------
    model : callable
        A Pyro model; ``*model_args`` and ``**model_kwargs`` are passed to it (and to the guide).
        Tensors among them are moved to ``device``.
    guide : str, class or callable, default "mean_field"
        A name from ``ppl_vi.guides.GUIDES``, a guide class (built as ``guide(model,
        **guide_kwargs)``) or a ready guide.
    elbo : str, class or pyro.infer.ELBO, default "elbo"
        A name from ``ppl_vi.elbos.ELBOS``, an ELBO class or a ready ELBO instance.
    num_steps : int, default 5000
        Maximum number of optimisation steps, the final (polish) phase included.
    lr : float, default 0.01
        Learning rate of the default Adam optimizer.
    optim : pyro.optim.PyroOptim, optional
        An optimizer to use instead of Adam (then ``lr`` and ``clip_norm`` must be unset).
    num_particles : int, optional
        Particles per ELBO estimate; more than one are vectorized over a plate left of the
        model's own plates (found by tracing the model once), or evaluated one at a time, with a
        warning, when a model site has a batch dim that no plate declares. By default the
        ELBO's own default (1 for ``"elbo"``).
    seed : int or None, default 0
        Seed for Pyro's random number generators (``None`` leaves them as they are).
    device : str, default "auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    progress : bool, default True
        Show a progress bar with the running mean loss.
    convergence : Convergence or None
        Stopping rule; ``None`` runs every step.
    polish : Polish or None
        Final phase with learning-rate decay and iterate averaging; ``None`` turns it off.
    checkpoint : path, optional
        File to save the fit to every ``checkpoint_every`` steps and when it stops. If the file
        exists the fit resumes from it; an unreadable or mismatched file raises
        :class:`~ppl_vi.io.CheckpointError` and is left untouched.
    callbacks : iterable of callables
        Each is called as ``callback(state)`` with a :class:`FitState` after every step;
        returning ``True`` stops the fit.
    clip_norm : float, optional
        Clip each parameter's gradient to this norm (default Adam only).
    lr_schedule : callable, optional
        ``lr_schedule(step) -> factor`` multiplies the learning rate at each step.
    guide_kwargs, elbo_kwargs : dict, optional
        Keyword arguments used when the guide or the ELBO is built from a name or a class.
    jit : bool, default False
        Compile the loss step with Pyro's JIT tracing (:class:`ppl_vi.jit.JitELBO`): about 2-3x
        fewer seconds per step for small models, the same random draws and (to float rounding)
        the same result as ``jit=False`` with the same seed. The model must have a static
        structure and take its tensors as arguments. ELBOs that cannot be compiled (control
        variates of ``"rb_score"``, ``"stein"``) or models whose compiled step disagrees with
        the eager one on the first compiled step run uncompiled, with a warning.

    Returns
    -------
    VIResult

    Raises
    ------
    NonFiniteLossError
        When the loss or a gradient is NaN/inf; ``err.result`` holds the last finite fit.
    """
    _check_positive_int("num_steps", num_steps)
    if num_particles is not None:
        _check_positive_int("num_particles", num_particles)
    _check_positive_int("checkpoint_every", checkpoint_every)
    if convergence is not None and not isinstance(convergence, Convergence):
        raise TypeError(
            f"convergence must be a ppl_vi.Convergence or None (got {type(convergence).__name__})"
        )
    if polish is not None and not isinstance(polish, Polish):
        raise TypeError(f"polish must be a ppl_vi.Polish or None (got {type(polish).__name__})")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"every callback must be callable (got {type(cb).__name__})")
    if lr_schedule is not None and not callable(lr_schedule):
        raise TypeError("lr_schedule must be a callable step -> learning-rate factor")
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro program (got {type(model).__name__})")
    optim = _build_optim(optim, lr, clip_norm)
    dev = resolve_device(device)
    args = move_to_device(model_args, dev)
    kwargs = move_to_device(model_kwargs, dev)
    if seed is not None:
        pyro.set_rng_seed(seed)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None and checkpoint.is_dir():
        raise ValueError(f"checkpoint must be a file path, not a folder (got '{checkpoint}')")

    with pyro.get_param_store().scope() as param_state, device_context(dev):
        try:
            info = model_info(model, args, kwargs)
        except RuntimeError as e:
            raise _device_error(e, dev) from e
        guide_obj, guide_spec = resolve_guide(guide, model, guide_kwargs)
        elbo_obj, elbo_spec, elbo_factory = resolve_elbo(
            elbo, num_particles, info.max_plate_nesting, elbo_kwargs, jit, info.undeclared
        )
        polish_elbo = None
        fixed_k = getattr(elbo_obj, "particles_define_objective", False)
        if polish is not None and elbo_factory is not None and not fixed_k:
            if polish.num_particles > elbo_obj.num_particles:
                polish_elbo = elbo_factory(polish.num_particles)
        with poutine.block():
            guide_obj(*args, **kwargs)  # builds the guide's parameters
        loop = _Loop()
        if checkpoint is not None and checkpoint.exists():
            loop = _resume(checkpoint, info, guide_spec, elbo_spec, optim, dev, num_steps)
        run = _Run(
            svi=_GuardedSVI(model, guide_obj, optim, elbo_obj),
            polish_elbo=polish_elbo,
            args=args,
            kwargs=kwargs,
            loop=loop,
            num_steps=num_steps,
            convergence=convergence,
            polish=polish,
            callbacks=callbacks,
            lr_schedule=lr_schedule,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            meta={"model": info.fingerprint(), "guide": guide_spec, "elbo": elbo_spec},
        )
        start = time.perf_counter()
        failure = run.run(progress, dev)
        wall_time = time.perf_counter() - start

    result = VIResult(
        model=model,
        guide=guide_obj,
        model_args=args,
        model_kwargs=kwargs,
        param_state=param_state,
        info=info,
        losses=loop.losses,
        converged=loop.converged,
        interrupted=run.interrupted,
        device=dev,
        guide_spec=guide_spec,
        elbo_spec=elbo_spec,
        wall_time=wall_time,
        seed=seed,
    )
    if failure is not None:
        message, site = failure
        raise NonFiniteLossError(message, step=loop.step + 1, site=site, result=result)
    return result


def _device_error(err: RuntimeError, dev: torch.device) -> Exception:
    if "same device" in str(err) or "device" in str(err).lower() and "expected" in str(err):
        return ValueError(
            f"the model mixes tensors on different devices while fitting on '{dev}': {err}. "
            "fit() moves tensors passed as arguments to the device; tensors the model takes "
            "from its enclosing scope must be passed as arguments or moved by you."
        )
    return err


def _resume(path, info, guide_spec, elbo_spec, optim, dev, num_steps) -> _Loop:
    payload = io.read(path, "checkpoint")
    problems = []
    mismatch = io.describe_mismatch(payload["model"], info.fingerprint())
    if mismatch:
        problems.append(f"the model differs ({mismatch})")
    if payload["guide"]["class"] != guide_spec["class"]:
        problems.append(f"it used guide {payload['guide']['class']}, not {guide_spec['class']}")
    if payload["elbo"]["class"] != elbo_spec["class"]:
        problems.append(f"it used ELBO {payload['elbo']['class']}, not {elbo_spec['class']}")
    fix = "It was left untouched; pass another checkpoint path, or delete the file to start over."
    if problems:
        raise io.CheckpointError(
            f"the checkpoint '{path}' was written for a different fit: {'; '.join(problems)}. {fix}"
        )
    try:
        io.restore_params(payload["params"], dev, f"the checkpoint '{path}'")
    except io.CheckpointError as e:
        raise io.CheckpointError(f"{e}. {fix}") from None
    optim.set_state(payload["optim"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"].get("cuda") is not None and dev.type == "cuda":
        torch.cuda.set_rng_state(payload["rng"]["cuda"], dev)
    loop = _Loop.from_payload(payload["loop"], dev)
    if loop.finished and num_steps > loop.step:
        # extend a finished fit: train on from its final parameters, with a fresh final phase
        loop.finished, loop.converged = False, False
        loop.polish_start = loop.polish_end = loop.avg = None
        loop.avg_count = 0
    return loop


@dataclass
class _Run:
    """The training loop of one fit (kept apart from argument handling in :func:`fit`)."""

    svi: _GuardedSVI
    polish_elbo: object
    args: tuple
    kwargs: dict
    loop: _Loop
    num_steps: int
    convergence: Convergence | None
    polish: Polish | None
    callbacks: list
    lr_schedule: Callable | None
    checkpoint: Path | None
    checkpoint_every: int
    meta: dict
    interrupted: bool = False

    def _end(self) -> int:
        loop = self.loop
        return self.num_steps if loop.polish_end is None else min(loop.polish_end, self.num_steps)

    def _maybe_start_polish(self) -> None:
        loop, polish = self.loop, self.polish
        if polish is None or loop.polish_start is not None:
            return
        length = max(1, round(polish.fraction * self.num_steps))
        if loop.converged or loop.step >= self.num_steps - length:
            loop.polish_start = loop.step
            loop.polish_end = min(self.num_steps, loop.step + length)

    def _lr_factor(self) -> float:
        loop, factor = self.loop, 1.0
        if self.lr_schedule is not None:
            factor *= float(self.lr_schedule(loop.step))
        if loop.polish_start is not None:
            length = loop.polish_end - loop.polish_start
            factor *= self.polish.lr_factor ** ((loop.step - loop.polish_start) / length)
        return factor

    def _average(self, params) -> None:
        loop = self.loop
        store = pyro.get_param_store()
        if loop.avg is None:
            loop.avg = {}
        avgs, values = [], []
        for p in params:
            name = store.param_name(p)
            if name is None:
                continue
            if name not in loop.avg:
                loop.avg[name] = p.detach().clone()
            avgs.append(loop.avg[name])
            values.append(p.detach())
        loop.avg_count += 1
        if avgs:
            torch._foreach_lerp_(avgs, values, 1.0 / loop.avg_count)

    def _apply_average(self) -> None:
        loop = self.loop
        if loop.avg is None or loop.avg_count == 0:
            return
        store = pyro.get_param_store()
        with torch.no_grad():
            for name, value in loop.avg.items():
                if name in store:
                    store._params[name].copy_(value)

    def save(self) -> None:
        if self.checkpoint is None:
            return
        store = pyro.get_param_store()
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        payload = {
            **io.header("checkpoint"),
            **self.meta,
            "params": {name: store._params[name].detach().cpu() for name in store.keys()},
            "optim": io.to_cpu(self.svi.optim.get_state()),
            "rng": rng,
            "loop": self.loop.to_payload(),
            "num_steps": self.num_steps,
        }
        io.atomic_save(payload, self.checkpoint)

    def run(self, progress: bool, dev: torch.device):
        """Run steps until done; returns ``(message, site)`` if the loss went non-finite."""
        loop, svi = self.loop, self.svi
        optim = svi.optim
        is_scheduler = isinstance(optim, PyroLRScheduler)
        failure = None
        bar = tqdm(
            total=self.num_steps,
            initial=loop.step,
            disable=not progress or loop.finished,
            desc="fit",
            unit="step",
            mininterval=0.25,
            dynamic_ncols=True,
        )
        try:
            while not loop.finished:
                self._maybe_start_polish()
                if loop.step >= self._end() or (loop.converged and self.polish is None):
                    loop.finished = True
                    break
                factor = svi.lr_factor = self._lr_factor()
                in_polish = loop.polish_start is not None
                if self.polish_elbo is not None:
                    svi.set_elbo(self.polish_elbo if in_polish else svi.main_elbo)
                rng_state = torch.get_rng_state()
                try:
                    loss = svi.step(*self.args, **self.kwargs)
                except _NonFinite as e:
                    failure = self._failure(e, rng_state, loss=e.loss)
                    break
                except ValueError as e:
                    if not _validation_failure(e):
                        raise
                    failure = self._failure(None, rng_state, loss=float("nan"), cause=e)
                    break
                except torch.linalg.LinAlgError as e:  # e.g. a Cholesky of a draw's kernel
                    failure = self._failure(None, rng_state, loss=float("nan"), cause=e)
                    break
                except RuntimeError as e:
                    raise _device_error(e, dev) from e
                if is_scheduler:
                    optim.step()
                loop.losses.append(loss)
                loop.step += 1
                if in_polish and self.polish.average:
                    self._average(svi.params)
                if (
                    not in_polish
                    and not loop.converged
                    and self.convergence is not None
                    and self.convergence.check(loop.losses)
                ):
                    loop.converged = True
                bar.update()
                if loop.step % 50 == 0:
                    recent = loop.losses[-100:]
                    bar.set_postfix_str(f"loss {sum(recent) / len(recent):.5g}", refresh=False)
                if self.callbacks:
                    state = FitState(
                        loop.step,
                        loss,
                        loop.losses,
                        svi.guide,
                        "polish" if in_polish else "main",
                        factor,
                    )
                    if any([bool(cb(state)) for cb in self.callbacks]):
                        break
                if self.checkpoint is not None and loop.step % self.checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt:
            self.interrupted = True
            zero_grads(set(_current_params(svi)))
            saved = f" (checkpoint saved to '{self.checkpoint}')" if self.checkpoint else ""
            warnings.warn(
                f"fit interrupted at step {loop.step} of {self.num_steps}; returning the partial "
                f"result{saved}",
                stacklevel=3,
            )
        finally:
            bar.close()
        if loop.finished:
            self._apply_average()
            self.save()
        else:
            self.save()
            self._apply_average()
        return failure

    def _failure(self, err, rng_state, loss: float, cause: Exception | None = None):
        step = self.loop.step + 1
        site = _diagnose(self.svi, self.args, self.kwargs, rng_state)
        what = "a gradient became non-finite"
        if not math.isfinite(loss):
            what = f"the loss became {loss}"
        if cause is not None:
            first_line = str(cause).splitlines()[0].rstrip(":")
            what = f"a distribution received invalid (non-finite) parameters ({first_line})"
            if isinstance(cause, torch.linalg.LinAlgError):
                what = f"the model's linear algebra failed on a draw ({first_line})"
        parts = [f"{what} at step {step}"]
        if site:
            parts.append(f"first found at {site}")
        if err is not None and err.bad_params:
            parts.append(f"non-finite gradients in parameters {_param_names(err.bad_params)}")
        message = (
            "; ".join(parts)
            + f". Training stopped; the parameters from step {step - 1} are kept (err.result). "
            "Try a smaller lr, clip_norm=..., or check the model at that site."
        )
        return message, site
