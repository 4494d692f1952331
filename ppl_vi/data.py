"""A model's data on the way in: devices, numpy/pandas conversion, and checks before step 1.

Everything here runs before training starts, so bad input is reported as what it is (a data
problem, naming the argument, the sample site, the index and the value) instead of as a
training failure at step 1.
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np
import torch

from ppl_vi.errors import DataError

_PackedSequence = torch.nn.utils.rnn.PackedSequence

__all__ = [
    "check_observed",
    "check_option_collisions",
    "convert",
    "input_labels",
    "move_to_device",
    "nonfinite_inputs",
    "prepare",
    "resolve_device",
]


# ------------------------------------------------------------------------------- devices
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


def move_to_device(obj, device: torch.device, dtype: torch.dtype | None = None):
    """Move every tensor in (nested tuples, lists and dicts of) ``obj`` to ``device``, and
    floating tensors to ``dtype`` when given."""
    if isinstance(obj, torch.Tensor) and dtype is not None and obj.is_floating_point():
        return obj.to(device=device, dtype=dtype)
    if isinstance(obj, (torch.Tensor, _PackedSequence)):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(move_to_device(x, device, dtype) for x in obj))
    if isinstance(obj, tuple):
        return type(obj)(move_to_device(x, device, dtype) for x in obj)
    if isinstance(obj, list):
        return [move_to_device(x, device, dtype) for x in obj]
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, dtype) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------- conversion
def _is_pandas(obj) -> bool:
    module = type(obj).__module__ or ""
    return (module == "pandas" or module.startswith("pandas.")) and hasattr(obj, "to_numpy")


def convert(obj, label: str = "data"):
    """numpy arrays and pandas objects -> tensors; numpy scalars -> Python numbers.

    Floating arrays become ``torch.get_default_dtype()`` tensors (float32 unless changed, the
    dtype of Pyro's parameters), integer arrays ``int64`` (indices such as ``alpha[group]``)
    and boolean arrays ``bool`` (masks). Containers are converted element by element; tensors,
    Python numbers, strings and other objects pass unchanged. Python lists are left alone
    (they often hold settings, such as layer sizes); :func:`check_observed` explains when a
    list reaches an observed site. Arrays of objects, strings or complex numbers raise
    :class:`~ppl_vi.errors.DataError` naming ``label``.
    """
    if obj is None or isinstance(obj, (torch.Tensor, str, bytes, _PackedSequence)):
        return obj
    if isinstance(obj, np.generic):
        return _numpy_scalar(obj, label)
    if _is_pandas(obj):
        kind = getattr(getattr(obj, "dtype", None), "name", "")
        if kind == "category":
            raise DataError(
                f"{label} is a pandas categorical; pass its integer codes "
                f"({label}.cat.codes.to_numpy()) to index parameters, e.g. alpha[group]"
            )
        return _array(obj.to_numpy(), label)
    if isinstance(obj, np.ndarray):
        return _array(obj, label)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(convert(x, f"{label}[{i}]") for i, x in enumerate(obj))
    if isinstance(obj, list):
        return [convert(x, f"{label}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: convert(v, f"{label}[{k!r}]") for k, v in obj.items()}
    return obj


def _numpy_scalar(value: np.generic, label: str):
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise DataError(
        f"{label} is a numpy {type(value).__name__}; pass a number, a numpy array or a tensor"
    )


def _array(array: np.ndarray, label: str) -> torch.Tensor:
    kind = array.dtype.kind
    # copies (C-ordered, as torch's own tensors are): the tensor must not share (possibly
    # read-only) memory with the caller's array
    array = np.ascontiguousarray(array)
    if kind == "f":
        return torch.tensor(array, dtype=torch.get_default_dtype())
    if kind in "iu":
        return torch.tensor(array.astype(np.int64))
    if kind == "b":
        return torch.tensor(array)
    what = {"O": "Python objects", "U": "strings", "S": "bytes", "c": "complex numbers"}
    raise DataError(
        f"{label} is an array of {what.get(kind, array.dtype.name)} (dtype {array.dtype}); pass "
        "numbers (floats for measurements, integer codes for groups and categories)"
    )


def prepare(
    args: tuple, kwargs: dict, device: torch.device, model=None, dtype: torch.dtype | None = None
) -> tuple[tuple, dict]:
    """Convert (:func:`convert`) and move the model's arguments to ``device`` (floating
    tensors to ``dtype`` when given)."""
    labels = input_labels(model, len(args)) if model is not None else None
    args = tuple(
        convert(a, labels[i] if labels else f"model argument {i}") for i, a in enumerate(args)
    )
    kwargs = {k: convert(v, f"argument {k!r}") for k, v in kwargs.items()}
    return move_to_device(args, device, dtype), move_to_device(kwargs, device, dtype)


# ------------------------------------------------------------------ model signature
def _signature(model):
    fn = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def input_labels(model, num_args: int) -> list[str]:
    """``"argument 'x'"`` for each positional argument, from the model's signature."""
    sig = _signature(model)
    names = []
    if sig is not None:
        for p in sig.parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                names.append(p.name)
    return [
        f"argument {names[i]!r}" if i < len(names) else f"positional argument {i}"
        for i in range(num_args)
    ]


def check_option_collisions(model, passed: dict, options, num_args: int = 0) -> None:
    """Refuse keyword arguments that name both an option of ``fit`` and an argument of ``model``.

    ``passed`` holds the options the caller set explicitly. With ``fit(model, seed=3)`` and a
    model ``def model(x, seed=0)`` it is unclear whose ``seed`` 3 is: fit takes its own options
    first, so the model's argument would silently keep its default. Model arguments already
    given positionally (the first ``num_args``) are not ambiguous.
    """
    sig = _signature(model)
    if sig is None:
        return
    named = []
    for i, (name, p) in enumerate(sig.parameters.items()):
        positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        if positional and i < num_args:
            continue
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name in options:
            named.append(name)
    clash = sorted(set(named) & set(passed))
    if clash:
        name = clash[0]
        raise TypeError(
            f"{name}={passed[name]!r} is ambiguous: {', '.join(repr(n) for n in clash)} is both "
            f"an option of ppl_vi.fit and an argument of the model. Pass the model's value "
            f"through model_kwargs={{{name!r}: ...}}; fit's own {name}= then means fit's option"
        )


# -------------------------------------------------------------------------- data checks
def _iter_tensors(obj, label):
    if isinstance(obj, torch.Tensor):
        yield label, obj
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield from _iter_tensors(x, f"{label}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _iter_tensors(v, f"{label}[{k!r}]")


def labelled_inputs(model, args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """Every tensor among the model's arguments, with a label naming where it is."""
    labels = input_labels(model, len(args))
    out = []
    for label, value in zip(labels, args, strict=True):
        out.extend(_iter_tensors(value, label))
    for name, value in kwargs.items():
        out.extend(_iter_tensors(value, f"argument {name!r}"))
    return out


def _first(mask: torch.Tensor, value: torch.Tensor) -> str:
    index = tuple(int(i) for i in torch.nonzero(mask)[0])
    shown = value[index].item() if value.dim() else value.item()
    where = f"index {index}" if index else "its only value"
    return f"{where} (value {shown})"


def nonfinite_inputs(model, args: tuple, kwargs: dict) -> list[str]:
    """Descriptions of the floating-point arguments that hold NaN or infinite values."""
    found = []
    for label, value in labelled_inputs(model, args, kwargs):
        if value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bad.any():
                count = int(bad.sum())
                first = _first(bad, value)
                found.append(f"{label} has {count} non-finite values, first at {first}")
    return found


def _numbers(obj) -> bool:
    if isinstance(obj, (list, tuple)):
        return len(obj) > 0 and all(_numbers(x) for x in obj)
    return isinstance(obj, numbers.Number)


def list_inputs(model, args: tuple, kwargs: dict) -> list[str]:
    """Labels of the arguments that are Python lists or tuples of numbers (data left as lists:
    ppl-vi does not convert them, since lists often hold settings such as layer sizes)."""
    labels = input_labels(model, len(args))
    found = [label for label, a in zip(labels, args, strict=True) if _numbers(a)]
    found += [f"argument {k!r}" for k, v in kwargs.items() if _numbers(v)]
    return found


def _source_of(value: torch.Tensor, inputs) -> str | None:
    for label, tensor in inputs:
        if tensor is value:
            return label
    for label, tensor in inputs:
        if tensor.shape == value.shape and tensor.dtype == value.dtype:
            if tensor.data_ptr() == value.data_ptr() or torch.equal(tensor, value):
                return label
    return None


def check_observed(trace, model, args: tuple, kwargs: dict) -> None:
    """Check every observed site's value before training; raise :class:`DataError` if unusable.

    ``trace`` is a trace of the model over its full data (no subsampling). Positions that the
    site masks out (``poutine.mask``, ``obs_mask``) are not checked, so NaN placeholders for
    missing data are fine there. Checked: the value is a tensor; it is finite; it lies in the
    support of the site's distribution; the distribution can evaluate it (integer data for a
    likelihood that needs floats).
    """
    inputs = labelled_inputs(model, args, kwargs)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        if site["infer"].get("_deterministic") or site["infer"].get("is_auxiliary"):
            continue
        fn, value = site["fn"], site["value"]
        if not isinstance(value, torch.Tensor):
            raise DataError(
                f"observed site {name!r} received a {type(value).__name__}, not a tensor; pass "
                "the data as a tensor or a numpy array (ppl-vi converts numpy arrays and pandas "
                "objects, not Python lists)"
            )
        source = _source_of(value, inputs)
        origin = f" (from {source})" if source else ""
        dist_name = type(getattr(fn, "base_dist", fn)).__name__
        active = _active(site, fn, value)
        if value.is_floating_point():
            bad = ~torch.isfinite(value) & active
            if bad.any():
                raise DataError(
                    f"observed site {name!r}{origin} holds non-finite data at "
                    f"{_first(bad, value)}. Remove or impute missing values, or mark them "
                    f"missing: pyro.sample({name!r}, ..., obs=y, obs_mask=~torch.isnan(y)) or "
                    "poutine.mask"
                )
        if _is_factor(fn) or _validation_off(fn):
            continue
        try:
            inside = fn.support.check(value)
        except Exception:  # noqa: BLE001 - a support that cannot be checked elementwise
            inside = None
        if inside is not None:
            outside = ~inside.bool() & _active(site, fn, value, event=False)
            if outside.any():
                raise DataError(
                    f"observed site {name!r}{origin} has data outside the support of its "
                    f"{dist_name} likelihood ({fn.support}) at "
                    f"{_first(outside, _flat_batch(value, fn))}. "
                    "Check the data (e.g. counts must be non-negative integers, Bernoulli "
                    "outcomes 0 or 1) or the choice of likelihood"
                )
        try:
            fn.log_prob(value)
        except (RuntimeError, TypeError, NotImplementedError) as e:
            if not value.is_floating_point():
                raise DataError(
                    f"observed site {name!r}{origin} receives {value.dtype} data, which its "
                    f"{dist_name} likelihood cannot evaluate ({str(e).splitlines()[0]}). Pass "
                    "floating-point data: torch.as_tensor(y, dtype=torch.float32) or "
                    "np.asarray(y, dtype=float)"
                ) from None
            raise


def _validation_off(fn) -> bool:
    """True when the model built the distribution with ``validate_args=False`` while validation
    is on (the user opted out of support checks for it, e.g. a Multinomial whose total count is
    left implicit). With validation off globally every distribution says False, so that alone
    is no opt-out: ppl-vi's own check still runs."""
    if not torch.distributions.Distribution._validate_args:
        return False
    while fn is not None:
        if getattr(fn, "_validate_args", None) is False:
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def _is_factor(fn) -> bool:
    return type(getattr(fn, "base_dist", fn)).__name__ == "Unit"


def _flat_batch(value: torch.Tensor, fn) -> torch.Tensor:
    """``value`` reduced to the batch shape the support check returns (first event element)."""
    event_dim = getattr(fn.support, "event_dim", 0)
    for _ in range(event_dim):
        value = value[..., 0]
    return value


def _masks(site, fn) -> list:
    """Every mask on a site: ``poutine.mask`` (the site's ``mask``) and ``.mask(...)`` /
    ``obs_mask`` (a ``MaskedDistribution`` anywhere in the distribution's chain)."""
    masks = [site.get("mask")]
    while fn is not None:
        masks.append(getattr(fn, "_mask", None))
        fn = getattr(fn, "base_dist", None)
    return [m for m in masks if m is not None]


def _active(site, fn, value: torch.Tensor, event: bool = True) -> torch.Tensor:
    """Boolean tensor: which entries of ``value`` count (not masked out)."""
    event_dim = getattr(fn.support, "event_dim", 0) if not event else fn.event_dim
    shape = value.shape if event else value.shape[: value.dim() - event_dim]
    active = torch.ones(shape, dtype=torch.bool, device=value.device)
    for mask in _masks(site, fn):
        if isinstance(mask, bool):
            if not mask:
                active = torch.zeros_like(active)
            continue
        mask = torch.as_tensor(mask, device=value.device).bool()
        if event and event_dim:
            mask = mask.reshape(mask.shape + (1,) * event_dim)
        try:
            active = active & torch.broadcast_to(mask, shape)
        except RuntimeError:  # a mask of another shape: do not guess, check every entry
            continue
    return active
