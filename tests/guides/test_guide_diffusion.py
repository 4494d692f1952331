"""DiffusionChain, DiffusionELBO: marginals, posterior, unbiasedness, gradient variance, errors."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.nn import PyroModule

import ppl_vi
from ppl_vi.guides.diffusion import DiffusionChain, DiffusionELBO
from ppl_vi.models import diffusion_chain as dc

KW = dict(num_diffusion_steps=5, beta_max=0.3)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_chain_marginals_match_closed_form(schedule, float64):
    kw = dict(num_diffusion_steps=8, beta_max=0.3, schedule=schedule)
    guide = DiffusionChain(dc.model, **kw)
    n = 20000
    x = torch.tensor([[1.5, -0.7]]).expand(n, 2)
    draws = guide(x=x, **kw)  # guide plate over n copies of one point
    abar = guide.alphas_bar()
    for t in range(1, 9):
        z = draws[f"z_{t}"]
        mean_se = z.std(0) / math.sqrt(n)
        assert ((z.mean(0) - abar[t - 1].sqrt() * x[0]).abs() < 4 * mean_se).all()
        var = z.var(0)
        var_se = ((z - z.mean(0)) ** 2).std(0) / math.sqrt(n)
        assert ((var - (1 - abar[t - 1])).abs() < 4 * var_se).all()
    # power: the effect guarded against (one step off) is many standard errors away
    z = draws["z_4"]
    assert ((z.mean(0) - abar[4].sqrt() * x[0]).abs() > 10 * z.std(0) / math.sqrt(n)).any()


@pytest.mark.parametrize("schedule", ["linear", "cosine", "learned"])
def test_posterior_is_bayes_rule(schedule, float64):
    """q(z_{t-1} | z_t, x) proportional to q(z_t | z_{t-1}) q(z_{t-1} | x), on a grid (D = 1)."""
    guide = DiffusionChain(dc.model, num_diffusion_steps=6, beta_max=0.3, schedule=schedule)
    x, z_t = torch.tensor([[0.8]]), torch.tensor([[-0.3]])
    grid = torch.linspace(-6, 6, 200001).unsqueeze(-1)
    for t in range(2, 7):
        log_joint = guide.transition(grid, t).log_prob(z_t.expand_as(grid)) + guide.marginal(
            x.expand_as(grid), t - 1
        ).log_prob(grid)
        w = torch.softmax(log_joint, 0)
        post = guide.posterior(x, z_t, t).base_dist
        mean = (w * grid[:, 0]).sum()
        var = (w * (grid[:, 0] - mean) ** 2).sum()
        assert torch.allclose(mean, post.loc[0, 0], atol=1e-8)
        assert torch.allclose(var, post.scale[0, 0] ** 2, rtol=1e-6)


def test_schedules_agree_with_model_reference(float64):
    for schedule in ["linear", "cosine"]:
        guide = DiffusionChain(dc.model, num_diffusion_steps=7, beta_max=0.3, schedule=schedule)
        ref = dc.reference_schedule(7, schedule, 1e-4, 0.3)
        assert torch.allclose(guide.betas(), ref, atol=1e-12)
    lin = DiffusionChain(dc.model, num_diffusion_steps=7, beta_max=0.3)
    cos = DiffusionChain(dc.model, num_diffusion_steps=7, beta_max=0.3, schedule="cosine")
    learned = DiffusionChain(dc.model, num_diffusion_steps=7, beta_max=0.3, schedule="learned")
    assert (lin.betas() - cos.betas()).abs().max() > 0.05
    assert torch.allclose(learned.betas(), lin.betas(), atol=1e-5)  # initialised at linear


def _estimates(elbo, guide, data, n):
    return np.array([-elbo.loss(dc.model, guide, **data, **KW) for _ in range(n)])


@pytest.mark.parametrize("steps", ["all", "uniform"])
def test_rao_blackwellized_elbo_is_unbiased_for_full_chain_elbo(steps, float64):
    data = dc.load_data("gaussian", num_data=3)
    guide = DiffusionChain(dc.model, **KW)
    rb = _estimates(DiffusionELBO(steps=steps), guide, data, 800)
    full = _estimates(pyro.infer.Trace_ELBO(), guide, data, 800)
    se = math.sqrt(rb.var() / len(rb) + full.var() / len(full))
    assert abs(rb.mean() - full.mean()) < 4 * se


def _gradients(elbo, data, kw, n):
    guide = DiffusionChain(dc.model, **kw)
    elbo.loss(dc.model, guide, **data, **kw)  # create the model's parameters
    store = pyro.get_param_store()
    params = [store.get_param(name).unconstrained() for name in store.keys()]
    draws = []
    for _ in range(n):
        grads = torch.autograd.grad(elbo.differentiable_loss(dc.model, guide, **data, **kw), params)
        draws.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(draws).numpy()


def test_rao_blackwellized_gradient_has_lower_variance_than_full_chain(float64):
    # The summed closed-form KLs remove the Monte Carlo noise of log q(z_{t-1} | z_t, x); the
    # total gradient variance (trace of its covariance over all model parameters) must drop.
    # Tolerance: 3 bootstrap standard errors of the difference of the two traces.
    data = dc.load_data("gaussian", num_data=4)
    kw = dict(num_diffusion_steps=10, beta_max=0.3)
    rb = _gradients(DiffusionELBO(), data, kw, 300)
    full = _gradients(pyro.infer.Trace_ELBO(), data, kw, 300)
    means = [g.mean(0) for g in (rb, full)]
    np.testing.assert_allclose(means[0], means[1], atol=4 * np.sqrt(
        (rb.var(0) + full.var(0)) / len(rb)).max())
    rng = np.random.default_rng(0)
    boot = [
        full[i].var(0).sum() - rb[j].var(0).sum()
        for i, j in (rng.integers(0, len(rb), (2, len(rb))) for _ in range(200))
    ]
    diff = full.var(0).sum() - rb.var(0).sum()
    assert diff > 3 * np.std(boot), (rb.var(0).sum(), full.var(0).sum(), np.std(boot))


def test_elbo_rejects_other_guides_and_vectorized_particles():
    data = dc.load_data("ring", num_data=8)
    with pytest.raises(TypeError, match="DiffusionELBO needs a DiffusionChain guide"):
        DiffusionELBO().loss(dc.model, lambda **kw: None, **data, **KW)
    with pytest.raises(TypeError, match="vectorize_particles must be True or False"):
        DiffusionELBO(vectorize_particles=1)
    with pytest.raises(ValueError, match=r"num_particles must be an integer >= 1 \(got 0\)"):
        DiffusionELBO(num_particles=0)
    with pytest.raises(ValueError, match=r"steps must be one of \['all', 'uniform'\]"):
        DiffusionELBO(steps="one")


def test_learned_schedule_stays_monotone_after_training():
    data = dc.load_data("ring", num_data=128)
    kw = dict(num_diffusion_steps=8, beta_max=0.3)
    guide = DiffusionChain(dc.model, schedule="learned", **kw)
    svi = pyro.infer.SVI(dc.model, guide, pyro.optim.Adam({"lr": 0.05}), DiffusionELBO())
    for _ in range(100):
        svi.step(**data, **kw, subsample_size=64)
    abar = guide.alphas_bar()
    before = DiffusionChain(dc.model, schedule="linear", **kw).alphas_bar()
    assert (abar[1:] < abar[:-1]).all()
    assert (abar > 0).all() and (abar < 1).all()
    assert (abar - before).abs().max() > 1e-3  # the schedule did move
    assert pyro.get_param_store()["DiffusionChain.gamma_increments"].grad is not None


def test_learned_schedule_parameters_are_pyro_params_of_the_module():
    data = dc.load_data("ring", num_data=16)
    guide = DiffusionChain(dc.model, schedule="learned", **KW)
    assert isinstance(guide, PyroModule)
    trace = pyro.poutine.trace(guide).get_trace(**data, **KW)
    sites = {n for n, s in trace.nodes.items() if s["type"] == "param"}
    assert sites == {"DiffusionChain.gamma_1", "DiffusionChain.gamma_increments"}
    names = {n for n, _ in guide.named_parameters()}
    assert names == {"gamma_1_unconstrained", "gamma_increments_unconstrained"}
    store = pyro.get_param_store()
    assert guide.gamma_1_unconstrained is store._params["DiffusionChain.gamma_1"]
    # the marginal guide (used by DiffusionELBO) reads the same params through the store
    trace = pyro.poutine.trace(guide.marginal_guide).get_trace(**data, **KW)
    assert {n for n, s in trace.nodes.items() if s["type"] == "param"} == sites
    before = guide.gamma().detach().clone()
    with torch.no_grad():
        store._params["DiffusionChain.gamma_1"].add_(1.0)  # an edit in the store reaches the guide
    assert torch.allclose(guide.gamma().detach(), before + 1)


def test_fixed_schedule_has_no_parameters():
    data = dc.load_data("ring", num_data=16)
    guide = DiffusionChain(dc.model, **KW)
    trace = pyro.poutine.trace(guide).get_trace(**data, **KW)
    assert not [n for n, s in trace.nodes.items() if s["type"] == "param"]
    assert not list(guide.parameters())


@pytest.mark.parametrize("schedule", ["linear", "learned"])
def test_fit_save_load_round_trip_gives_identical_parameters(schedule, tmp_path):
    data = dc.load_data("ring", num_data=64)
    guide_kwargs = {**KW, "schedule": schedule}
    result = ppl_vi.fit(dc.model, **data, **KW, subsample_size=32, guide="diffusion",
                        guide_kwargs=guide_kwargs, elbo=DiffusionELBO(), num_steps=10, lr=0.01,
                        progress=False)
    path = tmp_path / "diffusion.pt"
    result.save(path)
    loaded = ppl_vi.load(path, dc.model)
    assert isinstance(loaded.guide, DiffusionChain)
    assert loaded.guide.get_config() == result.guide.get_config()
    fitted, restored = result.params, loaded.params
    assert set(fitted) == set(restored)
    assert "diffusion_chain.log_scale" in fitted
    learned = {"DiffusionChain.gamma_1", "DiffusionChain.gamma_increments"}
    assert (learned <= set(fitted)) == (schedule == "learned")
    for name, value in fitted.items():
        assert torch.equal(value, restored[name]), name
    # power: the fit moved the parameters, so equality is not the initial values agreeing
    fresh = DiffusionChain(dc.model, **guide_kwargs)
    with pyro.poutine.block():
        fresh(**data, **KW)
    init = {name: pyro.get_param_store()[name] for name in fitted}
    assert all(not torch.equal(init[name], fitted[name]) for name in fitted)
    if schedule == "learned":
        with loaded.param_scope():
            assert torch.equal(loaded.guide.alphas_bar(), _abar(result))


def _abar(result):
    with result.param_scope():
        return result.guide.alphas_bar()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="quadratic"), r"schedule must be one of \['linear', 'cosine', 'learned'\]"),
        (dict(num_diffusion_steps=0), r"num_diffusion_steps must be an integer >= 1 \(got 0\)"),
        (dict(beta_min=0.5, beta_max=0.1), "need 0 < beta_min <= beta_max < 1"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionChain(dc.model, **kwargs)


def test_step_mismatch_and_missing_data_raise():
    data = dc.load_data("ring", num_data=8)
    guide = DiffusionChain(dc.model, num_diffusion_steps=4)
    with pytest.raises(ValueError, match="latent sites must be z_1..z_4"):
        guide(**data, **KW)
    guide = DiffusionChain(dc.model, **KW, obs_site="y")
    with pytest.raises(ValueError, match="observed sample site 'y'"):
        guide(**data, **KW)
    guide = DiffusionChain(dc.model, **KW)
    with pytest.raises(ValueError, match="posterior needs 2 <= t <= 5"):
        guide.posterior(data["x"], data["x"], 1)
