"""Pieces shared by the guide families."""

from __future__ import annotations

from typing import NamedTuple

from pyro.infer.autoguide import initialization as init
from pyro.poutine.util import site_is_subsample

from ppl_vi.infer_util import improper_safe

INIT_STRATEGIES = {
    "feasible": init.init_to_feasible,
    "median": init.init_to_median,
    "mean": init.init_to_mean,
    "sample": init.init_to_sample,
    "uniform": init.init_to_uniform,
}


def resolve_init_loc_fn(init_loc_fn):
    """Turn a strategy name, a dict of initial values or a callable into Pyro's init function.

    A dict ``{site: value}`` initialises the named sites to those (constrained) values and the
    rest to a feasible point. Sites with a flat improper prior (``ImproperUniform``), which
    Pyro's strategies cannot draw from, start at ``biject_to(support)(0)``
    (:func:`ppl_vi.infer_util.improper_safe`) unless a value is given.
    """
    if callable(init_loc_fn):
        return improper_safe(init_loc_fn)
    if isinstance(init_loc_fn, dict):
        return improper_safe(
            init.init_to_value(values=init_loc_fn, fallback=improper_safe(init.init_to_feasible))
        )
    if isinstance(init_loc_fn, str) and init_loc_fn in INIT_STRATEGIES:
        return improper_safe(INIT_STRATEGIES[init_loc_fn])
    raise ValueError(
        f"init_loc_fn must be one of {sorted(INIT_STRATEGIES)}, a dict of initial values or a "
        f"callable init strategy (got init_loc_fn={init_loc_fn!r})"
    )


def check_init_scale(init_scale) -> float:
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)):
        raise TypeError(f"init_scale must be a positive number (got init_scale={init_scale!r})")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be > 0 (got init_scale={init_scale!r})")
    return float(init_scale)


def init_config(guide, init_loc_fn, init_scale):
    """Check and store the initialisation arguments shared by the joint-space guides.

    Stores ``guide._init_scale`` and ``guide._init_loc_spec`` (the strategy's name, if it was
    given by name) and returns the init function to hand to Pyro: the resolved strategy,
    wrapped by :func:`continuous_only`.
    """
    guide._init_scale = check_init_scale(init_scale)
    guide._init_loc_spec = init_loc_fn if isinstance(init_loc_fn, str) else None
    return continuous_only(resolve_init_loc_fn(init_loc_fn), type(guide).__name__)


def init_kwargs(guide) -> dict:
    """The part of ``get_config()`` that :func:`init_config` stored."""
    config = {"init_scale": guide._init_scale}
    if guide._init_loc_spec is not None:
        config["init_loc_fn"] = guide._init_loc_spec
    return config


def continuous_only(init_fn, guide_name: str):
    """Wrap an init strategy so that a discrete latent site stops the guide with a clear error.

    The init strategy is the first thing that sees each latent site while an autoguide traces
    the model, so the check happens before Pyro tries (and fails) to build a bijection.
    """

    def init(site):
        if site["fn"].support.is_discrete:
            name = site["name"]
            raise ValueError(
                f"{guide_name} is a continuous guide and cannot represent the discrete sample "
                f"site '{name}' (support {site['fn'].support}). Use the score-function ELBO "
                "(elbo='rb_score') with a guide that samples this site from a discrete "
                "distribution, or sum it out with pyro.infer.config_enumerate and "
                "pyro.infer.TraceEnum_ELBO."
            )
        return init_fn(site)

    return init


class DataPlate(NamedTuple):
    """The plate that indexes the data of a model trace, and the sample sites in it."""

    name: str
    dim: int
    observed: list  # observed sites inside the plate (trace nodes)
    local: list  # latent sites inside the plate, in model order (trace nodes)
    outside: list  # the other latent sites (global latents), in model order


def find_data_plate(trace, data_plate: str | None, owner: str) -> DataPlate:
    """The data plate of ``trace``: ``data_plate`` if given, else the single vectorized plate
    holding observed sites. ``owner`` names the caller in the errors (e.g. ``"Amortized"``).

    Raises ``ValueError`` when there is no such plate or ``data_plate`` is not a vectorized
    plate of the model; the caller decides what an empty ``local`` means.
    """
    sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
    frames = {f.name: f for s in sites for f in s["cond_indep_stack"] if f.vectorized}
    if data_plate is None:
        observed = [s for s in sites if s["is_observed"]]
        names = sorted({f.name for s in observed for f in s["cond_indep_stack"] if f.vectorized})
        if len(names) != 1:
            found = "no plate" if not names else f"the plates {names}"
            raise ValueError(
                f"{owner} needs the data plate: the model's observed sites lie in {found}; "
                "pass data_plate='<name of the plate that indexes the data>'"
            )
        data_plate = names[0]
    if data_plate not in frames:
        raise ValueError(
            f"data_plate={data_plate!r} is not a plate of the model (vectorized plates: "
            f"{sorted(frames)})"
        )
    inside = [any(f.name == data_plate for f in s["cond_indep_stack"]) for s in sites]
    return DataPlate(
        data_plate,
        frames[data_plate].dim,
        [s for s, i in zip(sites, inside, strict=True) if i and s["is_observed"]],
        [s for s, i in zip(sites, inside, strict=True) if i and not s["is_observed"]],
        [s for s, i in zip(sites, inside, strict=True) if not i and not s["is_observed"]],
    )


def check_local_site(site, plate: str, owner: str) -> None:
    """A continuous guide's check of a local latent site: not discrete, in no other plate."""
    name = site["name"]
    if site["fn"].support.is_discrete:
        raise ValueError(
            f"{owner} is a continuous guide and cannot represent the discrete local sample "
            f"site '{name}' (support {site['fn'].support}). Sum it out with "
            "pyro.infer.config_enumerate and TraceEnum_ELBO, or use a score-function ELBO "
            "(elbo='rb_score') with a guide that samples it from a discrete distribution."
        )
    others = [f.name for f in site["cond_indep_stack"] if f.name != plate]
    if others:
        raise ValueError(
            f"{owner} supports local sites in the data plate {plate!r} only, but site "
            f"'{name}' also lies in the plates {others}; move them into the site's event "
            "shape with .to_event()"
        )
