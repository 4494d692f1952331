"""The amortized guide's contract, checked as properties against independent computations.

Argument bounds and keyword-only options; the encoder's input (observed sites of any layout,
the indices of a replayed plate); each datum's local ELBO against a hand computation with
``torch.distributions`` (plates at dims -1, -2 and -3); the semi-amortized refinement against
hand-written gradient ascent on the same draws; and :func:`amortization_gap`'s documented
defaults, seeding, schedule, averaging, choice of start or end and standard error.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from test_guide_amortized import _mixed_model  # a global mean, a local offset per datum
from torch import nn
from torch.distributions import Normal

import ppl_vi
from ppl_vi.guides.amortized import Amortized, amortization_gap
from ppl_vi.models import ppca

SHIFT = math.log(math.expm1(0.1))  # softplus^{-1}(init_scale) at the default init_scale


def _scale(raw, shift=SHIFT):
    return nn.functional.softplus(raw + shift) + 1e-6


def _linear(n_in, n_out, seed=0):
    """A linear encoder with small fixed random weights, in the default dtype."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Linear(n_in, n_out)
    with torch.no_grad():
        net.weight.copy_(0.3 * torch.randn(n_out, n_in, generator=gen, dtype=torch.float64))
        net.bias.copy_(0.3 * torch.randn(n_out, generator=gen, dtype=torch.float64))
    return net


def _exact_encoder():
    """PPCA's exact posterior per datum (as in test_guide_amortized.py), float64."""
    data = ppca.load_data(n=1)
    W, mu, s = data["W"], data["mu"], data["sigma"]
    M = W.T @ W + s**2 * torch.eye(2)
    A = torch.linalg.solve(M, W.T)
    sd = (s**2 * torch.linalg.inv(M).diagonal()).sqrt()
    net = nn.Linear(5, 4)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[:2] = A
        net.bias[:2] = -A @ mu
        net.bias[2:] = torch.log(torch.expm1(sd - 1e-6)) - SHIFT
    return net


class Fixed(nn.Module):
    """A parameter-free encoder: a fixed affine map held in buffers."""

    def __init__(self, weight, bias):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x):
        return x @ self.weight.T + self.bias


def _ppca_elbo(x, data, loc, raw, eps):
    """Hand-written per-datum PPCA ELBO at z = loc + scale * eps: ``(..., B)``."""
    scale = _scale(raw)
    z = loc + scale * eps
    prior = Normal(torch.zeros(()), torch.ones(())).log_prob(z).sum(-1)
    like = Normal(z @ data["W"].T + data["mu"], data["sigma"]).log_prob(x).sum(-1)
    return prior + like - Normal(loc, scale).log_prob(z).sum(-1)


# ---------------------------------------------------------------- arguments
def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        Amortized(ppca.model, nn.Linear(5, 4))
    with pytest.raises(TypeError):
        Amortized(ppca.model, None, (8,))


def test_hidden_dims_bounds():
    data = ppca.load_data(n=4)
    guide = Amortized(ppca.model, hidden_dims=[1])
    guide(**data)
    shapes = [tuple(p.shape) for _, p in guide.named_parameters() if p.dim() == 2]
    assert shapes == [(1, 5), (4, 1)]
    for bad in ([0], [1.5], [True], [4, -1]):
        with pytest.raises(ValueError, match=r"hidden_dims must hold integers >= 1"):
            Amortized(ppca.model, hidden_dims=bad)


def test_refine_bounds():
    for ok in (1, 1e-9, 0.5):
        assert Amortized(ppca.model, refine_lr=ok).refine_lr == float(ok)
    for bad in (True, "0.1", 0, -0.1, float("nan"), None):
        with pytest.raises(ValueError, match=r"refine_lr must be a number > 0 \(got refine_lr="):
            Amortized(ppca.model, refine_lr=bad)
    for ok in (0, 3):
        assert Amortized(ppca.model, refine_steps=ok).refine_steps == ok
    for bad in (True, 1.5, -1, "2"):
        with pytest.raises(ValueError, match=r"refine_steps must be an integer >= 0 \(got"):
            Amortized(ppca.model, refine_steps=bad)


def test_encoder_shape_error_names_the_batch_size():
    data = ppca.load_data(n=6)
    with pytest.raises(ValueError, match=r"returned shape \(6, 3\) for B=6$"):
        Amortized(ppca.model, encoder=nn.Linear(5, 3))(**data)


def test_an_observed_site_without_the_plate_dim_is_rejected():
    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"observed site 'x' has shape \(\), which has no dim"):
        Amortized(model)(torch.tensor(0.5))


# ---------------------------------------------------------------- the encoder's input
class Recorder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def test_encoder_input_joins_observed_sites_datum_by_datum():
    """Each row of the encoder's input is one datum's observed values, whatever the site's
    layout: a site whose data plate is not its leftmost dim, and a vector site."""
    n, d = 4, 3

    def model(x, y):  # x: (d, n), the data plate at dim -1; y: (n, 2)
        with pyro.plate("data", n, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("feature", d, dim=-2):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            pyro.sample("y", dist.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=y)

    x = torch.arange(d * n, dtype=torch.float32).reshape(d, n)
    y = -torch.arange(2 * n, dtype=torch.float32).reshape(n, 2)
    enc = Recorder(nn.Linear(d + 2, 2))
    guide = Amortized(model, encoder=enc, data_plate="data")
    guide(x, y)
    assert guide.input_size == d + 2
    expected = torch.cat([x.T, y], -1)
    assert len(enc.inputs) >= 2
    for seen in enc.inputs:
        torch.testing.assert_close(seen, expected, rtol=0, atol=0)


def test_a_replayed_guide_encodes_the_replayed_minibatch(float64):
    """Replaying a guide trace (as DReG does) gives the guide the recorded plate indices; the
    encoder must then see those rows, not the rows of a fresh subsample."""
    data = ppca.load_data(n=50)
    guide = Amortized(ppca.model, encoder=_exact_encoder())
    pyro.set_rng_seed(1)
    first = poutine.trace(guide).get_trace(**data, subsample_size=7)
    idx = first.nodes["data"]["value"]
    pyro.set_rng_seed(2)
    fresh = poutine.trace(guide).get_trace(**data, subsample_size=7)
    assert not torch.equal(fresh.nodes["data"]["value"], idx)  # the seed alone moves the batch
    pyro.set_rng_seed(2)
    again = poutine.trace(poutine.replay(guide, trace=first)).get_trace(**data, subsample_size=7)
    assert torch.equal(again.nodes["data"]["value"], idx)
    exact = ppca.exact_posterior(x=data["x"][idx], W=data["W"], mu=data["mu"], sigma=data["sigma"])
    torch.testing.assert_close(again.nodes["z"]["fn"].mean, exact["z"].mean, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- local ELBO per datum
def _deep_model(x):
    """A data plate at dim -2 and an unplated batch dim right of it: z_n, x_n in R^3."""
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[-1]), 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def test_local_elbo_of_exact_encoder_is_log_evidence(float64):
    """q = exact posterior: every draw's local ELBO is log p(x_n), so amortization_gap's
    amortized ELBO is the mean log evidence, exactly (ppca's plate at dim -1)."""
    data = ppca.load_data(n=8)
    guide = Amortized(ppca.model, encoder=_exact_encoder())
    gap = amortization_gap(guide, None, **data, num_steps=2, num_particles=4)
    assert gap.amortized_elbo == pytest.approx(ppca.log_evidence(**data).item() / 8, abs=1e-10)


def test_local_elbo_with_plate_at_dim_minus_two(float64):
    """Same identity for a plate at dim -2 whose sites have an unplated batch dim of size 3:
    per datum, the log densities are summed over that dim (z_n | x_n ~ N(0.8 x_n, 0.2))."""
    x = torch.linspace(-1.0, 2.0, 15).reshape(5, 3)
    net = nn.Linear(3, 6)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[:3] = 0.8 * torch.eye(3)
        net.bias.zero_()
        net.bias[3:] = math.log(math.expm1(math.sqrt(0.2) - 1e-6)) - SHIFT
    guide = Amortized(_deep_model, encoder=net)
    assert guide(x)["z"].shape == (5, 3)
    assert (guide.input_size, guide.latent_size) == (3, 3)
    gap = amortization_gap(guide, None, x, num_steps=2, num_particles=4)
    log_px = Normal(0.0, math.sqrt(1.25)).log_prob(x).sum()
    assert gap.amortized_elbo == pytest.approx(log_px.item() / 5, abs=1e-10)


def test_per_datum_log_density_of_a_plate_at_dim_minus_three(float64):
    """Plate at dim -3: a site's log density (..., B, a, b) gives each datum the sum over its
    inner dims, leading (replicated) dims kept; one without the plate dim (fewer dims) gives every
    datum the sum of its entries."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-3):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, 3), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    x = torch.randn(4, 2, 3)
    guide = Amortized(model, hidden_dims=())
    assert guide(x)["z"].shape == (4, 2, 3)
    full = torch.randn(5, 6, 4, 2, 3)
    torch.testing.assert_close(guide._per_datum(full, 4), full.sum((-2, -1)), rtol=0, atol=1e-12)
    for shape in [(), (3,), (2, 3), (1, 2, 3)]:
        lp = torch.randn(shape)
        out = guide._per_datum(lp, 4)
        assert out.shape == (4,), shape
        torch.testing.assert_close(out, lp.sum().expand(4), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- refinement
def _hand_refine(x, data, loc, raw, steps, lr, seed):
    """Gradient ascent on the hand-written ELBO, one draw per step from the same stream."""
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    for _ in range(steps):
        loc, raw = loc.detach().requires_grad_(), raw.detach().requires_grad_()
        eps = Normal(torch.zeros_like(loc), torch.ones_like(loc)).sample()
        g_loc, g_raw = torch.autograd.grad(_ppca_elbo(x, data, loc, raw, eps).sum(), [loc, raw])
        loc, raw = loc + lr * g_loc, raw + lr * g_raw
    torch.set_rng_state(gen_state)
    return loc.detach(), raw.detach()


def test_refinement_is_gradient_ascent_on_each_datums_elbo(float64):
    """local_params and the guide's sample site both give k steps of lambda += lr * grad ELBO_n
    from the encoder output (location and raw scale), on the same draws; a parameter-free
    encoder's refinement is not part of any graph."""
    data = ppca.load_data(n=6)
    x = data["x"]
    w, b = 0.3 * torch.randn(4, 5), 0.3 * torch.randn(4)
    guide = Amortized(ppca.model, encoder=Fixed(w, b), refine_steps=3, refine_lr=0.05)
    guide(**data)  # builds the guide (draws from the prior)
    out = x @ w.T + b
    loc, raw = _hand_refine(x, data, out[:, :2], out[:, 2:], 3, 0.05, seed=7)
    assert (loc - out[:, :2]).abs().max() > 1e-3 and (raw - out[:, 2:]).abs().max() > 1e-3

    pyro.set_rng_seed(7)
    got_loc, got_scale = guide.local_params(**data)["z"]
    torch.testing.assert_close(got_loc, loc, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_scale, _scale(raw), rtol=0, atol=1e-10)
    assert not got_loc.requires_grad and not got_scale.requires_grad

    pyro.set_rng_seed(7)
    trace = poutine.trace(guide).get_trace(**data)
    fn = trace.nodes["z"]["fn"]
    torch.testing.assert_close(fn.mean, loc, rtol=0, atol=1e-10)
    torch.testing.assert_close(fn.stddev, _scale(raw), rtol=0, atol=1e-10)
    assert not trace.nodes["z"]["value"].requires_grad


def test_refinement_uses_the_global_median(float64):
    """With global latents, local_params refines at the global guide's median."""
    x = torch.tensor([0.5, -1.0, 2.0])
    guide = Amortized(_mixed_model, encoder=Fixed(torch.tensor([[0.5], [0.1]]), torch.zeros(2)),
                      refine_steps=2, refine_lr=0.1)  # fmt: skip
    guide(x)
    mu = guide.global_guide.median(x)["mu"].detach()
    assert mu.shape == ()

    def elbo(loc, raw, eps):
        scale = _scale(raw)
        z = loc + scale * eps
        return (Normal(mu, 1.0).log_prob(z) + Normal(z, 0.5).log_prob(x)
                - Normal(loc, scale).log_prob(z))  # fmt: skip

    loc, raw = 0.5 * x, 0.1 * x
    torch.manual_seed(3)
    for _ in range(2):
        loc, raw = loc.detach().requires_grad_(), raw.detach().requires_grad_()
        eps = torch.empty(3).normal_()
        g_loc, g_raw = torch.autograd.grad(elbo(loc, raw, eps).sum(), [loc, raw])
        loc, raw = loc + 0.1 * g_loc, raw + 0.1 * g_raw
    pyro.set_rng_seed(3)
    got_loc, got_scale = guide.local_params(x)["z"]
    torch.testing.assert_close(got_loc, loc.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(got_scale, _scale(raw.detach()), rtol=0, atol=1e-10)


def test_refinement_averages_replicated_global_draws(float64):
    """The refinement objective is a mean over replicated leading dims: a global draw repeated
    (3, 1) times (as under vectorized particles) refines exactly as the single draw."""
    x = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5])
    guide = Amortized(_mixed_model, hidden_dims=(), refine_steps=2, refine_lr=0.1)
    guide(x)
    loc0, raw0 = guide._encode(x.unsqueeze(-1))
    idx = torch.arange(5)
    outs = []
    for mu in (torch.tensor(0.7), torch.full((3, 1), 0.7)):
        pyro.set_rng_seed(4)
        outs.append(guide._refine(loc0, raw0, idx, {"mu": mu}, (x,), {}))
    for one, many in zip(*outs, strict=True):
        assert one.shape == many.shape == (5, 1)
        torch.testing.assert_close(many, one, rtol=0, atol=1e-12)
    assert (outs[0][0] - loc0).abs().max() > 1e-3


# ---------------------------------------------------------------- amortization_gap
def _gap_guide():
    return Amortized(ppca.model, encoder=_linear(5, 4))


def test_amortization_gap_defaults_are_the_documented_ones(float64):
    data = ppca.load_data(n=3)
    guide = _gap_guide()
    default = amortization_gap(guide, None, **data)
    explicit = amortization_gap(
        guide, None, **data, num_steps=500, num_particles=256, lr=0.05, seed=0
    )
    assert default == explicit
    assert default.gap > 0  # an encoder with random weights is far from each datum's optimum


def test_amortization_gap_seeding(float64):
    data = ppca.load_data(n=4)
    guide = _gap_guide()
    kw = {"num_steps": 3, "num_particles": 8}
    pyro.set_rng_seed(11)
    first = amortization_gap(guide, None, **data, **kw)
    after = torch.randn(3)
    pyro.set_rng_seed(11)
    torch.randn(3)
    # the seed fixes the result (the first call, which builds the guide, included); the global
    # stream is restored (not advanced, not reseeded)
    again = amortization_gap(guide, None, **data, **kw, seed=0)
    assert again == first
    pyro.set_rng_seed(11)
    expected = torch.randn(3)
    assert torch.equal(after, expected)
    # seed=None draws from (and advances) the global stream
    pyro.set_rng_seed(5)
    unseeded = amortization_gap(guide, None, **data, **kw, seed=None)
    next_draw = torch.randn(3)
    assert unseeded == amortization_gap(guide, None, **data, **kw, seed=5)
    pyro.set_rng_seed(5)
    assert not torch.equal(next_draw, torch.randn(3))
    assert amortization_gap(guide, None, **data, **kw, seed=1) != first


def test_amortization_gap_num_particles_bounds(float64):
    data = ppca.load_data(n=4)
    guide = _gap_guide()
    one = amortization_gap(guide, None, **data, num_steps=2, num_particles=1)
    assert math.isfinite(one.gap) and one.stderr == 0.0  # one paired draw: no spread seen
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"num_particles must be an integer >= 1 \(got"):
            amortization_gap(guide, None, **data, num_particles=bad)
    with pytest.raises(ValueError, match=r"num_steps must be an integer >= 1 \(got num_steps=T"):
        amortization_gap(guide, None, **data, num_steps=True)


def test_amortization_gap_uses_the_fits_data_by_default():
    data = ppca.load_data(n=5)
    result = ppl_vi.fit(
        ppca.model, **data, guide=Amortized, guide_kwargs={"hidden_dims": ()}, num_steps=2,
        progress=False, convergence=None, polish=None, jit=False,
    )  # fmt: skip
    kw = {"num_steps": 3, "num_particles": 4}
    assert amortization_gap(result, **kw) == amortization_gap(result, None, **data, **kw)


def test_amortization_gap_algorithm(float64, monkeypatch):
    """The documented procedure, observed through the guide's ELBO calls and Adam's steps:
    64 draws per step, step size decayed geometrically from lr to lr / 100, iterates averaged
    over the second half, per datum the better of start and average (on separate draws), and
    the estimates and their standard error from the final paired draws."""
    n_data, num_steps, num_particles, lr = 8, 9, 2, 0.05
    data = ppca.load_data(n=n_data)
    guide = Amortized(ppca.model, encoder=_exact_encoder())
    guide(**data)
    dists_args, elbos, lrs, iterates = [], [], [], []
    local_dists, local_elbo = guide._local_dists, guide._local_elbo

    def spy_dists(loc, raw):
        dists_args.append((loc.detach().clone(), raw.detach().clone()))
        return local_dists(loc, raw)

    def spy_elbo(*args):
        out = local_elbo(*args)
        elbos.append(out.detach().clone())
        return out

    adam_step = torch.optim.Adam.step

    def spy_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        out = adam_step(self, *args, **kwargs)
        iterates.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        return out

    monkeypatch.setattr(guide, "_local_dists", spy_dists)
    monkeypatch.setattr(guide, "_local_elbo", spy_elbo)
    monkeypatch.setattr(torch.optim.Adam, "step", spy_step)
    gap = amortization_gap(
        guide, None, **data, num_steps=num_steps, num_particles=num_particles, lr=lr
    )
    assert len(elbos) == len(dists_args) == num_steps + 4 and len(iterates) == num_steps
    for e in elbos[:num_steps]:
        assert e.shape == (64, n_data)
    for e in elbos[num_steps:]:
        assert e.shape == (num_particles, n_data)
    # geometric decay: lr at the first step, lr / 100 after the last
    expected_lrs = [lr * 0.01 ** (k / num_steps) for k in range(num_steps)]
    assert lrs == pytest.approx(expected_lrs, rel=1e-12)
    # Polyak averaging over the second half (the middle iterate on either side)
    loc0, raw0 = dists_args[0]
    avg_loc, avg_raw = dists_args[num_steps]
    assert torch.equal(dists_args[num_steps + 1][0], loc0)
    tails = [
        [torch.stack([it[i] for it in iterates[-m:]]).mean(0) for i in range(2)]
        for m in (num_steps // 2, num_steps - num_steps // 2)
    ]
    assert any(
        torch.allclose(avg_loc, t_loc, rtol=0, atol=1e-12)
        and torch.allclose(avg_raw, t_raw, rtol=0, atol=1e-12)
        for t_loc, t_raw in tails
    )
    # per datum, the better of start and average on the check draws
    better = (elbos[num_steps] - elbos[num_steps + 1]).mean(0) > 0
    assert better.any() and not better.all()
    final_loc, final_raw = dists_args[num_steps + 3]
    torch.testing.assert_close(final_loc, torch.where(better[:, None], avg_loc, loc0))
    torch.testing.assert_close(final_raw, torch.where(better[:, None], avg_raw, raw0))
    assert torch.equal(dists_args[num_steps + 2][0], loc0)
    # the final estimates: paired differences on common draws
    amortized, optimized = elbos[num_steps + 2], elbos[num_steps + 3]
    diff = optimized - amortized
    assert gap.gap == pytest.approx(diff.mean().item(), abs=1e-12)
    assert gap.amortized_elbo == pytest.approx(amortized.mean().item(), abs=1e-12)
    assert gap.optimized_elbo == pytest.approx(optimized.mean().item(), abs=1e-12)
    # se of a mean of n_data independent per-datum means, each over num_particles draws
    per_datum_se = [
        torch.std(diff[:, b], correction=1).item() / math.sqrt(num_particles) for b in range(n_data)
    ]
    stderr = math.sqrt(sum(s**2 for s in per_datum_se)) / n_data
    assert gap.stderr == pytest.approx(stderr, rel=1e-10)


# ---------------------------------------------------------------- parameters
def test_every_encoder_parameter_enters_the_param_store():
    """A module with an empty parameter slot (None) before real ones: every real parameter is
    read from the active param store, not held by the module."""

    class Sparse(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("unused", None)
            self.weight = nn.Parameter(torch.zeros(4, 5))
            self.bias = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return x @ self.weight.T + self.bias

    data = ppca.load_data(n=5)
    guide = Amortized(ppca.model, encoder=Sparse())
    guide(**data)
    store = pyro.get_param_store()
    assert {"Amortized.encoder.weight", "Amortized.encoder.bias"} <= set(store.keys())
    # new tensors in the store (as restored parameters or another fit's store) drive the network
    store["Amortized.encoder.weight"] = torch.zeros(4, 5)
    store["Amortized.encoder.bias"] = torch.tensor([0.25, -0.5, 0.0, 0.0])
    loc, _ = guide.local_params(**data)["z"]
    torch.testing.assert_close(loc, torch.tensor([0.25, -0.5]).expand(5, 2))


def test_documented_constructor_defaults():
    assert Amortized(ppca.model).get_config() == {
        "hidden_dims": [64],
        "data_plate": None,
        "init_scale": 0.1,
        "refine_steps": 0,
        "refine_lr": 0.01,
    }
