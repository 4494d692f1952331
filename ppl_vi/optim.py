"""The optimizer side of a step: building Adam, learning-rate factors, one multi-tensor update."""

from __future__ import annotations

import math
import numbers

import pyro
import pyro.optim
import torch
from pyro.optim.lr_scheduler import PyroLRScheduler
from pyro.optim.optim import PyroOptim
from torch.optim.adam import adam as _adam

__all__ = ["DEFAULT_LR", "apply_update", "build_optim", "check_lr", "set_lr_factor"]

DEFAULT_LR = 0.01
_ADAM_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


def check_lr(name: str, value) -> float:
    """A learning rate must be a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number (got {name}={value!r})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number (got {name}={value!r})")
    return float(value)


def build_optim(optim, lr, clip_norm) -> PyroOptim:
    """Adam with ``lr`` (default 0.01) and optional ``clip_norm``, or the optimizer given."""
    if optim is None:
        lr = check_lr("lr", DEFAULT_LR if lr is None else lr)
        clip_args = {}
        if clip_norm is not None:
            if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm)) or not (
                clip_norm > 0
            ):
                raise ValueError(f"clip_norm must be > 0 (got clip_norm={clip_norm!r})")
            clip_args = {"clip_norm": float(clip_norm)}
        return pyro.optim.Adam({"lr": lr}, clip_args=clip_args)
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
    args = getattr(optim, "pt_optim_args", None)
    value = args.get("lr") if isinstance(args, dict) else None
    if isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"the optimizer's lr must be a finite number >= 0 (got lr={value!r} in {args!r})"
        )
    return optim


def optim_settings(optim: PyroOptim) -> dict:
    """The optimizer's class and arguments (for checkpoint fingerprints)."""
    ctor = getattr(optim, "pt_optim_constructor", None) or type(optim)
    args = getattr(optim, "pt_optim_args", None)
    plain = {}
    if isinstance(args, dict):
        kinds = (bool, int, float, str, tuple)
        plain = {k: v for k, v in sorted(args.items()) if isinstance(v, kinds)}
    clip = getattr(optim, "pt_clip_args", None)
    return {
        "class": f"{ctor.__module__}.{ctor.__qualname__}",
        "args": plain if isinstance(args, dict) else repr(type(args)),
        "clip": dict(clip) if isinstance(clip, dict) else None,
    }


def set_lr_factor(optim: PyroOptim, factor: float) -> None:
    """Every parameter's learning rate = its initial learning rate times ``factor``."""
    for opt in optim.optim_objs.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def prepare(optim: PyroOptim, params: list, waiting: dict | None = None) -> bool:
    """Create the per-parameter optimizers Pyro would create lazily; True if any was new.

    Saved state (``waiting``: param name -> torch optimizer state dict, from a checkpoint) is
    loaded as moments and step counts only: hyper-parameters (learning rate, betas...) always
    come from the optimizer of this fit, so resuming with a new ``lr`` uses the new ``lr``.
    """
    new = False
    store = pyro.get_param_store()
    for p in params:
        if p in optim.optim_objs:
            continue
        new = True
        opt = optim.optim_objs[p] = optim._get_optim(p)
        optim.grad_clip[p] = optim._get_grad_clip(p)
        name = store.param_name(p)
        saved = None
        if waiting is not None and name in waiting:
            saved = waiting.pop(name)
        elif name in optim._state_waiting_to_be_consumed:
            saved = optim._state_waiting_to_be_consumed.pop(name)
        if saved is not None:
            _load_moments(opt, saved)
    return new


def _load_moments(opt: torch.optim.Optimizer, saved: dict) -> None:
    settings = [dict(g) for g in opt.param_groups]
    opt.load_state_dict(saved)
    for group, fresh in zip(opt.param_groups, settings, strict=True):
        params = group["params"]
        group.clear()
        group.update(fresh)
        group["params"] = params


def apply_update(optim: PyroOptim, params: list) -> None:
    """One optimizer update of ``params`` (their ``.grad`` is set), then release the gradients."""
    if not _fused_adam_step(optim, params):
        optim(params)
    for p in params:  # cheaper than zeroing: the next backward allocates fresh gradients
        p.grad = None


def scheduler_step(optim) -> None:
    if isinstance(optim, PyroLRScheduler):
        optim.step()


def is_scheduler(optim) -> bool:
    return isinstance(optim, PyroLRScheduler)


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
