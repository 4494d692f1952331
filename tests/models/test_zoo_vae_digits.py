"""The VAE's generative model on binarised digits: data, shapes, subsampling, decoder handling,
and the VampPrior option (prior="vamp") with the encoder it shares with the guide."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from ppl_vi.guides.amortized import Amortized
from ppl_vi.models import vae_digits as vd

DECODER = (
    "vae_decoder$$$0.weight",
    "vae_decoder$$$0.bias",
    "vae_decoder$$$2.weight",
    "vae_decoder$$$2.bias",
)


def test_load_data_split_and_binarisation():
    from sklearn.datasets import load_digits

    train, test = vd.load_data("train")["x"], vd.load_data("test")["x"]
    assert train.shape == (1500, 64) and test.shape == (297, 64)
    assert train.dtype == torch.get_default_dtype()
    raw = torch.as_tensor(load_digits().data)
    torch.testing.assert_close(train[0], (raw[0] > 8).to(train.dtype))
    torch.testing.assert_close(test[-1], (raw[-1] > 8).to(test.dtype))
    assert set(torch.cat([train, test]).unique().tolist()) == {0.0, 1.0}
    assert vd.load_data("test", n=5)["x"].shape == (5, 64)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        vd.load_data("valid")


def test_shapes_and_params():
    data = vd.load_data(n=10)
    trace = poutine.trace(vd.model).get_trace(**data, latent_dim=3, hidden_dim=7)
    assert trace.nodes["z"]["value"].shape == (10, 3)
    assert trace.nodes["z"]["fn"].event_shape == (3,)
    assert trace.nodes["x"]["fn"].batch_shape == (10,)
    assert trace.nodes["x"]["fn"].event_shape == (64,)
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted(DECODER)
    assert store["vae_decoder$$$0.weight"].shape == (7, 3)
    assert store["vae_decoder$$$2.weight"].shape == (64, 7)


def test_subsampling_uses_the_batch_rows_and_scales():
    data = vd.load_data()
    trace = poutine.trace(vd.model).get_trace(**data, subsample_size=32)
    idx = trace.nodes["data"]["value"]
    assert trace.nodes["z"]["value"].shape == (32, 8)
    torch.testing.assert_close(trace.nodes["x"]["value"], data["x"][idx])
    assert trace.nodes["x"]["scale"] == pytest.approx(1500 / 32)
    assert trace.nodes["z"]["scale"] == pytest.approx(1500 / 32)


def test_decoder_init_is_fixed_and_the_template_is_never_trained():
    data = vd.load_data(n=16)
    template = {k: v.clone() for k, v in vd.decoder_template().state_dict().items()}
    poutine.trace(vd.model).get_trace(**data)
    first = {k: pyro.param(k).detach().clone() for k in DECODER}
    guide = Amortized(vd.model, hidden_dims=(16,))
    svi = SVI(vd.model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        svi.step(**data)
    assert not torch.equal(pyro.param(DECODER[0]).detach(), first[DECODER[0]])
    for k, v in vd.decoder_template().state_dict().items():
        torch.testing.assert_close(v, template[k], atol=0, rtol=0)
    pyro.clear_param_store()  # a fresh store starts from the same weights
    poutine.trace(vd.model).get_trace(**data)
    for k in DECODER:
        torch.testing.assert_close(pyro.param(k).detach(), first[k], atol=0, rtol=0)


def test_one_svi_step_updates_decoder_and_encoder():
    data = vd.load_data(n=64)
    guide = Amortized(vd.model, hidden_dims=(32,))
    svi = SVI(vd.model, guide, Adam({"lr": 0.01}), Trace_ELBO(max_plate_nesting=1))
    guide(**data, subsample_size=16)
    store = pyro.get_param_store()
    before = {k: store[k].detach().clone() for k in store.keys()}
    assert any(k.startswith("Amortized.encoder") for k in before)
    assert all(k in before for k in DECODER)
    svi.step(**data, subsample_size=16)
    for k, v in before.items():
        assert not torch.equal(store[k].detach(), v), k  # every weight moved


def test_size_change_needs_a_fresh_store():
    data = vd.load_data(n=4)
    poutine.trace(vd.model).get_trace(**data)
    with pytest.raises(ValueError, match="call pyro.clear_param_store"):
        poutine.trace(vd.model).get_trace(**data, latent_dim=3)


def test_prior_predictive_and_dtype(float64):
    trace = poutine.trace(vd.model).get_trace(num_data=5)
    assert trace.nodes["x"]["value"].shape == (5, 64)
    assert trace.nodes["x"]["value"].dtype == torch.float64
    pyro.clear_param_store()
    data = {"x": vd.load_data(n=3)["x"].float()}
    trace = poutine.trace(vd.model).get_trace(**data)
    assert trace.nodes["z"]["value"].dtype == torch.float32
    with pytest.raises(ValueError, match="pass either x or num_data"):
        vd.model()


# ------------------------------------------------------------------------------- VampPrior
ENCODER = (
    "vae_encoder$$$0.weight",
    "vae_encoder$$$0.bias",
    "vae_encoder$$$2.weight",
    "vae_encoder$$$2.bias",
)
PSEUDO = "vae_vamp.pseudo_inputs"


def _hand_vamp_log_prob(z, u, latent_dim, hidden_dim=vd.DEFAULT_HIDDEN_DIM):
    """log (1/K) sum_k N(z; mu(u_k), sigma(u_k)^2) with the encoder template applied by hand."""
    net = vd.encoder_template(latent_dim, hidden_dim)
    w0, b0 = net[0].weight.to(u), net[0].bias.to(u)
    w2, b2 = net[2].weight.to(u), net[2].bias.to(u)
    out = torch.relu(u @ w0.T + b0) @ w2.T + b2  # (K, 2L)
    loc = out[:, :latent_dim]
    scale = torch.nn.functional.softplus(out[:, latent_dim:] + math.log(math.expm1(0.1))) + 1e-6
    per = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (..., K)
    return torch.logsumexp(per, -1) - math.log(u.shape[0])


def test_default_prior_is_the_standard_normal_and_unchanged(float64):
    data = vd.load_data(n=12)
    data = {"x": data["x"].double()}
    pyro.set_rng_seed(3)
    default = poutine.trace(vd.model).get_trace(**data, latent_dim=3)
    pyro.set_rng_seed(3)
    explicit = poutine.trace(vd.model).get_trace(**data, latent_dim=3, prior="standard")
    assert torch.equal(default.nodes["z"]["value"], explicit.nodes["z"]["value"])
    assert sorted(pyro.get_param_store().keys()) == sorted(DECODER)
    z = default.nodes["z"]["value"]
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(default.nodes["z"]["fn"].log_prob(z), expected, rtol=0, atol=1e-12)


def test_vamp_prior_is_the_encoder_mixture_at_the_pseudo_inputs(float64):
    data = {"x": vd.load_data(n=40)["x"].double()}
    trace = poutine.trace(vd.model).get_trace(**data, latent_dim=3, prior="vamp", num_pseudo=7)
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted(DECODER + ENCODER + (PSEUDO,))
    assert store[PSEUDO].shape == (7, 64)
    assert store["vae_encoder$$$2.weight"].shape == (6, vd.DEFAULT_HIDDEN_DIM)
    fn = trace.nodes["z"]["fn"]
    assert isinstance(fn, vd.VampMixture) and fn.batch_shape == (40,) and fn.event_shape == (3,)
    z = 1.5 * torch.randn(5, 40, 3)
    u = pyro.param(PSEUDO).detach()
    expected = _hand_vamp_log_prob(z, u, 3)
    torch.testing.assert_close(fn.log_prob(z), expected, rtol=0, atol=1e-12)
    # the flag changes the model: the same z has another prior density
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert (fn.log_prob(z) - standard).abs().min() > 1e-3


def test_pseudo_inputs_start_at_training_images():
    x = vd.load_data(n=30)["x"]
    poutine.trace(vd.model).get_trace(x=x, prior="vamp", num_pseudo=40)  # K > N: wraps around
    u = pyro.param(PSEUDO).detach()
    # every row is a training image moved 5% towards 0.5, and all 30 images are used
    dist_to_images = (u.unsqueeze(1) - (0.05 + 0.9 * x)).abs().amax(-1)  # (K, N)
    assert dist_to_images.min(1).values.max() < 1e-6
    assert set(dist_to_images.argmin(1).tolist()) == set(range(30))
    assert u.min() > 0 and u.max() < 1
    pyro.clear_param_store()  # a fresh store starts from the same rows
    poutine.trace(vd.model).get_trace(x=x, prior="vamp", num_pseudo=40)
    assert torch.equal(pyro.param(PSEUDO).detach(), u)
    pyro.clear_param_store()
    poutine.trace(vd.model).get_trace(num_data=4, prior="vamp", num_pseudo=5)  # no data
    u = pyro.param(PSEUDO).detach()
    assert u.shape == (5, 64) and ((u - 0.05).abs() < 0.05).all()


def test_shared_encoder_gives_the_guide_the_priors_encoder(float64):
    """Amortized(encoder=shared_encoder()) runs the model's encoder: one set of parameters,
    moved by the prior's and the guide's gradients, and the prior's components are the
    guide's q(z | u_k)."""
    data = {"x": vd.load_data(n=64)["x"].double()}
    options = {"latent_dim": 3, "hidden_dim": 16, "prior": "vamp", "num_pseudo": 5}
    guide = Amortized(vd.model, encoder=vd.shared_encoder(3, 16))
    svi = SVI(vd.model, guide, Adam({"lr": 0.01}), Trace_ELBO(max_plate_nesting=1))
    guide(**data, **options, subsample_size=16)
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted(DECODER + ENCODER + (PSEUDO,))
    before = {k: store[k].detach().clone() for k in store.keys()}
    svi.step(**data, **options, subsample_size=16)
    for k, v in before.items():
        assert not torch.equal(store[k].detach(), v), k  # every weight moved
    u = pyro.param(PSEUDO).detach()
    with torch.no_grad():
        loc, scale = guide.local_params(x=u, **options)["z"]  # the guide's q(z | u_k)
        prior = poutine.trace(vd.model).get_trace(**data, **options).nodes["z"]["fn"]
    comp = prior.component_distribution.base_dist
    torch.testing.assert_close(comp.loc[0], loc, rtol=0, atol=0)
    torch.testing.assert_close(comp.scale[0], scale, rtol=0, atol=0)


def test_the_prior_trains_the_encoder_and_pseudo_inputs(float64):
    data = {"x": vd.load_data(n=20)["x"].double()}
    trace = poutine.trace(vd.model).get_trace(**data, latent_dim=2, hidden_dim=8, prior="vamp")
    site = trace.nodes["z"]
    site["fn"].log_prob(site["value"]).sum().backward()
    store = pyro.get_param_store()
    for name in ENCODER:
        assert store[name].grad.abs().max() > 0, name
    assert store._params[PSEUDO].grad.abs().max() > 0
    assert store[PSEUDO].shape == (vd.DEFAULT_NUM_PSEUDO, 64)


def test_vamp_fit_recipe_runs_with_the_shared_encoder():
    import ppl_vi

    result = ppl_vi.fit(
        vd.model,
        **vd.load_data(n=100),
        prior="vamp",
        num_pseudo=10,
        latent_dim=4,
        subsample_size=20,
        guide=Amortized,
        guide_kwargs={"encoder": vd.shared_encoder(4)},
        num_steps=5,
        progress=False,
        convergence=None,
        seed=0,
    )
    assert sorted(result.params) == sorted(DECODER + ENCODER + (PSEUDO,))


def test_prior_option_errors():
    data = vd.load_data(n=4)
    with pytest.raises(
        ValueError, match=r"prior must be 'standard' or 'vamp' \(got prior='gauss'\)"
    ):
        vd.model(**data, prior="gauss")
    with pytest.raises(ValueError, match="num_pseudo sets the VampPrior's size and needs prior="):
        vd.model(**data, num_pseudo=5)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"num_pseudo must be an integer >= 1 \(got"):
            vd.model(**data, prior="vamp", num_pseudo=bad)
    vd.model(**data, prior="vamp", num_pseudo=3)
    with pytest.raises(ValueError, match="holds 'vae_vamp.pseudo_inputs' with shape"):
        vd.model(**data, prior="vamp", num_pseudo=4)
    pyro.clear_param_store()
    vd.model(**data, prior="vamp", num_pseudo=3)
    with pytest.raises(ValueError, match=r"'vae_encoder\$\$\$0.weight' with shape \(128, 64\)"):
        vd.shared_encoder(hidden_dim=7)(data["x"])  # the guide's side: the same check
    with pytest.raises(ValueError, match="latent_dim and hidden_dim must be >= 1"):
        vd.shared_encoder(0)
