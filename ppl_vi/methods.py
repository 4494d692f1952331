"""The non-SGD methods behind ``fit(guide="pathfinder" | "bam" | "auto")`` and
``fit(init="pathfinder")``: option checks and the glue to :mod:`ppl_vi.gaussian_vi` and
:mod:`ppl_vi.auto` (kept out of :mod:`ppl_vi.fit`, which they call back through ``fit_fn``)."""

from __future__ import annotations

import functools

from ppl_vi.policies import Convergence, Polish
from ppl_vi.result import VIResult

#: Default maximum number of steps of ``guide="bam"`` (it converges in tens to hundreds).
BAM_STEPS = 200
#: ``guide=`` names of methods that fit a Gaussian without SGD (:mod:`ppl_vi.gaussian_vi`).
GAUSSIAN_METHODS = ("pathfinder", "auto")
DEFAULTS = {
    "elbo": "elbo", "num_steps": None, "lr": None, "optim": None, "num_particles": None,
    "convergence": Convergence(), "polish": Polish(), "checkpoint": None,
    "checkpoint_every": 500, "resume": "auto", "callbacks": (), "clip_norm": None,
    "lr_schedule": None, "elbo_kwargs": None, "jit": "auto", "kl_anneal": None,
}  # fmt: skip


def same(value, default) -> bool:
    try:
        return value is default or bool(value == default)
    except Exception:  # noqa: BLE001 - e.g. a tensor or an object without equality
        return False


#: Options of SGD fits that batch-and-match (closed-form steps) has no use for.
_NOT_BAM = ("elbo", "lr", "optim", "num_particles", "clip_norm", "lr_schedule", "elbo_kwargs",
            "jit", "kl_anneal")  # fmt: skip


def start_from(init, model, model_args: tuple, kwargs: dict, options: dict):
    """Pathfinder's best Gaussian for ``init=`` and the guide_kwargs that carry it."""
    from ppl_vi.gaussian_vi import best_gaussian, fit_pathfinder, init_guide_kwargs

    if isinstance(init, str) and init == "pathfinder":
        label = "pathfinder (init)" if options["progress"] else False
        init = fit_pathfinder(
            model, *model_args, seed=options["seed"], device=options["device"], progress=label,
            model_kwargs=options["model_kwargs"], dtype=options["dtype"] or "auto",
            **kwargs,
        )  # fmt: skip
    elif not isinstance(init, VIResult):
        raise ValueError(
            f"init must be 'pathfinder', a Pathfinder VIResult or None (got init={init!r})"
        )
    loc, tril, sites = best_gaussian(init)
    guide = "full_rank" if options["guide"] == "bam" else options["guide"]
    grads = int(init.method_info.get("num_grads", 0))
    return (loc, tril, sites, grads), init_guide_kwargs(guide, options["guide_kwargs"], sites)


def bam_engine(model, options: dict, policies: list):
    """The engine of ``fit(guide="bam")``: closed-form steps, no optimizer and no final phase
    (the step size schedule is the method's own); ``guide_kwargs`` go to
    :class:`~ppl_vi.gaussian_vi.BatchMatch` (``batch_size``, ``lam``, ``init_scale``...)."""
    from ppl_vi.gaussian_vi import BatchMatch

    given = [k for k in _NOT_BAM if not same(options[k], DEFAULTS[k])]
    if given:
        raise ValueError(
            f"guide='bam' takes closed-form steps: {', '.join(given)} "
            f"{'does' if len(given) == 1 else 'do'} not apply (its own "
            "options go in guide_kwargs, e.g. guide_kwargs={'batch_size': 64})"
        )
    from ppl_vi.gaussian_vi import method_dtype

    data = {**options["kwargs"], **(options["model_kwargs"] or {})}
    dtype = method_dtype(model, options["model_args"], data, options["dtype"] or "auto",
                         options["device"])  # fmt: skip
    return BatchMatch(model, policies=policies, device=options["device"], seed=options["seed"],
                      dtype=dtype, **dict(options["guide_kwargs"] or {}))  # fmt: skip


def run_method(name: str, fit_fn, model, model_args: tuple, options: dict, kwargs: dict):
    """``fit(guide="pathfinder")``: options of SGD fits are refused, ``guide_kwargs`` go to the
    method."""
    from ppl_vi.auto import fit_auto
    from ppl_vi.gaussian_vi import fit_pathfinder

    given = [k for k, default in DEFAULTS.items() if not same(options[k], default)]
    if given:
        raise ValueError(
            f"guide={name!r} is not a stochastic-gradient fit: {', '.join(given)} "
            f"{'does' if len(given) == 1 else 'do'} not apply "
            f"(its own options go in guide_kwargs, e.g. guide_kwargs={{'num_paths': 1}})"
        )
    method = fit_pathfinder if name == "pathfinder" else functools.partial(fit_auto, fit_fn)
    if options["init"] is not None:
        raise ValueError(f"init= does not apply to guide={name!r} (it starts with Pathfinder)")
    return method(
        model, *model_args, seed=options["seed"], device=options["device"],
        progress=options["progress"], model_kwargs=options["model_kwargs"],
        dtype=options["dtype"] or "auto", **dict(options["guide_kwargs"] or {}), **kwargs,
    )  # fmt: skip


def apply_start(engine, state, start) -> None:
    """Put Pathfinder's Gaussian (from :func:`start_from`) into the engine's guide."""
    from ppl_vi.gaussian_vi import apply_init

    apply_init(engine, state, *start[:3])


def annotate(result: VIResult, guide, start) -> None:
    """Record the method and the cost of a Pathfinder start in ``result.method_info``."""
    if isinstance(guide, str) and guide == "bam":
        result.method_info["method"] = "bam"
    if start is not None:
        result.method_info["init_grads"] = start[3]
