"""Process-wide state that a fit must own while it runs: Pyro's handler stack, the random
number generators, and Ctrl-C.

Pyro keeps its effect-handler stack and its parameter store in module globals, and torch's
distributions draw from torch's global generator. ppl-vi does not patch either; instead:

* :data:`LOCK` serialises everything that runs a model (fits, engine steps, draws from a
  result), so two fits started from two threads run one after the other instead of corrupting
  each other's handler stacks;
* :func:`using_rng` runs a block on a fit's own generator state and puts the caller's state
  back afterwards, so fitting never changes the random numbers the user's code sees next;
* :func:`deferred_interrupt` holds a Ctrl-C that arrives while a step's update is being
  applied until the update is complete, so a step is either applied entirely or not at all.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading

import numpy as np
import pyro
import torch

__all__ = ["LOCK", "deferred_interrupt", "rng_state", "seeded", "set_rng_state", "using_rng"]

#: Re-entrant lock held while ppl-vi runs a model (Pyro's handler stack is process-global).
LOCK = threading.RLock()


def _cuda_devices(device) -> list:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda" or not torch.cuda.is_available():
        return []
    index = device.index if device.index is not None else torch.cuda.current_device()
    return [index]


def rng_state(device=None) -> dict:
    """Every generator a Pyro model may draw from: torch (CPU and the CUDA ``device``), Python's
    ``random`` and NumPy's global state (the three that ``pyro.set_rng_seed`` seeds)."""
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the state Pyro seeds
    }
    cuda = {i: torch.cuda.get_rng_state(i) for i in _cuda_devices(device)}
    if cuda:
        state["cuda"] = cuda
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "random" in state:
        random.setstate(state["random"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])  # noqa: NPY002
    for index, value in state.get("cuda", {}).items():
        torch.cuda.set_rng_state(value, index)


def seeded_state(seed: int, device=None) -> dict:
    """The generator state ``pyro.set_rng_seed(seed)`` produces, without touching the caller's."""
    with LOCK:
        saved = rng_state(device)
        try:
            pyro.set_rng_seed(seed)
            return rng_state(device)
        finally:
            set_rng_state(saved)


@contextlib.contextmanager
def using_rng(state: dict | None, device=None):
    """Run the block on the generator ``state`` and restore the caller's state afterwards.

    ``state`` is updated in place with where the block left the generators, so a later block
    continues the same stream. ``None`` runs on (and advances) the caller's own generators.
    """
    if state is None:
        yield
        return
    with LOCK:
        saved = rng_state(device)
        set_rng_state(state)
        try:
            yield
        finally:
            state.update(rng_state(device))
            set_rng_state(saved)


@contextlib.contextmanager
def seeded(seed: int | None):
    """Seed Pyro's generators inside the block and restore the previous state afterwards."""
    if seed is None:
        yield
        return
    with using_rng(seeded_state(seed)):
        yield


@contextlib.contextmanager
def deferred_interrupt():
    """Hold a SIGINT (Ctrl-C) that arrives inside the block until the block has finished.

    Only possible in the main thread; elsewhere (and where no handler can be installed) the
    block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def hold(signum, frame):
        received.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError):  # not the main interpreter, or signals unsupported
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous) and previous is not signal.default_int_handler:
                previous(*received[0])
            else:
                raise KeyboardInterrupt
