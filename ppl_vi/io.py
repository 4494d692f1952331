"""Files ppl-vi writes: results, checkpoints and NUTS runs.

Every file is a ``torch.save`` of plain data (loaded with ``weights_only=True``, so loading
never runs code) carrying a header (format, kind, version) and a SHA-256 checksum of its
content. Writes are atomic (temporary file, fsync, rename) and read back before the call
returns, so a file ppl-vi wrote is one it can read. Any file that cannot be used (unreadable,
damaged, edited, of another kind, or from a newer version) raises :class:`CheckpointError`
and is left untouched.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import numpy as np
import torch

from ppl_vi.errors import CheckpointError
from ppl_vi.fingerprint import _site_differences, digest

__all__ = [
    "CheckpointError",
    "atomic_save",
    "check_model",
    "check_writable",
    "clean_stale_temp_files",
    "header",
    "plain_data",
    "read",
    "restore_params",
    "saved_data",
    "to_cpu",
]

FORMAT = "ppl_vi"
#: Which call reads each kind of file.
_READERS = {
    "result": "ppl_vi.load",
    "checkpoint": "fit(checkpoint=...)",
    "nuts": "ppl_vi.load_nuts",
}
#: Keys every file of a kind must hold (checked after the checksum).
_REQUIRED = {
    "result": ("model", "guide", "elbo", "params", "losses"),
    "checkpoint": ("fingerprint", "params", "optim", "rng", "loop"),
    "nuts": ("model", "chains", "diverging", "settings"),
}
#: 2: checksums, fingerprints of data and settings in checkpoints.
VERSION = 2


def header(kind: str) -> dict:
    return {"format": FORMAT, "version": VERSION, "kind": kind}


# ---------------------------------------------------------------------------- writing
def _temp_path(path: Path) -> Path:
    return path.parent / f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temp_files(path: str | os.PathLike, max_age_s: float = 600.0) -> list[Path]:
    """Remove temporary files that killed writes of ``path`` left behind.

    A temporary file names the process that wrote it; it is stale when that process no longer
    runs (or, for names without a process id, when it is older than ``max_age_s``).
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 1 : -len(".tmp")].split(".")
        try:
            stale = parts[0].isdigit() and int(parts[0]) != os.getpid()
            stale = stale and not _pid_alive(int(parts[0]))
            if not parts[0].isdigit():
                stale = time.time() - tmp.stat().st_mtime > max_age_s
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Make sure a file can be written at ``path`` before any work is done for it.

    Creates missing parent folders and writes (then removes) a probe file there; raises
    ``ValueError`` naming ``what`` (e.g. ``"checkpoint"``) otherwise.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} must be a file path, not a folder (got '{path}')")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = _temp_path(path)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"cannot write the {what} '{path}' ({type(e).__name__}: {e.strerror or e}); choose "
            "a folder you can write to"
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"the {what} '{path}' exists and is read-only; choose another path")
    return path


def atomic_save(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` with its checksum so that ``path`` is either the old or the new file,
    then read it back (raising :class:`CheckpointError` if that fails).

    The data goes to a temporary file in the same folder, is flushed to disk, and then replaces
    ``path`` in one rename; an interrupted write never leaves a truncated file behind, and
    temporary files of killed writes are removed on the next write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(path)
    payload = {k: v for k, v in payload.items() if k != "checksum"}
    payload["checksum"] = digest(payload)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    read(path, payload["kind"])  # a file ppl-vi writes is one it can read


# ---------------------------------------------------------------------------- reading
def read(path: str | os.PathLike, kind: str) -> dict:
    """Load a file written by :func:`atomic_save` and check that it is an intact ``kind``.

    Only plain data is unpickled (``weights_only=True``): loading never runs code. Raises
    ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for anything else
    that makes it unusable.
    """
    path = Path(path)
    what = {"checkpoint": "checkpoint", "result": "saved result"}.get(kind, "saved file")
    untouched = "It was left untouched; move it away or pass another path."
    if not path.exists():
        raise FileNotFoundError(f"no {what} at '{path}'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every way a foreign or damaged file can fail
        detail = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"cannot read the {what} at '{path}' ({type(e).__name__}: {detail}). The file may be "
            f"truncated, damaged or not written by ppl-vi. {untouched}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a ppl-vi file (no ppl-vi header). {untouched}")
    version = payload.get("version")
    if payload.get("kind") != kind:
        raise CheckpointError(
            f"'{path}' holds a ppl-vi {payload.get('kind')!r}, not a {kind!r}. Use "
            f"{_READERS.get(payload.get('kind'), 'the matching reader')} for it, or pass another "
            "path."
        )
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"'{path}' was written by a newer ppl-vi (file version {version!r}, this version "
            f"reads up to {VERSION}); upgrade ppl-vi to read it."
        )
    if version >= 2:
        stored = payload.get("checksum")
        body = {k: v for k, v in payload.items() if k != "checksum"}
        try:
            actual = digest(body)
        except Exception:  # noqa: BLE001 - content of an unexpected type
            actual = None
        if stored != actual:
            raise CheckpointError(
                f"'{path}' does not match its checksum: it was edited or damaged after ppl-vi "
                f"wrote it. {untouched}"
            )
    elif kind == "checkpoint":
        raise CheckpointError(
            f"'{path}' was written by an older ppl-vi (file version {version}) that did not "
            "record which data and settings it belongs to, so it cannot be resumed safely. "
            "Pass resume='restart' to overwrite it, or another checkpoint path."
        )
    missing = [key for key in _REQUIRED[kind] if key not in payload]
    if missing:
        raise CheckpointError(f"'{path}' is incomplete (no {missing}). {untouched}")
    return payload


def saved_data(payload: dict, path, model_args: tuple, model_kwargs: dict, reader: str):
    """The model data to use when loading ``payload``: the arguments given, else the saved ones.

    Raises ``ValueError`` naming ``reader`` (the loading call) when neither is available.
    """
    if model_args or model_kwargs:
        return tuple(model_args), dict(model_kwargs)
    if payload.get("args") is None:
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


def describe_mismatch(saved: dict, current: dict) -> str | None:
    """Compare two models' sample sites; return a sentence saying how they differ, or None."""
    parts = _site_differences(saved, current)
    return "; ".join(parts) or None


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


def plain_data(obj) -> bool:
    """True if ``obj`` is made only of tensors, numbers, strings, None and containers of them."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, np.generic)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(plain_data(x) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and plain_data(v) for k, v in obj.items())
    return False


def to_cpu(obj):
    """Tensors detached on the CPU, numpy scalars as Python numbers, containers recursed."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(x) for x in obj)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return obj


def rng_to_plain(state: dict) -> dict:
    """A generator state (:func:`ppl_vi.runtime.rng_state`) as data ``weights_only`` can load."""
    out = {"torch": state["torch"].clone()}
    if "random" in state:
        version, internal, gauss = state["random"]
        out["random"] = (version, torch.tensor(internal, dtype=torch.int64), gauss)
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        out["numpy"] = (name, torch.as_tensor(keys.astype(np.int64)), pos, has_gauss, cached)
    if "cuda" in state:
        out["cuda"] = {int(k): v.clone() for k, v in state["cuda"].items()}
    return out


def rng_from_plain(plain: dict) -> dict:
    """Inverse of :func:`rng_to_plain`."""
    out = {"torch": plain["torch"]}
    if "random" in plain:
        version, internal, gauss = plain["random"]
        out["random"] = (version, tuple(int(x) for x in internal.tolist()), gauss)
    if "numpy" in plain:
        name, keys, pos, has_gauss, cached = plain["numpy"]
        out["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    if "cuda" in plain:
        out["cuda"] = dict(plain["cuda"])
    return out
