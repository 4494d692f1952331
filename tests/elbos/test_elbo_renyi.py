"""RenyiELBO: exact identities, equivalences with IWAE, Pyro and Trace_ELBO, VR-max, the
score-function term, a fit and errors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _exact import NOISE_SCALE, PRIOR_SCALE, mean_field_at, pop_grads

import ppl_vi
from ppl_vi.elbos.iwae import IWAE
from ppl_vi.elbos.renyi import RenyiELBO, renyi_bound
from ppl_vi.models import normal_normal

ALPHAS = [-1.0, 0.0, 0.5, 2.0, -math.inf]


def run(elbo, guide, data, seed):
    """``(loss, loss_and_grads, flat guide gradient)`` of one draw with a fixed seed."""
    pyro.set_rng_seed(seed)
    loss = elbo.loss(normal_normal.model, guide, **data)
    pyro.set_rng_seed(seed)
    value = elbo.loss_and_grads(normal_normal.model, guide, **data)
    return loss, value, pop_grads(list(guide.parameters()))


# ---------------------------------------------------------------- exact identities
@pytest.mark.parametrize("alpha", ALPHAS)
def test_bound_is_the_log_evidence_at_the_exact_posterior(float64, alpha):
    data = normal_normal.load_data()
    log_z = normal_normal.log_evidence(**data).item()
    guide = mean_field_at(data)
    elbo = RenyiELBO(alpha=alpha, num_particles=8)
    loss, value, _ = run(elbo, guide, data, seed=0)
    assert loss == pytest.approx(-log_z, abs=1e-8)
    assert value == pytest.approx(-log_z, abs=1e-8)
    particles = elbo.particles(normal_normal.model, guide, (), data)
    assert (particles.log_weights - log_z).abs().max() < 1e-8
    assert particles.traces[0][1].nodes["mu"]["value"].std() > 0.05, "the particles differ"


def test_alpha_0_is_iwae_on_the_same_draws(float64):
    data = normal_normal.load_data()
    guide = mean_field_at(data, shift=1.0, scale_factor=1.5)
    renyi = run(RenyiELBO(alpha=0.0, num_particles=8, max_plate_nesting=1), guide, data, seed=4)
    iwae = run(IWAE(num_particles=8, max_plate_nesting=1), guide, data, seed=4)
    assert renyi[0] == iwae[0] and renyi[1] == iwae[1]
    torch.testing.assert_close(renyi[2], iwae[2], rtol=0, atol=0)
    other = run(RenyiELBO(alpha=0.5, num_particles=8, max_plate_nesting=1), guide, data, seed=4)
    assert other[0] - iwae[0] > 0.01, "alpha = 0.5 gives a lower bound on the same draws"


@pytest.mark.parametrize("alpha", [-1.0, 0.5, 2.0])
def test_loss_and_gradient_equal_pyro_renyi_on_the_same_draws(float64, alpha):
    data = normal_normal.load_data()
    guide = mean_field_at(data, shift=1.0, scale_factor=1.5)
    ours = run(RenyiELBO(alpha, 8, max_plate_nesting=1), guide, data, seed=1)
    theirs = run(
        pyro.infer.RenyiELBO(alpha, 8, max_plate_nesting=1, vectorize_particles=True),
        guide,
        data,
        seed=1,
    )
    assert ours[0] == pytest.approx(theirs[0], abs=1e-10)
    assert ours[1] == pytest.approx(theirs[1], abs=1e-10)
    torch.testing.assert_close(ours[2], theirs[2], rtol=0, atol=1e-10)


def test_vr_max_takes_the_best_particle_and_its_gradient(float64):
    """VR-max: the loss is -max_k log w_k and the gradient is that particle's.

    With q = N(m, s^2), s = softplus(zeta), z = m + s e and g(z) = d log p(x, z) / dz, the best
    particle contributes d/dm = g(z), d/dzeta = (g(z) e + 1/s) s'(zeta).
    """
    data = normal_normal.load_data()
    x = data["x"]
    guide = mean_field_at(data, shift=1.0, scale_factor=1.5)
    store = pyro.get_param_store()
    m = store._params["MeanField.locs.mu"].detach().clone()
    zeta = store._params["MeanField.scales.mu"].detach().clone()
    s = torch.nn.functional.softplus(zeta)
    elbo = RenyiELBO(alpha=-math.inf, num_particles=8, max_plate_nesting=1)
    loss, value, grads = run(elbo, guide, data, seed=3)
    pyro.set_rng_seed(3)
    particles = elbo.particles(normal_normal.model, guide, (), data)
    log_w = particles.log_weights
    assert loss == pytest.approx(-log_w.max().item(), abs=1e-12)
    assert value == pytest.approx(loss, abs=1e-12)
    z = particles.traces[0][1].nodes["mu"]["value"].reshape(-1)[log_w.argmax()]
    e = (z - m) / s
    g = -z / PRIOR_SCALE**2 + (x - z).sum() / NOISE_SCALE**2
    expected = torch.stack([g, (g * e + 1 / s) * torch.sigmoid(zeta)])
    torch.testing.assert_close(grads, -expected, rtol=1e-10, atol=1e-10)  # the loss is -bound
    assert log_w.max() - log_w.min() > 0.1, "the particles' weights differ"


def test_renyi_bound_matches_the_direct_formula_and_is_stable(float64):
    log_w = torch.randn(6, 3)
    w = log_w.exp().numpy()
    for alpha in (-2.0, 0.0, 0.3, 3.0):
        direct = np.log(np.mean(w ** (1 - alpha), 0)) / (1 - alpha)
        np.testing.assert_allclose(renyi_bound(log_w, alpha).numpy(), direct, rtol=0, atol=1e-12)
        # shifting every log weight by c shifts the bound by c, far beyond exp's range
        shifted = renyi_bound(log_w - 1000.0, alpha)
        np.testing.assert_allclose(shifted.numpy(), direct - 1000.0, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(renyi_bound(log_w, -math.inf).numpy(), log_w.max(0).values)


# ---------------------------------------------------------------- alpha -> 1 and Trace_ELBO
def replicated(x, reps):
    """normal_normal ``reps`` times over in an outer plate: one independent bound per replica."""
    with pyro.plate("reps", reps, dim=-2):
        normal_normal.model(x)


def test_alpha_near_1_matches_trace_elbo_in_expectation(float64):
    """A guide one posterior sd off: the ELBO is log Z - 1/2 and log w has sd 1.

    Near alpha = 1 the bound is mean_k log w_k + O(1 - alpha): with |1 - alpha| = 1e-3 the
    offset is ~5e-4, below the standard errors here (~8e-3).
    """
    data = normal_normal.load_data()
    x = data["x"]
    log_z = normal_normal.log_evidence(**data).item()
    post = normal_normal.exact_posterior(**data)["mu"]

    def guide(x, reps):
        with pyro.plate("reps", reps, dim=-2):
            pyro.sample("mu", dist.Normal(post.loc + post.scale, post.scale))

    reps = 4000
    # Trace_ELBO: 40 batches, each the mean of `reps` single-particle ELBO estimates
    trace_elbo = pyro.infer.Trace_ELBO(max_plate_nesting=2)
    batches = torch.tensor([-trace_elbo.loss(replicated, guide, x, reps) / reps for _ in range(40)])
    elbo_mean, elbo_se = batches.mean().item(), batches.std().item() / math.sqrt(40)
    assert elbo_mean == pytest.approx(log_z - 0.5, abs=4 * elbo_se)
    means = {}
    for alpha in (1 - 1e-3, 1 + 1e-3, 0.0):
        elbo = RenyiELBO(alpha=alpha, num_particles=8, max_plate_nesting=2)
        with torch.no_grad():
            bounds = elbo.bound(elbo.particles(replicated, guide, (x, reps * 10), {}).log_weights)
        mean, se = bounds.mean().item(), bounds.std().item() / math.sqrt(bounds.numel())
        means[alpha] = mean, math.hypot(se, elbo_se)
    for alpha in (1 - 1e-3, 1 + 1e-3):
        mean, se = means[alpha]
        assert abs(mean - elbo_mean) < 4 * se
    # power: the IWAE bound (alpha = 0) on 8 particles is many standard errors above the ELBO
    mean, se = means[0.0]
    assert mean - elbo_mean > 10 * se


# ---------------------------------------------------------------- score-function term
@pytest.mark.parametrize("alpha", [0.0, 0.5, -math.inf])
def test_non_reparameterized_sites_add_the_score_function_term(float64, alpha):
    """Fixed noise, K = 4, q = N(m, 0.5^2) drawn without rsample.

    With v = d bound / d log w (softmax of (1 - alpha) log w; one-hot at the best particle for
    VR-max) and d log w_k / dm = -(z_k - m) / 0.5^2 at fixed z_k, the estimator is
    sum_k v_k d log w_k / dm + bound * sum_k (z_k - m) / 0.5^2.
    """
    data = normal_normal.load_data()

    def guide(x):
        loc = pyro.param("loc", torch.tensor(1.0))
        pyro.sample("mu", dist.Normal(loc, 0.5).has_rsample_(False))

    elbo = RenyiELBO(alpha=alpha, num_particles=4, max_plate_nesting=1)
    pyro.set_rng_seed(6)
    value = elbo.loss_and_grads(normal_normal.model, guide, **data)
    loc = pyro.get_param_store()._params["loc"]
    grad = loc.grad.clone()
    pyro.set_rng_seed(6)
    particles = elbo.particles(normal_normal.model, guide, (), data)
    log_w = particles.log_weights
    z = particles.traces[0][1].nodes["mu"]["value"].reshape(-1)
    bound = elbo.bound(log_w)
    assert value == pytest.approx(-bound.item(), abs=1e-12), "the value is the loss"
    if alpha == -math.inf:
        v = torch.nn.functional.one_hot(log_w.argmax(), 4).to(log_w)
    else:
        v = torch.softmax((1 - alpha) * log_w, 0)
    score = (z - loc.detach()) / 0.5**2
    expected = (v * -score).sum() + bound * score.sum()
    assert grad.item() == pytest.approx(-expected.item(), rel=1e-10)
    assert abs((bound * score.sum()).item()) > 1.0, "the score term is a large part"


# ---------------------------------------------------------------- fit
def test_fit_recovers_the_exact_posterior():
    # budget: 2000 steps at most; the stopping rule ends it near 1400 (~4 s)
    data = normal_normal.load_data()
    post = normal_normal.exact_posterior(**data)["mu"]
    result = ppl_vi.fit(
        normal_normal.model,
        **data,
        elbo=RenyiELBO(alpha=0.5, num_particles=8),
        num_steps=2000,
        progress=False,
    )
    loc, scale = result.params["MeanField.locs.mu"], result.params["MeanField.scales.mu"]
    assert abs(loc - post.loc) < 0.1 * post.scale
    # alpha = 0.5 in the mean-field family that holds the posterior: the optimum is the posterior
    assert scale.item() == pytest.approx(post.scale.item(), rel=0.1)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("alpha", "error", "match"),
    [
        (1, ValueError, r"alpha=1 is the standard ELBO.*use pyro.infer.Trace_ELBO \(elbo='elbo'"),
        (1.0, ValueError, r"alpha=1 is the standard ELBO"),
        (float("nan"), ValueError, r"alpha must be a number != 1 or -inf \(got alpha=nan\)"),
        (math.inf, ValueError, r"alpha=inf is not supported; use a finite alpha, or alpha=-inf"),
        ("0.5", TypeError, r"alpha must be a real number \(got str '0.5'\)"),
        (True, TypeError, r"alpha must be a real number \(got bool True\)"),
    ],
)
def test_bad_alpha_is_rejected(alpha, error, match):
    with pytest.raises(error, match=match):
        RenyiELBO(alpha=alpha)


def test_bad_num_particles_is_rejected():
    with pytest.raises(ValueError, match=r"num_particles must be an integer >= 1 \(got 2.5\)"):
        RenyiELBO(num_particles=2.5)


def test_defaults_are_the_documented_iwae_bound_with_eight_particles():
    lw = torch.randn(5, 3, dtype=torch.float64)
    iwae = torch.logsumexp(lw, 0) - math.log(5)
    torch.testing.assert_close(renyi_bound(lw), iwae, rtol=0, atol=1e-12)
    elbo = RenyiELBO()
    assert elbo.alpha == 0.0 and elbo.num_particles == 8 and elbo.vectorize_particles
    assert elbo.strict_enumeration_warning


def test_the_final_phase_keeps_the_number_of_particles_that_defines_the_bound():
    # K is part of a Rényi/IWAE objective: the final phase must not raise it (it does for the
    # ELBO, whose value does not depend on K)
    from ppl_vi import Engine, Polish

    data = normal_normal.load_data()
    for name, has_polish_elbo in (("renyi", False), ("iwae", False), ("elbo", True)):
        engine = Engine(normal_normal.model, "mean_field", name, policies=[Polish()], seed=0)
        engine.init(**data)
        assert ("polish" in engine.elbos) is has_polish_elbo, name
