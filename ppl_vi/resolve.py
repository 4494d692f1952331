"""Guides and ELBOs from names, classes or instances (``fit(guide="iaf", elbo="iwae")``)."""

from __future__ import annotations

import warnings

import pyro
from pyro.infer import JitTrace_ELBO

from ppl_vi.elbos import ELBOS
from ppl_vi.elbos._base import ParticleELBO
from ppl_vi.guides import GUIDES
from ppl_vi.jit import JitELBO

__all__ = ["class_path", "elbo_settings", "resolve_elbo", "resolve_guide"]


def class_path(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _from_table(name: str, table: dict, what: str, alternatives: str):
    if name not in table:
        raise ValueError(
            f"unknown {what} {name!r}; available {what}s: {', '.join(table)} (or pass "
            f"{alternatives})"
        )
    return table[name]


def resolve_guide(guide, model, guide_kwargs: dict | None):
    """Build the guide named by ``guide`` (a name, a class, or a ready instance) for ``model``.

    Returns ``(guide, spec)``; ``spec`` (name, class, config) is what result files record.
    """
    guide_kwargs = dict(guide_kwargs or {})
    if isinstance(guide, str):
        cls = _from_table(guide, GUIDES, "guide", "a guide class or a guide instance")
        obj = cls(model, **guide_kwargs)
    elif isinstance(guide, type):
        obj = guide(model, **guide_kwargs)
    elif callable(guide):
        if guide_kwargs:
            raise ValueError(
                "guide_kwargs are used to construct a guide from a name or a class; the guide "
                f"given is already an instance of {type(guide).__name__}"
            )
        obj = guide
    else:
        raise TypeError(
            "guide must be a guide name, a guide class or a callable guide (got "
            f"{type(guide).__name__})"
        )
    names = {cls: name for name, cls in GUIDES.items()}
    config = obj.get_config() if hasattr(obj, "get_config") else None
    spec = {"name": names.get(type(obj)), "class": class_path(obj), "config": config}
    return obj, spec


def resolve_elbo(
    elbo,
    num_particles: int | None,
    max_plate_nesting: int,
    elbo_kwargs: dict | None,
    jit: bool | str = False,
    undeclared: list | None = None,
    vectorize: bool | None = None,
):
    """Build the ELBO named by ``elbo`` (a name, a class or an instance of ``pyro.infer.ELBO``).

    Returns ``(elbo, spec, factory)``; ``factory(k)`` builds the same ELBO with ``k`` particles,
    or is None for an ELBO instance (whose arguments are not known). Particles are vectorized
    over a plate left of the model's plates unless ``undeclared`` names model sites with batch
    dims that no plate declares or ``vectorize=False`` (the batching probe found that the model
    does not broadcast); then they run one at a time. With ``jit=True``, both are wrapped in
    :class:`~ppl_vi.jit.JitELBO` (which warns and runs uncompiled when the ELBO cannot be
    compiled).
    """
    obj, spec, factory = _resolve_elbo(
        elbo, num_particles, max_plate_nesting, elbo_kwargs, undeclared, vectorize
    )
    spec["jit"] = jit is True
    if jit is not True:  # "auto": the engine compiles whole steps, or runs them eagerly
        return obj, spec, factory
    compiled = obj if isinstance(obj, (JitELBO, JitTrace_ELBO)) else JitELBO(obj)
    if factory is not None:
        inner = factory

        def factory(k: int):
            return JitELBO(inner(k))

    return compiled, spec, factory


def _resolve_elbo(elbo, num_particles, max_plate_nesting, elbo_kwargs, undeclared, vectorize):
    elbo_kwargs = dict(elbo_kwargs or {})
    if isinstance(elbo, str):
        elbo = _from_table(elbo, ELBOS, "elbo", "a pyro.infer.ELBO class or instance")
    if isinstance(elbo, type):
        if not issubclass(elbo, pyro.infer.ELBO):
            raise TypeError(f"elbo class must subclass pyro.infer.ELBO (got {elbo.__name__})")
        cls = elbo
        if num_particles is not None:
            elbo_kwargs.setdefault("num_particles", num_particles)
        requested = elbo_kwargs.pop("vectorize_particles", None)
        batched = _vectorize_particles(cls, requested, undeclared or [])
        if vectorize is False and requested is not True:
            batched = False
        elbo_kwargs.setdefault("max_plate_nesting", max_plate_nesting)

        def factory(k: int):
            # Pyro's own ELBOs with one particle: no particle plate at all
            vec = batched and (k > 1 or issubclass(cls, ParticleELBO))
            return cls(**{**elbo_kwargs, "num_particles": k, "vectorize_particles": vec})

        k = elbo_kwargs.pop("num_particles", None)
        if k is not None:
            obj = factory(k)
        else:  # the class's own default number of particles
            vec = batched and issubclass(cls, ParticleELBO)
            obj = cls(**elbo_kwargs, vectorize_particles=vec)

    elif isinstance(elbo, pyro.infer.ELBO):
        if elbo_kwargs:
            raise ValueError("elbo_kwargs cannot be combined with an ELBO instance")
        if num_particles is not None and num_particles != elbo.num_particles:
            raise ValueError(
                f"num_particles={num_particles} disagrees with the ELBO instance given "
                f"(num_particles={elbo.num_particles}); set it on the ELBO instead"
            )
        obj, factory = elbo, None
    else:
        raise TypeError(
            f"elbo must be an ELBO name, a pyro.infer.ELBO class or instance (got "
            f"{type(elbo).__name__})"
        )
    names = {c: name for name, c in ELBOS.items()}
    inner = obj.elbo if isinstance(obj, JitELBO) else obj
    spec = {"name": names.get(type(inner)), "class": class_path(inner)}
    return obj, spec, factory


def _vectorize_particles(cls, requested: bool | None, undeclared: list) -> bool:
    """Evaluate particles as one batch (over an extra plate) unless the model cannot.

    Every plate the model declares is known from tracing it once (``max_plate_nesting``), so
    the particle plate goes left of them. A site with a batch dim no plate declares would
    collide with it: then particles run one at a time, with a warning.
    """
    if not undeclared:
        return True if requested is None else bool(requested)
    if requested is False:
        return False
    sites = ", ".join(repr(s) for s in undeclared[:5])
    message = (
        f"model site(s) {sites} have batch dims that no pyro.plate declares, so {cls.__name__} "
        "evaluates particles one at a time (slower). Declare those dims with pyro.plate(...) or "
        "make them event dims with .to_event(...) to vectorize particles."
    )
    if requested:
        raise ValueError(f"vectorize_particles=True cannot be used: {message}")
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    return False


def elbo_settings(elbo) -> dict:
    """The settings of an ELBO instance that shape a fit (for checkpoint fingerprints)."""
    inner = elbo.elbo if isinstance(elbo, JitELBO) else elbo
    out = {"class": class_path(inner)}
    for key, value in sorted(vars(inner).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, (bool, int, float, str, type(None))):
            out[key] = value
    return out
