"""Pieces shared by the guide families."""

from __future__ import annotations

from pyro.infer.autoguide import initialization as init

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
