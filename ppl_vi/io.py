"""Saving and loading fits and checkpoints: atomic writes, readable errors."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

FORMAT = "ppl_vi"
#: Which call reads each kind of file.
_READERS = {
    "result": "ppl_vi.load",
    "checkpoint": "fit(checkpoint=...)",
    "nuts": "ppl_vi.load_nuts",
}
VERSION = 1


class CheckpointError(RuntimeError):
    """A saved file cannot be used: unreadable, of another kind, or written for another fit."""


def atomic_save(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` with ``torch.save`` so that ``path`` is either the old or the new file.

    The data goes to a temporary file in the same folder, is flushed to disk, and then replaces
    ``path`` in one rename; an interrupted write never leaves a truncated file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path: str | os.PathLike, kind: str) -> dict:
    """Load a file written by :func:`atomic_save` and check that it holds a ppl-vi ``kind``.

    Only plain data is unpickled (``weights_only=True``): loading never runs code.
    """
    path = Path(path)
    what = "checkpoint" if kind == "checkpoint" else "saved result"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        detail = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"cannot read the {what} at '{path}' ({type(e).__name__}: {detail}). The file may be "
            "truncated or not written by ppl-vi. It was left untouched; move it away or pass "
            "another path."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not a ppl-vi file (no ppl-vi header found). It was left untouched; "
            "move it away or pass another path."
        )
    if payload.get("kind") != kind:
        raise CheckpointError(
            f"'{path}' holds a ppl-vi {payload.get('kind')!r}, not a {kind!r}. Use "
            f"{_READERS.get(payload.get('kind'), 'the matching reader')} for it, or pass another "
            "path."
        )
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"'{path}' was written by a newer ppl-vi (file version {payload['version']}, "
            f"this version reads up to {VERSION}); upgrade ppl-vi to read it."
        )
    return payload


def saved_data(payload: dict, path, model_args: tuple, model_kwargs: dict, reader: str):
    """The model data to use when loading ``payload``: the arguments given, else the saved ones.

    Raises ``ValueError`` naming ``reader`` (the loading call) when neither is available.
    """
    if model_args or model_kwargs:
        return tuple(model_args), dict(model_kwargs)
    if payload["args"] is None:
        raise ValueError(
            f"'{path}' does not contain the model's data (they were not plain tensors or "
            f"numbers); pass them: {reader}(path, model, *args, **kwargs)"
        )
    return tuple(payload["args"]), dict(payload["kwargs"])


def check_model(payload: dict, path, info, what: str) -> None:
    """Raise :class:`CheckpointError` when ``info`` (the model given) differs from the saved one."""
    mismatch = describe_mismatch(payload["model"], info.fingerprint())
    if mismatch:
        raise CheckpointError(
            f"'{path}' was saved for model {payload['model']['name']} and does not fit the model "
            f"given ({info.name}): {mismatch}. Load it with the model it was {what}."
        )


def restore_params(saved: dict, device, source: str) -> None:
    """Copy saved unconstrained parameter values into the active Pyro parameter store.

    The store must already hold parameters of the same names and shapes (the guide has been
    built); otherwise :class:`CheckpointError` says what differs and nothing is changed.
    """
    import pyro

    store = pyro.get_param_store()
    current = {name: tuple(store._params[name].shape) for name in store.keys()}
    wanted = {name: tuple(value.shape) for name, value in saved.items()}
    if wanted != current:
        raise CheckpointError(
            f"the parameters in {source} ({wanted}) do not match the guide's ({current}); use "
            "the model and guide it was written for"
        )
    with torch.no_grad():
        for name, value in saved.items():
            store._params[name].copy_(value.to(device))


def header(kind: str) -> dict:
    return {"format": FORMAT, "version": VERSION, "kind": kind}


def describe_mismatch(saved: dict, current: dict) -> str | None:
    """Compare two model fingerprints; return a sentence saying how they differ, or None."""
    if saved["latent"] == current["latent"] and saved["observed"] == current["observed"]:
        return None
    parts = []
    missing = sorted(set(saved["latent"]) - set(current["latent"]))
    extra = sorted(set(current["latent"]) - set(saved["latent"]))
    if missing:
        parts.append(f"sites {missing} are missing from the model given")
    if extra:
        parts.append(f"the model given has new latent sites {extra}")
    for name in sorted(set(saved["latent"]) & set(current["latent"])):
        if saved["latent"][name] != current["latent"][name]:
            parts.append(
                f"site '{name}' has shape {tuple(current['latent'][name])}, saved "
                f"{tuple(saved['latent'][name])}"
            )
    if saved["observed"] != current["observed"]:
        parts.append(f"observed sites {current['observed']} differ from saved {saved['observed']}")
    return "; ".join(parts)


def plain_data(obj):
    """True if ``obj`` is made only of tensors, numbers, strings, None and containers of them."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(plain_data(x) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and plain_data(v) for k, v in obj.items())
    return False


def to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(x) for x in obj)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return obj
