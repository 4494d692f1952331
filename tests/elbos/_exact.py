"""Helpers shared by the ELBO tests: a normal_normal guide at a known Normal, gradient capture."""

import pyro
import torch
from pyro.distributions import constraints
from torch.distributions import transform_to

from ppl_vi.guides import MeanField
from ppl_vi.models import normal_normal

# normal_normal's defaults: mu ~ N(0, 2^2), x_i ~ N(mu, 1)
PRIOR_SCALE, NOISE_SCALE = 2.0, 1.0


def mean_field_at(data, shift=0.0, scale_factor=1.0):
    """A MeanField guide of normal_normal at N(m + shift * s, (scale_factor * s)^2).

    N(m, s^2) is the exact posterior; shift=0, scale_factor=1 puts the guide exactly on it.
    """
    post = normal_normal.exact_posterior(**data)["mu"]
    guide = MeanField(normal_normal.model)
    guide(**data)  # creates the parameters
    store = pyro.get_param_store()
    with torch.no_grad():
        store._params["MeanField.locs.mu"].copy_(post.loc + shift * post.scale)
        scale = transform_to(constraints.softplus_positive).inv(scale_factor * post.scale)
        store._params["MeanField.scales.mu"].copy_(scale)
    return guide


def pop_grads(params):
    """The ``.grad`` of ``params`` flattened into one vector; the grads are reset."""
    out = torch.cat([p.grad.reshape(-1) for p in params])
    for p in params:
        p.grad = None
    return out
