"""The ladder guide (and its plain bottom-up variant), checked by exact identities.

A linear-Gaussian two-layer model, z2 ~ N(0, 1), z1 | z2 ~ N(a z2, s1^2), x | z1 ~ N(z1, s^2)
(per coordinate), has a posterior that each inference network contains exactly:
p(z1 | z2, x) is the precision-weighted merge of N(x, s^2) with the model's p(z1 | z2), and
p(z2 | x), p(z1 | x), p(z2 | z1) are Normals with means linear in their inputs. A ReLU layer
holds a linear map as relu(u) - relu(-u), so hand-set weights give the exact posterior, and every
particle's log weight log p(x, z) - log q(z) is log p(x).
"""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch.nn import functional as F

import ppl_vi
from ppl_vi.elbos import IWAE
from ppl_vi.guides.ladder import Ladder, merge_gaussians
from ppl_vi.models import ladder_vae as lv
from ppl_vi.models import vae_digits
from ppl_vi.policies import Polish

Z = 4.0  # standard errors allowed for Monte Carlo error
# per-coordinate constants of the linear model
A = torch.tensor([0.8, -1.3, 0.5, 2.0], dtype=torch.float64)
S1 = torch.tensor([0.6, 1.1, 0.4, 0.9], dtype=torch.float64)
S = torch.tensor([0.5, 0.9, 0.7, 0.3], dtype=torch.float64)
D = 4


def linear_model(x, subsample_size=None):
    """z2 -> z1 -> x, each coordinate on its own; ``x`` is (N, 4) or (N, 2, 2) (matrix events)."""
    shape, event = x.shape[1:], x.dim() - 1
    a, s1, s = (t.to(x.dtype).reshape(shape) for t in (A, S1, S))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size, dim=-1) as idx:
        z2 = pyro.sample("z2", dist.Normal(x.new_zeros(shape), 1.0).to_event(event))
        z1 = pyro.sample("z1", dist.Normal(a * z2, s1).to_event(event))
        x = x if subsample_size is None else x[idx]
        pyro.sample("x", dist.Normal(z1, s).to_event(event), obs=x)


def log_evidence(x):
    sd = (A**2 + S1**2 + S**2).sqrt().to(x.dtype)
    return dist.Normal(0.0, sd).log_prob(x.reshape(x.shape[0], D)).sum()


def _data(n=7, shape=(D,)):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, D, generator=gen) * (A**2 + S1**2 + S**2).sqrt()).reshape(n, *shape)


def _raw_for(scale, init_scale=0.1):
    """The head output whose guide scale softplus(raw + shift) + 1e-6 is ``scale``."""
    shift = math.log(math.expm1(init_scale))
    return torch.log(torch.expm1(scale - 1e-6)) - shift


def _set(name, value):
    with torch.no_grad():
        pyro.get_param_store()._params[name].copy_(value)


def _set_exact(x, inference):
    """Build ``Ladder(linear_model)`` and set its weights to the exact posterior."""
    guide = Ladder(linear_model, hidden_dims=2 * D, inference=inference)
    guide(x)
    eye = torch.eye(D)
    split = torch.cat([eye, -eye])  # u -> (relu(u), relu(-u)), (2D, D)
    merge = torch.cat([eye, -eye], 1)  # (relu(u), relu(-u)) -> u, (D, 2D)
    zeros = torch.zeros(D, 2 * D)
    _set("Ladder.bottom_up.0.0.weight", split)
    _set("Ladder.bottom_up.0.0.bias", torch.zeros(2 * D))
    if inference == "ladder":
        # d1 = relu(+-x); d2 = relu(d1) = d1
        _set("Ladder.bottom_up.1.0.weight", torch.eye(2 * D))
        # z1: the data's own term N(x, s^2), merged with p(z1 | z2) by the guide
        data_loc, data_scale = merge, S
        # z2: p(z2 | x) = N(m x, v), v = 1 / (1 + a^2 / (s1^2 + s^2)), m = v a / (s1^2 + s^2)
        top_var = 1.0 / (1.0 + A**2 / (S1**2 + S**2))
        top_loc, top_scale = (top_var * A / (S1**2 + S**2)).unsqueeze(-1) * merge, top_var.sqrt()
    else:
        # d2 = relu(+-z1)
        _set("Ladder.bottom_up.1.0.weight", split)
        # z1: p(z1 | x) = N(m x, v), v = 1 / (1 / (a^2 + s1^2) + 1 / s^2), m = v / s^2
        var1 = 1.0 / (1.0 / (A**2 + S1**2) + 1.0 / S**2)
        data_loc, data_scale = (var1 / S**2).unsqueeze(-1) * merge, var1.sqrt()
        # z2: p(z2 | z1) = N(m z1, v), v = 1 / (1 + a^2 / s1^2), m = v a / s1^2
        top_var = 1.0 / (1.0 + A**2 / S1**2)
        top_loc, top_scale = (top_var * A / S1**2).unsqueeze(-1) * merge, top_var.sqrt()
    _set("Ladder.bottom_up.1.0.bias", torch.zeros(2 * D))
    for i, (loc_w, scale) in enumerate([(data_loc, data_scale), (top_loc, top_scale)]):
        _set(f"Ladder.heads.{i}.weight", torch.cat([loc_w, zeros]))
        _set(f"Ladder.heads.{i}.bias", torch.cat([torch.zeros(D), _raw_for(scale)]))
    return guide


# ---------------------------------------------------------------- the merge
def test_merge_is_the_normalised_product_of_the_two_gaussians(float64):
    """log N(z; a) + log N(z; b) - log N(z; merged) is the same for every z: the constant
    log N(mu_hat; mu_p, sigma_hat^2 + sigma_p^2) of the Gaussian product formula."""
    gen = torch.Generator().manual_seed(0)
    loc_hat, loc_p = torch.randn(2, 5, generator=gen)
    scale_hat, scale_p = torch.rand(2, 5, generator=gen) + 0.2
    loc, scale = merge_gaussians(loc_hat, scale_hat, loc_p, scale_p)
    z = torch.linspace(-6, 6, 101).unsqueeze(-1)  # (101, 1) against (5,)
    diff = (
        dist.Normal(loc_hat, scale_hat).log_prob(z)
        + dist.Normal(loc_p, scale_p).log_prob(z)
        - dist.Normal(loc, scale).log_prob(z)
    )
    const = dist.Normal(loc_p, (scale_hat**2 + scale_p**2).sqrt()).log_prob(loc_hat)
    torch.testing.assert_close(diff, const.expand(101, 5), atol=1e-10, rtol=0)


def test_merge_limits(float64):
    """An uninformative bottom-up term returns the prior; an uninformative prior the data term;
    equal precisions average the locations."""
    loc_p, scale_p = torch.tensor([0.3, -2.0]), torch.tensor([0.7, 1.5])
    loc, scale = merge_gaussians(torch.tensor([5.0, 5.0]), torch.tensor(1e8), loc_p, scale_p)
    torch.testing.assert_close((loc, scale), (loc_p, scale_p), atol=1e-10, rtol=1e-10)
    loc, scale = merge_gaussians(loc_p, scale_p, torch.tensor(9.0), torch.tensor(1e8))
    torch.testing.assert_close((loc, scale), (loc_p, scale_p), atol=1e-10, rtol=1e-10)
    loc, scale = merge_gaussians(*torch.tensor([1.0, 2.0, 3.0, 2.0]))
    torch.testing.assert_close((loc, scale), (torch.tensor(2.0), torch.tensor(math.sqrt(2.0))))


# ---------------------------------------------------------------- exact posterior
@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
@pytest.mark.parametrize("shape", [(D,), (2, 2)], ids=["vector", "matrix"])
def test_exact_weights_give_log_evidence_for_every_particle(inference, shape, float64):
    """Trace_ELBO and IWAE with vectorized particles (draws with a particle dim on the left):
    every particle's log weight is log p(x), so both bounds equal it."""
    x = _data(shape=shape)
    guide = _set_exact(x, inference)
    for estimator in (
        Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1),
        IWAE(num_particles=5, max_plate_nesting=1),
    ):
        loss = estimator.loss(linear_model, guide, x)
        assert loss == pytest.approx(-log_evidence(x).item(), abs=1e-9)


# ---------------------------------------------------------------- the ladder on the zoo model
DIMS, HIDDEN = (5, 3, 2), 6


def _param(name):
    return pyro.get_param_store()[name]


def _conditional_by_hand(i, z_above):
    """The model's p(z_i | z_{i+1}) from the param store's weights."""
    pre = f"ladder_vae$$$z{i}"
    hidden = F.relu(z_above @ _param(f"{pre}.0.weight").T + _param(f"{pre}.0.bias"))
    out = hidden @ _param(f"{pre}.2.weight").T + _param(f"{pre}.2.bias")
    d = DIMS[i - 1]
    return out[..., :d], F.softplus(out[..., d:]) + lv.SCALE_FLOOR


def _heads_by_hand(init_scale=0.1, dims=DIMS):
    """The guide's blocks f_i and heads (mu_hat_i, sigma_hat_i), from the param store."""
    shift = math.log(math.expm1(init_scale))

    def block(i, u):
        w, b = _param(f"Ladder.bottom_up.{i}.0.weight"), _param(f"Ladder.bottom_up.{i}.0.bias")
        return F.relu(u @ w.T + b)

    def head(i, d):
        out = d @ _param(f"Ladder.heads.{i}.weight").T + _param(f"Ladder.heads.{i}.bias")
        size = dims[i]
        return out[..., :size], F.softplus(out[..., size:] + shift) + 1e-6

    return block, head


def test_ladder_log_density_is_the_product_of_the_merged_normals(float64):
    """Three layers: the guide's log q of its own draw, by hand from the weights (bottom-up
    pass, model conditionals at the draws above, merge), equals the trace's."""
    data = lv.load_data(n=6)
    kwargs = {"latent_dims": DIMS, "hidden_dim": HIDDEN}
    guide = Ladder(lv.model, hidden_dims=(4, 5, 3), init_scale=0.3)
    trace = poutine.trace(guide).get_trace(**data, **kwargs)
    block, head = _heads_by_hand(0.3)
    d, hats = data["x"], []
    for i in range(3):
        d = block(i, d)
        hats.append(head(i, d))
    z = {n: trace.nodes[n]["value"] for n in ("z3", "z2", "z1")}
    expected = dist.Normal(*hats[2]).log_prob(z["z3"]).sum()
    for i in (2, 1):
        loc, scale = merge_gaussians(*hats[i - 1], *_conditional_by_hand(i, z[f"z{i + 1}"]))
        var = 1.0 / (hats[i - 1][1] ** -2 + _conditional_by_hand(i, z[f"z{i + 1}"])[1] ** -2)
        torch.testing.assert_close(scale, var.sqrt(), atol=1e-12, rtol=0)
        expected = expected + dist.Normal(loc, scale).log_prob(z[f"z{i}"]).sum()
    torch.testing.assert_close(trace.log_prob_sum(), expected, atol=1e-10, rtol=0)


def test_bottom_up_log_density_is_the_markov_chain_from_the_data(float64):
    data = lv.load_data(n=6)
    kwargs = {"latent_dims": DIMS, "hidden_dim": HIDDEN}
    guide = Ladder(lv.model, hidden_dims=(4, 5, 3), inference="bottom_up")
    trace = poutine.trace(guide).get_trace(**data, **kwargs)
    block, head = _heads_by_hand()
    inputs = [data["x"], trace.nodes["z1"]["value"], trace.nodes["z2"]["value"]]
    expected = sum(
        dist.Normal(*head(i, block(i, u))).log_prob(trace.nodes[f"z{i + 1}"]["value"]).sum()
        for i, u in enumerate(inputs)
    )
    torch.testing.assert_close(trace.log_prob_sum(), expected, atol=1e-10, rtol=0)
    assert [s for s in trace.nodes if s.startswith("z")] == ["z1", "z2", "z3"]  # bottom up


def test_conditionals_read_from_the_model_are_the_models(float64):
    """The prior parts of the merge equal p(z_i | z_{i+1}) by hand and in the model's own
    trace replayed on the guide's draw; the data parts are the bottom-up heads."""
    data = lv.load_data(n=5)
    kwargs = {"latent_dims": DIMS, "hidden_dim": HIDDEN}
    guide = Ladder(lv.model, hidden_dims=4)
    layers = guide.layer_params(**data, **kwargs)
    assert list(layers) == ["z3", "z2", "z1"]
    assert "prior_loc" not in layers["z3"]
    torch.testing.assert_close(layers["z3"]["loc"], layers["z3"]["data_loc"], atol=0, rtol=0)
    values = {n: layer["value"] for n, layer in layers.items()}
    model_trace = poutine.trace(poutine.condition(lv.model, data=values)).get_trace(
        **data, **kwargs
    )
    for i in (2, 1):
        layer = layers[f"z{i}"]
        loc, scale = _conditional_by_hand(i, values[f"z{i + 1}"])
        torch.testing.assert_close(layer["prior_loc"], loc, atol=1e-12, rtol=0)
        torch.testing.assert_close(layer["prior_scale"], scale, atol=1e-12, rtol=0)
        fn = model_trace.nodes[f"z{i}"]["fn"].base_dist
        torch.testing.assert_close(layer["prior_loc"], fn.loc, atol=0, rtol=0)
        torch.testing.assert_close(layer["prior_scale"], fn.scale, atol=0, rtol=0)
        merged = merge_gaussians(layer["data_loc"], layer["data_scale"], loc, scale)
        torch.testing.assert_close((layer["loc"], layer["scale"]), merged, atol=1e-12, rtol=0)
    # the guide's draws of a layer depend on the draw above (a wrong conditional would not)
    assert not torch.allclose(layers["z2"]["prior_loc"], layers["z2"]["prior_loc"].mean(0))


def test_gradients_reach_the_generative_networks_through_the_guide(float64):
    """d(loss)/d(theta) of the conditional's weights: autograd = finite differences of the
    loss at fixed random numbers (a guide that detached mu_p, sigma_p would miss the guide's
    share); the plain guide does not touch them."""
    data = lv.load_data(n=8)
    kwargs = {"latent_dims": (4, 2), "hidden_dim": 5}
    elbo = Trace_ELBO(max_plate_nesting=1)
    ladder = Ladder(lv.model, hidden_dims=6)
    ladder(**data, **kwargs)
    w = pyro.get_param_store()._params["ladder_vae$$$z1.0.weight"]

    def loss():
        pyro.set_rng_seed(3)
        return elbo.differentiable_loss(lv.model, ladder, **data, **kwargs)

    (grad,) = torch.autograd.grad(loss(), [w])
    h = 1e-6
    for i, j in [(0, 0), (2, 1), (4, 0)]:
        with torch.no_grad():
            w[i, j] += h
        up = loss().item()
        with torch.no_grad():
            w[i, j] -= 2 * h
        down = loss().item()
        with torch.no_grad():
            w[i, j] += h
        assert grad[i, j].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-7)
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(ladder).get_trace(**data, **kwargs)
    (through_guide,) = torch.autograd.grad(guide_trace.log_prob_sum(), [w])
    assert through_guide.abs().max() > 1e-3
    pyro.clear_param_store()  # the plain guide's networks have other shapes
    plain = Ladder(lv.model, hidden_dims=6, inference="bottom_up")
    plain_trace = poutine.trace(plain).get_trace(**data, **kwargs)
    poutine.trace(lv.model).get_trace(**data, **kwargs)
    w = pyro.get_param_store()._params["ladder_vae$$$z1.0.weight"]
    (none,) = torch.autograd.grad(plain_trace.log_prob_sum(), [w], allow_unused=True)
    assert none is None


def test_minibatch_rows_indices_and_scale(float64):
    """The guide's bottom-up pass reads the mini-batch's rows; the model replays its indices."""
    data = lv.load_data(n=40)
    guide = Ladder(lv.model, hidden_dims=4)
    guide_trace = poutine.trace(guide).get_trace(**data, subsample_size=6)
    idx = guide_trace.nodes["data"]["value"]
    assert idx.shape == (6,) and guide_trace.nodes["z1"]["value"].shape == (6, 8)
    model_trace = poutine.trace(poutine.replay(lv.model, trace=guide_trace)).get_trace(
        **data, subsample_size=6
    )
    torch.testing.assert_close(model_trace.nodes["data"]["value"], idx)
    assert model_trace.nodes["x"]["scale"] == pytest.approx(40 / 6)
    assert guide_trace.nodes["z1"]["scale"] == pytest.approx(40 / 6)
    block, head = _heads_by_hand(dims=lv.DEFAULT_LATENT_DIMS)
    top = head(1, block(1, block(0, data["x"][idx])))  # the z2 head on the batch's rows
    torch.testing.assert_close(guide_trace.nodes["z2"]["fn"].base_dist.loc, top[0])


def test_a_single_layer_is_a_normal_encoder_for_both_networks():
    data = vae_digits.load_data(n=10)
    draws = []
    for inference in ("ladder", "bottom_up"):
        pyro.set_rng_seed(2)
        draws.append(Ladder(vae_digits.model, hidden_dims=8, inference=inference)(**data)["z"])
    torch.testing.assert_close(draws[0], draws[1], atol=0, rtol=0)  # same weights, same draw
    names = sorted(n for n in pyro.get_param_store() if n.startswith("Ladder"))
    assert len(names) == 4  # one block and one head


def test_global_latents_are_drawn_first_and_condition_the_layers(float64):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
            z1 = pyro.sample("z1", dist.Normal(z2 + mu, 0.5))
            pyro.sample("x", dist.Normal(z1, 0.5), obs=x)

    x = torch.tensor([1.0, 2.0, -1.0])
    guide = Ladder(model, hidden_dims=3)
    trace = poutine.trace(guide).get_trace(x)
    assert [n for n in trace.nodes if n in ("mu", "z2", "z1")] == ["mu", "z2", "z1"]
    layers = guide.layer_params(x)  # another draw; check the conditional of this trace instead
    assert layers["z1"]["prior_scale"].shape == (3,)
    mu, z2 = trace.nodes["mu"]["value"], trace.nodes["z2"]["value"]
    guide_fn = trace.nodes["z1"]["fn"]
    # merged with N(z2 + mu, 0.5^2): the merged precision exceeds the prior's by the data's
    data_prec = guide_fn.scale**-2 - 0.5**-2
    data_loc = (guide_fn.loc * guide_fn.scale**-2 - (z2 + mu) * 0.5**-2) / data_prec
    w, b = _param("Ladder.bottom_up.0.0.weight"), _param("Ladder.bottom_up.0.0.bias")
    out = F.relu(x.unsqueeze(-1) @ w.T + b) @ _param("Ladder.heads.0.weight").T
    out = out + _param("Ladder.heads.0.bias")
    torch.testing.assert_close(data_loc, out[:, 0], atol=1e-9, rtol=0)
    loss = Trace_ELBO().differentiable_loss(model, guide, x)
    grads = torch.autograd.grad(loss, [p for _, p in guide.named_parameters()])
    assert all(g.abs().sum() > 0 for g in grads)
    assert any("global_guide" in n for n, _ in guide.named_parameters())


# ---------------------------------------------------------------- fitting
@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
def test_fit_reaches_the_exact_posterior_of_the_linear_model(inference, float64):
    """From random weights, the ELBO approaches log p(x) (each family holds the posterior).

    Budget: 1500 Adam steps at 0.01, the last 30% polished (learning-rate decay, 16 particles,
    averaging). Measured (seed 0, nats per datum): initial gap 35.7 (ladder) and 35.2 (plain);
    final gap 0.0018 and 0.0027 (0.057 and 0.068 without the polish: Adam's jitter at a fixed
    learning rate).
    The gap's Monte Carlo error with 200 x 200 draws is below 1e-3.
    """
    x = _data(n=200)
    kwargs = {"guide": Ladder, "guide_kwargs": {"hidden_dims": 16, "inference": inference}}
    kwargs.update(progress=False, convergence=None, lr=0.01, seed=0)
    elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)

    def gap(result):
        with result.param_scope(), torch.no_grad():
            pyro.set_rng_seed(5)
            return (elbo.loss(linear_model, result.guide, x) + log_evidence(x).item()) / 200

    start = gap(ppl_vi.fit(linear_model, x, num_steps=1, polish=None, **kwargs))
    end = gap(ppl_vi.fit(linear_model, x, num_steps=1500, polish=Polish(fraction=0.3), **kwargs))
    assert start > 10.0
    assert end < 0.01


def test_fit_and_svi_on_the_digits_model():
    """``fit(..., subsample_size=100, guide=Ladder)`` trains guide and model; the held-out
    ELBO after 300 steps is above the initial one by many standard errors; plain SVI runs."""
    train, test = lv.load_data(), lv.load_data("test", n=100)

    def held_out(result):
        with result.param_scope(), torch.no_grad():
            pyro.set_rng_seed(7)
            p = IWAE(num_particles=20, max_plate_nesting=1).particles(
                lv.model, result.guide, (), test
            )
            lw = p.log_weights.mean(0)  # per image ELBO estimate
            return lw.mean().item(), lw.std().item() / math.sqrt(lw.numel())

    opts = {"guide": Ladder, "guide_kwargs": {"hidden_dims": 32}, "progress": False}
    opts.update(subsample_size=100, convergence=None, polish=None, lr=3e-3, seed=0)
    before = held_out(ppl_vi.fit(lv.model, **train, num_steps=1, **opts))
    result = ppl_vi.fit(lv.model, **train, num_steps=300, **opts)
    after = held_out(result)
    assert after[0] - before[0] > Z * math.hypot(before[1], after[1])
    assert any(n.startswith("Ladder.heads") for n in result.params)
    assert any(n.startswith("ladder_vae$$$z1") for n in result.params)
    pyro.clear_param_store()
    guide = Ladder(lv.model, hidden_dims=16)
    svi = SVI(lv.model, guide, Adam({"lr": 1e-3}), Trace_ELBO(max_plate_nesting=1))
    assert math.isfinite(svi.step(**train, subsample_size=50))


def test_save_and_load_round_trip(tmp_path):
    data = lv.load_data(n=60)
    result = ppl_vi.fit(
        lv.model,
        **data,
        guide=Ladder,
        guide_kwargs={"hidden_dims": (12, 6), "init_scale": 0.5},
        num_steps=5,
        progress=False,
        convergence=None,
        polish=None,
    )
    result.save(tmp_path / "fit.pt")
    config = json.loads(json.dumps(result.guide.get_config()))
    assert config == {
        "hidden_dims": [12, 6],
        "inference": "ladder",
        "data_plate": None,
        "init_scale": 0.5,
    }
    loaded = ppl_vi.load(tmp_path / "fit.pt", lv.model, guide=Ladder(lv.model, **config))
    assert set(loaded.params) == set(result.params)
    for name in result.params:
        torch.testing.assert_close(loaded.params[name], result.params[name], atol=0, rtol=0)
    draws = [r.sample(3, seed=4)["z2"] for r in (result, loaded)]
    torch.testing.assert_close(draws[0], draws[1], atol=0, rtol=0)


def test_hidden_dims_set_the_networks():
    data = lv.load_data(n=4)
    for inference, first_inputs in (("ladder", 12), ("bottom_up", 8)):
        pyro.clear_param_store()
        guide = Ladder(lv.model, hidden_dims=(12, 6), inference=inference)
        guide(**data)
        shapes = {
            n.removesuffix("_unconstrained"): tuple(p.shape) for n, p in guide.named_parameters()
        }
        shapes = {n: s for n, s in shapes.items() if n.endswith("weight")}
        assert shapes == {
            "bottom_up.0.0.weight": (12, 64),
            "bottom_up.1.0.weight": (6, first_inputs),  # d_1 (ladder) or z_1 (plain)
            "heads.0.weight": (16, 12),
            "heads.1.weight": (8, 6),
        }
    assert Ladder(lv.model, hidden_dims=5).get_config()["hidden_dims"] == 5


# ---------------------------------------------------------------- errors
def _laplace_model(x):
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
        z1 = pyro.sample("z1", dist.Laplace(z2, 1.0))
        pyro.sample("x", dist.Normal(z1, 1.0), obs=x)


def _discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def _positive_model(x):
    with pyro.plate("data", x.shape[0]):
        s = pyro.sample("s", dist.HalfNormal(1.0))
        pyro.sample("x", dist.Normal(0.0, s), obs=x)


def _no_plate_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(mu, 1.0).expand(x.shape).to_event(1), obs=x)


def _global_only_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _nested_model(x):
    with pyro.plate("data", x.shape[0], dim=-2):
        with pyro.plate("pix", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_non_normal_conditional_is_rejected_by_the_ladder_only():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"conditional of site 'z1' .* got Laplace\. Write"):
        Ladder(_laplace_model, hidden_dims=2)(x)
    values = Ladder(_laplace_model, hidden_dims=2, inference="bottom_up")(x)
    assert values["z1"].shape == values["z2"].shape == (3,)


def _two_plate_model(x, y):
    with pyro.plate("a", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    with pyro.plate("b", y.shape[0]):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def _skipping_model(x, skip=False):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z2", dist.Normal(0.0, 1.0))
        if not skip:
            z = pyro.sample("z1", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_model_structure_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="cannot represent the discrete local sample site 'c'"):
        Ladder(_discrete_model)(x)
    with pytest.raises(ValueError, match=r"real-valued local latents, but site 's' has support"):
        Ladder(_positive_model)(x)
    with pytest.raises(ValueError, match="lie in no plate; pass data_plate="):
        Ladder(_no_plate_model)(x)
    with pytest.raises(ValueError, match="data_plate='c' is not a plate of the model"):
        Ladder(_laplace_model, data_plate="c")(x)
    with pytest.raises(ValueError, match="no latent sample site inside the data plate 'data'"):
        Ladder(_global_only_model)(x)
    with pytest.raises(ValueError, match=r"site 'z' also lies in the plates \['pix'\]"):
        Ladder(_nested_model, data_plate="data")(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"lie in the plates \['a', 'b'\]; pass data_plate="):
        Ladder(_two_plate_model)(x, torch.zeros(2))
    assert Ladder(_two_plate_model, data_plate="a")(x, torch.zeros(2))["z"].shape == (3,)
    with pytest.raises(
        ValueError, match=r"holds 'Ladder.bottom_up.0.0.weight' with shape \(128, 1\), but"
    ):
        Ladder(_skipping_model, hidden_dims=2)(x)
    pyro.clear_param_store()
    guide = Ladder(_skipping_model, hidden_dims=2)
    guide(x)
    with pytest.raises(ValueError, match="did not reach its latent site 'z1' on this call"):
        guide(x, skip=True)
    with pytest.raises(ValueError, match=r"the model has 2 \(z1, z2, bottom up\), but got hidden"):
        Ladder(lv.model, hidden_dims=(8, 8, 8))(**lv.load_data(n=2))


def test_bad_arguments():
    with pytest.raises(TypeError, match="hidden_dims must be an int or a sequence of ints"):
        Ladder(lv.model, hidden_dims="8")
    with pytest.raises(ValueError, match=r"hidden_dims must hold integers >= 1 \(got hidden_"):
        Ladder(lv.model, hidden_dims=(8, 0))
    with pytest.raises(ValueError, match=r"hidden_dims must hold integers >= 1"):
        Ladder(lv.model, hidden_dims=())
    with pytest.raises(ValueError, match=r"inference must be one of \('ladder', 'bottom_up'\)"):
        Ladder(lv.model, inference="top_down")
    with pytest.raises(TypeError, match="data_plate must be a plate name"):
        Ladder(lv.model, data_plate=3)
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        Ladder(lv.model, init_scale=0.0)


def _laplace_top_model(x):
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", dist.Laplace(0.0, 1.0))  # the top layer's prior is not merged
        z1 = pyro.sample("z1", dist.Normal(z2, 1.0))
        pyro.sample("x", dist.Normal(z1, 1.0), obs=x)


def test_the_top_layer_may_have_any_real_prior():
    # Only the layers below the top are merged with the model's conditional (eq. 19), so only
    # they must be Normal.
    values = Ladder(_laplace_top_model, hidden_dims=2)(torch.zeros(3))
    assert values["z1"].shape == values["z2"].shape == (3,)


def test_width_bounds_and_keyword_only_options():
    x = torch.zeros(3)
    pyro.clear_param_store()
    assert Ladder(_laplace_model, hidden_dims=1, inference="bottom_up")(x)["z1"].shape == (3,)
    pyro.clear_param_store()
    assert Ladder(_laplace_model, hidden_dims=[1, 1], inference="bottom_up")(x)["z2"].shape == (3,)
    for bad in (0, [1.5, 2], [True, 2], [2, -1]):
        with pytest.raises(ValueError, match=r"hidden_dims must hold integers >= 1"):
            Ladder(lv.model, hidden_dims=bad)
    with pytest.raises(TypeError):
        Ladder(lv.model, 8)


def test_a_replayed_guide_reads_the_replayed_batch(float64):
    """Replaying a guide trace (as DReG and the importance weights do) on a subsampled plate
    gives the recorded indices: the bottom-up pass must read those rows, not the rows of the
    fresh subsample the model draws on the new call, so each layer's density is unchanged."""
    data = lv.load_data(n=40)
    pyro.clear_param_store()
    guide = Ladder(lv.model, hidden_dims=4)
    pyro.set_rng_seed(0)
    first = poutine.trace(guide).get_trace(**data, subsample_size=6)
    first.compute_log_prob()
    pyro.set_rng_seed(1)  # another subsample on the model's own call
    again = poutine.trace(poutine.replay(guide, trace=first)).get_trace(**data, subsample_size=6)
    again.compute_log_prob()
    torch.testing.assert_close(again.nodes["data"]["value"], first.nodes["data"]["value"])
    for name in ("z1", "z2"):
        torch.testing.assert_close(again.nodes[name]["log_prob"], first.nodes[name]["log_prob"])
