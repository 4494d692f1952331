"""Local reparameterization: exact pre-activation draws, an unbiased ELBO, lower gradient
variance, plain SVI and fit (compiled and eager), and its errors."""

import gc
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.nn import PyroModule, PyroSample
from torch import nn
from torch.distributions import biject_to

import ppl_vi
from ppl_vi import local_reparam
from ppl_vi.elbos import IWAE, RBScoreFunctionELBO, RenyiELBO, SteinOperatorELBO
from ppl_vi.guides import MeanField
from ppl_vi.jit import JitUnsupported, unsupported_reason
from ppl_vi.local_reparam import LocalReparam, LocalReparamMessenger
from ppl_vi.models import bnn

Z = 4.0  # standard errors allowed by the Monte Carlo tests


def _draw_weight(loc, scale, name="w"):
    return pyro.sample(name, dist.Normal(loc, scale).to_event(loc.dim()))


def _layer(dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, generator=g, dtype=dtype)
    loc = torch.randn(4, 6, generator=g, dtype=dtype)
    scale = 0.2 + torch.rand(4, 6, generator=g, dtype=dtype)
    return x, loc, scale


# ---------------------------------------------------------------------- (a) the local draws
def test_product_is_the_local_draw_with_fixed_noise(float64):
    """One draw, fixed noise: x M + sqrt(x^2 S^2) eps with the eps the product consumed."""
    x, loc, scale = _layer()
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    xs = torch.stack([x, 2 * x, torch.zeros_like(x)])  # (3, 6); the zero row has no noise
    pyro.set_rng_seed(3)
    with LocalReparamMessenger() as messenger:
        w = _draw_weight(loc, scale)
        out = xs @ w.mT  # (3, 4)
    assert messenger.sites == {"w"}
    pyro.set_rng_seed(3)
    w_again = dist.Normal(loc, scale).rsample()  # the same draws from the stream ...
    eps = torch.randn(3, 4)  # ... then the product's noise
    expected = xs @ loc.mT + (xs**2 @ scale.mT**2).sqrt() * eps
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, w_again, atol=0, rtol=0)
    # the zero row is its mean (0) up to float64's smallest noise, with finite gradients
    assert out[2].abs().max() < 1e-100
    out.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    # d out / d scale_jk = x_k^2 scale_jk / sd_j * eps_j, summed over the rows
    sd = (xs**2 @ scale.mT**2).sqrt().detach()
    grad = ((eps / sd.clamp_min(1e-300))[:2].mT @ xs[:2] ** 2) * scale.detach()
    torch.testing.assert_close(scale.grad, grad, atol=1e-10, rtol=0)


def test_linear_with_bias_is_the_local_draw_with_fixed_noise(float64):
    """F.linear (nn.Linear's product) with a Normal bias: the bias joins the local draw."""
    x, loc, scale = _layer()
    b_loc, b_scale = torch.tensor([0.5, -1.0, 0.0, 2.0]), torch.tensor([0.1, 0.2, 0.3, 0.4])
    xs = torch.stack([x, -x])
    pyro.set_rng_seed(5)
    with LocalReparamMessenger():
        w = _draw_weight(loc, scale)
        b = _draw_weight(b_loc, b_scale, "b")
        out = F.linear(xs, w, b)
    pyro.set_rng_seed(5)
    dist.Normal(loc, scale).rsample()
    dist.Normal(b_loc, b_scale).rsample()
    eps = torch.randn(2, 4)
    mean = xs @ loc.mT + b_loc
    expected = mean + (xs**2 @ scale.mT**2 + b_scale**2).sqrt() * eps
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "product",
    [
        lambda x, w: x @ w.mT,
        lambda x, w: torch.matmul(x, w.T),
        lambda x, w: x.matmul(w.transpose(0, 1)),
        lambda x, w: (x @ w.unsqueeze(0).permute(0, 2, 1)).squeeze(0),
        lambda x, w: x @ w.reshape(24).view(4, 6).t().contiguous(),
        lambda x, w: F.linear(x, w),
    ],
    ids=["at-mT", "matmul-T", "method-transpose", "unsqueeze-permute", "reshape-view-t", "linear"],
)
def test_local_draws_have_the_right_mean_and_variance(float64, product):
    """Many rows of the same x: each row is an independent draw of N(x M, x^2 S^2)."""
    x, loc, scale = _layer()
    n = 20000
    with LocalReparamMessenger() as messenger:
        out = product(x.expand(n, 6), _draw_weight(loc, scale))  # (n, 4)
    assert messenger.sites == {"w"}
    mean, var = x @ loc.mT, x**2 @ scale.mT**2
    sd = out.std(0)
    assert ((out.mean(0) - mean).abs() < Z * sd / math.sqrt(n)).all()
    # the sd of a sample variance: sqrt((m4 - s^4) / n), from the draws
    centred = out - out.mean(0)
    var_se = ((centred**4).mean(0) - centred.var(0) ** 2).sqrt() / math.sqrt(n)
    assert ((out.var(0) - var).abs() < Z * var_se).all()
    # power: the variance is many standard errors from 0, which plain weight sampling
    # (one weight for all rows) would give
    assert (var > 50 * var_se).all()


def test_non_view_uses_are_left_alone(float64):
    """After a non-shape operation, a duplicating expand or advanced indexing, and with the
    weight as first operand, the product uses the drawn weight."""
    x, loc, scale = _layer()
    xs = x.expand(3, 6)
    with LocalReparamMessenger() as messenger:
        w = _draw_weight(loc, scale)
        outs = [
            xs @ (2 * w).mT,
            xs @ w[[0, 1, 2, 3]].mT,
            xs @ w[:, :1].expand(4, 6).mT,  # one weight column used six times
            w @ xs.mT,
        ]
    assert messenger.sites == set()
    expected = [xs @ (2 * w).mT, xs @ w.mT, xs @ w[:, :1].expand(4, 6).mT, w @ xs.mT]
    for got, want in zip(outs, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_expand_on_the_left_and_slicing_are_tracked(float64):
    x, loc, scale = _layer()
    pyro.set_rng_seed(1)
    with LocalReparamMessenger() as messenger:
        w = _draw_weight(loc, scale)
        out = x.expand(5, 2, 6) @ w[:2].expand(5, 2, 6).mT  # (5, 2, 2)
    assert messenger.sites == {"w"}
    pyro.set_rng_seed(1)
    dist.Normal(loc, scale).rsample()
    eps = torch.randn(5, 2, 2)
    expected = x @ loc[:2].mT + (x**2 @ scale[:2].mT ** 2).sqrt() * eps
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_records_die_with_their_draws(float64):
    """A record is dropped when its draw is freed, so a new tensor that reuses the id is not
    mistaken for it."""
    x, loc, scale = _layer()
    with LocalReparamMessenger() as messenger:
        w = _draw_weight(loc, scale)
        view = w.mT
        assert messenger._lookup(view) is not None and len(messenger._draws) == 2
        del w, view
        gc.collect()
        assert messenger._draws == {}


# ---------------------------------------------------------------------- the BNN set-up
KW = {"hidden_dims": (8,), "task": "regression"}


def _bnn_guide(data, scale=0.2, seed=1):
    """A MeanField guide of the small regression BNN with random locs and fixed scales."""
    guide = MeanField(bnn.model)
    guide(**data, **KW)
    g = torch.Generator().manual_seed(seed)
    inv = biject_to(constraints.softplus_positive).inv
    with torch.no_grad():
        for name, value in guide.named_parameters():
            if name.startswith("locs."):
                value.copy_(0.5 * torch.randn(value.shape, generator=g, dtype=value.dtype))
            else:
                value.copy_(inv(torch.full_like(value, scale)))
    return guide


def _data(n=64):
    data = bnn.load_data(task="regression", n=n)
    del data["task"]
    return data


# ---------------------------------------------------------------------- (b) unbiased ELBO
def _loss_batches(elbo, guide, data, repeats):
    with torch.no_grad():
        return torch.tensor([elbo.loss(bnn.model, guide, **data, **KW) for _ in range(repeats)])


def test_elbo_is_unbiased(float64, monkeypatch):
    """Mean of many local-reparam ELBO estimates = mean of plain weight-sampling estimates."""
    data = _data()
    guide = _bnn_guide(data)

    def particles():
        return Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)

    plain = _loss_batches(particles(), guide, data, 40)  # 40 means of 200 draws each
    local = _loss_batches(LocalReparam(particles()), guide, data, 40)
    se = math.sqrt(plain.var() / len(plain) + local.var() / len(local))
    assert abs(float(local.mean() - plain.mean())) < Z * se
    # power: dropping the local noise (a realistic bug: the mean pre-activation only) moves
    # the estimate by many standard errors
    monkeypatch.setattr(local_reparam, "_draw", lambda mean, var: mean)
    broken = _loss_batches(LocalReparam(particles()), guide, data, 10)
    assert abs(float(broken.mean() - plain.mean())) > 20 * se


# ---------------------------------------------------------------------- (c) gradient variance
def _loc_gradients(elbo, guide, data, repeats, subsample_size=None):
    loc = dict(guide.named_parameters())["locs.layers.0.weight_unconstrained"]
    grads = []
    for _ in range(repeats):
        loss = elbo.differentiable_loss(
            bnn.model, guide, **data, **KW, subsample_size=subsample_size
        )
        (grad,) = torch.autograd.grad(loss, loc)
        grads.append(grad.reshape(-1))
    return torch.stack(grads)  # (repeats, 8 * 10)


def test_gradient_variance_is_lower(float64):
    """Total variance of the first layer's loc gradients over 150 draws on mini-batches of 64:
    local / plain well below 1, with a bound from the standard error (delta method)."""
    data = _data(n=353)
    guide = _bnn_guide(data)
    repeats = 150
    plain = _loc_gradients(Trace_ELBO(max_plate_nesting=1), guide, data, repeats, 64)
    local = _loc_gradients(LocalReparam(Trace_ELBO(max_plate_nesting=1)), guide, data, repeats, 64)

    def total_var(g):
        # sum_j var_j and its standard error: the per-draw summands ||g_r - mean||^2
        sq = ((g - g.mean(0)) ** 2).sum(1) * repeats / (repeats - 1)
        return sq.mean(), sq.std() / math.sqrt(repeats)

    (v_plain, se_plain), (v_local, se_local) = total_var(plain), total_var(local)
    ratio = v_local / v_plain
    ratio_se = ratio * math.sqrt((se_local / v_local) ** 2 + (se_plain / v_plain) ** 2)
    assert ratio + Z * ratio_se < 0.75
    # both estimate the same gradient (the mini-batches differ: a loose, per-entry check)
    se_mean = ((plain.var(0) + local.var(0)) / repeats).sqrt()
    assert ((plain.mean(0) - local.mean(0)).abs() < 5 * se_mean).float().mean() > 0.95


# ---------------------------------------------------------------------- (d) SVI and fit
def test_plain_svi_step_inside_the_messenger(float64):
    data = _data()
    pyro.set_rng_seed(0)
    guide = MeanField(bnn.model)
    svi = SVI(bnn.model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(max_plate_nesting=1))
    with LocalReparamMessenger() as messenger:
        for _ in range(3):
            svi.step(**data, **KW)
    assert messenger.sites == {"layers.0.weight", "layers.1.weight"}
    # the step's loss is the local-reparam estimate: same stream, same value as the ELBO's
    pyro.set_rng_seed(11)
    with LocalReparamMessenger():
        step_loss = svi.evaluate_loss(**data, **KW)
    pyro.set_rng_seed(11)
    wrapped = LocalReparam(Trace_ELBO(max_plate_nesting=1)).loss(bnn.model, guide, **data, **KW)
    assert step_loss == pytest.approx(wrapped, abs=1e-9)


def test_nn_linear_layers_are_intercepted(float64):
    """A BNN written with plain PyroModule[nn.Linear] layers (F.linear, 2-D weights)."""

    class Net(PyroModule):
        def __init__(self):
            super().__init__()
            self.fc = PyroModule[nn.Linear](3, 2)
            self.fc.weight = PyroSample(dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
            self.fc.bias = PyroSample(dist.Normal(0.0, 1.0).expand([2]).to_event(1))

        def forward(self, x, y=None):
            out = self.fc(x)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)

    net = Net()
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    guide = MeanField(net)
    with LocalReparamMessenger() as messenger:
        Trace_ELBO().loss(net, guide, x, y)
    assert messenger.sites == {"fc.weight", "fc.bias"}


def test_fit_compiles_the_wrapped_step_exactly(float64):
    """fit(jit="auto") compiles the wrapped step; its parameters equal the eager fit's, and
    differ from the unwrapped ELBO's (so the wrapper acted)."""
    data = _data()
    options = dict(num_steps=250, progress=False, convergence=None, polish=None, seed=0)
    results = {}
    for jit in ("auto", False):
        elbo = LocalReparam(
            Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
        )
        results[jit] = ppl_vi.fit(
            bnn.model, **data, **KW, subsample_size=32, elbo=elbo, jit=jit, **options
        )
    assert results["auto"].method_info["jit"]["main"]["path"] == "compiled step"
    for name, value in results[False].params.items():
        # the same arithmetic up to float64 rounding (the graph reassociates a few sums)
        torch.testing.assert_close(results["auto"].params[name], value, atol=1e-12, rtol=0)
    plain = ppl_vi.fit(
        bnn.model, **data, **KW, subsample_size=32, jit=False, **options,
        elbo=Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
    )  # fmt: skip
    diff = max(float((plain.params[k] - v).abs().max()) for k, v in results[False].params.items())
    assert diff > 1e-3


def test_fit_runs_an_uncompilable_wrapped_elbo_eagerly_with_the_reason(float64):
    data = _data()
    elbo = LocalReparam(TraceMeanField_ELBO())
    assert "TraceMeanField_ELBO does not define loss_and_surrogate" in unsupported_reason(elbo)
    with pytest.raises(JitUnsupported, match="TraceMeanField_ELBO"):
        elbo.loss_and_surrogate(bnn.model, MeanField(bnn.model), **data, **KW)
    result = ppl_vi.fit(
        bnn.model, **data, **KW, elbo=elbo, num_steps=250, progress=False, convergence=None,
        polish=None,
    )  # fmt: skip
    info = result.method_info["jit"]["main"]
    assert info["path"] == "eager" and "TraceMeanField_ELBO" in info["reason"]


@pytest.mark.parametrize(
    "inner",
    [TraceMeanField_ELBO, TraceGraph_ELBO, RBScoreFunctionELBO],
    ids=lambda c: c.__name__,
)
def test_other_elbos_estimate_the_same_bound(float64, inner):
    """The ELBO's other estimators, wrapped: the same mean as plain Trace_ELBO (z = 4)."""
    data = _data()
    guide = _bnn_guide(data)
    plain = _loss_batches(
        Trace_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1), guide, data, 20
    )
    wrapped = LocalReparam(inner(num_particles=50, vectorize_particles=True, max_plate_nesting=1))
    local = _loss_batches(wrapped, guide, data, 20)
    se = math.sqrt(plain.var() / len(plain) + local.var() / len(local))
    assert abs(float(local.mean() - plain.mean())) < Z * se


def test_settings_live_on_the_wrapped_elbo():
    inner = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    elbo = LocalReparam(inner)
    assert (elbo.num_particles, elbo.vectorize_particles) == (3, True)
    assert elbo.max_plate_nesting == inner.max_plate_nesting == 2  # Pyro adds the particle dim
    elbo.max_plate_nesting = 3
    assert inner.max_plate_nesting == 3
    assert elbo.wrapped == "Trace_ELBO(num_particles=3, vectorize_particles=True)"
    assert isinstance(LocalReparam().elbo, Trace_ELBO)


# ---------------------------------------------------------------------- errors and warnings
def test_non_gaussian_weight_raises(float64):
    data = _data()
    guide = AutoDelta(bnn.model)
    with pytest.raises(ValueError, match=r"site 'layers.0.weight' from a Delta, not from a Normal"):
        LocalReparam(Trace_ELBO()).loss(bnn.model, guide, **data, **KW)
    with LocalReparamMessenger(), pytest.raises(ValueError, match="mean-field Gaussian"):
        w = pyro.sample("w", dist.Laplace(torch.zeros(2, 3), 1.0).to_event(2))
        torch.ones(4, 3) @ w.mT


def test_no_replaced_product_warns_once():
    from ppl_vi.models import normal_normal

    data = normal_normal.load_data()
    elbo = LocalReparam(Trace_ELBO())
    guide = MeanField(normal_normal.model)
    with pytest.warns(RuntimeWarning, match="replaced no dense product"):
        elbo.loss(normal_normal.model, guide, **data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo.loss(normal_normal.model, guide, **data)


@pytest.mark.parametrize(
    ("arg", "error", "match"),
    [
        (Trace_ELBO, TypeError, r"ELBO instance, e.g. LocalReparam\(Trace_ELBO\(\)\)"),
        ("elbo", TypeError, r"pyro.infer.ELBO instance \(got str\)"),
        (LocalReparam(), ValueError, "already a LocalReparam"),
        (JitTrace_ELBO(), TypeError, r"uncompiled ELBO \(got JitTrace_ELBO\)"),
        (IWAE(num_particles=4), ValueError, r"cannot wrap IWAE: .* nonlinear in the likelihood"),
        (RenyiELBO(alpha=0.5), ValueError, r"cannot wrap RenyiELBO"),
        (pyro.infer.RenyiELBO(), ValueError, r"cannot wrap RenyiELBO"),
        (SteinOperatorELBO(), ValueError, r"cannot wrap SteinOperatorELBO: .*\(Stein\)"),
    ],
)
def test_bad_elbo_arguments(arg, error, match):
    with pytest.raises(error, match=match):
        LocalReparam(arg)
