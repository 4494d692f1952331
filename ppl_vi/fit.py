"""``fit()``: the one-call front end. Check the arguments, set up an
:class:`~ppl_vi.engine.Engine` with its policies, run it, return a :class:`~ppl_vi.VIResult`."""

from __future__ import annotations

import functools
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from pyro.optim.optim import PyroOptim

from ppl_vi import checkpoint as ckpt
from ppl_vi import data, io, methods
from ppl_vi.anneal import KLAnnealing
from ppl_vi.data import move_to_device, resolve_device  # noqa: F401 - public names here
from ppl_vi.engine import Engine
from ppl_vi.errors import FitError, NonFiniteLossError  # noqa: F401 - public names here
from ppl_vi.optim import DEFAULT_LR, build_optim  # noqa: F401 - public names here
from ppl_vi.policies import (
    Callbacks,
    Checkpointing,
    Convergence,
    FitState,
    LRSchedule,
    Polish,
    ProgressBar,
)
from ppl_vi.resolve import resolve_elbo, resolve_guide  # noqa: F401 - public names here
from ppl_vi.result import VIResult

__all__ = ["Convergence", "FitState", "NonFiniteLossError", "Polish", "fit"]

#: The keyword options of :func:`fit` (a model argument with one of these names is ambiguous).
OPTIONS = frozenset(
    "guide elbo num_steps lr optim num_particles seed device progress convergence polish "
    "checkpoint checkpoint_every resume callbacks clip_norm lr_schedule guide_kwargs "
    "elbo_kwargs jit model_kwargs init dtype distributed kl_anneal".split()
)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (got {name}={value!r})")
    return int(value)


#: Default maximum number of steps of an SGD fit.
DEFAULT_STEPS = 5000


def _check_options(options: dict) -> tuple:
    num_steps = options["num_steps"]
    if num_steps is None:
        num_steps = methods.BAM_STEPS if options["guide"] == "bam" else DEFAULT_STEPS
    num_steps = _positive_int("num_steps", num_steps)
    num_particles = options["num_particles"]
    if num_particles is not None:
        num_particles = _positive_int("num_particles", num_particles)
    checkpoint_every = _positive_int("checkpoint_every", options["checkpoint_every"])
    convergence, polish, resume = options["convergence"], options["polish"], options["resume"]
    if convergence is not None and not isinstance(convergence, Convergence):
        raise TypeError(
            f"convergence must be a ppl_vi.Convergence or None (got {type(convergence).__name__})"
        )
    if polish is not None and not isinstance(polish, Polish):
        raise TypeError(f"polish must be a ppl_vi.Polish or None (got {type(polish).__name__})")
    if options["distributed"] and options["guide"] in methods.GAUSSIAN_METHODS:
        raise ValueError(
            f"distributed=True trains SGD guides on mini-batches; guide={options['guide']!r} "
            "runs without stochastic gradients on the full data (use e.g. 'mean_field')"
        )
    if resume not in ckpt.RESUME_MODES:
        raise ValueError(f"resume must be one of {ckpt.RESUME_MODES} (got resume={resume!r})")
    return num_steps, num_particles, checkpoint_every


def _split_options(fn):
    """Refuse keywords that name both a fit option and a model argument (unless the model's
    arguments come in ``model_kwargs``); see :func:`ppl_vi.data.check_option_collisions`."""

    @functools.wraps(fn)
    def wrapper(model, *model_args, **kwargs):
        if kwargs.get("model_kwargs") is None and callable(model):
            passed = {k: v for k, v in kwargs.items() if k in OPTIONS}
            data.check_option_collisions(model, passed, OPTIONS, len(model_args))
        return fn(model, *model_args, **kwargs)

    return wrapper


@_split_options
def fit(
    model: Callable,
    *model_args,
    guide="mean_field",
    elbo="elbo",
    num_steps: int | None = None,
    lr: float | None = None,
    optim: PyroOptim | None = None,
    num_particles: int | None = None,
    seed: int | None = 0,
    device="auto",
    progress: bool | str = True,
    convergence: Convergence | None = Convergence(),  # noqa: B008 - frozen dataclass
    polish: Polish | None = Polish(),  # noqa: B008 - frozen dataclass
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: str = "auto",
    callbacks: Iterable[Callable] = (),
    clip_norm: float | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    guide_kwargs: dict | None = None,
    elbo_kwargs: dict | None = None,
    jit: bool | str = "auto",
    model_kwargs: dict | None = None,
    init=None,
    dtype=None,
    distributed: bool = False,
    kl_anneal: int | Callable[[int], float] | None = None,
    **kwargs,
) -> VIResult:
    """Fit a guide to a Pyro model by stochastic variational inference.

    Everything is checked before step 1 (arguments, data, that the ELBO can be evaluated on the
    model, that the checkpoint can be written). The fit runs in a parameter store and on a
    random stream of its own: two fits never share parameters, and the caller's random
    generators are left as they were (with ``seed=None`` the fit draws from them instead).

    Parameters
    ----------
    model : callable
        A Pyro model; ``*model_args`` and ``**kwargs`` (or ``model_kwargs``) are its data.
        numpy arrays and pandas objects become tensors (floats in torch's default dtype,
        integers as int64 indices), numpy scalars Python numbers; tensors move to ``device``.
    guide : str, class or callable, default "mean_field"
        A name from ``ppl_vi.guides.GUIDES``, a guide class (built as ``guide(model,
        **guide_kwargs)``) or a ready guide (a later fit may reuse it; each result keeps its
        own copy of the parameters).
    elbo : str, class or pyro.infer.ELBO, default "elbo"
        A name from ``ppl_vi.elbos.ELBOS``, an ELBO class or a ready ELBO instance.
    num_steps : int, default 5000 (200 for ``guide="bam"``)
        Maximum number of optimisation steps, the final (polish) phase included.
    lr : float, default 0.01
        Learning rate of the default Adam optimizer (finite, > 0).
    optim : pyro.optim.PyroOptim, optional
        An optimizer to use instead of Adam (then ``lr`` and ``clip_norm`` must be unset).
    num_particles : int, optional
        Particles per ELBO estimate (default: the ELBO's own, 1 for ``"elbo"``). They are
        evaluated as one batch over a plate left of the model's plates when the model
        broadcasts over it (checked once by running the model batched and one draw at a time),
        and one at a time otherwise, with a warning naming the model line and the fix.
    seed : int or None, default 0
        Seed of the fit's own random stream; ``None`` draws from the caller's generators.
    device : str, default "auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    progress : bool or str, default True
        Show a progress bar with the running mean loss; a string labels it (e.g. the method).
    convergence : Convergence or None
        Stopping rule; ``None`` runs every step.
    polish : Polish or None
        Final phase with learning-rate decay, more particles and iterate averaging.
    checkpoint : path, optional
        Save the fit there every ``checkpoint_every`` steps and when it stops; resume from it
        per ``resume`` (see :mod:`ppl_vi.checkpoint`): ``"auto"`` resumes only a checkpoint of
        the same model, data and settings, ``"force"`` continues from it anyway, ``"restart"``
        overwrites it. An unreadable, edited or mismatched file raises
        :class:`~ppl_vi.errors.CheckpointError` and is left untouched.
    callbacks : iterable of callables
        Each is called as ``callback(state)`` with a :class:`FitState` after every step;
        returning ``True`` stops the fit. A callback that raises stops it with
        :class:`~ppl_vi.errors.FitError` (``err.result`` keeps the fit).
    clip_norm : float, optional
        Clip each parameter's gradient to this norm (default Adam only).
    lr_schedule : callable, optional
        ``lr_schedule(step) -> factor`` (finite, >= 0) multiplies the learning rate; all
        factors are computed and checked before training.
    guide_kwargs, elbo_kwargs : dict, optional
        Keyword arguments used when the guide or the ELBO is built from a name or a class.
    jit : bool or "auto", default "auto"
        Compile the training step (:mod:`ppl_vi.compiled`: loss, gradients and Adam update as
        one graph, checked against the eager step; the same parameters bit for bit, 7-10x fewer
        seconds per step on small models). ``"auto"`` compiles fits with at least 200 steps to
        go and runs eagerly, silently, where the step cannot be compiled; ``True`` also falls
        back to Pyro's JIT for the loss alone (:class:`ppl_vi.jit.JitELBO`), and warns when
        nothing compiles; ``False`` never compiles. ``result.method_info["jit"]`` says what ran
        and why.
    model_kwargs : dict, optional
        The model's keyword arguments, kept apart from fit's options (needed when the model
        has an argument named like one of them, e.g. ``seed``).
    init : "pathfinder", VIResult or None
        Start from Pathfinder's best Gaussian (run first, or a result of
        ``fit(guide="pathfinder")``): a full-rank guide (and ``guide="bam"``) starts at that
        Gaussian, a mean-field guide at its means and sds, other guides that take
        ``init_loc_fn`` / ``init_scale`` at its means with the median of its sds.
    kl_anneal : int or callable, optional
        KL warm-up (:mod:`ppl_vi.anneal`): scale the latent sites' ``log p - log q`` terms by
        ``beta`` (observed sites keep weight 1); an integer ``n`` rises linearly to 1 over
        ``n`` steps, a callable gives ``beta = kl_anneal(step)``. ``result.losses`` holds the
        annealed losses, ``result.full_losses`` the negative ELBO on the same draws.
    dtype : torch.dtype, optional
        Run the model and the guide in this floating dtype (floating data are cast; e.g.
        ``torch.float64`` for badly conditioned posteriors). Default: torch's default dtype,
        except for ``"pathfinder"``, ``"bam"`` and ``"auto"``, which run in float64.

    ``guide`` also names methods that fit a Gaussian without stochastic gradients:
    ``"pathfinder"`` (:func:`ppl_vi.gaussian_vi.fit_pathfinder`), ``"bam"`` (batch and
    match, :class:`ppl_vi.gaussian_vi.BatchMatch`) and ``"auto"`` (:func:`ppl_vi.auto.fit_auto`:
    Pathfinder, then refinements until a trust check passes, with a verdict).

    Returns
    -------
    VIResult

    Raises
    ------
    NonFiniteLossError, FitError
        When training stops after it started; ``err.result`` holds the fit up to the last
        completed step (never a bad update). Ctrl-C instead returns that partial result.
    """
    if isinstance(guide, str) and guide in methods.GAUSSIAN_METHODS and not distributed:
        return methods.run_method(guide, fit, model, model_args, locals(), kwargs)
    num_steps, num_particles, checkpoint_every = _check_options(locals())
    if model_kwargs is not None:
        clash = sorted(set(model_kwargs) & set(kwargs))
        if clash:
            raise TypeError(f"model arguments {clash} are given twice (model_kwargs and **kwargs)")
        kwargs = {**kwargs, **model_kwargs}
    policies = [p for p in (convergence, polish) if p is not None]
    for schedule in (
        LRSchedule(lr_schedule) if lr_schedule is not None else None,
        KLAnnealing(kl_anneal) if kl_anneal is not None else None,
    ):
        if schedule is not None:
            schedule.check(num_steps)
            policies.append(schedule)
    policies.append(Callbacks([callbacks] if callable(callbacks) else callbacks))
    start_gaussian = None
    if init is not None:
        start_gaussian, guide_kwargs = methods.start_from(init, model, model_args, kwargs, locals())
    bar = ProgressBar(bool(progress), progress if isinstance(progress, str) else "fit")
    if guide == "bam":
        engine = methods.bam_engine(
            model, locals(), [p for p in policies if p is not polish] + [bar]
        )
    else:
        engine = Engine(
            model, guide, elbo, build_optim(optim, lr, clip_norm), policies=[*policies, bar],
            num_particles=num_particles, guide_kwargs=guide_kwargs, elbo_kwargs=elbo_kwargs,
            jit=jit, device=device, seed=seed, dtype=dtype, distributed=distributed,
        )  # fmt: skip
    path = None if checkpoint is None else io.check_writable(checkpoint, "checkpoint")
    if path is not None:
        io.clean_stale_temp_files(path)
    state = engine.init(*model_args, **kwargs)
    if start_gaussian is not None:
        methods.apply_start(engine, state, start_gaussian)
    if path is not None:
        _attach_checkpoint(engine, state, path, checkpoint_every, num_steps, resume)
    start = time.perf_counter()
    try:
        for _ in engine.run(state, num_steps):
            pass
    except FitError as err:
        err.result = VIResult.from_state(err.state, engine, time.perf_counter() - start)
        raise
    result = VIResult.from_state(state, engine, time.perf_counter() - start)
    methods.annotate(result, guide, start_gaussian)
    if state.interrupted:
        saved = f" (checkpoint saved to '{path}')" if path is not None else ""
        warnings.warn(
            f"fit interrupted at step {state.step} of {num_steps}; returning the partial "
            f"result{saved}",
            stacklevel=3,
        )
    return result


def _attach_checkpoint(engine, state, path: Path, every: int, num_steps: int, resume: str):
    fingerprint = ckpt.fingerprint(engine)
    payload = ckpt.open_checkpoint(path, fingerprint, num_steps, resume)
    if payload is not None:
        engine.load_checkpoint(state, payload, f"the checkpoint '{path}'")
        if state.phase == "done" and num_steps > state.num_steps:
            state.reopen(num_steps)
    engine.policies.insert(len(engine.policies) - 1, Checkpointing(path, every, fingerprint))
