"""Small policies that plug into :class:`ppl_vi.engine.Engine`: the stopping rule, the final
phase, a learning-rate schedule, checkpoints, the progress bar and user callbacks.

A policy sees the :class:`~ppl_vi.engine.TrainState` at fixed points of the loop and keeps its
own state in it (so a checkpoint holds everything):

* ``setup(engine)`` once the guide and the ELBO exist (build extra ELBOs, probe them);
* ``start(engine, state)`` when a run begins;
* ``before_step(engine, state)`` may change the phase or where the run ends;
* ``lr_scale(state)`` multiplies the learning rate of the coming step;
* ``after_step(engine, state)`` returns True to stop;
* ``finish(engine, state, outcome)`` when the run ends (``"done"``, ``"stopped"``,
  ``"interrupted"`` or ``"failed"``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro
from tqdm import tqdm

from ppl_vi.errors import FitError
from ppl_vi.fingerprint import code_digest
from ppl_vi.infer_util import user_stacklevel

__all__ = [
    "Callbacks",
    "Checkpointing",
    "Convergence",
    "FitState",
    "LRSchedule",
    "Polish",
    "Policy",
    "ProgressBar",
]


class Policy:
    """Base class: every hook does nothing."""

    def setup(self, engine) -> None:
        pass

    def start(self, engine, state) -> None:
        pass

    def before_step(self, engine, state) -> None:
        pass

    def lr_scale(self, state) -> float:
        return 1.0

    def after_step(self, engine, state) -> bool:
        return False

    def finish(self, engine, state, outcome: str) -> None:
        pass

    def settings(self) -> dict:
        """What of this policy shapes the trajectory (recorded in checkpoint fingerprints)."""
        return {}

    def rank_dependent(self, state) -> bool:
        """In a data-parallel fit, whether ``after_step`` may decide or fail differently on
        different ranks at this step (user code, files): the ranks then compare outcomes
        (one small collective). Policies that decide from the shared state return False."""
        return False


# ----------------------------------------------------------------------------- stopping
@dataclass(frozen=True)
class Convergence(Policy):
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
        if not (isinstance(self.tol, (int, float)) and self.tol > 0 and math.isfinite(self.tol)):
            raise ValueError(f"Convergence.tol must be > 0 (got tol={self.tol!r})")
        if not (isinstance(self.z, (int, float)) and self.z >= 0 and math.isfinite(self.z)):
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
        se = math.sqrt(resid @ resid / (span - 2) / tt)
        scale = max(abs(y[-self.window :].mean()), 1.0)
        return (abs(slope) + self.z * se) * self.window / scale

    def check(self, losses) -> bool:
        """True when ``losses`` (one per step so far) meet the stopping rule at this step."""
        if len(losses) < self.min_steps or len(losses) % self.window:
            return False
        r = self.relative_decrease(losses)
        return r is not None and r < self.tol

    def after_step(self, engine, state) -> bool:
        start = engine.warmup_end() if hasattr(engine, "warmup_end") else 0
        losses = state.losses[start:]  # (a KL warm-up's loss moves with its coefficient)
        if state.phase == "main" and not state.converged and self.check(losses):
            state.converged = True
            if engine.polish is None:
                state.end = state.step
        return False

    def settings(self) -> dict:
        return {"convergence": dataclasses.asdict(self)}


# ---------------------------------------------------------------------------- final phase
@dataclass(frozen=True)
class Polish(Policy):
    r"""The final phase of a fit: learning-rate decay plus iterate averaging.

    Adam at a fixed learning rate leaves the parameters jittering around the optimum by an
    amount set by the learning rate, not by the gradient noise. During the last ``fraction`` of
    the steps (or after the stopping rule fires) the learning rate decays geometrically from
    ``lr`` to ``lr * lr_factor``, each ELBO estimate uses ``num_particles`` vectorized particles
    (when the ELBO was given by name or class, the fit uses fewer, and the model broadcasts over
    a batch of particles: evaluated one at a time they would multiply the phase's cost), and the
    parameters are averaged over the phase (Polyak & Juditsky 1992); the averages become the
    fitted parameters.
    More particles raise the signal-to-noise ratio of the gradient, which lets the parameters
    finish drifting along flat directions of the loss that a lower learning rate alone freezes.

    .. math::

        \eta_t = \eta \, f^{(t - t_0)/P}, \qquad
        \bar\phi = \frac{1}{P} \sum_{t = t_0 + 1}^{t_0 + P} \phi_t

    with :math:`f` = ``lr_factor``, :math:`P` = ``fraction * num_steps`` and :math:`t_0` the
    first step of the phase. If the final phase fails (its ELBO with more particles cannot be
    evaluated, or a step of it fails), the fit returns what it had at the last good step, with
    a warning.

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

    def settings(self) -> dict:
        return {"polish": dataclasses.asdict(self)}

    def setup(self, engine) -> None:
        # extra particles only when they run as one batch: one at a time they would make the
        # final phase num_particles times slower than the rest of the fit
        if engine.info.batched:
            engine.add_phase_elbo("polish", self.num_particles)

    def length(self, state) -> int:
        return max(1, round(self.fraction * state.num_steps))

    def before_step(self, engine, state) -> None:
        if state.phase != "main":
            return
        if state.converged or state.step >= state.num_steps - self.length(state):
            state.phase = "polish"
            state.polish_start = state.step
            state.end = min(state.num_steps, state.step + self.length(state))

    def lr_scale(self, state) -> float:
        if state.phase != "polish":
            return 1.0
        length = state.end - state.polish_start
        return self.lr_factor ** ((state.step - state.polish_start) / length)

    def after_step(self, engine, state) -> bool:
        if state.phase == "polish" and self.average:
            state.accumulate_average(engine.last_params)
        return False


# --------------------------------------------------------------------------- lr schedule
class LRSchedule(Policy):
    """``schedule(step) -> factor`` multiplies the learning rate at each step.

    The factors for all steps are computed and checked (finite, >= 0) before training starts.
    """

    def __init__(self, schedule: Callable[[int], float]):
        if not callable(schedule):
            raise TypeError("lr_schedule must be a callable step -> learning-rate factor")
        self.schedule = schedule
        self.factors: list[float] = []

    def factor(self, step: int) -> float:
        """``schedule(step)``, checked: a finite number >= 0."""
        value = self.schedule(step)
        try:
            factor = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"lr_schedule({step}) returned {value!r}, not a number") from None
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(
                f"lr_schedule({step}) returned {factor}: learning-rate factors must be finite "
                "and >= 0 (a negative factor would climb the loss instead of descending it)"
            )
        return factor

    def check(self, num_steps: int) -> None:
        """Compute and check the factors of steps ``0 .. num_steps - 1`` (before training)."""
        self.factors = [self.factor(step) for step in range(num_steps)]

    def start(self, engine, state) -> None:
        if len(self.factors) < state.num_steps:
            self.check(state.num_steps)

    def lr_scale(self, state) -> float:
        if state.step < len(self.factors):
            return self.factors[state.step]
        return self.factor(state.step)

    def settings(self) -> dict:
        return {"lr_schedule": code_digest(self.schedule)}


# ---------------------------------------------------------------------------- callbacks
@dataclass
class FitState:
    """What a callback sees after each step. Return ``True`` from the callback to stop."""

    step: int
    loss: float
    losses: list
    guide: Callable
    phase: str
    lr_factor: float


class Callbacks(Policy):
    """Calls each ``callback(FitState)`` after every step; any returning True stops the fit.

    A callback that raises stops the fit with :class:`~ppl_vi.errors.FitError` whose
    ``result`` holds the fit up to that step.
    """

    def __init__(self, callbacks):
        try:
            self.callbacks = list(callbacks)
        except TypeError:
            raise TypeError(
                f"callbacks must be a callable or an iterable of callables (got "
                f"{type(callbacks).__name__})"
            ) from None
        for cb in self.callbacks:
            if not callable(cb):
                raise TypeError(f"every callback must be callable (got {type(cb).__name__})")

    def rank_dependent(self, state) -> bool:
        return bool(self.callbacks)

    def after_step(self, engine, state) -> bool:
        if not self.callbacks:
            return False
        view = FitState(
            state.step,
            state.losses[-1],
            state.losses,
            engine.guide,
            state.phase,
            state.last_lr_factor,
        )
        stop = False
        for cb in self.callbacks:
            try:
                stop = bool(cb(view)) or stop
            except (KeyboardInterrupt, FitError):
                raise
            except Exception as e:
                name = getattr(cb, "__qualname__", type(cb).__name__)
                raise FitError(
                    f"callback {name} raised {type(e).__name__} after step {state.step}: {e}. "
                    f"The fit up to step {state.step} is kept (err.result)",
                    step=state.step,
                ) from e
        return stop


# --------------------------------------------------------------------------- checkpoints
class Checkpointing(Policy):
    """Write the state to ``path`` every ``every`` steps and when the run ends."""

    def __init__(self, path, every: int, fingerprint: dict):
        self.path = path
        self.every = every
        self.fingerprint = fingerprint
        self._started_at = None

    def start(self, engine, state) -> None:
        self._started_at = (state.step, state.phase)

    def rank_dependent(self, state) -> bool:
        return state.step % self.every == 0

    def after_step(self, engine, state) -> bool:
        if state.step % self.every == 0:
            engine.save_checkpoint(state, self.path, self.fingerprint)
        return False

    def finish(self, engine, state, outcome: str) -> None:
        # a run that changed nothing (a finished fit asked again) leaves the file as it is
        if (state.step, state.phase) != self._started_at:
            engine.save_checkpoint(state, self.path, self.fingerprint)


# ------------------------------------------------------------------------------ progress
class ProgressBar(Policy):
    """A tqdm bar with the running mean loss, labelled ``label``."""

    def __init__(self, enabled: bool = True, label: str = "fit"):
        self.enabled = bool(enabled)
        self.label = label
        self.bar = None

    def start(self, engine, state) -> None:
        self.bar = tqdm(
            total=state.num_steps,
            initial=state.step,
            disable=not self.enabled or state.phase == "done" or _not_main_rank(engine),
            desc=self.label,
            unit="step",
            mininterval=0.25,
            dynamic_ncols=True,
        )

    def after_step(self, engine, state) -> bool:
        try:
            self.bar.update()
            if state.step % 50 == 0:
                recent = state.losses[-100:]
                self.bar.set_postfix_str(f"loss {sum(recent) / len(recent):.5g}", refresh=False)
        except (OSError, ValueError):  # a closed or broken terminal: no bar, the fit goes on
            self.bar.disable = True
        return False

    def finish(self, engine, state, outcome: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _not_main_rank(engine) -> bool:
    parallel = getattr(engine, "parallel", None)
    return parallel is not None and parallel.rank != 0


def param_names(params) -> list:
    store = pyro.get_param_store()
    return sorted(store.param_name(p) or "<unnamed>" for p in params)


def warn_final_phase_failed(step: int, main_end: int | None, err: BaseException) -> None:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    where = f" (the main phase ended at step {main_end})" if main_end is not None else ""
    warnings.warn(
        f"the final phase failed at step {step + 1} ({type(err).__name__}: {first[:200]}); "
        f"returning the fit as of step {step}{where}",
        RuntimeWarning,
        stacklevel=user_stacklevel(),
    )
