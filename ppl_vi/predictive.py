"""Posterior predictive draws and pointwise log-likelihoods at posterior draws.

Shared by VI results, NUTS results and the diagnostics built on them.
"""

from __future__ import annotations

import numpy as np
import pyro.poutine as poutine
import torch

from ppl_vi.infer_util import full_plates, model_info
from ppl_vi.runtime import seeded
from ppl_vi.stats import arviz

__all__ = [
    "add_posterior_predictive",
    "pointwise_log_likelihood",
    "posterior_predictive",
    "site_draws",
    "traces_per_draw",
]


def traces_per_draw(
    model, samples: dict, args=(), kwargs=None, info=None, uncondition: bool = False
):
    """Run the model once per posterior draw, latent sites fixed to the draw; yield the traces.

    Runs one draw at a time (no batch semantics needed, and priors that cannot be sampled,
    such as ``ImproperUniform``, are never sampled). With ``uncondition=True`` the observed
    sites draw new values (posterior predictive) instead of returning the data.
    """
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    fn = poutine.uncondition(model) if uncondition else model
    num = len(next(iter(samples.values())))
    with full_plates(info), torch.no_grad():
        for s in range(num):
            values = {k: v[s] for k, v in samples.items() if k in info.latent}
            yield poutine.trace(poutine.condition(fn, data=values)).get_trace(*args, **kwargs)


def site_draws(
    model, samples: dict, sites, args=(), kwargs=None, info=None, uncondition: bool = False
) -> dict:
    """Values of ``sites`` (deterministic or observed) at each draw: name -> ``(S, *shape)``."""
    out = {name: [] for name in sites}
    for trace in traces_per_draw(model, samples, args, kwargs, info, uncondition):
        for name in sites:
            out[name].append(trace.nodes[name]["value"].detach())
    return {k: torch.stack(v) for k, v in out.items()}


def posterior_predictive(
    model, samples: dict, args=(), kwargs=None, seed: int | None = 0, info=None
) -> dict:
    """Replicated observations: the model's observed sites drawn at each posterior draw.

    Returns observed site name -> tensor ``(S, *obs_shape)``.
    """
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    with seeded(seed):
        return site_draws(model, samples, list(info.observed), args, kwargs, info, uncondition=True)


def pointwise_log_likelihood(model, samples: dict, args=(), kwargs=None, info=None) -> dict:
    """``log p(y_i | theta_s)`` for every observed site, draw ``s`` and datum ``i``.

    Returns observed site name -> array ``(S, *site_batch_shape)`` (the batch dims are the
    site's plates, so each entry is one conditionally independent observation).
    """
    kwargs = dict(kwargs or {})
    info = info or model_info(model, tuple(args), kwargs)
    out = {name: [] for name in info.observed}
    for trace in traces_per_draw(model, samples, args, kwargs, info):
        for name in info.observed:
            site = trace.nodes[name]
            out[name].append(site["fn"].log_prob(site["value"]).detach().cpu().numpy())
    return {k: np.stack(v) for k, v in out.items()}


def add_posterior_predictive(idata, result, seed: int | None = 0):
    """Add a ``posterior_predictive`` group (and ``log_likelihood``) to an InferenceData.

    ``result`` is the VI or NUTS result the InferenceData came from; its posterior draws in
    ``idata`` are reused, so the replicated data belong to the same draws.
    """
    post = idata.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    samples = {
        k: torch.as_tensor(post[k].values.reshape((n_chain * n_draw,) + post[k].shape[2:]))
        for k in result.info.latent
    }
    draws = posterior_predictive(
        result.model, samples, result.model_args, result.model_kwargs, seed, result.info
    )
    loglik = pointwise_log_likelihood(
        result.model, samples, result.model_args, result.model_kwargs, result.info
    )
    az = arviz()
    extra = az.from_dict(
        posterior_predictive={
            k: v.cpu().numpy().reshape((n_chain, n_draw) + v.shape[1:]) for k, v in draws.items()
        },
        log_likelihood={k: v.reshape((n_chain, n_draw) + v.shape[1:]) for k, v in loglik.items()},
    )
    idata.extend(extra)
    return idata
