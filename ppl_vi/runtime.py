"""Process-wide state that a fit must own while it runs: Pyro's handler stack, the random
number generators, and Ctrl-C.

Pyro keeps its effect-handler stack and its parameter store in module globals, and torch's
distributions draw from torch's global generator. ppl-vi does not patch either; instead:

* :data:`LOCK` serialises everything that runs a model (fits, engine steps, draws from a
  result), so two fits started from two threads run one after the other instead of corrupting
  each other's handler stacks;
* :func:`using_rng` runs a block on a fit's own generator state and puts the caller's state
  back afterwards, so fitting never changes the random numbers the user's code sees next;
* :class:`InterruptGuard` holds a Ctrl-C that arrives while a step's update is being
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

__all__ = ["LOCK", "InterruptGuard", "rng_state", "seeded", "set_rng_state", "using_rng"]

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
def default_dtype(dtype: torch.dtype | None):
    """torch's default floating dtype set to ``dtype`` in the block (``None``: unchanged).

    Hold :data:`LOCK`: the default dtype is global to the process.
    """
    if dtype is None:
        yield
        return
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@contextlib.contextmanager
def seeded(seed: int | None):
    """Seed Pyro's generators inside the block and restore the previous state afterwards."""
    if seed is None:
        yield
        return
    with using_rng(seeded_state(seed)):
        yield


class InterruptGuard:
    """Holds a Ctrl-C (SIGINT) that arrives while an update is being applied.

    ``with guard.installed():`` puts its handler in place for a whole run (once: installing a
    handler costs microseconds, too much per step); around each update, ``guard.hold()`` /
    ``guard.release()`` (two attribute writes) defer a Ctrl-C that arrives in between until the
    update is complete, then raise it. Outside a held section a Ctrl-C acts as before (the
    previous handler runs, or ``KeyboardInterrupt`` is raised). Signal handlers exist only in
    the main thread; elsewhere the guard does nothing.
    """

    def __init__(self):
        self.holding = False
        self.pending = None
        self.sticky = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.holding:
            self.pending = (signum, frame)
            return
        self._forward(signum, frame)

    def _forward(self, signum, frame):
        previous = self._previous
        if previous is signal.SIG_IGN:
            return
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except (ValueError, OSError):  # not the main interpreter, or signals unsupported
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)

    def hold(self) -> None:
        self.holding = True

    @contextlib.contextmanager
    def deferring(self):
        """Hold every Ctrl-C for the whole block (``pending`` records it; the caller acts on
        it); one left unhandled at the end is dropped: the block's work is complete."""
        self.holding = self.sticky = True
        try:
            yield self
        finally:
            self.holding = self.sticky = False
            self.pending = None

    def release(self) -> None:
        if self.sticky:
            return
        self.holding = False
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._forward(*pending)
