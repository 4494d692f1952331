"""The VampPrior: exact mixture densities, shapes, gradients, encoder sharing, argument checks."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn
from torch.nn import functional as F

import ppl_vi.vamp
from ppl_vi.guides.amortized import Amortized
from ppl_vi.models import vae_digits
from ppl_vi.vamp import VampMixture, VampPrior

SHIFT = math.log(math.expm1(0.1))  # softplus^{-1}(0.1): a zero raw output gives scale 0.1


class Fixed(nn.Module):
    """Ignores its input: (loc, scale) rows, or one raw tensor, fixed."""

    def __init__(self, *out):
        super().__init__()
        self.out = out

    def forward(self, u):
        return self.out if len(self.out) > 1 else self.out[0]


def _hand_log_prob(loc, scale, z):
    """log (1/K) sum_k N(z; loc_k, diag scale_k^2), from scratch: z (..., L) -> (...)."""
    per = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (..., K)
    return torch.logsumexp(per, -1) - math.log(loc.shape[0])


def test_one_component_is_the_encoders_normal(float64):
    m, s = torch.tensor([[0.3, -1.2, 2.0]]), torch.tensor([[0.5, 1.7, 0.2]])
    z = torch.randn(5, 4, 3)
    prior = VampPrior(Fixed(m, s), 1, 7)
    expected = dist.Normal(m[0], s[0]).to_event(1).log_prob(z)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=0, atol=1e-12)
    # raw outputs: scale = softplus(raw + softplus^{-1}(init_scale)) + 1e-6, as Amortized reads them
    raw = torch.tensor([[0.4, -2.0, 0.0]])
    prior = VampPrior(Fixed(torch.cat([m, raw], -1)), 1, 7)
    scale = F.softplus(raw[0] + SHIFT) + 1e-6
    expected = dist.Normal(m[0], scale).to_event(1).log_prob(z)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=0, atol=1e-12)
    prior = VampPrior(Fixed(torch.cat([m, raw], -1)), 1, 7, init_scale=0.7)
    scale = F.softplus(raw[0] + math.log(math.expm1(0.7))) + 1e-6
    expected = dist.Normal(m[0], scale).to_event(1).log_prob(z)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=0, atol=1e-12)


def test_k_components_equal_a_hand_logsumexp(float64):
    k, d, latent = 5, 6, 3
    net = nn.Linear(d, 2 * latent)
    init = torch.randn(k, d)
    prior = VampPrior(net, k, d, init=init, encoder_name="enc")
    z = 2 * torch.randn(4, 7, latent)
    with torch.no_grad():
        out = init @ net.weight.T + net.bias
    loc, scale = out[:, :latent], F.softplus(out[:, latent:] + SHIFT) + 1e-6
    torch.testing.assert_close(
        prior().log_prob(z), _hand_log_prob(loc, scale, z), rtol=0, atol=1e-12
    )
    # an encoder returning (loc, scale), as in Pyro's VAE tutorial
    loc2, scale2 = torch.randn(k, latent), torch.rand(k, latent) + 0.1
    prior = VampPrior(Fixed(loc2, scale2), k, d)
    torch.testing.assert_close(
        prior().log_prob(z), _hand_log_prob(loc2, scale2, z), rtol=0, atol=1e-12
    )
    got_loc, got_scale = prior.components()
    assert torch.equal(got_loc, loc2) and torch.equal(got_scale, scale2)


def test_shapes_in_plates_and_particles():
    k, d, latent = 4, 5, 3
    prior = VampPrior(nn.Linear(d, 2 * latent), k, (d,), encoder_name="enc")
    p = prior()
    assert isinstance(p, VampMixture) and isinstance(p, dist.MixtureSameFamily)
    assert p.batch_shape == () and p.event_shape == (latent,)
    assert p.mixture_distribution.probs.shape == (k,)
    torch.testing.assert_close(p.mixture_distribution.probs, torch.full((k,), 1 / k))
    assert p.sample((7,)).shape == (7, latent)
    # the components' support, so that guides can build a bijection for the site
    assert isinstance(p.support, constraints.independent)
    assert p.support.base_constraint is constraints.real
    assert p.support.reinterpreted_batch_ndims == 1
    assert biject_to(p.support)(torch.zeros(latent)).shape == (latent,)

    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=6, dim=-1):
            pyro.sample("z", prior())

    trace = poutine.trace(model).get_trace(torch.zeros(20, d))
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == (6, latent)
    assert trace.nodes["z"]["log_prob"].shape == (6,)
    with pyro.plate("particles", 8, dim=-2):
        trace = poutine.trace(model).get_trace(torch.zeros(20, d))
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == (8, 6, latent)
    assert trace.nodes["z"]["log_prob"].shape == (8, 6)
    # multi-dimensional inputs (images)
    conv = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 2 * latent))
    prior = VampPrior(conv, k, (2, 3, 3), encoder_name="conv", name="images")
    assert prior().event_shape == (latent,)
    assert pyro.param("images.pseudo_inputs").shape == (k, 2, 3, 3)
    # the same name with other sizes: the store's entry does not fit
    prior = VampPrior(conv, k, (2, 3, 3), encoder_name="conv")
    with pytest.raises(ValueError, match=r"holds 'vamp_prior.pseudo_inputs' with shape \(4, 5\)"):
        prior()


def test_gradient_reaches_pseudo_inputs_and_encoder_exactly(float64):
    k, d, latent = 3, 4, 2
    net = nn.Linear(d, 2 * latent)
    init = torch.randn(k, d)
    prior = VampPrior(net, k, d, init=init, encoder_name="enc")
    z = torch.randn(10, latent)
    prior().log_prob(z).sum().backward()
    store = pyro.get_param_store()
    g_u = store._params["vamp_prior.pseudo_inputs"].grad
    g_w = store["enc$$$weight"].grad
    # the same density written out by hand, differentiated by autograd
    u = init.clone().requires_grad_()
    w = net.weight.detach().clone().requires_grad_()
    out = u @ w.T + net.bias.detach()
    loc, scale = out[:, :latent], F.softplus(out[:, latent:] + SHIFT) + 1e-6
    hu, hw = torch.autograd.grad(_hand_log_prob(loc, scale, z).sum(), [u, w])
    assert hu.abs().max() > 1e-3 and hw.abs().max() > 1e-3
    torch.testing.assert_close(g_u, hu, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_w, hw, rtol=0, atol=1e-12)


def _shared_model(prior, sigma=0.3):
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", prior())
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), sigma).to_event(1), obs=x)

    return model


def test_pyro_module_style_sharing_trains_one_encoder():
    """Model (prior) and guide register one network under one name: one set of parameters,
    moved by an SVI step together with the pseudo-inputs."""
    net = nn.Linear(1, 2 * 2)
    prior = VampPrior(net, 3, 1, encoder_name="encoder")
    model = _shared_model(prior)

    def guide(x):
        encoder = pyro.module("encoder", net)
        out = encoder(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            scale = F.softplus(out[:, 2:] + SHIFT) + 1e-6
            pyro.sample("z", dist.Normal(out[:, :2], scale).to_event(1))

    x = torch.randn(16, 1)
    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(x)
    store = pyro.get_param_store()
    assert sorted(store.keys()) == [
        "encoder$$$bias",
        "encoder$$$weight",
        "vamp_prior.pseudo_inputs",
    ]
    before = {name: store[name].detach().clone() for name in store.keys()}
    svi.step(x)
    for name, value in before.items():
        assert not torch.equal(store[name].detach(), value), name


def test_amortized_guide_encoder_is_the_priors(float64):
    """Amortized(model, encoder=net) with VampPrior(net, ...): the prior's components are the
    guide's q(z | u_k), and the store holds one encoder (the guide's names)."""
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 2 * 2))
    prior = VampPrior(net, 3, 1, init=torch.randn(3, 1))
    model = _shared_model(prior)
    guide = Amortized(model, encoder=net)
    x = torch.randn(16, 1)
    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        svi.step(x)
    store = pyro.get_param_store()
    # (Amortized also registers the module it was given, before converting it, under
    # "Amortized._user_encoder$$$..."; those entries are not read after the conversion)
    names = sorted(k for k in store.keys() if "_user_encoder" not in k)
    assert names == sorted(
        ["vamp_prior.pseudo_inputs"]
        + [f"Amortized.encoder.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    )
    with torch.no_grad():
        u = pyro.param("vamp_prior.pseudo_inputs")
        loc, scale = guide.local_params(u)["z"]
        p_loc, p_scale = prior.components()
    torch.testing.assert_close(p_loc, loc, rtol=0, atol=0)
    torch.testing.assert_close(p_scale, scale, rtol=0, atol=0)


def test_public_module_and_default_init():
    assert ppl_vi.vamp.VampPrior is vae_digits.VampPrior
    assert ppl_vi.vamp.VampMixture is vae_digits.VampMixture
    pyro.set_rng_seed(1)
    prior = VampPrior(nn.Linear(3, 2), 200, 3, name="a")
    prior()
    u = pyro.param("a.pseudo_inputs").detach()
    assert u.shape == (200, 3)
    assert 0.005 < u.std().item() < 0.02  # 0.01 * N(0, 1)
    prior = VampPrior(nn.Linear(3, 2), 200, 3, constraint=constraints.unit_interval, name="b")
    prior()
    u = pyro.param("b.pseudo_inputs").detach()
    assert ((u > 0.48) & (u < 0.52)).all()  # sigmoid(0.01 * N(0, 1))


def test_argument_errors():
    net = nn.Linear(3, 4)
    with pytest.raises(TypeError, match="encoder must be a torch.nn.Module or a callable"):
        VampPrior("net", 2, 3)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=r"num_pseudo must be an integer >= 1 \(got"):
            VampPrior(net, bad, 3)
    for bad in (0, "3", (3, 0), (3, True), None):
        with pytest.raises(ValueError, match="input_shape must be an integer >= 1 or a tuple"):
            VampPrior(net, 2, bad)
    with pytest.raises(TypeError, match="constraint must be a torch.distributions.constraints"):
        VampPrior(net, 2, 3, constraint="real")
    with pytest.raises(TypeError, match="encoder_name must be a string or None"):
        VampPrior(net, 2, 3, encoder_name=1)
    with pytest.raises(TypeError, match="encoder_name registers a torch.nn.Module"):
        VampPrior(lambda u: u, 2, 3, encoder_name="f")
    for bad in (0, -1.0, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="init_scale must be a number > 0"):
            VampPrior(net, 2, 3, init_scale=bad)
    with pytest.raises(TypeError, match=r"init must be a tensor of shape \(2, 3\) or None"):
        VampPrior(net, 2, 3, init=[[0.0] * 3] * 2)
    with pytest.raises(ValueError, match=r"init must have shape .* = \(2, 3\) \(got \(3, 2\)\)"):
        VampPrior(net, 2, 3, init=torch.zeros(3, 2))


@pytest.mark.parametrize(
    "out, match",
    [
        ((torch.zeros(2, 3),) * 3, r"must return \(loc, scale\), two tensors \(got 3 items\)"),
        ((torch.zeros(2, 3), torch.ones(2, 2)), r"\(loc, scale\) of shape \(K=2, L\) each"),
        ((torch.zeros(3, 2), torch.ones(3, 2)), r"\(loc, scale\) of shape \(K=2, L\) each"),
        ((torch.zeros(2, 3), "s"), r"two tensors"),
        (("out",), "must return \\(loc, scale\\) or one tensor of raw outputs \\(got str\\)"),
        (
            (torch.zeros(2, 5),),
            r"must map the pseudo-inputs to \(K=2, 2 \* L\) \(got shape \(2, 5\)",
        ),
        ((torch.zeros(3, 4),), r"\(K=2, 2 \* L\) \(got shape \(3, 4\)"),
        ((torch.zeros(2, 1, 4),), r"\(K=2, 2 \* L\) \(got shape \(2, 1, 4\)"),
    ],
)
def test_encoder_output_errors(out, match):
    prior = VampPrior(Fixed(*out) if len(out) > 1 else (lambda u, o=out[0]: o), 2, 3)
    with pytest.raises(ValueError, match=match):
        prior()
