"""Shared tracing helpers: model structure, vectorized particles, per-particle log weights.

Everything that runs a model and a guide together over a batch of particles lives here once,
so that results, diagnostics and the ELBO classes agree on what a "particle" is.
"""

from __future__ import annotations

import contextlib
import linecache
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible
from pyro.poutine.subsample_messenger import SubsampleMessenger, _Subsample
from pyro.poutine.util import prune_subsample_sites

PARTICLE_PLATE = "_ppl_vi_particles"


@dataclass
class ModelInfo:
    """What one trace of a model tells about its sample sites.

    Attributes
    ----------
    name : str
        ``module.qualname`` of the model function.
    latent : dict
        Latent site name -> shape of one value (batch and event dims, as traced).
    discrete : list
        Names of latent sites with a discrete support.
    observed : dict
        Observed site name -> observed value.
    deterministic : dict
        ``pyro.deterministic`` site name -> shape of one value.
    subsample_plates : dict
        Name -> full size, for plates that subsample.
    max_plate_nesting : int
        Depth of the deepest vectorized plate (0 when there is none).
    undeclared : list
        Sites with a batch dim that no plate declares (:func:`undeclared_batch_sites`); such a
        model cannot evaluate particles as one batch.
    batched : bool
        Whether draws can be evaluated as one batch over a particle plate; set by the batching
        probe of a fit (:mod:`ppl_vi.probe`). When False, results draw one at a time.
    traced : dict
        Latent and deterministic site name -> shape as traced (subsampled plates at their
        mini-batch size), for models that can only run on the mini-batch they are given.
    factor : dict
        Observed site name -> True for ``pyro.factor`` terms (not data).
    """

    name: str
    latent: dict = field(default_factory=dict)
    discrete: list = field(default_factory=list)
    observed: dict = field(default_factory=dict)
    deterministic: dict = field(default_factory=dict)
    subsample_plates: dict = field(default_factory=dict)
    max_plate_nesting: int = 0
    undeclared: list = field(default_factory=list)
    batched: bool = True
    traced: dict = field(default_factory=dict)
    factor: dict = field(default_factory=dict)

    def fingerprint(self) -> dict:
        """A plain-data summary used to tell whether a saved fit belongs to this model."""
        return {
            "name": self.name,
            "latent": {k: list(v) for k, v in self.latent.items()},
            "observed": sorted(self.observed),
        }


def device_context(device: torch.device):
    """Make tensors created inside models default to ``device``.

    On the CPU this is a no-op: the ``torch.device`` context works through a function mode that
    intercepts every torch call and slows small models by more than half.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return contextlib.nullcontext()
    return device


def model_name(model) -> str:
    fn = getattr(model, "forward", model) if isinstance(model, torch.nn.Module) else model
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


def _is_deterministic(site) -> bool:
    return bool(site["infer"].get("_deterministic"))


def plate_nesting(trace) -> int:
    """Depth of the deepest vectorized plate used by any sample site of ``trace``."""
    depth = 0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                depth = max(depth, -frame.dim)
    return depth


def undeclared_batch_sites(trace) -> list[str]:
    """Names of the sample sites with a batch dim that no vectorized plate declares.

    A site's batch shape is that of its distribution broadcast with its value (an observed
    value can carry dims its distribution lacks); every dim of size other than 1 must be the
    ``dim`` of a vectorized plate in the site's ``cond_indep_stack``. Subsample sites are
    skipped. A model with such a site cannot use vectorized particles: the particle plate,
    placed left of the declared plates, would collide with the undeclared dim.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model():
    ...     pyro.sample("x", dist.Normal(torch.zeros(3), 1.0))           # undeclared dim -1
    ...     pyro.sample("y", dist.Normal(torch.zeros(3), 1.0).to_event(1))  # event dim: fine
    ...     with pyro.plate("data", 3):
    ...         pyro.sample("z", dist.Normal(0.0, 1.0))                   # declared by the plate
    >>> undeclared_batch_sites(pyro.poutine.trace(model).get_trace())
    ['x']
    """
    names = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        fn, value = site["fn"], site["value"]
        declared = {f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
        shape = fn.batch_shape
        if torch.is_tensor(value):
            value_batch = value.shape[: max(value.dim() - fn.event_dim, 0)]
            try:
                shape = torch.broadcast_shapes(shape, value_batch)
            except RuntimeError:  # value and distribution disagree: not a plate's doing
                names.append(name)
                continue
        if any(size != 1 and -i - 1 not in declared for i, size in enumerate(reversed(shape))):
            names.append(name)
    return names


def improper_safe(init_fn: Callable) -> Callable:
    """An init strategy that also works for priors that cannot be sampled.

    Sites whose distribution has no sampler (``ImproperUniform``, the flat priors of many Stan
    models) start at the image of zero under ``biject_to(support)`` (0 on the reals, 1 for a
    positive site); every other site is initialised by ``init_fn``. Pyro's own strategies draw
    from the prior first and fail on such sites.
    """

    def init(site=None):
        if site is None:
            return init
        try:
            return init_fn(site)
        except NotImplementedError:
            return feasible_value(site)

    return init


def feasible_value(site) -> torch.Tensor:
    """``biject_to(support)(0)`` for a sample site, found without drawing random numbers.

    Pyro's ``init_to_feasible`` draws from the distribution to learn the shape; this reads it
    from ``batch_shape + event_shape``, so it works for distributions without a sampler and
    leaves the random stream alone.
    """
    fn = site["fn"]
    transform = biject_to(fn.support)
    shape = transform.inverse_shape(fn.batch_shape + fn.event_shape)
    return transform(torch.zeros(shape)).detach()


def trace_model(model, args: tuple, kwargs: dict):
    """Trace ``model`` once: latents drawn from the prior, or set to a feasible point when the
    prior cannot be sampled or a prior draw breaks the model; parameters isolated."""
    with pyro.get_param_store().scope(), torch.no_grad():
        try:
            return poutine.trace(model).get_trace(*args, **kwargs)
        except (NotImplementedError, ValueError, RuntimeError) as err:
            # a prior that cannot be sampled (ImproperUniform), or a prior draw the model cannot
            # use (an explosive ARMA recursion, a kernel matrix that is not positive definite):
            # the structure is the same at a feasible point
            feasible = InitMessenger(improper_safe(init_to_feasible))(model)
            try:
                return poutine.trace(feasible).get_trace(*args, **kwargs)
            except Exception:
                raise err from None


def model_info(model, args: tuple, kwargs: dict) -> ModelInfo:
    """Trace ``model`` once (:func:`trace_model`) and describe it."""
    trace = trace_model(model, args, kwargs)
    info = ModelInfo(
        name=model_name(model),
        max_plate_nesting=plate_nesting(trace),
        undeclared=undeclared_batch_sites(trace),
    )
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        if isinstance(site["fn"], _Subsample):
            continue
        shape = list(site["value"].shape)
        event_dim = getattr(site["fn"], "event_dim", 0)
        for frame in site["cond_indep_stack"]:
            if frame.full_size is not None and frame.full_size != frame.size:
                info.subsample_plates[frame.name] = frame.full_size
                pos = len(shape) + frame.dim - event_dim
                if frame.dim is not None and 0 <= pos < len(shape) and shape[pos] == frame.size:
                    shape[pos] = frame.full_size  # record the full plate, not one mini-batch
        shape = tuple(shape)
        if _is_deterministic(site):
            info.deterministic[name] = shape
            info.traced[name] = tuple(site["value"].shape)
        elif site["is_observed"]:
            info.observed[name] = site["value"]
            base = getattr(site["fn"], "base_dist", site["fn"])
            info.factor[name] = type(base).__name__ == "Unit"
        elif not site["infer"].get("is_auxiliary"):
            info.latent[name] = shape
            info.traced[name] = tuple(site["value"].shape)
            if site["fn"].support.is_discrete:
                info.discrete.append(name)
    return info


def add_subsampling_plates(info: ModelInfo, trace) -> None:
    """Record the plates that subsample in another trace of the model's program (a guide may
    subsample a plate that the model declares at full size)."""
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            if frame.full_size is not None and frame.full_size != frame.size:
                info.subsample_plates.setdefault(frame.name, frame.full_size)


@contextlib.contextmanager
def full_plates(info: ModelInfo):
    """Within this context every subsampling plate of the model iterates over its full range.

    Pyro fixes a plate's subsample size when the plate is built inside the model, so the plate
    helper is swapped for one that asks for the full size (for the plates found subsampling in
    ``info``, and only where no explicit ``subsample`` is given). Used to draw local latents and
    evaluate the full-data log density after a mini-batch fit.
    """
    if not info.subsample_plates:
        yield
        return
    plates = info.subsample_plates

    def choose(name, size, subsample_size, subsample, device):
        if name in plates and subsample is None and size is not None:
            subsample_size = size
        return subsample_size, subsample

    with plate_indices(choose):
        yield


@contextlib.contextmanager
def plate_indices(choose):
    """Within the block, every ``pyro.plate`` asks ``choose(name, size, subsample_size,
    subsample, device) -> (subsample_size, subsample)`` for its mini-batch before Pyro draws one.

    Pyro fixes a plate's indices when the plate is built inside the model (in its
    ``_subsample`` helper, which has no hook), so the helper is swapped for the block. Hold
    :data:`~ppl_vi.runtime.LOCK`: the swap is process-wide.
    """
    original = SubsampleMessenger.__dict__["_subsample"]

    def _subsample(name, size=None, subsample_size=None, subsample=None, *args, **kwargs):
        device = kwargs.get("device") or (args[1] if len(args) > 1 else None)
        subsample_size, subsample = choose(name, size, subsample_size, subsample, device)
        return original.__func__(name, size, subsample_size, subsample, *args, **kwargs)

    SubsampleMessenger._subsample = staticmethod(_subsample)
    try:
        yield
    finally:
        SubsampleMessenger._subsample = original


def particle_traces(model, guide, args, kwargs, num_particles: int, max_plate_nesting: int):
    """Run ``guide`` then ``model`` (replayed) once, vectorized over ``num_particles``.

    The particle plate sits at ``dim = -(max_plate_nesting + 1)``. Returns
    ``(model_trace, guide_trace)`` with subsample sites removed and log probabilities computed.
    """
    plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1))
    guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
    replayed = poutine.replay(plate(model), trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def sum_to_particles(value: torch.Tensor, num_particles: int, max_plate_nesting: int):
    """Sum a site's (scaled, masked) log density over everything but the particle dim.

    Shapes
    ------
    value : batch shape of the site, with the particle dim at ``-(max_plate_nesting + 1)``
        when the site depends on the particle; returns ``(num_particles,)``.
    """
    dim = max_plate_nesting + 1
    if not torch.is_tensor(value) or value.dim() < dim or value.shape[-dim] != num_particles:
        total = value.sum() if torch.is_tensor(value) else torch.as_tensor(value)
        return total.expand(num_particles)
    value = value.movedim(-dim, 0)
    return value.reshape(num_particles, -1).sum(-1)


def trace_log_density(
    trace, num_particles: int, max_plate_nesting: int, skip: set | None = None
) -> torch.Tensor:
    """Per-particle total log density of the sample sites of a trace (except ``skip``),
    ``(num_particles,)``."""
    total = 0.0
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not (skip and name in skip):
            total = total + sum_to_particles(site["log_prob"], num_particles, max_plate_nesting)
    if not torch.is_tensor(total):
        return torch.zeros(num_particles)
    return total


def site_values(trace, names: dict, num_particles: int) -> dict:
    """Values of the named sites, reshaped to ``(num_particles, *shape)``.

    ``names`` maps each site name to the shape of one (unvectorized) value.
    """
    out = {}
    for name, shape in names.items():
        value = trace.nodes[name]["value"]
        numel = 1
        for s in shape:
            numel *= s
        if value.numel() != num_particles * numel:  # the site does not vary with the particle
            value = value.reshape(shape).expand(num_particles, *shape)
        out[name] = value.reshape(num_particles, *shape)
    return out


def first_nonfinite_site(traces) -> str | None:
    """Name the first site (guide first, then model) whose value or log density is not finite."""
    for label, trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            value = site["value"]
            if (
                torch.is_tensor(value)
                and value.is_floating_point()
                and not torch.isfinite(value).all()
            ):
                return f"sample site '{name}' (non-finite value in the {label})"
            try:
                log_prob = site["fn"].log_prob(value)
            except Exception as e:  # noqa: BLE001 - report, do not mask the original failure
                return f"sample site '{name}' (log_prob failed in the {label}: {e})"
            if torch.is_tensor(log_prob) and not torch.isfinite(log_prob).all():
                return f"sample site '{name}' (non-finite log density in the {label})"
    return None


# ------------------------------------------------------------------------ user code lines
#: Folders of the libraries whose frames are not "the user's code" in error messages.
LIBRARY_DIRS = tuple(
    str(Path(m.__file__).resolve().parent)
    for m in (torch, pyro, sys.modules[__name__.split(".")[0]])
) + (str(Path(sysconfig.get_paths()["stdlib"]).resolve()),)


def is_user_file(filename: str | None) -> bool:
    if not filename or filename.startswith("<frozen"):
        return False
    try:
        return not str(Path(filename).resolve()).startswith(LIBRARY_DIRS)
    except OSError:
        return True


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller point at the first frame
    outside the libraries (the user's line), however many library frames lie between (a
    decorator, a generator driven by ``fit``)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and not is_user_file(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def place(filename: str, lineno: int) -> str:
    """``file.py:12`` without the folder (no machine paths in messages); a notebook cell (an
    IPython temporary file) is ``notebook cell, line 12``."""
    if "ipykernel_" in filename or filename.startswith("<ipython-input"):
        return f"notebook cell, line {lineno}"
    return f"{Path(filename).name}:{lineno}"


def _where(filename: str, lineno: int) -> str:
    line = linecache.getline(filename, lineno).strip()
    where = place(filename, lineno)
    return f"{where}: `{line}`" if line else where


def user_line(exc: BaseException) -> str | None:
    """``file:line: `source``` of the deepest frame of ``exc``'s traceback in user code."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if is_user_file(code.co_filename):
            found = (code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return _where(*found) if found else None


def caller_line(depth_limit: int = 60) -> str | None:
    """``file:line: `source``` of the innermost frame of the current stack in user code."""
    frame = sys._getframe(1)
    for _ in range(depth_limit):
        if frame is None:
            return None
        if is_user_file(frame.f_code.co_filename):
            return _where(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


# ------------------------------------------------------------------ draws, batched or not
def _proposal_sites(model_trace, guide_trace) -> set:
    """Model sites the guide does not sample: the model draws them from its prior, so they are
    part of the proposal and cancel from the importance weight."""
    return {
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not isinstance(site["fn"], _Subsample)
        and name not in guide_trace.nodes
    }


def single_traces(model, guide, args, kwargs):
    """One unbatched draw: ``(model_trace, guide_trace)``, subsample sites pruned, log
    probabilities computed."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def draws(model, guide, args, kwargs, num: int, info: ModelInfo, names: dict):
    """``num`` draws from the guide with the model replayed on them.

    Returns ``(values, log_p, log_q)``: site name -> ``(num, *shape)`` for ``names`` (name ->
    shape of one value), and the model's and the guide's log densities ``(num,)``. Model sites
    the guide does not sample (drawn from the model's prior) are left out of ``log_p``, so that
    ``log_p - log_q`` is a proper importance weight. Evaluated as one batch over a particle
    plate when ``info.batched``, else one draw at a time.
    """
    mpn = info.max_plate_nesting
    if info.batched:
        model_trace, guide_trace = particle_traces(model, guide, args, kwargs, num, mpn)
        skip = _proposal_sites(model_trace, guide_trace)
        values = site_values(model_trace, names, num)
        return (
            {k: v.detach().clone() for k, v in values.items()},  # never views of parameters
            trace_log_density(model_trace, num, mpn, skip),
            trace_log_density(guide_trace, num, mpn),
        )
    values = {name: [] for name in names}
    log_p, log_q = [], []
    for _ in range(num):
        model_trace, guide_trace = single_traces(model, guide, args, kwargs)
        skip = _proposal_sites(model_trace, guide_trace)
        for name, shape in names.items():
            values[name].append(model_trace.nodes[name]["value"].detach().reshape(shape).clone())
        log_p.append(trace_log_density(model_trace, 1, mpn, skip))
        log_q.append(trace_log_density(guide_trace, 1, mpn))
    stacked = {name: torch.stack(v) for name, v in values.items()}
    return stacked, torch.cat(log_p), torch.cat(log_q)
