"""DiffusionChain, DiffusionELBO: documented defaults, argument bounds, schedules, estimators."""

import math

import numpy as np
import pyro
import pytest
import torch

from ppl_vi.guides.diffusion import DiffusionChain, DiffusionELBO
from ppl_vi.models import diffusion_chain as dc

KW = dict(num_diffusion_steps=5, beta_max=0.3)


# ---- constructor contract ------------------------------------------------------------------


def test_documented_defaults():
    config = DiffusionChain(dc.model).get_config()
    assert config == {
        "num_diffusion_steps": 1000,
        "schedule": "linear",
        "beta_min": 1e-4,
        "beta_max": 0.02,
        "obs_site": "x",
        "plate_name": "data",
        "data_arg": "x",
    }
    elbo = DiffusionELBO()
    assert elbo.num_particles == 1
    assert elbo.vectorize_particles is False
    assert elbo.strict_enumeration_warning is True
    assert elbo.steps == "all"


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        DiffusionChain(dc.model, 5)
    assert DiffusionChain(model=dc.model).model is dc.model


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_diffusion_steps=1),
        dict(beta_min=0.05, beta_max=0.05),
        dict(beta_min=1e-12, beta_max=0.999),
    ],
)
def test_arguments_at_the_edges_are_accepted(kwargs):
    guide = DiffusionChain(dc.model, **kwargs)
    for name, value in kwargs.items():
        assert guide.get_config()[name] == value


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_diffusion_steps=0), "num_diffusion_steps must be an integer >= 1"),
        (dict(num_diffusion_steps=True), "num_diffusion_steps must be an integer >= 1"),
        (dict(num_diffusion_steps=1.5), "num_diffusion_steps must be an integer >= 1"),
        (dict(beta_min=0.0), "need 0 < beta_min <= beta_max < 1"),
        (dict(beta_min=-0.5), "need 0 < beta_min <= beta_max < 1"),
        (dict(beta_max=1.0), "need 0 < beta_min <= beta_max < 1"),
        (dict(beta_max=1.5), "need 0 < beta_min <= beta_max < 1"),
        (dict(beta_min=0.0, schedule="cosine"), "need 0 < beta_min <= beta_max < 1"),
    ],
)
def test_arguments_out_of_bounds_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionChain(dc.model, **kwargs)


@pytest.mark.parametrize("num_particles", [0, 1.5, True, 2.0])
def test_elbo_rejects_non_integer_particles(num_particles):
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        DiffusionELBO(num_particles=num_particles)


# ---- schedules -----------------------------------------------------------------------------


def _cosine_abar(t_max, s=0.008):
    f = [math.cos((t / t_max + s) / (1 + s) * math.pi / 2) ** 2 for t in range(t_max + 1)]
    abar = [f[t] / f[0] for t in range(t_max + 1)]
    betas = [min(1 - abar[t] / abar[t - 1], 0.999) for t in range(1, t_max + 1)]
    return np.cumprod(1 - np.array(betas)), np.array(betas)


@pytest.mark.parametrize("t_max", [1, 2, 7, 50])
def test_cosine_schedule_is_nichol_dhariwal(t_max, float64):
    guide = DiffusionChain(dc.model, num_diffusion_steps=t_max, schedule="cosine")
    abar, betas = _cosine_abar(t_max)
    np.testing.assert_allclose(guide.betas().numpy(), betas, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(guide.alphas_bar().numpy(), abar, rtol=1e-9, atol=1e-15)
    assert betas[-1] == 0.999  # the clip is exercised at the last step


def test_linear_schedule_small_t(float64):
    one = DiffusionChain(dc.model, num_diffusion_steps=1, beta_min=0.01, beta_max=0.3)
    np.testing.assert_allclose(one.betas().numpy(), [0.01], rtol=1e-12)
    np.testing.assert_allclose(one.alphas_bar().numpy(), [0.99], rtol=1e-12)
    two = DiffusionChain(dc.model, num_diffusion_steps=2, beta_min=0.01, beta_max=0.3)
    np.testing.assert_allclose(two.betas().numpy(), [0.01, 0.3], rtol=1e-12)
    np.testing.assert_allclose(two.alphas_bar().numpy(), [0.99, 0.99 * 0.7], rtol=1e-12)
    three = DiffusionChain(dc.model, num_diffusion_steps=3, beta_min=0.1, beta_max=0.3)
    np.testing.assert_allclose(three.betas().numpy(), [0.1, 0.2, 0.3], rtol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "learned"])
def test_schedule_follows_dtype_of_ref(schedule):
    assert torch.get_default_dtype() == torch.float32
    guide = DiffusionChain(dc.model, schedule=schedule, **KW)
    ref = torch.zeros(3, dtype=torch.float64)
    assert guide.alphas_bar().dtype == torch.float32
    assert guide.betas().dtype == torch.float32
    assert guide.alphas_bar(ref).dtype == torch.float64
    assert guide.betas(ref).dtype == torch.float64
    x = torch.ones(2, 3, dtype=torch.float64)
    assert guide.marginal(x, 2).mean.dtype == torch.float64
    torch.testing.assert_close(
        guide.alphas_bar(ref).float(), guide.alphas_bar(), rtol=1e-5, atol=1e-7
    )


def _linear_gamma(t_max, beta_min, beta_max):
    betas = np.linspace(beta_min, beta_max, t_max)
    abar = np.cumprod(1 - betas)
    return np.log1p(-abar) - np.log(abar)


@pytest.mark.parametrize("t_max", [2, 10, 1000])
def test_learned_gamma_starts_at_linear_and_increases(t_max, float64):
    guide = DiffusionChain(dc.model, num_diffusion_steps=t_max, schedule="learned", beta_max=0.3)
    gamma = guide.gamma().detach().numpy()
    np.testing.assert_allclose(gamma, _linear_gamma(t_max, 1e-4, 0.3), rtol=1e-9, atol=1e-9)
    assert (np.diff(gamma) > 0).all()
    lin = DiffusionChain(dc.model, num_diffusion_steps=t_max, beta_max=0.3)
    torch.testing.assert_close(guide.alphas_bar().detach(), lin.alphas_bar())


def test_learned_gamma_increases_even_for_very_negative_raw_increments(float64):
    guide = DiffusionChain(dc.model, schedule="learned", **KW)
    guide.gamma()  # create the params
    raw = pyro.get_param_store().get_param("DiffusionChain.gamma_increments").unconstrained()
    with torch.no_grad():
        raw.fill_(-100.0)
    gamma = guide.gamma().detach()
    assert (gamma[1:] > gamma[:-1]).all()
    # the documented floor: each increment is softplus(rho) + 1e-6 >= 1e-6
    torch.testing.assert_close(gamma[1:] - gamma[:-1], torch.full((4,), 1e-6), rtol=1e-6, atol=0)


def test_learned_gamma_is_finite_and_increasing_when_linear_steps_are_tiny(float64):
    # beta = 1e-8 over 1.2e6 steps: the linear schedule's gamma increments fall below 1e-6,
    # so the initialisation has to floor them and still give a strictly increasing gamma
    guide = DiffusionChain(
        dc.model, num_diffusion_steps=1_200_000, schedule="learned", beta_min=1e-8, beta_max=1e-8
    )
    gamma = guide.gamma().detach()
    assert torch.isfinite(gamma).all()
    assert (gamma[1:] > gamma[:-1]).all()
    assert (guide.alphas_bar() < 1).all() and (guide.alphas_bar() > 0).all()


# ---- the guide as a Pyro program -------------------------------------------------------------


def test_obs_site_must_be_observed():
    data = dc.load_data("ring", num_data=8)
    guide = DiffusionChain(dc.model, **KW, obs_site="z_1")
    with pytest.raises(ValueError, match="observed sample site 'z_1'"):
        guide(**data, **KW)
    guide = DiffusionChain(dc.model, **KW, plate_name="batch")
    with pytest.raises(ValueError, match="not inside a plate named 'batch'"):
        guide(**data, **KW)


def test_step_mismatch_message_lists_first_three_latents():
    data = dc.load_data("ring", num_data=8)
    guide = DiffusionChain(dc.model, num_diffusion_steps=4)
    with pytest.raises(ValueError) as info:
        guide(**data, **KW)
    assert "got 5 latent sites: ['z_1', 'z_2', 'z_3']...)" in str(info.value)


@pytest.mark.parametrize("program", ["forward", "marginal_guide"])
def test_guide_samples_exactly_z1_to_zT_in_the_subsampled_plate(program):
    data = dc.load_data("ring", num_data=40)
    guide = DiffusionChain(dc.model, **KW)
    trace = pyro.poutine.trace(getattr(guide, program)).get_trace(**data, **KW, subsample_size=16)
    samples = {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not pyro.poutine.util.site_is_subsample(site)
    }
    assert samples == {f"z_{t}" for t in range(1, 6)}
    for t in range(1, 6):
        assert trace.nodes[f"z_{t}"]["value"].shape == (16, 2)
    assert len(trace.nodes["data"]["value"]) == 16
    full = pyro.poutine.trace(getattr(DiffusionChain(dc.model, **KW), program)).get_trace(
        **data, **KW
    )
    assert full.nodes["z_3"]["value"].shape == (40, 2)
    assert torch.equal(full.nodes["data"]["value"], torch.arange(40))


def test_subsampled_guide_plate_has_the_full_size_and_its_scale():
    # The guide's plate is the model's: full size 40, mini-batches of 16 drawn from all rows
    # (a plate built from the frame's size, 16, would only ever see the first 16 rows).
    data = dc.load_data("ring", num_data=40)
    guide = DiffusionChain(dc.model, **KW)
    trace = pyro.poutine.trace(guide).get_trace(**data, **KW, subsample_size=16)
    assert trace.nodes["z_1"]["scale"] == pytest.approx(40 / 16)
    assert trace.nodes["data"]["fn"].size == 40
    draws = [pyro.poutine.trace(guide).get_trace(**data, **KW, subsample_size=16) for _ in range(5)]
    assert max(int(t.nodes["data"]["value"].max()) for t in draws) >= 16  # rows past the 16th


# ---- DiffusionELBO estimators ----------------------------------------------------------------


def _loss_pairs(elbos, data, kw, n):
    """Loss of each ELBO on the same draws: reseed before each so that the z_t coincide."""
    guide = DiffusionChain(dc.model, **kw)
    elbos[0].loss(dc.model, guide, **data, **kw)  # create the model's parameters
    out = []
    for seed in range(n):
        row = []
        for elbo in elbos:
            pyro.set_rng_seed(1000 + seed)
            row.append(elbo.loss(dc.model, guide, **data, **kw))
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("t_max, vectorize, num_particles", [(5, False, 1), (4, True, 3)])
def test_uniform_step_estimator_is_unbiased_for_the_sum(t_max, vectorize, num_particles, float64):
    """(T - 1) KL_{t_i} with t_i ~ U{2..T} vs the sum, paired on the same draws of z_t."""
    data = dc.load_data("gaussian", num_data=4)
    kw = dict(num_diffusion_steps=t_max, beta_max=0.3)
    opts = dict(num_particles=num_particles, vectorize_particles=vectorize)
    losses = _loss_pairs(
        [DiffusionELBO(steps="all", **opts), DiffusionELBO(steps="uniform", **opts)], data, kw, 80
    )
    diff = losses[:, 1] - losses[:, 0]
    assert diff.std() > 0  # the pick is random
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff)), (diff.mean(), diff.std())


@pytest.mark.parametrize("t_max", [1, 2])
def test_small_chains_are_unbiased_for_the_full_chain_elbo(t_max, float64):
    data = dc.load_data("gaussian", num_data=3)
    kw = dict(num_diffusion_steps=t_max, beta_min=0.1, beta_max=0.3)
    guide = DiffusionChain(dc.model, **kw)
    rb = np.array([-DiffusionELBO().loss(dc.model, guide, **data, **kw) for _ in range(150)])
    full = np.array(
        [-pyro.infer.Trace_ELBO().loss(dc.model, guide, **data, **kw) for _ in range(150)]
    )
    assert np.isfinite(rb).all()
    se = math.sqrt(rb.var() / len(rb) + full.var() / len(full))
    assert abs(rb.mean() - full.mean()) < 4 * se, (rb.mean(), full.mean(), se)
    if t_max == 2:  # uniform with one KL term is the sum itself
        pair = _loss_pairs([DiffusionELBO(), DiffusionELBO(steps="uniform")], data, kw, 3)
        np.testing.assert_allclose(pair[:, 0], pair[:, 1], rtol=1e-12)


def test_loss_is_the_average_over_particles(float64):
    data = dc.load_data("gaussian", num_data=4)
    guide = DiffusionChain(dc.model, **KW)
    one, two = DiffusionELBO(), DiffusionELBO(num_particles=2)
    one.loss(dc.model, guide, **data, **KW)
    pyro.set_rng_seed(7)
    singles = [one.loss(dc.model, guide, **data, **KW) for _ in range(2)]
    pyro.set_rng_seed(7)
    pair = two.loss(dc.model, guide, **data, **KW)
    assert pair == pytest.approx(sum(singles) / 2, rel=1e-12)
    # and in expectation: 2 particles and 1 particle estimate the same loss
    a = np.array([one.loss(dc.model, guide, **data, **KW) for _ in range(60)])
    b = np.array([two.loss(dc.model, guide, **data, **KW) for _ in range(30)])
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * se
