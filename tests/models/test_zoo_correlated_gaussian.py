"""Correlated 2-D Gaussian target: density, evidence and the exact mean-field gap."""

import math
import re

import pyro
import pytest
import torch
from _zoo import batched_log_density
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.distributions import MultivariateNormal, kl_divergence

from ppl_vi import models

cg = models.get("correlated_gaussian")

# (rho, scales, loc): the default, negative and extreme correlations, unequal scales.
CASES = [
    (0.9, (1.0, 1.0), (0.0, 0.0)),
    (-0.6, (2.0, 0.3), (1.0, -4.0)),
    (0.99, (0.5, 7.0), (-2.0, 3.0)),
    (0.0, (1.5, 1.5), (0.0, 1.0)),
]


def _data(rho, scales, loc):
    return cg.load_data(rho=rho, scales=scales, loc=loc)


def _hand_log_density(z, rho, scales, loc):
    """The bivariate Normal density written out (e.g. Bishop, 2006, eq. 2.43 in 2-D)."""
    u1 = (z[..., 0] - loc[0]) / scales[0]
    u2 = (z[..., 1] - loc[1]) / scales[1]
    quad = (u1**2 - 2 * rho * u1 * u2 + u2**2) / (1 - rho**2)
    return -math.log(2 * math.pi * scales[0] * scales[1] * math.sqrt(1 - rho**2)) - 0.5 * quad


@pytest.mark.parametrize(("rho", "scales", "loc"), CASES)
def test_model_log_density_is_exact_posterior_and_hand_formula(rho, scales, loc, float64):
    data = _data(rho, scales, loc)
    target = cg.exact_posterior(**data)["z"]
    s1, s2 = scales
    expected_cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
    torch.testing.assert_close(target.covariance_matrix, expected_cov, atol=1e-12, rtol=0)
    torch.testing.assert_close(target.loc, torch.tensor(loc), atol=0, rtol=0)

    torch.manual_seed(1)
    zs = torch.tensor(loc) + 3 * torch.tensor(scales) * torch.randn(100, 2)
    log_model = batched_log_density(cg.model, zs, data)
    assert log_model.shape == (100,)
    assert log_model.max() - log_model.min() > 5.0  # non-vacuous: the density varies
    torch.testing.assert_close(log_model, target.log_prob(zs), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        log_model, _hand_log_density(zs, rho, scales, loc), atol=1e-10, rtol=0
    )
    # log p(z) - log q(z) = log Z = 0 at every z.
    log_z = cg.log_evidence(**data)
    assert log_z.shape == () and log_z.dtype == torch.float64 and log_z.item() == 0.0


def test_model_has_one_latent_site_and_no_observed_site():
    trace = poutine.trace(cg.model).get_trace(**cg.load_data())
    sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample"}
    assert list(sites) == ["z"]
    assert not sites["z"]["is_observed"]
    assert sites["z"]["fn"].event_shape == (2,) and sites["z"]["fn"].batch_shape == ()
    assert sites["z"]["value"].shape == (2,)


def test_elbo_with_exact_posterior_guide_is_zero(float64):
    """Every particle's log p - log q is exactly log Z = 0 (also runs batched latents)."""
    for rho, scales, loc in CASES:
        data = _data(rho, scales, loc)
        target = cg.exact_posterior(**data)["z"]

        def guide(*args, target=target, **kwargs):
            pyro.sample("z", target)

        elbo = Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=0)
        assert elbo.loss(cg.model, guide, **data) == pytest.approx(0.0, abs=1e-10)


def _best_mean_field(target):
    """Mean-field optimum: mean = target mean, precisions = diagonal of the target precision."""
    precision = torch.linalg.inv(target.covariance_matrix)
    return MultivariateNormal(target.loc, torch.diag(1 / precision.diagonal()))


@pytest.mark.parametrize(("rho", "scales", "loc"), CASES)
def test_mean_field_gap_is_kl_of_best_diagonal_gaussian(rho, scales, loc, float64):
    target = cg.exact_posterior(**_data(rho, scales, loc))["z"]
    q = _best_mean_field(target)
    kl = kl_divergence(q, target)
    assert cg.mean_field_gap(rho) == pytest.approx(kl.item(), abs=1e-10)
    assert cg.mean_field_gap(rho) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=1e-14)
    # Optimal variances shrink by the factor 1 - rho^2.
    torch.testing.assert_close(q.variance, target.variance * (1 - rho**2), atol=1e-12, rtol=1e-12)


def test_mean_field_gap_documented_value():
    assert cg.mean_field_gap(0.9) == pytest.approx(0.8304, abs=1e-4)
    assert cg.mean_field_gap(-0.9) == cg.mean_field_gap(0.9)
    assert cg.mean_field_gap(0.0) == 0.0
    assert cg.mean_field_gap(torch.tensor(0.5)) == pytest.approx(-0.5 * math.log(0.75))


@pytest.mark.parametrize(("rho", "scales", "loc"), CASES[:3])
def test_best_mean_field_is_the_optimum(rho, scales, loc, float64):
    """The KL over diagonal Gaussians has zero gradient at the claimed optimum and increases
    under any perturbation of means or log-scales."""
    target = cg.exact_posterior(**_data(rho, scales, loc))["z"]
    q = _best_mean_field(target)

    def kl(mean, log_sd):
        return kl_divergence(MultivariateNormal(mean, torch.diag((2 * log_sd).exp())), target)

    mean = q.loc.clone().requires_grad_()
    log_sd = (0.5 * q.variance.log()).clone().requires_grad_()
    value = kl(mean, log_sd)
    grads = torch.autograd.grad(value, (mean, log_sd))
    for g in grads:
        torch.testing.assert_close(g, torch.zeros(2), atol=1e-10, rtol=0)
    torch.manual_seed(2)
    for _ in range(50):
        dm, ds = 0.05 * torch.randn(2), 0.05 * torch.randn(2)
        assert kl(mean.detach() + dm, log_sd.detach() + ds) > value.detach()


@pytest.mark.parametrize("bad", [1.0, -1.0, 1.5, float("nan")])
def test_rho_outside_open_interval_raises(bad):
    msg = re.escape(f"rho must be in (-1, 1) (got rho={bad})")
    with pytest.raises(ValueError, match=msg):
        cg.mean_field_gap(bad)
    with pytest.raises(ValueError, match=msg):
        cg.load_data(rho=bad)
    with pytest.raises(ValueError, match=msg):
        cg.model(rho=torch.tensor(bad, dtype=torch.float64))
    with pytest.raises(ValueError, match=msg):
        cg.exact_posterior(rho=bad)


def test_bad_scales_and_loc_raise():
    with pytest.raises(ValueError, match=re.escape("scales must be two positive numbers")):
        cg.load_data(scales=(1.0, 0.0))
    with pytest.raises(ValueError, match=re.escape("loc must have shape (2,)")):
        cg.model(loc=torch.zeros(3))


def test_load_data_values():
    data = cg.load_data(rho=-0.3, scales=(2.0, 3.0), loc=(1.0, -1.0))
    assert set(data) == {"rho", "scales", "loc"}
    assert data["rho"].shape == () and data["rho"].item() == pytest.approx(-0.3)
    assert data["scales"].tolist() == [2.0, 3.0] and data["loc"].tolist() == [1.0, -1.0]
    default = cg.load_data()
    assert default["rho"].item() == pytest.approx(cg.RHO) and cg.RHO == 0.9
    assert default["scales"].tolist() == [1.0, 1.0] and default["loc"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_default_and_data(dtype):
    torch.set_default_dtype(dtype)
    data = cg.load_data()
    assert all(v.dtype == dtype for v in data.values())
    other = torch.float64 if dtype == torch.float32 else torch.float32
    cast = {k: v.to(other) for k, v in data.items()}
    trace = poutine.trace(cg.model).get_trace(**cast)
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].dtype == other
    assert trace.nodes["z"]["log_prob"].dtype == other
    assert cg.log_evidence(**cast).dtype == other
    assert cg.exact_posterior(**cast)["z"].mean.dtype == other
    # Plain Python numbers give the default dtype.
    assert cg.model(rho=0.5).dtype == dtype
