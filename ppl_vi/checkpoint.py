"""Which checkpoint belongs to which fit: fingerprints and the resume decision.

A checkpoint records the fingerprint (:mod:`ppl_vi.fingerprint`) of the model, the data and
the settings it was written for. ``fit(..., checkpoint=path)`` resumes it only when all three
agree; otherwise it raises :class:`~ppl_vi.errors.CheckpointError` saying what differs and
leaves the file alone, unless told otherwise:

* ``resume="auto"`` (default): resume a matching checkpoint, refuse a different one;
* ``resume="force"``: continue from the checkpoint anyway (its parameters, optimizer moments,
  random state and loop) with the current model, data and settings, e.g. a smaller ``lr``
  after a NaN; the guide's parameters must have the same names and shapes;
* ``resume="restart"``: ignore the file and start over (it is overwritten by this fit).

A finished fit asked for more steps is extended: training continues from its final
parameters and optimizer state, and the final phase runs again over the last part of the new
total. Asking a checkpoint for fewer steps than it was written with is a difference.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ppl_vi import io
from ppl_vi.data import input_labels
from ppl_vi.errors import CheckpointError
from ppl_vi.fingerprint import code_digest, data_fingerprint, differences

__all__ = ["RESUME_MODES", "fingerprint", "open_checkpoint"]

RESUME_MODES = ("auto", "force", "restart")
_WHAT = {"model": "the model differs", "data": "the data differ", "settings": "settings differ"}


def fingerprint(engine) -> dict:
    """The fingerprint of an initialised engine's model, data and settings."""
    labels = input_labels(engine.model, len(engine.args))
    return {
        "model": {**engine.info.fingerprint(), "code": code_digest(engine.model)},
        "data": data_fingerprint(labels, engine.args, engine.kwargs),
        "settings": engine.settings(),
    }


def open_checkpoint(path: Path, current: dict, num_steps: int, resume: str) -> dict | None:
    """The checkpoint payload to resume from, or None to start over."""
    if resume == "restart" or not path.exists():
        return None
    payload = io.read(path, "checkpoint")
    found = differences(payload["fingerprint"], current)
    loop = payload["loop"]
    saved_steps = int(loop["num_steps"])
    if num_steps != saved_steps and not (loop["finished"] and num_steps > saved_steps):
        found["settings"].append(f"num_steps: {saved_steps} in the file, {num_steps} now")
    parts = [f"{_WHAT[kind]} ({'; '.join(items)})" for kind, items in found.items() if items]
    if not parts:
        return payload
    if resume == "force":
        warnings.warn(
            f"resuming '{path}' with resume='force' although {'; '.join(parts)}",
            RuntimeWarning,
            stacklevel=3,
        )
        return payload
    raise CheckpointError(
        f"the checkpoint '{path}' was written for a different fit: {'; '.join(parts)}. It was "
        "left untouched. Pass resume='force' to continue from it with the current model, data "
        "and settings, resume='restart' to start over (overwriting it), or another checkpoint "
        "path."
    )
