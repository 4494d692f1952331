"""Posterior predictive draws, deterministic sites and pointwise log-likelihoods at posterior
draws, through :class:`pyro.infer.Predictive`; ArviZ dims named from the model's plates.

Shared by VI results, NUTS results and the diagnostics built on them.
"""

from __future__ import annotations

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from pyro.poutine.messenger import Messenger

from ppl_vi.infer_util import PARTICLE_PLATE, full_plates, model_info
from ppl_vi.runtime import LOCK, seeded
from ppl_vi.stats import arviz

__all__ = [
    "add_posterior_predictive",
    "broadcasts",
    "log_likelihood_group",
    "observed_data",
    "likelihood_sites",
    "pointwise_log_likelihood",
    "posterior_predictive",
    "predict",
    "site_dims",
    "site_draws",
]


def _is_factor(fn) -> bool:
    return type(getattr(fn, "base_dist", fn)).__name__ == "Unit"


def likelihood_sites(info) -> list[str]:
    """Observed sites that are data (``pyro.factor`` terms and deterministic sites are not)."""
    return [name for name, value in info.observed.items() if not info.factor.get(name, False)]


class _Replicate(Messenger):
    """Observed data sites draw new values (replicated data); deterministic sites and
    ``pyro.factor`` terms stay as they are.

    ``pyro.poutine.uncondition`` would also turn a ``pyro.deterministic`` site into a draw from
    a ``Delta`` whose event dims the enclosing plates then broadcast: on eight schools that gave
    ``y`` the shape (8, 8) per draw instead of (8,).
    """

    def _pyro_sample(self, msg):
        if not msg["is_observed"] or msg["infer"].get("_deterministic") or _is_factor(msg["fn"]):
            return
        msg["is_observed"] = False
        msg["infer"] = {**msg["infer"], "was_observed": True}
        msg["value"] = None
        msg["done"] = False


def _anchored(model, samples: dict):
    """``model`` conditioned on the first posterior draw.

    :class:`pyro.infer.Predictive` traces the model once from its prior to learn the plates and
    shapes; that fails for flat priors (``ImproperUniform``) and for prior draws the model
    cannot use (a kernel that is not positive definite). Conditioned on a posterior draw the
    set-up trace runs where the model is known to work; Predictive's own conditioning on each
    draw replaces these values in the real runs.
    """
    first = {k: v[0] for k, v in samples.items()}
    return poutine.condition(model, data=first)


def _single_trace(model, samples, args, kwargs):
    with torch.no_grad():
        return poutine.trace(_anchored(model, samples)).get_trace(*args, **kwargs)


def _reshape(value: torch.Tensor, num: int, shape: tuple) -> torch.Tensor:
    """Predictive pads sites with fewer batch dims than the model's nesting: drop the padding."""
    size = int(np.prod(shape)) if shape else 1
    if value.numel() == num * size:
        return value.reshape((num, *shape))
    return value.expand((num, *shape)) if value.numel() == size else value


def predict(
    model, samples: dict, sites, args=(), kwargs=None, info=None, replicate=False, parallel=None
) -> dict:
    """Values of ``sites`` at each posterior draw: name -> ``(S, *shape)``.

    ``samples`` maps latent sites to ``(S, *shape)`` draws. With ``replicate=True`` the
    observed data sites draw new values (the posterior predictive); deterministic sites are
    recomputed from the draws. ``parallel`` evaluates all draws as one batch (the model must
    broadcast over a batch dim left of its plates); ``None`` uses ``info.batched``.
    Subsampled plates run at full size.
    """
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    sites = list(sites)
    if not sites:
        return {}
    samples = {k: v for k, v in samples.items() if k in info.latent}
    num = len(next(iter(samples.values())))
    fn = _Replicate()(model) if replicate else model
    batched = info.batched if parallel is None else parallel
    with LOCK, full_plates(info), torch.no_grad():
        shapes = {
            name: tuple(site["value"].shape)
            for name, site in _single_trace(fn, samples, args, kwargs).nodes.items()
            if name in sites
        }
        predictive = Predictive(
            _anchored(fn, samples), posterior_samples=samples, return_sites=sites, parallel=batched
        )
        out = predictive(*args, **kwargs)
    return {k: _reshape(out[k].detach(), num, shapes[k]) for k in sites}


def site_draws(model, samples: dict, sites, args=(), kwargs=None, info=None) -> dict:
    """Deterministic (or other) sites at each draw, the data held fixed: ``(S, *shape)``."""
    return predict(model, samples, sites, args, kwargs, info)


def posterior_predictive(
    model, samples: dict, args=(), kwargs=None, seed: int | None = 0, info=None
) -> dict:
    """Replicated observations: the model's observed data sites drawn at each posterior draw.

    Returns observed site name -> tensor ``(S, *obs_shape)``, the same as
    ``pyro.infer.Predictive`` on the model with its observations left out.
    """
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    with seeded(seed):
        return predict(model, samples, likelihood_sites(info), args, kwargs, info, replicate=True)


def pointwise_log_likelihood(
    model, samples: dict, args=(), kwargs=None, info=None, parallel=None
) -> dict:
    """``log p(y_i | theta_s)`` for every observed data site, draw ``s`` and datum ``i``.

    Returns observed site name -> array ``(S, *site_batch_shape)`` (the batch dims are the
    site's plates, so each entry is one conditionally independent observation). Computed from
    Pyro's traces of the model conditioned on each draw: one vectorized trace
    (``Predictive.get_vectorized_trace``) when the model broadcasts, else one per draw.
    """
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    names = likelihood_sites(info)
    samples = {k: v for k, v in samples.items() if k in info.latent}
    num = len(next(iter(samples.values())))
    batched = info.batched if parallel is None else parallel
    with LOCK, full_plates(info), torch.no_grad():
        single = _single_trace(model, samples, args, kwargs)
        shapes = {name: _batch_shape(single.nodes[name]) for name in names}
        if batched:
            trace = Predictive(
                _anchored(model, samples), posterior_samples=samples, parallel=True
            ).get_vectorized_trace(*args, **kwargs)
            out = {name: _log_prob(trace.nodes[name]) for name in names}
            return {k: _reshape(v, num, shapes[k]).cpu().numpy() for k, v in out.items()}
        out = {name: [] for name in names}
        for s in range(num):
            draw = {k: v[s] for k, v in samples.items()}
            trace = poutine.trace(poutine.condition(model, data=draw)).get_trace(*args, **kwargs)
            for name in names:
                out[name].append(_log_prob(trace.nodes[name]).reshape(shapes[name]))
    return {k: torch.stack(v).cpu().numpy() for k, v in out.items()}


def _log_prob(site) -> torch.Tensor:
    return site["fn"].log_prob(site["value"]).detach()


def _batch_shape(site) -> tuple:
    value = site["value"]
    event_dim = getattr(site["fn"], "event_dim", 0)
    return tuple(value.shape[: value.dim() - event_dim])


# ------------------------------------------------------------------------------- dims
def site_dims(model, samples: dict, args=(), kwargs=None, info=None) -> dict:
    """ArviZ dims for every latent, deterministic and observed site: name -> list of dim names.

    A batch dim declared by a ``pyro.plate`` takes the plate's name (as ``az.from_numpyro``
    does); event dims and undeclared dims are ``<site>_dim_<k>`` (ArviZ's own default).
    """
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    samples = {k: v for k, v in samples.items() if k in info.latent}
    with LOCK, full_plates(info):
        trace = _single_trace(model, samples, args, kwargs)
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name.startswith("_") or not torch.is_tensor(site["value"]):
            continue
        value = site["value"]
        plates = {
            f.dim: f.name
            for f in site["cond_indep_stack"]
            if f.vectorized and f.dim is not None and f.name != PARTICLE_PLATE
        }
        event_dim = getattr(site["fn"], "event_dim", 0)
        if site["infer"].get("_deterministic"):
            # pyro.deterministic declares every dim an event dim; the dims its plates cover
            # are batch dims all the same
            event_dim = max(0, value.dim() - max((-d for d in plates), default=0))
        batch = value.dim() - event_dim
        out[name] = [
            plates.get(i - batch, f"{name}_dim_{i}") if i < batch else f"{name}_dim_{i}"
            for i in range(value.dim())
        ]
    return out


def inference_dims(result, samples: dict, dims: dict | None, coords: dict | None):
    """``(dims, coords)`` for ArviZ: plate-named dims, overridden by the caller's."""
    named = site_dims(result.model, samples, result.model_args, result.model_kwargs, result.info)
    return {**named, **(dims or {})}, dict(coords or {})


def broadcasts(model, samples: dict, args=(), kwargs=None, info=None) -> bool:
    """Whether the model evaluates a batch of posterior draws correctly: the log-likelihoods of
    two draws, batched and one at a time, must agree (as the fit's batching probe does)."""
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    two = {k: v[:2] for k, v in samples.items() if k in info.latent}
    if not likelihood_sites(info) or len(next(iter(two.values()))) < 2:
        return True
    try:
        batched = pointwise_log_likelihood(model, two, args, kwargs, info, parallel=True)
    except Exception:  # noqa: BLE001 - a model that cannot batch, for whatever reason
        return False
    single = pointwise_log_likelihood(model, two, args, kwargs, info, parallel=False)
    return all(
        batched[k].shape == single[k].shape and np.allclose(batched[k], single[k], rtol=1e-4)
        for k in single
    )


def observed_data(model, samples: dict, args=(), kwargs=None, info=None) -> dict:
    """The observed data sites' values over the full data (subsampled plates at full size)."""
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    samples = {k: v for k, v in samples.items() if k in info.latent}
    with LOCK, full_plates(info):
        trace = _single_trace(model, samples, args, kwargs)
    return {k: trace.nodes[k]["value"].detach().cpu().numpy() for k in likelihood_sites(info)}


def add_posterior_predictive(
    idata, result, seed: int | None = 0, dims=None, coords=None, log_likelihood: bool = True
):
    """Add ``posterior_predictive`` (and ``log_likelihood``) groups to an InferenceData.

    ``result`` is the VI or NUTS result the InferenceData came from; its posterior draws in
    ``idata`` are reused, so the replicated data belong to the same draws. Dims are named from
    the model's plates as in the rest of ``idata``. The ``log_likelihood`` group serves
    ``az.loo`` / ``az.waic`` for posterior draws (NUTS); for VI draws, which come from q, use
    :func:`ppl_vi.diagnostics.loo` instead (it corrects for q).
    """
    post = idata.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    samples = {
        k: torch.as_tensor(post[k].values.reshape((n_chain * n_draw,) + post[k].shape[2:]))
        for k in result.info.latent
        if k in post
    }
    samples = {k: v.to(result.device) for k, v in samples.items()}
    args, kwargs, info = result.model_args, result.model_kwargs, result.info
    draws = posterior_predictive(result.model, samples, args, kwargs, seed, info)
    all_dims, all_coords = inference_dims(result, samples, dims, coords)
    az = arviz()
    idata.extend(
        az.from_dict(
            posterior_predictive={
                k: v.cpu().numpy().reshape((n_chain, n_draw) + v.shape[1:])
                for k, v in draws.items()
            },
            dims={k: all_dims[k] for k in draws if k in all_dims},
            coords=all_coords,
        )
    )
    if log_likelihood:
        loglik = pointwise_log_likelihood(result.model, samples, args, kwargs, info)
        idata.extend(log_likelihood_group(loglik, n_chain, n_draw, all_dims, all_coords))
    return idata


def log_likelihood_group(loglik: dict, n_chain: int, n_draw: int, dims: dict, coords: dict):
    """An InferenceData with a ``log_likelihood`` group: ``(chain, draw, *batch)`` per site,
    its dims the batch (plate) dims of the site."""
    arrays = {k: v.reshape((n_chain, n_draw) + v.shape[1:]) for k, v in loglik.items()}
    return arviz().from_dict(
        log_likelihood=arrays,
        dims={k: dims[k][: arrays[k].ndim - 2] for k in arrays if k in dims},
        coords=coords,
    )
