"""The training engine: an explicit :class:`TrainState` and an :class:`Engine` with ``init``,
``step`` and ``run``, in the spirit of NumPyro's ``SVI.init/update/run`` and emcee's
``sample()`` generator.

>>> import ppl_vi
>>> from ppl_vi.models import normal_normal
>>> engine = ppl_vi.Engine(normal_normal.model, "mean_field", "elbo", seed=0)
>>> state = engine.init(**normal_normal.load_data())
>>> state, loss = engine.step(state)
>>> for state in engine.run(state, num_steps=100):
...     pass
>>> state.step
100
>>> result = ppl_vi.VIResult.from_state(state, engine)

Everything a step depends on is in the state: the fit's own Pyro parameter store, the
optimizer (with its per-parameter moments), the random generator state, the step number and the
loop phase, plus what the policies keep there (losses, the final phase's averages). A step
either completes (parameters, optimizer and counters move together, with Ctrl-C held until
the update is applied) or leaves the state exactly as it was (random generators rewound,
gradients dropped), so an interrupted fit resumes bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import torch_item
from pyro.optim.optim import PyroOptim

from ppl_vi import checkpoint as ckpt
from ppl_vi import data, io
from ppl_vi import optim as optim_lib
from ppl_vi.anneal import KLAnnealing
from ppl_vi.compiled import CompiledStep, NonFinite
from ppl_vi.distributed import DataParallel, rank_seed
from ppl_vi.errors import DataError, FitError, NonFiniteLossError
from ppl_vi.infer_util import (
    add_subsampling_plates,
    device_context,
    first_nonfinite_site,
    full_plates,
    model_info,
    trace_model,
    user_line,
    user_stacklevel,
)
from ppl_vi.jit import JitELBO
from ppl_vi.minibatch import EpochBatches
from ppl_vi.policies import Callbacks, Polish, param_names, warn_final_phase_failed
from ppl_vi.probe import BatchingReport, probe_batching
from ppl_vi.resolve import elbo_settings, resolve_elbo, resolve_guide
from ppl_vi.runtime import (
    LOCK,
    InterruptGuard,
    default_dtype,
    rng_state,
    seeded_state,
    using_rng,
)

__all__ = ["Engine", "TrainState"]

PHASES = ("main", "polish", "done")
#: ``jit="auto"`` records a compiled step when at least this many steps remain (recording
#: costs 0.2-1 s, about 100-300 eager steps of a small model).
AUTO_STEPS = 200
#: What a model that does not broadcast over particles runs one at a time.
_UNBATCHED = "ELBO particles and draws from the result"


@dataclass
class TrainState:
    """Everything a training step depends on, and where the loop is.

    Attributes
    ----------
    param_state : dict
        The fit's own Pyro parameter store (``{"params": ..., "constraints": ...}``, as used by
        ``pyro.get_param_store().scope``): unconstrained parameter tensors by name.
    optim : pyro.optim.PyroOptim
        The optimizer, holding each parameter's moments and step count.
    rng : dict or None
        The fit's random generator state between runs (``None``: the fit draws from, and
        advances, the caller's global generators).
    num_steps, step, end : int
        Steps asked for, taken, and where the run ends (the final phase may end it earlier).
    phase : str
        ``"main"``, ``"polish"`` (the final phase) or ``"done"``.
    losses : list of float
        One loss per step (the annealed loss while ``kl_anneal`` scales the latent terms).
    full_losses : list of float
        With ``kl_anneal``: the negative ELBO of each step on the same draws (else empty).
    converged : bool
        Whether the stopping rule fired.
    polish_start : int or None
        Step at which the final phase started.
    avg, avg_count
        Running averages of the parameters over the final phase.
    """

    param_state: dict
    optim: PyroOptim
    rng: dict | None
    num_steps: int
    step: int = 0
    end: int = 0
    phase: str = "main"
    losses: list = field(default_factory=list)
    full_losses: list = field(default_factory=list)
    converged: bool = False
    polish_start: int | None = None
    avg: dict | None = None
    avg_count: int = 0
    interrupted: bool = False
    last_lr_factor: float = 1.0

    @property
    def params(self) -> dict:
        """Unconstrained parameter tensors by name (the live ones)."""
        return self.param_state["params"]

    def accumulate_average(self, params: list) -> None:
        """Add the current values of ``params`` to the running averages (final phase)."""
        store = pyro.get_param_store()
        if self.avg is None:
            self.avg = {}
        avgs, values = [], []
        for p in params:  # (the step's parameters, all from the store)
            name = store.param_name(p)
            if name not in self.avg:
                self.avg[name] = p.detach().clone()
            avgs.append(self.avg[name])
            values.append(p.detach())
        self.avg_count += 1
        if avgs:
            torch._foreach_lerp_(avgs, values, 1.0 / self.avg_count)

    def final_params(self) -> dict:
        """Copies of the fitted parameters: the averages where the final phase averaged."""
        out = {name: value.detach().clone() for name, value in self.params.items()}
        if self.phase != "done" and self.avg:
            for name, value in self.avg.items():
                if name in out:
                    out[name] = value.detach().clone()
        return out

    def finalize(self) -> None:
        """Mark the fit finished and write the averages into the live parameters."""
        if self.phase != "done" and self.avg:
            with torch.no_grad():
                for name, value in self.avg.items():
                    if name in self.params:
                        self.params[name].copy_(value)
        self.phase = "done"
        self.end = self.step

    def reopen(self, num_steps: int) -> None:
        """Extend a finished fit to ``num_steps``: train on from its final parameters (and
        optimizer state) with a fresh main phase; the final phase runs again at the end."""
        self.phase, self.converged = "main", False
        self.polish_start, self.avg, self.avg_count = None, None, 0
        self.num_steps = self.end = num_steps

    # ------------------------------------------------------------------ checkpoints
    def loop_payload(self) -> dict:
        return {
            "step": self.step,
            "end": self.end,
            "num_steps": self.num_steps,
            "phase": self.phase,
            "finished": self.phase == "done",
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "full_losses": torch.tensor(self.full_losses, dtype=torch.float64),
            "converged": self.converged,
            "polish_start": self.polish_start,
            "avg": io.to_cpu(self.avg),
            "avg_count": self.avg_count,
        }

    def load_loop(self, loop: dict, device) -> None:
        self.step = int(loop["step"])
        self.end = int(loop["end"])
        self.num_steps = int(loop["num_steps"])
        self.phase = str(loop["phase"])
        if self.phase not in PHASES:
            raise io.CheckpointError(f"unknown loop phase {self.phase!r} in the checkpoint")
        self.losses = [float(x) for x in loop["losses"].tolist()]
        full = loop.get("full_losses")
        self.full_losses = [] if full is None else [float(x) for x in full.tolist()]
        self.converged = bool(loop["converged"])
        self.polish_start = loop["polish_start"]
        avg = loop["avg"]
        self.avg = None if avg is None else {k: v.to(device) for k, v in avg.items()}
        self.avg_count = int(loop["avg_count"])


class _StepFailed(Exception):
    def __init__(self, loss: float, bad_params: list):
        self.loss = loss
        self.bad_params = bad_params


class Engine:
    """Stochastic variational inference with explicit state: ``init``, ``step``, ``run``.

    Parameters
    ----------
    model : callable
        A Pyro model.
    guide : str, class or callable, default "mean_field"
        A guide name (``ppl_vi.guides.GUIDES``), a guide class or a ready guide.
    elbo : str, class or pyro.infer.ELBO, default "elbo"
        An ELBO name (``ppl_vi.elbos.ELBOS``), class or instance.
    optim : pyro.optim.PyroOptim, optional
        Default ``pyro.optim.Adam({"lr": 0.01})``; Adam steps run as one multi-tensor update.
    policies : sequence of :class:`~ppl_vi.policies.Policy`
        Stopping rule, final phase, schedule, checkpoints, progress, callbacks.
    num_particles, guide_kwargs, elbo_kwargs, jit
        As for :func:`ppl_vi.fit`.
    device : str, default "auto"
        Where data, parameters and random numbers live.
    seed : int or None, default 0
        Seed of the fit's own random stream (the caller's generators are left as they were);
        None draws from (and advances) the caller's global generators.
    dtype : torch.dtype, optional
        Run the model and the guide in this floating dtype (floating data are cast, torch's
        default dtype is set while the engine works); the default leaves both as they are.
    distributed : bool, default False
        Data-parallel training on the current ``torch.distributed`` process group
        (:mod:`ppl_vi.distributed`): each rank evaluates its shard of every step's mini-batch
        and the gradients are averaged over the ranks.
    """

    def __init__(
        self,
        model,
        guide="mean_field",
        elbo="elbo",
        optim: PyroOptim | None = None,
        *,
        policies=(),
        num_particles: int | None = None,
        guide_kwargs: dict | None = None,
        elbo_kwargs: dict | None = None,
        jit: bool | str = False,
        device="auto",
        seed: int | None = 0,
        dtype: torch.dtype | None = None,
        distributed: bool = False,
    ):
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro program (got {type(model).__name__})")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an integer or None (got {seed!r})")
        seed = None if seed is None else int(seed)
        self.model = model
        self.guide_arg, self.elbo_arg = guide, elbo
        self.optim = optim_lib.build_optim(optim, None, None)
        self.policies = list(policies)
        self.polish = next((p for p in self.policies if isinstance(p, Polish)), None)
        self.annealing = next((p for p in self.policies if isinstance(p, KLAnnealing)), None)
        self.num_particles = num_particles
        if not (jit is True or jit is False or jit == "auto"):
            raise ValueError(f"jit must be True, False or 'auto' (got {jit!r})")
        self.guide_kwargs, self.elbo_kwargs, self.jit = guide_kwargs, elbo_kwargs, jit
        self.device = data.resolve_device(device)
        self.seed = seed
        self.dtype = dtype
        self.distributed = bool(distributed)
        self.parallel: DataParallel | None = None
        self._param_names: list = []
        self.args, self.kwargs = (), {}
        self.info = self.guide = self.elbo = None
        self.elbos: dict = {}
        self.last_params: list = []
        self._factory = None
        self._active = None
        self._applied_factor = None
        self._guard = InterruptGuard()
        self.batches: EpochBatches | None = None
        self._compiled: dict = {}  # ELBO -> CompiledStep
        self._full_loss = None

    # ------------------------------------------------------------------ set-up
    def init(self, *args, **kwargs) -> TrainState:
        """Check the data, trace the model once, build the guide's parameters, decide how
        particles are evaluated (the batching probe) and check each ELBO once.

        Everything here happens before step 1; any problem raises here.
        """
        seed = self.seed
        if self.distributed:
            self.parallel = DataParallel()
            self.device = self.parallel.device(self.device)
            self.parallel.check_device(self.device)
            if self.jit is True:
                raise ValueError(
                    "jit=True is not available with distributed=True (a compiled step cannot "
                    "take each rank's shard of the mini-batch); leave jit off"
                )
            seed = rank_seed(seed, self.parallel.rank)
        with LOCK, default_dtype(self.dtype):
            args, kwargs = data.prepare(args, kwargs, self.device, self.model, self.dtype)
        self.args, self.kwargs = args, kwargs
        param_state = {"params": {}, "constraints": {}}
        store = pyro.get_param_store()
        with LOCK:  # seeding touches the global generators: not while another fit runs
            rng = None if seed is None else seeded_state(seed, self.device)
        with LOCK, store.scope(state=param_state), using_rng(rng, self.device):
            with device_context(self.device), default_dtype(self.dtype):
                self.info = self._trace(args, kwargs)
                self.guide, self.guide_spec = resolve_guide(
                    self.guide_arg, self.model, self.guide_kwargs
                )
                with poutine.block():
                    self.guide(*args, **kwargs)  # builds the guide's parameters
                self._guide_plates(args, kwargs)
                report = self._probe(args, kwargs)
                self._build_elbos(report, args, kwargs)
                for policy in self.policies:
                    policy.setup(self)
                if self.parallel is not None:
                    self._setup_parallel(args, kwargs)
                elif self.info.subsample_plates:
                    self.batches = EpochBatches(
                        _batch_seed(seed), self.info.subsample_plates, device=self.device
                    )
        return TrainState(param_state, self.optim, rng, num_steps=0)

    def _setup_parallel(self, args, kwargs) -> None:
        """Check that every rank runs the same fit, that the model has a plate to shard and
        that its batches divide among the ranks; then give every rank rank 0's parameters."""
        par = self.parallel
        store = pyro.get_param_store()
        self._param_names = sorted(store.keys())
        par.check_same(
            {
                "parameters": [(n, tuple(store._params[n].shape)) for n in self._param_names],
                "fingerprint": ckpt.fingerprint(self),
            }
        )
        if not self.info.subsample_plates:
            raise DataError(
                f"distributed=True splits each step's mini-batch among the processes, but the "
                f"model {self.info.name} has no subsampled plate: declare the data plate with "
                "a mini-batch, pyro.plate('data', N, subsample_size=B). Without one every "
                "process would repeat the same work (for more particles per step use "
                "num_particles)"
            )
        par.epochs = EpochBatches(
            par.batch_seed(self.seed), self.info.subsample_plates, par.rank, par.world, self.device
        )
        error = None
        try:
            with par.shards(0):
                self._check_elbo(self.elbo, args, kwargs)
        except Exception as e:  # noqa: BLE001 - raised below, after every rank has agreed
            error = e
        if par.agree(False, error is not None)[1]:
            if par.refused is not None:  # without the trace Pyro appends to a model's errors
                raise par.refused from None
            if error is not None:
                raise error
            raise FitError("another rank failed the data-parallel fit's set-up (see its error)")
        par.broadcast([store._params[n] for n in self._param_names])

    def _trace(self, args, kwargs):
        bad_inputs = data.nonfinite_inputs(self.model, args, kwargs)
        try:
            info = model_info(self.model, args, kwargs)
        except Exception as e:
            lists = data.list_inputs(self.model, args, kwargs)
            if lists:
                raise DataError(
                    f"the model failed on its data ({type(e).__name__}: {_first_line(e)}), and "
                    f"{', '.join(lists)} is a Python list of numbers: pass data as tensors or "
                    "numpy arrays (torch.tensor(y) or np.asarray(y)); ppl-vi does not convert "
                    "lists, which often hold settings"
                ) from e
            if bad_inputs:
                raise DataError(
                    "the model cannot run on its data: " + "; ".join(bad_inputs) + f" ({e}). "
                    "Remove or impute missing values, or mask them (obs_mask=, poutine.mask)"
                ) from e
            where = user_line(e)
            _note(
                e,
                "ppl-vi: the model failed when run once with draws from its prior, before "
                "training" + (f", at {where}" if where else ""),
            )
            raise
        if not info.latent:
            raise DataError(
                f"the model {info.name} has no latent sample sites (every sample site is "
                "observed), so there is nothing for variational inference to fit. For maximum "
                "likelihood of pyro.param values use pyro.infer.SVI with an empty guide"
            )
        with using_rng(rng_state(self.device), self.device), torch.no_grad():
            with full_plates(info):
                trace = trace_model(self.model, args, kwargs)
            data.check_observed(trace, self.model, args, kwargs)
            if bad_inputs:
                trace.compute_log_prob()
                if not all(
                    bool(torch.isfinite(s["log_prob"]).all())
                    for s in trace.nodes.values()
                    if s["type"] == "sample"
                ):
                    raise DataError(
                        "the model's log density is not finite on its data: "
                        + "; ".join(bad_inputs)
                        + ". Remove or impute missing values, or mask them (obs_mask=, "
                        "poutine.mask)"
                    )
        return info

    def _guide_plates(self, args, kwargs) -> None:
        """Plates that the guide subsamples count as subsampled plates of the model too."""
        with using_rng(rng_state(self.device), self.device), torch.no_grad():
            try:
                trace = poutine.trace(poutine.block(self.guide, hide_types=["param"])).get_trace(
                    *args, **kwargs
                )
            except Exception:  # noqa: BLE001 - the probe and the ELBO check report guide errors
                return
        add_subsampling_plates(self.info, trace)

    def _probe(self, args, kwargs) -> BatchingReport:
        if self.info.undeclared:
            self.info.batched = False
            return BatchingReport(False, "undeclared batch dims")
        report = probe_batching(self.model, self.guide, args, kwargs, self.info, self.device)
        self.info.batched = report.batched
        return report

    def _build_elbos(self, report: BatchingReport, args, kwargs) -> None:
        if not report.batched and not self.info.undeclared:
            _warn(report.message(_UNBATCHED) + " The final phase adds no extra particles.")
        self._resolve_elbo(None if report.batched else False)
        try:
            self._check_elbo(self.elbo, args, kwargs)
        except Exception as e:
            if self._factory is None or not _vectorized(self.elbo):
                _note(e, "ppl-vi: the ELBO could not be evaluated on the model before training")
                raise
            report = BatchingReport(False, _describe(e), user_line(e))
            _warn(report.message(_UNBATCHED) + " The final phase adds no extra particles.")
            self.info.batched = False
            self._resolve_elbo(False)
            self._check_elbo(self.elbo, args, kwargs)
        self.elbos = {"main": self.elbo}

    def _resolve_elbo(self, vectorize: bool | None) -> None:
        self.elbo, self.elbo_spec, self._factory = resolve_elbo(
            self.elbo_arg,
            self.num_particles,
            self.info.max_plate_nesting,
            self.elbo_kwargs,
            self.jit,
            self.info.undeclared,
            vectorize,
        )

    def _check_elbo(self, elbo, args, kwargs) -> None:
        """Evaluate ``elbo`` once on a copy of the random stream (no state changes)."""
        with using_rng(rng_state(self.device), self.device):
            elbo.loss(self.model, self.guide, *args, **kwargs)

    def add_phase_elbo(self, phase: str, num_particles: int) -> None:
        """Use an ELBO with ``num_particles`` particles in ``phase`` (e.g. the final phase),
        when the ELBO was given by name or class, has fewer particles, and its number of
        particles does not define the objective (IWAE, Rényi). Checked once here; if it fails,
        the phase keeps the main ELBO, with a warning."""
        main = self.elbo
        fixed_k = getattr(main, "particles_define_objective", False)
        if self._factory is None or fixed_k or num_particles <= main.num_particles:
            return
        elbo = self._factory(num_particles)
        try:
            self._check_elbo(elbo, self.args, self.kwargs)
        except Exception as e:  # noqa: BLE001 - the phase then runs with the main ELBO
            _warn(
                f"the {phase} phase's ELBO with {num_particles} particles failed on the model "
                f"({_describe(e)}); that phase uses the main ELBO ({main.num_particles} "
                "particle(s)) instead"
            )
            return
        self.elbos[phase] = elbo

    def settings(self) -> dict:
        """What shapes the trajectory (for checkpoint fingerprints)."""
        out = {
            "guide": self.guide_spec,
            "elbo": elbo_settings(self.elbo),
            "elbos": sorted(self.elbos),
            "optim": optim_lib.optim_settings(self.optim),
            "seed": self.seed,
            "device": self.device.type,
            "jit": self.jit is True,  # "auto" steps are the eager ones, bit for bit
        }
        if self.parallel is not None:
            out["world_size"] = self.parallel.world
        for policy in self.policies:
            out.update(policy.settings())
        return out

    # ------------------------------------------------------------------ stepping
    @contextlib.contextmanager
    def session(self, state: TrainState):
        """The fit's parameter store, random stream and device, for the block (re-entrant)."""
        if self._active is state:
            yield
            return
        store = pyro.get_param_store()
        with LOCK, store.scope(state=state.param_state), using_rng(state.rng, self.device):
            with device_context(self.device), default_dtype(self.dtype), self._guard.installed():
                deferring = self._guard.deferring() if self.parallel else contextlib.nullcontext()
                self._active = state
                try:
                    with deferring:  # data-parallel: Ctrl-C travels with the next step
                        yield
                finally:
                    self._active = None

    def lr_factor(self, state: TrainState) -> float:
        factor = 1.0
        for policy in self.policies:
            factor *= policy.lr_scale(state)
        return factor

    def step(self, state: TrainState, *args, **kwargs) -> tuple[TrainState, float]:
        """One optimisation step with the current phase's ELBO and learning-rate factor.

        On failure the state is left as it was and :class:`~ppl_vi.errors.FitError` (or
        :class:`~ppl_vi.errors.NonFiniteLossError`) is raised with ``err.state``.
        """
        args, kwargs = self._data(args, kwargs)
        with self.session(state):
            loss = self._step(state, args, kwargs, self.lr_factor(state))
        return state, loss

    def _data(self, args, kwargs):
        """The model's data for a step: those given at init, or new ones (converted, moved)."""
        if not (args or kwargs):
            return self.args, self.kwargs
        return data.prepare(args, kwargs, self.device, self.model, self.dtype)

    def _step(self, state: TrainState, args, kwargs, factor: float) -> float:
        elbo = self.elbos.get(state.phase, self.elbo)
        rng = _torch_rng(self.device)
        if self._compiled_update(state, elbo, rng, args, kwargs, factor):
            return state.losses[-1]
        if self.parallel is not None:
            loss, params = self._parallel_gradients(state, elbo, rng, args, kwargs)
        else:
            loss, params = self._gradients(state, elbo, rng, args, kwargs)
        self._guard.hold()  # a Ctrl-C from here on waits until the update is complete
        try:
            new = optim_lib.prepare(state.optim, params)
            if not optim_lib.is_scheduler(state.optim) and (new or factor != self._applied_factor):
                optim_lib.set_lr_factor(state.optim, factor)
                self._applied_factor = factor
            optim_lib.apply_update(state.optim, params)
            optim_lib.scheduler_step(state.optim)
            self._record(state, loss, self._full_loss)
            state.last_lr_factor = factor
        finally:
            self._guard.release()
        self.last_params = params
        return loss

    def compiled_step(self, elbo) -> CompiledStep | None:
        """The compiled training step of ``elbo`` (``jit=True``), or None."""
        if self.jit is False or self.parallel is not None:
            return None
        if self.jit is True and not isinstance(elbo, JitELBO):
            return None
        step = self._compiled.get(elbo)
        if step is None:
            step = CompiledStep(self.model, self.guide, elbo, self.batches, self.device)
            self._compiled[elbo] = step
        return step

    def _compiled_update(self, state, elbo, rng, args, kwargs, factor) -> bool:
        """Take the step as one compiled graph; False (nothing changed) when it runs eagerly."""
        compiled = self.compiled_step(elbo)
        if compiled is None or compiled.reason is not None or not self.last_params:
            return False
        if self.annealing is not None and self.annealing.beta(state.step) != 1.0:
            return False  # warm-up steps run eagerly (the graph would fix the coefficient)
        if self.jit == "auto" and not compiled.compiled and not self._auto_records(state):
            return False
        if factor != self._applied_factor:
            optim_lib.set_lr_factor(state.optim, factor)
            self._applied_factor = factor
        self._guard.hold()  # a Ctrl-C from here on waits until the update is complete
        try:
            try:
                loss = compiled(state.optim, self.last_params, state.step, args, kwargs)
            except NonFinite as e:
                self._rewind(rng)
                err = _StepFailed(e.loss, e.bad_params)
                raise self._failure(err, state, elbo, rng, args, kwargs) from None
            except Exception as e:  # noqa: BLE001 - the eager step below says what is wrong
                # nothing was applied (the graph writes its updates last): the step runs
                # eagerly on the same draws, and raises FitError (with the work kept) if the
                # model itself fails
                self._rewind(rng)
                compiled.reason = f"the compiled step failed ({type(e).__name__}: {_first_line(e)})"
                return False
            if loss is None:
                return False
            self._record(state, loss, loss)
            state.last_lr_factor = factor
        finally:
            self._guard.release()
        return True

    def _auto_records(self, state) -> bool:
        """Whether ``jit="auto"`` records a step now: with enough steps to go to repay the
        recording, and no callbacks (which may change what the model reads between steps)."""
        return state.end - state.step >= AUTO_STEPS and not self._has_callbacks()

    def _has_callbacks(self) -> bool:
        return any(isinstance(p, Callbacks) and p.callbacks for p in self.policies)

    def _auto_reason(self) -> str:
        if self._has_callbacks():
            return (
                "callbacks may change what the model reads between steps, which a recorded "
                "step would not see (jit=True compiles anyway)"
            )
        return f"fewer than {AUTO_STEPS} steps to go: not worth recording"

    def jit_report(self) -> dict:
        """How each phase's steps ran: ``"compiled step"`` (the whole step as one graph),
        ``"compiled ELBO"`` (``jit=True``'s fallback: the loss recorded with Pyro's JIT, the
        update eager) or ``"eager"``, with the reason where the faster path was not taken."""
        out = {}
        for phase, elbo in self.elbos.items():
            step = self._compiled.get(elbo)
            if step is not None and step.reason is None and step.compiled:
                out[phase] = {"path": "compiled step", "compile_s": round(step.compile_seconds, 3)}
                continue
            reason = getattr(step, "reason", None)
            if reason is None and self.jit == "auto":
                reason = self._auto_reason()
            if isinstance(elbo, JitELBO) and elbo.fallback is None:
                out[phase] = {"path": "compiled ELBO", "reason": reason}
            else:
                out[phase] = {"path": "eager", "reason": getattr(elbo, "fallback", None) or reason}
        return out

    def _batch_context(self, step: int):
        """Mini-batches of the subsampled plates from per-epoch permutations."""
        if self.batches is None:
            return contextlib.nullcontext()
        return self.batches.context(step)

    def _gradients(self, state, elbo, rng, args, kwargs) -> tuple[float, list]:
        """The step's loss and the parameters it set gradients on; on failure the random
        stream is rewound, gradients are dropped and the error is raised."""
        try:
            with poutine.trace(param_only=True) as capture, self._batch_context(state.step):
                loss = self._loss_and_grads(elbo, state.step, args, kwargs)
            params = list(
                dict.fromkeys(s["value"].unconstrained() for s in capture.trace.nodes.values())
            )
            loss = torch_item(loss)
            _check_finite(loss, params)
        except BaseException as e:
            self._rewind(rng)
            if not isinstance(e, Exception):  # Ctrl-C, SystemExit: the step never happened
                raise
            raise self._failure(e, state, elbo, rng, args, kwargs) from e
        return loss, params

    def _loss_and_grads(self, elbo, step: int, args, kwargs):
        """The step's loss (gradients set); with ``kl_anneal``, the annealed loss, and the full
        one kept for :meth:`_record`."""
        if self.annealing is None:
            return elbo.loss_and_grads(self.model, self.guide, *args, **kwargs)
        loss, self._full_loss = self.annealing.loss_and_grads(
            elbo, self.model, self.guide, step, args, kwargs, self.device
        )
        return loss

    def _record(self, state: TrainState, loss: float, full: float | None) -> None:
        state.step += 1
        state.losses.append(loss)
        if self.annealing is not None:
            state.full_losses.append(full)

    def warmup_end(self) -> int:
        """First step from which ``kl_anneal``'s coefficient stays 1 (0 without annealing)."""
        return 0 if self.annealing is None else self.annealing.warmup_end()

    def _parallel_gradients(self, state, elbo, rng, args, kwargs) -> tuple[float, list]:
        """This rank's shard of the step, then one all_reduce that averages every parameter's
        gradient and shares each rank's loss and status: every rank takes the step, or every
        rank drops it and raises (a failure anywhere) or stops (Ctrl-C anywhere)."""
        par = self.parallel
        local = [state.params[n] for n in self._param_names]
        error, loss, interrupted = None, math.nan, False
        try:
            with par.shards(state.step):
                loss = torch_item(elbo.loss_and_grads(self.model, self.guide, *args, **kwargs))
            # the live store's names (state.params is brought up to date when the session ends)
            names = pyro.get_param_store().keys()
            if len(names) != len(local):
                raise FitError(_NEW_PARAMS.format(sorted(set(names) - set(self._param_names))))
            _check_finite(loss, local)
        except KeyboardInterrupt:
            interrupted = True
        except Exception as e:  # noqa: BLE001 - shared with the other ranks below
            error = e
        interrupted = interrupted or self._guard.pending is not None
        mean, (failed, stop), grads = par.reduce(local, loss, (error is not None, interrupted))
        if failed:
            mine = None
            if error is not None:
                with par.shards(state.step):
                    mine = self._failure(error, state, elbo, rng, args, kwargs)
            self._rewind(rng)
            raise self._shared_failure(state, mine) from error
        if stop:
            self._rewind(rng)
            self._guard.pending = None
            raise KeyboardInterrupt
        for p, g in zip(local, grads, strict=True):
            p.grad = g
        return mean, [p for p, g in zip(local, grads, strict=True) if g is not None]

    def _shared_failure(self, state, mine: FitError | None) -> FitError:
        """The same error on every rank: the first failing rank's, naming that rank."""
        par = self.parallel
        site = getattr(mine, "site", None)
        info = None if mine is None else (isinstance(mine, NonFiniteLossError), str(mine), site)
        rank, (nonfinite, text, site) = next(
            (r, m) for r, m in enumerate(par.gather(info)) if m is not None
        )
        text = f"rank {rank} of {par.world}: {text}"
        step = state.step + 1
        error = NonFiniteLossError(text, step, site) if nonfinite else FitError(text, step=step)
        error.state = state
        return error

    def _rewind(self, rng) -> None:
        _set_torch_rng(rng)
        for p in pyro.get_param_store()._params.values():
            p.grad = None

    def _failure(self, err, state, elbo, rng, args, kwargs) -> FitError:
        step = state.step + 1
        numeric = isinstance(err, (_StepFailed, torch.linalg.LinAlgError)) or (
            isinstance(err, ValueError)
            and ("invalid values" in str(err) or "Expected value argument" in str(err))
        )
        if not numeric:
            first = (str(err).strip().splitlines() or [""])[0]
            where = user_line(err)
            error = FitError(
                f"step {step} failed ({type(err).__name__}: {first[:300]})"
                + (f" at {where}" if where else "")
                + f". The fit up to step {step - 1} is kept (err.result)",
                step=step,
            )
            error.state = state
            return error
        with self._batch_context(state.step):
            site = self._diagnose(elbo, rng, args, kwargs)
        if isinstance(err, _StepFailed):
            what = "a gradient became non-finite"
            if not math.isfinite(err.loss):
                what = f"the loss became {err.loss}"
        elif isinstance(err, torch.linalg.LinAlgError):
            what = f"the model's linear algebra failed on a draw ({_first_line(err)})"
        else:
            what = f"a distribution received invalid (non-finite) parameters ({_first_line(err)})"
        parts = [f"{what} at step {step}"]
        if site:
            parts.append(f"first found at {site}")
        if isinstance(err, _StepFailed) and err.bad_params:
            parts.append(f"non-finite gradients in parameters {param_names(err.bad_params)}")
        message = (
            "; ".join(parts)
            + f". Training stopped; the parameters from step {step - 1} are kept (err.result). "
            "Try a smaller lr, clip_norm=..., or check the model at that site."
        )
        error = NonFiniteLossError(message, step=step, site=site)
        error.state = state
        return error

    def _diagnose(self, elbo, rng, args, kwargs) -> str | None:
        """Re-run the failing step's draws with validation off and name the first bad site."""
        try:
            with using_rng({"torch": rng[0]}, None), pyro.validation_enabled(False):
                with torch.no_grad():
                    for model_trace, guide_trace in elbo._get_traces(
                        self.model, self.guide, args, kwargs
                    ):
                        found = first_nonfinite_site(
                            [("guide", guide_trace), ("model", model_trace)]
                        )
                        if found:
                            return found
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the step is already bad
            return None
        return None

    # ------------------------------------------------------------------ the loop
    def run(self, state: TrainState, num_steps: int | None = None, *args, **kwargs):
        """Run steps until the fit is done, yielding the state after each step.

        Policies decide the phase, the learning-rate factor and when to stop. Ctrl-C ends the
        run with ``state.interrupted`` set; a failure raises :class:`~ppl_vi.errors.FitError`
        (``err.state`` is the last good state) after the policies have finished (e.g. the
        checkpoint is written). A failing final phase ends the run at the last good step, with
        a warning. The loop body runs with the fit's parameter store active.
        """
        if num_steps is not None:
            state.num_steps = num_steps
            if state.phase != "done":
                state.end = num_steps if state.phase == "main" else min(state.end, num_steps)
        args, kwargs = self._data(args, kwargs)
        failure = None
        with self.session(state):
            for policy in self.policies:
                policy.start(self, state)
            outcome = "done"
            try:
                while state.phase != "done":
                    for policy in self.policies:
                        policy.before_step(self, state)
                    if state.step >= state.end:
                        break
                    try:
                        self._step(state, args, kwargs, self.lr_factor(state))
                    except FitError as e:
                        if state.phase == "polish" and not isinstance(e, NonFiniteLossError):
                            warn_final_phase_failed(state.step, state.polish_start, e)
                            break
                        raise
                    stop = self._after_step(state)
                    yield state
                    if stop:
                        outcome = "stopped"
                        break
            except KeyboardInterrupt:
                state.interrupted, outcome = True, "interrupted"
            except FitError as e:
                failure, outcome = e, "failed"
                e.state = state
            except GeneratorExit:  # the caller stopped iterating: finish as a stopped run
                self._finish(state, "stopped")
                raise
            if outcome == "done":
                state.finalize()
            self._finish(state, outcome)
        if failure is not None:
            raise failure

    def _finish(self, state: TrainState, outcome: str) -> None:
        """Every policy's end-of-run hook; one that fails (a checkpoint on a full disk) warns
        instead of losing the finished run."""
        for policy in self.policies:
            try:
                policy.finish(self, state, outcome)
            except Exception as e:  # noqa: BLE001 - the run's work must reach the caller
                _warn(
                    f"{type(policy).__name__} failed when the run ended at step {state.step} "
                    f"({type(e).__name__}: {_first_line(e)})"
                )

    def _after_step(self, state: TrainState) -> bool:
        if self.parallel is not None:
            return self._shared_after_step(state)
        return self._policies_after_step(state)

    def _shared_after_step(self, state: TrainState) -> bool:
        """The policies on every rank; one rank's failure (a checkpoint it could not write, a
        callback that raised) stops every rank, with that rank's error."""
        if not any(policy.rank_dependent(state) for policy in self.policies):
            return self._policies_after_step(state)  # decided alike on every rank
        error, stop = None, False
        try:
            stop = self._policies_after_step(state)
        except FitError as e:
            error = e
        any_stop, any_failed = self.parallel.agree(stop, error is not None)
        if not any_failed:
            return any_stop
        texts = self.parallel.gather(None if error is None else str(error))
        if error is not None:
            raise error
        rank, text = next((r, t) for r, t in enumerate(texts) if t is not None)
        raise FitError(f"rank {rank} of {self.parallel.world}: {text}", step=state.step)

    def _policies_after_step(self, state: TrainState) -> bool:
        stop = False
        for policy in self.policies:
            try:
                stop = policy.after_step(self, state) or stop
            except (KeyboardInterrupt, FitError):
                raise
            except Exception as e:
                raise FitError(
                    f"{type(policy).__name__} failed after step {state.step} "
                    f"({type(e).__name__}: {_first_line(e)}). The fit up to step {state.step} is "
                    "kept (err.result)",
                    step=state.step,
                ) from e
        return stop

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: TrainState, path, fingerprint: dict) -> None:
        """Write ``state`` (with ``fingerprint``) to ``path``; call inside :meth:`session`."""
        payload = {
            **io.header("checkpoint"),
            "fingerprint": fingerprint,
            "params": {name: value.detach().cpu() for name, value in state.params.items()},
            "optim": io.to_cpu(state.optim.get_state()),
            "rng": io.rng_to_plain(rng_state(self.device)),
            "loop": state.loop_payload(),
        }
        if self.parallel is not None:  # every rank's stream; rank 0 writes
            payload["rng_ranks"] = self.parallel.gather(payload["rng"])
            if self.parallel.rank != 0:
                return
        io.atomic_save(payload, path)

    def load_checkpoint(self, state: TrainState, payload: dict, source: str) -> None:
        """Put a checkpoint's parameters, optimizer moments, random state and loop into
        ``state`` (the guide must have the same parameters)."""
        with self.session(state):
            io.restore_params(payload["params"], self.device, source)
        state.optim._state_waiting_to_be_consumed = dict(payload["optim"])
        ranks = payload.get("rng_ranks") or []
        rank = 0 if self.parallel is None else self.parallel.rank
        if rank and rank >= len(ranks):  # resumed on more ranks: the new ones keep their streams
            state.load_loop(payload["loop"], self.device)
            return
        rng = io.rng_from_plain(ranks[rank] if rank else payload["rng"])
        if self.device.type != "cuda":
            rng.pop("cuda", None)
        if state.rng is None:
            state.rng = rng_state(self.device)
        state.rng.update(rng)
        state.load_loop(payload["loop"], self.device)


# ---------------------------------------------------------------------------- helpers
_NEW_PARAMS = (
    "parameters {} were created after the data-parallel fit started; every parameter must "
    "exist after the model and guide have run once (create them at the first call)"
)


def _check_finite(loss: float, params: list) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not (math.isfinite(loss) and _grads_finite(grads)):
        bad = [p for p in params if p.grad is not None and not _finite(p.grad)]
        raise _StepFailed(loss, bad)


def _finite(g: torch.Tensor) -> bool:
    """Whether every element of ``g`` (dense or sparse) is finite."""
    return bool(torch.isfinite(g.to_dense() if g.is_sparse else g).all())


_FLAGS: dict = {}  # device -> (found, one): reused flag tensors of the fused check


def _grads_finite(grads: list) -> bool:
    """True when every gradient is finite: one fused kernel per device.

    ``torch._amp_foreach_non_finite_check_and_unscale_`` (what ``torch.amp.GradScaler`` uses)
    sets a flag when any element is NaN or infinite while multiplying by 1, which leaves the
    values exactly as they are; it costs about a sixth of a norm-based check on a small model.
    """
    by_device: dict = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for device, group in by_device.items():
        if device not in _FLAGS:
            _FLAGS[device] = (torch.zeros(1, device=device), torch.ones(1, device=device))
        found, one = _FLAGS[device]
        found.zero_()
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)
            finite = not found.item()
        except (RuntimeError, TypeError, NotImplementedError):  # e.g. sparse gradients
            finite = all(_finite(g) for g in group)
        if not finite:
            return False
    return True


def _torch_rng(device):
    cuda = None
    if device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    return torch.get_rng_state(), cuda, device


def _set_torch_rng(rng) -> None:
    cpu, cuda, device = rng
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _vectorized(elbo) -> bool:
    inner = getattr(elbo, "elbo", elbo)
    return bool(getattr(inner, "vectorize_particles", False))


def _batch_seed(seed: int | None) -> int:
    """The seed of the mini-batch permutations: the fit's seed, or one drawn from the
    caller's generator when the fit has none."""
    return int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(":")


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {_first_line(e)[:200]}"


def _note(err: BaseException, text: str) -> None:
    if hasattr(err, "add_note"):
        err.add_note(text)


def _warn(message: str) -> None:
    """A RuntimeWarning that points at the caller's line (``fit(...)``, ``engine.init()``)."""
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=user_stacklevel())
