"""Banana (twisted Gaussian): normalisation, change of variables, sampler, moments, shapes."""

import math

import pyro
import pytest
import torch
from _zoo import batched_log_density
from pyro import poutine
from pyro.infer import Trace_ELBO

from ppl_vi import models

banana = models.get("banana")
Banana = banana.Banana

# (b, scale): the default ("strongly twisted"), Haario's moderate twist, a tight strong
# curve, a negative curvature, and b = 0 (plain Gaussian).
PARAMS = [(0.1, 10.0), (0.03, 10.0), (1.0, 1.0), (-0.5, 2.0), (0.0, 3.0)]


def _phi(z, b, scale):
    """Haario et al.'s twist phi_b: banana -> Gaussian N(0, diag(scale^2, 1))."""
    return torch.stack([z[..., 0], z[..., 1] + b * (z[..., 0] ** 2 - scale**2)], dim=-1)


@pytest.mark.parametrize(("b", "scale"), PARAMS)
def test_log_prob_is_change_of_variables(b, scale, float64):
    d = Banana(b, scale)
    gauss = torch.distributions.MultivariateNormal(
        torch.zeros(2), torch.diag(torch.tensor([scale**2, 1.0]))
    )
    torch.manual_seed(0)
    zs = torch.stack([3 * scale * torch.randn(200), 10 * torch.randn(200)], dim=-1)
    # phi acts row by row, so d(sum_n phi_k(z_n))/dz_n is row k of the Jacobian at z_n.
    z_req = zs.clone().requires_grad_()
    out = _phi(z_req, b, scale)
    rows = [torch.autograd.grad(out[:, k].sum(), z_req, retain_graph=True)[0] for k in (0, 1)]
    jac = torch.stack(rows, dim=-2)
    assert jac.shape == (200, 2, 2)
    log_det = torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(log_det, torch.zeros(200), atol=1e-12, rtol=0)  # volume preserving
    torch.testing.assert_close(
        d.log_prob(zs), gauss.log_prob(_phi(zs, b, scale)), atol=1e-10, rtol=0
    )


def _grid(b, scale):
    """A grid covering +-8 sd of z1 and, for every z1 on it, +-8 sd of z2 | z1.

    The integrand is Gaussian in each direction on the grid, for which the trapezoid rule
    with step h <= sd / 4 has aliasing error below 2 exp(-2 pi^2 16) ~ 1e-137; truncating at
    8 sd loses 2 Phi(-8) ~ 1.2e-15 of the mass per direction. So the quadrature is exact to
    rounding (~1e-13 for these sums), and 1e-10 is a safe tolerance.
    """
    h1, h2 = scale / 4, 0.25
    z1 = torch.arange(-8 * scale, 8 * scale + h1 / 2, h1)
    centres = -b * (z1**2 - scale**2)  # E[z2 | z1]
    z2 = torch.arange(centres.min().item() - 8, centres.max().item() + 8 + h2 / 2, h2)
    Z1, Z2 = torch.meshgrid(z1, z2, indexing="ij")
    return torch.stack([Z1, Z2], dim=-1), h1 * h2


@pytest.mark.parametrize(("b", "scale"), PARAMS)
def test_density_integrates_to_one_and_has_exact_moments(b, scale, float64):
    grid, area = _grid(b, scale)
    p = Banana(b, scale).log_prob(grid).exp()
    assert p.shape == grid.shape[:-1]
    total = p.sum() * area
    assert total.item() == pytest.approx(1.0, abs=1e-10)
    # The same quadrature gives the exact moments of exact_moments().
    moments = banana.exact_moments(b, scale)
    mean = (p.unsqueeze(-1) * grid).sum((0, 1)) * area
    centred = grid - moments["mean"]
    cov = (p[..., None, None] * centred[..., :, None] * centred[..., None, :]).sum((0, 1)) * area
    torch.testing.assert_close(mean, moments["mean"], atol=1e-9, rtol=0)
    torch.testing.assert_close(cov, moments["cov"], atol=1e-9, rtol=1e-10)


def test_exact_moments_values(float64):
    m = banana.exact_moments(**banana.load_data())
    torch.testing.assert_close(m["mean"], torch.zeros(2), atol=0, rtol=0)
    torch.testing.assert_close(
        m["cov"], torch.tensor([[100.0, 0.0], [0.0, 201.0]]), atol=1e-12, rtol=0
    )
    m = banana.exact_moments(0.03, 10.0)
    assert m["cov"][1, 1].item() == pytest.approx(1 + 2 * 0.03**2 * 1e4)  # 19.0


@pytest.mark.parametrize(("b", "scale"), PARAMS[:4])
def test_rsample_moments_and_entropy_match_exact(b, scale, float64):
    """10^6 draws: means, variances, covariance and E[log p] within 4 Monte Carlo standard
    errors of the exact values (standard errors estimated from the draws themselves)."""
    n = 1_000_000
    d = Banana(b, scale)
    torch.manual_seed(11)
    z = d.rsample((n,))
    assert z.shape == (n, 2)
    m = banana.exact_moments(b, scale)
    c = z - m["mean"]
    stats = {
        "mean1": (z[:, 0], m["mean"][0]),
        "mean2": (z[:, 1], m["mean"][1]),
        "var1": (c[:, 0] ** 2, m["cov"][0, 0]),
        "var2": (c[:, 1] ** 2, m["cov"][1, 1]),
        "cov12": (c[:, 0] * c[:, 1], m["cov"][0, 1]),
        # Volume preservation: the entropy is that of N(0, diag(scale^2, 1)).
        "neg_entropy": (d.log_prob(z), -(1 + math.log(2 * math.pi) + math.log(scale))),
    }
    for name, (values, exact) in stats.items():
        se = values.std() / math.sqrt(n)
        assert abs(values.mean() - exact) < 4 * se, (name, values.mean().item(), float(exact))


def test_rsample_is_reparameterised(float64):
    b = torch.tensor(0.2, requires_grad=True)
    scale = torch.tensor(3.0, requires_grad=True)
    torch.manual_seed(5)
    z = Banana(b, scale).rsample((7,))
    grad_b, grad_s = torch.autograd.grad(z.sum(), (b, scale))
    # z1 = scale * e1 and z2 = e2 - b (z1^2 - scale^2), so with z1 / scale held fixed:
    # d(z1 + z2)/db = -(z1^2 - scale^2) and d(z1 + z2)/dscale = e1 - 2 b (z1 e1 - scale).
    z1 = z[:, 0].detach()
    e1 = z1 / 3.0
    assert grad_b.item() == pytest.approx(-(z1**2 - 9.0).sum().item(), rel=1e-12)
    expected_s = (e1 - 2 * 0.2 * (z1 * e1 - 3.0)).sum()
    assert grad_s.item() == pytest.approx(expected_s.item(), rel=1e-10)


def test_batch_shapes_broadcast(float64):
    bs = torch.tensor([0.1, -0.2, 0.5])
    d = Banana(bs, 2.0)
    assert d.batch_shape == (3,) and d.event_shape == (2,)
    torch.manual_seed(3)
    z = torch.randn(5, 3, 2)
    lp = d.log_prob(z)
    assert lp.shape == (5, 3)
    for j in range(3):
        torch.testing.assert_close(lp[:, j], Banana(bs[j].item(), 2.0).log_prob(z[:, j]))
    assert d.log_prob(torch.randn(5, 1, 2)).shape == (5, 3)
    assert Banana(0.1, 1.0).log_prob(z).shape == (5, 3)
    assert d.sample((4,)).shape == (4, 3, 2) and d.rsample().shape == (3, 2)
    e = d.expand((6, 3))
    assert e.batch_shape == (6, 3) and e.sample().shape == (6, 3, 2)
    assert e.mean.shape == (6, 3, 2) and e.variance.shape == (6, 3, 2)
    torch.testing.assert_close(e.log_prob(z[:1]), d.log_prob(z[:1]).expand(6, 3))
    assert banana.exact_moments(bs, 2.0)["cov"].shape == (3, 2, 2)


def test_model_density_and_exact_posterior_elbo(float64):
    data = banana.load_data()
    target = banana.exact_posterior(**data)["z"]
    assert isinstance(target, Banana)
    torch.manual_seed(4)
    zs = target.sample((50,))
    log_model = batched_log_density(banana.model, zs, data)
    torch.testing.assert_close(log_model, target.log_prob(zs), atol=1e-12, rtol=0)
    log_z = banana.log_evidence(**data)
    assert log_z.shape == () and log_z.item() == 0.0

    def guide(**kwargs):
        pyro.sample("z", target)

    # Vectorized particles expand the distribution along a particle plate.
    elbo = Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=0)
    assert elbo.loss(banana.model, guide, **data) == pytest.approx(0.0, abs=1e-10)


def test_validation_and_load_data():
    with pytest.raises(ValueError):
        Banana(0.1, -1.0, validate_args=True)
    with pytest.raises(ValueError, match=r"scale must be positive \(got scale=0.0\)"):
        banana.load_data(scale=0.0)
    data = banana.load_data(b=0.03, scale=5.0)
    assert set(data) == {"b", "scale"}
    assert data["b"].item() == pytest.approx(0.03) and data["scale"].item() == 5.0
    assert (banana.B, banana.SCALE) == (0.1, 10.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_default_and_data(dtype):
    torch.set_default_dtype(dtype)
    data = banana.load_data()
    assert all(v.dtype == dtype for v in data.values())
    assert banana.model().dtype == dtype
    other = torch.float64 if dtype == torch.float32 else torch.float32
    cast = {k: v.to(other) for k, v in data.items()}
    trace = poutine.trace(banana.model).get_trace(**cast)
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].dtype == other
    assert trace.nodes["z"]["log_prob"].dtype == other
    assert banana.log_evidence(**cast).dtype == other
    moments = banana.exact_moments(**cast)
    assert moments["mean"].dtype == other and moments["cov"].dtype == other
