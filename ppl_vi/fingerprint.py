"""Fingerprints: what a saved fit belongs to (model, data, settings) and checksums of files.

A checkpoint is only resumed by the fit it was written for. Its fingerprint holds

* ``model``: the model's sample sites (names and shapes) and a digest of its code: the
  function's bytecode and constants, the values its closure captures, the module-level
  constants and helper functions it reads, and for a ``torch.nn.Module`` (``PyroModule``)
  its ``forward`` code, buffers and ``PyroSample`` priors. An edited prior changes it;
* ``data``: one digest per model argument (tensor bytes, dtypes and shapes, plain values);
* ``settings``: every setting that shapes the trajectory (guide, ELBO, optimizer and learning
  rate, schedule, number of steps, final phase, stopping rule, seed, device type, jit).

:func:`differences` turns two fingerprints into sentences naming what changed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types

import numpy as np
import torch

__all__ = ["code_digest", "data_fingerprint", "differences", "digest", "object_digest"]

_PLAIN = (bool, int, float, str, bytes, type(None))


def digest(obj) -> str:
    """SHA-256 (hex) of a canonical encoding of nested tensors, arrays and plain values."""
    return _digest(obj, set(), 0)


def _digest(obj, seen: set, depth: int) -> str:
    h = hashlib.sha256()
    _feed(h, obj, seen, depth)
    return h.hexdigest()


def _feed(h, obj, seen: set, depth: int) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            # a fresh dense copy: an expanded tensor (a prior's ``.expand([1])`` loc) can have
            # stride 0 even where torch calls it contiguous, and view() needs stride 1
            t = torch.empty(t.numel(), dtype=t.dtype).copy_(t.cpu().reshape(-1))
            t = t.to(torch.uint8) if t.dtype == torch.bool else t.view(torch.uint8)
            h.update(t.numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        if obj.dtype.kind != "O":
            h.update(np.ascontiguousarray(obj).tobytes())
        else:
            for x in obj.ravel():
                _feed(h, x, seen, depth)
    elif isinstance(obj, float):
        h.update(b"f" + repr(float(obj)).encode())
    elif isinstance(obj, _PLAIN):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif isinstance(obj, np.generic):
        _feed(h, obj.item(), seen, depth)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{type(obj).__name__}{len(obj)}".encode())
        for x in obj:
            _feed(h, x, seen, depth)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k], seen, depth)
    else:
        h.update(_value_digest(obj, seen, depth).encode())


_DATA = (torch.Tensor, np.ndarray, np.generic, list, tuple, dict, *_PLAIN)
#: How many levels of objects (a closure's object, its attributes, ...) are followed.
_MAX_DEPTH = 3


# --------------------------------------------------------------------------------- code
def _code_parts(code: types.CodeType, out: list) -> None:
    out.append(code.co_code)
    out.append(code.co_names)
    out.append(code.co_varnames)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_parts(const, out)
        else:
            out.append(repr(const))


def _global_names(code: types.CodeType, out: set) -> set:
    out.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _global_names(const, out)
    return out


def code_digest(fn, seen: set | None = None, depth: int = 0) -> str:
    """Digest of what a callable computes: code, closure values, defaults, globals it reads.

    Helper functions that the code calls by a global name are followed (three levels deep);
    modules, classes and functions of libraries (torch, Pyro, numpy, ...) are named, not
    followed.
    """
    seen = set() if seen is None else seen
    h = hashlib.sha256()
    if isinstance(fn, functools.partial):
        h.update(code_digest(fn.func, seen, depth).encode())
        _feed(h, (fn.args, fn.keywords), seen, depth + 1)
        return h.hexdigest()
    if isinstance(fn, types.MethodType):
        h.update(code_digest(fn.__func__, seen, depth).encode())
        h.update(_value_digest(fn.__self__, seen, depth + 1).encode())
        return h.hexdigest()
    if isinstance(fn, torch.nn.Module):
        return object_digest(fn, seen, depth)
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its __call__ and its state
        call = next((vars(c)["__call__"] for c in type(fn).__mro__ if "__call__" in vars(c)), None)
        if hasattr(call, "__code__") and not isinstance(fn, type):
            h.update(code_digest(call, seen, depth).encode())
            h.update(object_digest(fn, seen, depth + 1).encode())
        else:
            h.update(_qualname(fn).encode())
        return h.hexdigest()
    if id(fn) in seen:
        return _qualname(fn)
    seen.add(id(fn))
    parts: list = []
    _code_parts(code, parts)
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        h.update(_value_digest(value, seen, depth + 1).encode())
    _feed(h, list(getattr(fn, "__defaults__", None) or ()), seen, depth + 1)
    env = getattr(fn, "__globals__", {})
    for name in sorted(_global_names(code, set())):
        if name in env:
            h.update(name.encode())
            h.update(_value_digest(env[name], seen, depth + 1).encode())
    return h.hexdigest()


def _value_digest(value, seen: set, depth: int) -> str:
    """Digest of a value a model reads (argument, closure cell, module constant, attribute)."""
    if isinstance(value, _DATA):
        return _digest(value, seen, depth)
    if isinstance(value, types.ModuleType):
        return "module:" + value.__name__
    if isinstance(value, type):
        return "class:" + _qualname(value)
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
        module = getattr(value, "__module__", "") or ""
        if depth > _MAX_DEPTH or _is_library(module):
            return "function:" + _qualname(value)
        return code_digest(value, seen, depth)
    if isinstance(value, (torch.nn.Module, torch.distributions.Distribution)):
        return object_digest(value, seen, depth)
    if depth > _MAX_DEPTH or (callable(value) and _is_library(type(value).__module__ or "")):
        return "object:" + _qualname(type(value))
    return object_digest(value, seen, depth)


_LIBRARIES = (
    "torch",
    "pyro",
    "numpy",
    "scipy",
    "pandas",
    "builtins",
    "math",
    "functools",
    "typing",
    "collections",
    "sklearn",
    "arviz",
    "ppl_vi",
)


def _is_library(module: str) -> bool:
    return module.split(".")[0] in _LIBRARIES


def _qualname(obj) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def object_digest(obj, seen: set | None = None, depth: int = 0) -> str:
    """Digest of an object's type and state: a module's code, buffers and ``PyroSample``
    priors, a distribution's parameters, a dataclass's fields, other objects' attributes."""
    seen = set() if seen is None else seen
    h = hashlib.sha256()
    h.update(_qualname(type(obj)).encode())
    if id(obj) in seen:
        return h.hexdigest()
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        for module in obj.modules():
            h.update(_qualname(type(module)).encode())
            forward = getattr(type(module), "forward", None)
            if hasattr(forward, "__code__") and not _is_library(forward.__module__ or ""):
                h.update(code_digest(forward, seen, depth + 1).encode())
            for name, prior in sorted(module.__dict__.get("_pyro_samples", {}).items()):
                h.update(name.encode())
                h.update(_value_digest(prior, seen, depth + 1).encode())
        # buffers are data; parameters are what a fit trains (saved with it), and a fresh
        # module's random initial weights must not make it a different model
        _feed(h, dict(obj.named_buffers()), seen, depth + 1)
    elif isinstance(obj, torch.distributions.Distribution):
        state = {k: v for k, v in vars(obj).items() if isinstance(v, _DATA)}
        _feed(h, state, seen, depth + 1)
        for key in ("base_dist", "transforms"):
            if hasattr(obj, key):
                h.update(_value_digest(getattr(obj, key), seen, depth + 1).encode())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            h.update(f.name.encode())
            h.update(_value_digest(getattr(obj, f.name), seen, depth + 1).encode())
    elif depth <= _MAX_DEPTH and hasattr(obj, "__dict__"):
        for key, value in sorted(vars(obj).items()):
            if not key.startswith("__"):
                h.update(key.encode())
                h.update(_value_digest(value, seen, depth + 1).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------- data
def data_fingerprint(labels: list[str], args: tuple, kwargs: dict) -> dict:
    """One digest per model argument: ``{"argument 'x'": "..."}``."""
    out = {label: _value_digest(value, set(), 0) for label, value in zip(labels, args, strict=True)}
    for name, value in kwargs.items():
        out[f"argument {name!r}"] = _value_digest(value, set(), 0)
    return out


# -------------------------------------------------------------------------- comparison
def differences(saved: dict, current: dict) -> dict[str, list[str]]:
    """What differs between two fingerprints: ``{"model": [...], "data": [...],
    "settings": [...]}`` with one sentence per difference (empty lists when they agree)."""
    out = {"model": [], "data": [], "settings": []}
    model_a, model_b = saved.get("model", {}), current.get("model", {})
    out["model"].extend(_site_differences(model_a, model_b))
    if model_a.get("code") != model_b.get("code"):
        out["model"].append(
            "its code, closure or the constants it reads changed (e.g. an edited prior)"
        )
    data_a, data_b = saved.get("data", {}), current.get("data", {})
    for label in sorted(set(data_a) | set(data_b)):
        if label not in data_b:
            out["data"].append(f"{label} is no longer given")
        elif label not in data_a:
            out["data"].append(f"{label} is new")
        elif data_a[label] != data_b[label]:
            out["data"].append(f"{label} differs")
    set_a, set_b = saved.get("settings", {}), current.get("settings", {})
    for key in sorted(set(set_a) | set(set_b)):
        a, b = set_a.get(key), set_b.get(key)
        if a != b:
            out["settings"].append(f"{key}: {_show(a)} in the file, {_show(b)} now")
    return out


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _site_differences(saved: dict, current: dict) -> list[str]:
    out = []
    la, lb = saved.get("latent", {}), current.get("latent", {})
    missing, extra = sorted(set(la) - set(lb)), sorted(set(lb) - set(la))
    if missing:
        out.append(f"latent sites {missing} are missing from the model given")
    if extra:
        out.append(f"the model given has new latent sites {extra}")
    for name in sorted(set(la) & set(lb)):
        if list(la[name]) != list(lb[name]):
            out.append(f"site '{name}' has shape {tuple(lb[name])}, saved {tuple(la[name])}")
    if sorted(saved.get("observed", [])) != sorted(current.get("observed", [])):
        out.append(
            f"observed sites {sorted(current.get('observed', []))} differ from saved "
            f"{sorted(saved.get('observed', []))}"
        )
    return out
