"""Helpers for the posteriordb translation tests: the reference folder and a Stein check."""

import math

import numpy as np
import pytest
import torch
from pyro.infer.autoguide import init_to_value
from pyro.infer.mcmc.util import initialize_model

from ppl_vi.models import posteriordb


def load_or_skip(name, dtype=torch.float64):
    """Load a posterior from the reference folder, or skip the test when there is none."""
    try:
        return posteriordb.load(name, dtype=dtype)
    except FileNotFoundError as err:
        pytest.skip(f"posteriordb reference folder not available: {err}")


def unconstrained_gradients(post, max_draws=2000):
    """Draws mapped to the unconstrained space and the gradients of the log density there.

    Returns ``(u, grad)``, arrays of shape ``(n, D)``: the sampled sites' reference draws, mapped
    with the transforms NUTS uses, and grad log p(u) including the log-Jacobian.
    """
    init = {k: torch.as_tensor(v) for k, v in post.init_values().items()}
    _, potential_fn, transforms, _ = initialize_model(
        post.model,
        model_kwargs=post.data,
        init_strategy=init_to_value(values=init),
        max_plate_nesting=1,
    )
    sampled = post.module.sampled_from_reference(post.reference)
    names = sorted(transforms)
    assert set(names) == set(sampled), (names, sorted(sampled))
    n = min(max_draws, len(next(iter(sampled.values()))))
    us, grads = [], []
    for i in range(n):
        params = {
            k: transforms[k](torch.as_tensor(sampled[k][i], dtype=torch.float64))
            .detach()
            .requires_grad_(True)
            for k in names
        }
        energy = potential_fn(params)
        g = torch.autograd.grad(energy, [params[k] for k in names])
        us.append(torch.cat([params[k].detach().reshape(-1) for k in names]))
        grads.append(-torch.cat([x.reshape(-1) for x in g]))
    return torch.stack(us).numpy(), torch.stack(grads).numpy()


def assert_stein_identity(post, z=4.5):
    """E[grad log p(u)] = 0 for draws u from p, per component within ``z`` Monte Carlo SEs.

    The reference draws are approximately independent (posteriordb checks lag-1
    autocorrelation < 0.05), so the SE of a mean is sd / sqrt(n). A wrong sign, a missing
    Jacobian, a wrong scale or a dropped likelihood term moves the mean gradient by many SEs.
    """
    u, grad = unconstrained_gradients(post)
    n = len(grad)
    mean, se = grad.mean(0), grad.std(0, ddof=1) / math.sqrt(n)
    t = np.abs(mean) / se
    assert np.all(t < z), f"mean gradient / SE per component: {np.round(t, 2)}"
    # Second identity: E[(u_d - E u_d) grad_d] = -1 for each component d, within ``z`` Monte
    # Carlo SEs of the per-draw products (a wrong scale or Jacobian moves it by a factor).
    prod = (u - u.mean(0)) * grad
    t2 = np.abs(prod.mean(0) + 1.0) / (prod.std(0, ddof=1) / math.sqrt(n))
    assert np.all(t2 < z), f"diag E[(u - Eu) grad] + 1 per component, in SEs: {np.round(t2, 2)}"
