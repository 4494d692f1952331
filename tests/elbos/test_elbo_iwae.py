"""IWAE: exact identities at the posterior, equivalences, DReG/STL gradients, per-datum bounds,
Monte Carlo behaviour in K, fits and errors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _exact import NOISE_SCALE, PRIOR_SCALE, mean_field_at, pop_grads

import ppl_vi
from ppl_vi.elbos.iwae import IWAE
from ppl_vi.elbos.renyi import RenyiELBO
from ppl_vi.guides import MeanField
from ppl_vi.models import bayes_linear_regression, normal_normal

GRADIENTS = ["reparam", "dreg", "stl"]


def replicated(x, reps):
    """normal_normal ``reps`` times over in an outer plate: one independent bound per replica."""
    with pyro.plate("reps", reps, dim=-2):
        normal_normal.model(x)


def replicated_guide(loc, scale, rsample=True):
    """N(loc, scale^2) on ``mu`` in each replica; ``loc`` may be a tensor or a callable."""

    def guide(x, reps):
        with pyro.plate("reps", reps, dim=-2):
            q = dist.Normal(loc() if callable(loc) else loc, scale)
            pyro.sample("mu", q if rsample else q.has_rsample_(False))

    return guide


def local_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


# ---------------------------------------------------------------- exact identities
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("num_particles", [1, 4, 16])
def test_bound_is_the_log_evidence_at_the_exact_posterior(float64, gradient, num_particles):
    data = normal_normal.load_data()
    log_z = normal_normal.log_evidence(**data).item()
    guide = mean_field_at(data)
    elbo = IWAE(num_particles=num_particles, gradient=gradient)
    assert elbo.loss(normal_normal.model, guide, **data) == pytest.approx(-log_z, abs=1e-8)
    loss = elbo.loss_and_grads(normal_normal.model, guide, **data)
    assert loss == pytest.approx(-log_z, abs=1e-8)
    particles = elbo.particles(normal_normal.model, guide, (), data)
    assert particles.log_weights.shape == (num_particles,)
    assert (particles.log_weights - log_z).abs().max() < 1e-8  # every weight is p(x)
    mu = particles.traces[0][1].nodes["mu"]["value"]
    if num_particles > 1:
        assert mu.std() > 0.05, "the particles differ; only their weights coincide"


def test_loss_and_gradient_equal_pyro_renyi_alpha_0_on_the_same_draws(float64):
    data = normal_normal.load_data()
    guide = mean_field_at(data, shift=1.0, scale_factor=1.5)
    params = list(guide.parameters())
    ours = IWAE(num_particles=8, max_plate_nesting=1)
    theirs = pyro.infer.RenyiELBO(
        alpha=0, num_particles=8, max_plate_nesting=1, vectorize_particles=True
    )
    losses, grads = {}, {}
    for name, elbo in (("ours", ours), ("pyro", theirs)):
        for seed in (0, 1):
            pyro.set_rng_seed(seed)
            loss = elbo.loss(normal_normal.model, guide, **data)
            pyro.set_rng_seed(seed)
            assert elbo.loss_and_grads(normal_normal.model, guide, **data) == pytest.approx(
                loss, abs=1e-10
            )
            losses[name, seed], grads[name, seed] = loss, pop_grads(params)
    for seed in (0, 1):
        assert losses["ours", seed] == pytest.approx(losses["pyro", seed], abs=1e-10)
        torch.testing.assert_close(grads["ours", seed], grads["pyro", seed], rtol=0, atol=1e-10)
    assert abs(losses["ours", 0] - losses["ours", 1]) > 1e-3, "the draws matter"


def scalar_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_vectorized_equals_sequential_on_the_same_draws(float64, gradient):
    # Without plates the K vectorized draws are the K sequential ones only while torch draws
    # them through the same sampler: on the CPU, torch.normal of 16 or more values switches to
    # a batched Box-Muller path whose stream differs. K = 4 stays below that.
    y = torch.tensor(1.3)
    guide = MeanField(scalar_model, init_scale=0.7)
    guide(y)
    params = list(guide.parameters())
    results = {}
    for vectorize in (True, False):
        elbo = IWAE(4, max_plate_nesting=0, vectorize_particles=vectorize, gradient=gradient)
        pyro.set_rng_seed(2)
        loss = elbo.loss_and_grads(scalar_model, guide, y)
        pyro.set_rng_seed(2)
        log_w = elbo.particles(scalar_model, guide, (y,), {}).log_weights
        results[vectorize] = loss, pop_grads(params), log_w
    assert results[True][0] == pytest.approx(results[False][0], abs=1e-12)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[True][2], results[False][2], rtol=0, atol=1e-12)
    assert results[True][2].std() > 0.1, "the particles differ"


# ---------------------------------------------------------------- DReG and STL
@pytest.mark.parametrize("num_particles", [1, 8])
def test_dreg_and_stl_guide_gradients_vanish_at_the_exact_posterior(float64, num_particles):
    data = normal_normal.load_data()
    guide = mean_field_at(data)
    params = list(guide.parameters())
    grads = {}
    for gradient in GRADIENTS:
        pyro.set_rng_seed(0)
        IWAE(num_particles, gradient=gradient).loss_and_grads(normal_normal.model, guide, **data)
        grads[gradient] = pop_grads(params)
    assert grads["dreg"].abs().max() < 1e-10
    assert grads["stl"].abs().max() < 1e-10
    # the plain gradient keeps the score term -1/K sum_k d log q(z_k) / d phi, zero only on average
    assert grads["reparam"].abs().max() > 0.5


def pyro_param_guide(post):
    def guide(x):
        loc = pyro.param("q_loc", post.loc.clone())
        log_scale = pyro.param("q_log_scale", post.scale.log())
        pyro.sample("mu", dist.Normal(loc, log_scale.exp()))

    return guide


def pyro_module_guide(post):
    net = torch.nn.Linear(1, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.stack([post.loc, post.scale.log()]))

    def guide(x):
        pyro.module("net", net)
        out = net(x.new_ones(1))
        pyro.sample("mu", dist.Normal(out[0], out[1].exp()))

    return guide


@pytest.mark.parametrize("make_guide", [pyro_param_guide, pyro_module_guide])
def test_dreg_and_stl_reach_parameters_read_through_pyro_param_and_pyro_module(float64, make_guide):
    data = normal_normal.load_data()
    post = normal_normal.exact_posterior(**data)["mu"]
    guide = make_guide(post)
    grads = {}
    for gradient in GRADIENTS:
        pyro.set_rng_seed(0)
        IWAE(8, gradient=gradient).loss_and_grads(normal_normal.model, guide, **data)
        store = pyro.get_param_store()
        grads[gradient] = pop_grads([store._params[name] for name in sorted(store.keys())])
    assert grads["dreg"].abs().max() < 1e-10
    assert grads["stl"].abs().max() < 1e-10
    assert grads["reparam"].abs().max() > 0.5, "the same parameters do get gradients"


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_svi_step_follows_the_hand_derived_gradient(float64, gradient):
    """One SGD step of plain pyro.infer.SVI, K = 4 draws with fixed noise, against the formulas.

    With q = N(m, s^2), s = softplus(zeta), z_k = m + s e_k and g(z) = d log p(x, z) / dz:
    reparam: d/dm = sum_k w_k g(z_k), d/dzeta = sum_k w_k (g(z_k) e_k + 1/s) s'(zeta);
    STL (DReG): the path derivatives (g(z_k) + e_k / s) (1, e_k s'(zeta)) weighted by w_k (w_k^2).
    """
    data = normal_normal.load_data()
    x = data["x"]
    guide = mean_field_at(data, shift=1.0, scale_factor=1.5)
    store = pyro.get_param_store()
    loc, zeta = store._params["MeanField.locs.mu"], store._params["MeanField.scales.mu"]
    m, z0 = loc.detach().clone(), zeta.detach().clone()
    s = torch.nn.functional.softplus(z0)
    elbo = IWAE(num_particles=4, max_plate_nesting=1, gradient=gradient)
    pyro.set_rng_seed(5)
    particles = elbo.particles(normal_normal.model, guide, (), data)
    z = particles.traces[0][1].nodes["mu"]["value"].detach().reshape(-1)  # (K,)

    lr = 1e-3
    svi = pyro.infer.SVI(normal_normal.model, guide, pyro.optim.SGD({"lr": lr}), elbo)
    pyro.set_rng_seed(5)
    svi.step(**data)

    log_lik = dist.Normal(z[:, None], NOISE_SCALE).log_prob(x).sum(-1)
    log_p = dist.Normal(0.0, PRIOR_SCALE).log_prob(z) + log_lik
    log_w = log_p - dist.Normal(m, s).log_prob(z)
    torch.testing.assert_close(particles.log_weights, log_w, rtol=0, atol=1e-10)
    w = torch.softmax(log_w, 0)
    e = (z - m) / s
    g = -z / PRIOR_SCALE**2 + (x - z[:, None]).sum(-1) / NOISE_SCALE**2
    if gradient == "reparam":
        d_m, d_zeta = (w * g).sum(), (w * (g * e + 1 / s)).sum() * torch.sigmoid(z0)
    else:
        coef = w if gradient == "stl" else w**2
        path = g + e / s
        d_m, d_zeta = (coef * path).sum(), (coef * path * e).sum() * torch.sigmoid(z0)
    # SGD on the loss = -bound moves each parameter by +lr * d bound / d parameter
    assert (loc.detach() - m).item() == pytest.approx(lr * d_m.item(), rel=1e-9)
    assert (zeta.detach() - z0).item() == pytest.approx(lr * d_zeta.item(), rel=1e-9)
    assert abs(d_m.item()) > 0.1, "a step large enough to tell the estimators apart"


def model_with_parameter(x):
    prior_loc = pyro.param("prior_loc", torch.tensor(0.3))
    mu = pyro.sample("mu", dist.Normal(prior_loc, PRIOR_SCALE))
    with pyro.plate("data", x.shape[-1]):
        pyro.sample("x", dist.Normal(mu, NOISE_SCALE), obs=x)


def test_model_parameters_get_the_plain_iwae_gradient_under_dreg_and_stl(float64):
    data = normal_normal.load_data()
    guide = MeanField(model_with_parameter, init_scale=0.3)
    guide(**data)
    store = pyro.get_param_store()
    model_param = store._params["prior_loc"]
    guide_params = list(guide.parameters())
    grads = {}
    for gradient in GRADIENTS:
        elbo = IWAE(8, max_plate_nesting=1, gradient=gradient)
        pyro.set_rng_seed(1)
        elbo.loss_and_grads(model_with_parameter, guide, **data)
        grads[gradient] = pop_grads([model_param]), pop_grads(guide_params)
    pyro.set_rng_seed(1)
    particles = elbo.particles(model_with_parameter, guide, (), data)
    mu = particles.traces[0][1].nodes["mu"]["value"].reshape(-1)
    w = torch.softmax(particles.log_weights, 0)
    # d/d prior_loc of sum_k w_k log N(mu_k; prior_loc, 2^2)
    expected = -(w * (mu - model_param.detach()) / PRIOR_SCALE**2).sum().reshape(1)
    for gradient in GRADIENTS:
        torch.testing.assert_close(grads[gradient][0], expected, rtol=0, atol=1e-10)
    assert (grads["dreg"][1] - grads["reparam"][1]).abs().max() > 0.1, "guide gradients differ"
    assert (grads["stl"][1] - grads["dreg"][1]).abs().max() > 1e-3


# ---------------------------------------------------------------- per-datum bound
@pytest.mark.parametrize(
    ("make_elbo", "alpha"),
    [
        (lambda: IWAE(8, max_plate_nesting=1), 0.0),
        (lambda: RenyiELBO(alpha=0.5, num_particles=8, max_plate_nesting=1), 0.5),
        (lambda: RenyiELBO(alpha=-math.inf, num_particles=8, max_plate_nesting=1), None),
    ],
    ids=["iwae", "renyi-0.5", "vr-max"],
)
def test_one_bound_per_datum_when_a_plate_encloses_every_site(float64, make_elbo, alpha):
    elbo = make_elbo()
    x = torch.tensor([-1.0, 0.5, 2.0, 3.5, -0.2])
    guide = MeanField(local_model, init_scale=1.0)
    guide(x)
    pyro.set_rng_seed(3)
    loss = elbo.loss(local_model, guide, x)
    pyro.set_rng_seed(3)
    particles = elbo.particles(local_model, guide, (x,), {})
    z = particles.traces[0][1].nodes["z"]["value"].detach().reshape(elbo.num_particles, 5)
    store = pyro.get_param_store()
    q = dist.Normal(store["MeanField.locs.z"].detach(), store["MeanField.scales.z"].detach())
    log_w = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x) - q.log_prob(z)
    torch.testing.assert_close(particles.log_weights, log_w, rtol=0, atol=1e-12)  # (K, N)
    w = log_w.numpy()
    if alpha is None:
        per_datum = w.max(0)
        joint = w.sum(1).max()
    else:
        per_datum = np.log(np.mean(np.exp((1 - alpha) * w), 0)) / (1 - alpha)
        joint = np.log(np.mean(np.exp((1 - alpha) * w.sum(1)))) / (1 - alpha)
    assert loss == pytest.approx(-per_datum.sum(), abs=1e-10)
    assert abs(loss + joint) > 0.1, "one bound over the whole data set would differ"


# ---------------------------------------------------------------- Monte Carlo behaviour in K
def test_expected_bound_increases_with_k_towards_the_log_evidence(float64):
    """E[L_K] for a guide one posterior sd off: log w - log Z = -1/2 - e with e ~ N(0, 1).

    The weights are log-normal with variance v = e - 1 (relative to their mean), so by the
    delta method log Z - E[L_K] = v / (2K) + O(K^-2); at K = 64 the next terms add up to about
    -3e-4, well inside the 2e-3 allowed for them below.
    """
    data = normal_normal.load_data()
    x = data["x"]
    log_z = normal_normal.log_evidence(**data).item()
    post = normal_normal.exact_posterior(**data)["mu"]
    guide = replicated_guide(post.loc + post.scale, post.scale)
    means, ses = {}, {}
    for k in (1, 4, 16, 64):
        elbo = IWAE(num_particles=k, max_plate_nesting=2)
        bounds = []
        for _ in range(2):  # 2 x 5000 independent estimates, in two chunks to bound memory
            with torch.no_grad():
                particles = elbo.particles(replicated, guide, (x, 5000), {})
            bounds.append(elbo.bound(particles.log_weights))  # (5000,)
        bounds = torch.cat(bounds)
        means[k], ses[k] = bounds.mean().item(), bounds.std().item() / math.sqrt(bounds.numel())
    assert means[1] == pytest.approx(log_z - 0.5, abs=4 * ses[1])  # K = 1: the ELBO
    for a, b in ((1, 4), (4, 16), (16, 64)):
        assert means[b] - means[a] > -4 * math.hypot(ses[a], ses[b])
    gap = log_z - means[64]
    assert gap == pytest.approx((math.e - 1) / (2 * 64), abs=4 * ses[64] + 2e-3)
    # power: the K = 1 -> 64 improvement is many standard errors
    assert means[64] - means[1] > 20 * math.hypot(ses[1], ses[64])


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_gradient_is_unbiased_with_non_reparameterized_guide_sites(float64, alpha):
    """Per-replica guide locations give one gradient estimate each; reparameterized and
    score-function (non-reparameterized) estimates of the K-particle bound's gradient must agree
    in mean."""
    x = normal_normal.load_data()["x"][:1]  # one datum: log Z near -2 keeps the score term tame
    post = normal_normal.exact_posterior(x)["mu"]
    reps = 20000
    elbo = IWAE(4, max_plate_nesting=2) if alpha == 0 else RenyiELBO(alpha, 4, 2)

    def loc():
        return pyro.param("loc", torch.full((reps, 1), (post.loc + post.scale).item()))

    def loc_gradients(loss_fn, rsample):
        pyro.clear_param_store()
        guide = replicated_guide(loc, post.scale, rsample=rsample)
        pyro.set_rng_seed(7 + rsample)
        loss_fn.loss_and_grads(replicated, guide, x, reps)
        return pyro.get_param_store()._params["loc"].grad.reshape(-1)

    def se(a, b):
        return math.hypot(a.std(), b.std()) / math.sqrt(reps)

    reparam = loc_gradients(elbo, rsample=True)
    score = loc_gradients(elbo, rsample=False)
    assert abs(reparam.mean() - score.mean()) < 4 * se(reparam, score)
    # power: Pyro's RenyiELBO uses alpha / (1 - alpha) sum_k v_k grad log q(z_k) for such sites,
    # the gradient of the K -> infinity objective (zero at alpha = 0), not of the K-particle bound
    theirs = pyro.infer.RenyiELBO(alpha, 4, 2, vectorize_particles=True)
    other = loc_gradients(theirs, rsample=False)
    assert abs(reparam.mean() - other.mean()) > 10 * se(reparam, other)


# ---------------------------------------------------------------- fits
@pytest.mark.parametrize(
    "gradient",
    # the plain gradient's signal-to-noise ratio falls with K (Rainforth et al. 2018): it needs
    # the full default 5000 steps where DReG and STL converge within 2000
    ["dreg", "stl", pytest.param("reparam", marks=pytest.mark.slow)],
)
def test_fit_recovers_the_exact_posterior(gradient):
    # budget: dreg 2000 steps (~5 s), stl stops early (~1400 steps), reparam 5000 steps (~13 s)
    num_steps = 5000 if gradient == "reparam" else 2000
    data = normal_normal.load_data()
    post = normal_normal.exact_posterior(**data)["mu"]
    result = ppl_vi.fit(
        normal_normal.model,
        **data,
        elbo=IWAE(num_particles=8, gradient=gradient),
        num_steps=num_steps,
        progress=False,
    )
    loc, scale = result.params["MeanField.locs.mu"], result.params["MeanField.scales.mu"]
    # the mean-field family holds the exact posterior, the IWAE optimum
    assert abs(loc - post.loc) < 0.1 * post.scale
    assert scale.item() == pytest.approx(post.scale.item(), rel=0.1)


@pytest.mark.slow
def test_fit_with_dreg_recovers_bayes_linear_regression_means():
    # budget: fit's defaults (5000 steps at most, ~20 s); a mean-field guide of a Gaussian
    # posterior with IWAE still centres on the posterior mean (the bound is symmetric about it)
    data = bayes_linear_regression.load_data()
    post = bayes_linear_regression.exact_posterior(**data)["beta"]
    sd = post.covariance_matrix.diagonal().sqrt()
    result = ppl_vi.fit(
        bayes_linear_regression.model,
        **data,
        elbo=IWAE(num_particles=8, gradient="dreg"),
        progress=False,
    )
    loc = result.params["MeanField.locs.beta"]
    assert ((loc - post.mean) / sd).abs().max() < 0.1


# ---------------------------------------------------------------- errors
def test_bad_gradient_is_rejected():
    with pytest.raises(
        ValueError, match=r"gradient must be one of 'reparam', 'dreg', 'stl' \(got 'x'\)"
    ):
        IWAE(gradient="x")


def test_bad_num_particles_is_rejected():
    with pytest.raises(ValueError, match=r"num_particles must be an integer >= 1 \(got 0\)"):
        IWAE(num_particles=0)


@pytest.mark.parametrize("gradient", ["dreg", "stl"])
def test_dreg_and_stl_need_reparameterized_guide_sites(gradient):
    data = normal_normal.load_data()

    def guide(x):
        loc = pyro.param("loc", torch.tensor(1.0))
        pyro.sample("mu", dist.Normal(loc, 0.3).has_rsample_(False))

    elbo = IWAE(4, gradient=gradient)
    with pytest.raises(
        ValueError, match=r"guide site 'mu' \(Normal\) has no rsample; use gradient='reparam'"
    ):
        elbo.loss_and_grads(normal_normal.model, guide, **data)


def test_dreg_rejects_a_parameter_shared_by_model_and_guide():
    data = normal_normal.load_data()

    def guide(x):
        loc = pyro.param("prior_loc", torch.tensor(1.0))
        pyro.sample("mu", dist.Normal(loc, 0.3))

    with pytest.raises(ValueError, match=r"parameters \['prior_loc'\] appear in both"):
        IWAE(4, gradient="dreg").loss_and_grads(model_with_parameter, guide, **data)


@pytest.mark.parametrize("vectorize", [True, False])
def test_dreg_replays_the_mini_batch_of_a_subsampled_plate(vectorize):
    """The replay at the detached draws reuses the plate's subsample indices (the validation
    check that the replayed log q equals the drawn one passes), so only the mini-batch's
    parameters get gradients."""
    x = torch.arange(10.0)

    def model(x):
        with pyro.plate("data", 10, subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    def guide(x):
        loc = pyro.param("loc", torch.arange(10.0))
        with pyro.plate("data", 10, subsample_size=4) as idx:
            pyro.sample("z", dist.Normal(loc[idx], 1.0))

    elbo = IWAE(4, gradient="dreg", vectorize_particles=vectorize, max_plate_nesting=1)
    loss = elbo.loss_and_grads(model, guide, x)
    grad = pyro.param("loc").unconstrained().grad
    assert math.isfinite(loss)
    assert int((grad != 0).sum()) == 4


@pytest.mark.parametrize("gradient", ["dreg", "stl"])
def test_a_guide_with_randomness_outside_its_sites_is_refused_under_validation(gradient):
    # the path estimators replay the guide at its draws; a guide whose density depends on an
    # extra random number (here a small shift of the location, so that log q moves by ~1e-2,
    # far above the check's 1e-5 tolerance) gives another log q there
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("mu", dist.Normal(loc + 0.01 * torch.randn(()), 1.0))

    x = torch.zeros(3)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = IWAE(num_particles=4, gradient=gradient)
    with pytest.raises(ValueError, match=r"replays the guide at its drawn values, but the replay"):
        elbo.loss_and_grads(model, guide, x)
    with pyro.validation_enabled(False):
        elbo.loss_and_grads(model, guide, x)  # the check costs a comparison: validation only
    pyro.clear_param_store()


def test_defaults_are_the_documented_ones():
    elbo = IWAE()
    assert elbo.num_particles == 8 and elbo.gradient == "reparam" and elbo.alpha == 0.0
    assert elbo.vectorize_particles and elbo.strict_enumeration_warning


@pytest.mark.parametrize("gradient", ["dreg", "stl"])
def test_dreg_and_stl_normalize_the_weights_of_each_datum(float64, gradient):
    """One bound per datum: the coefficients are v_ki = softmax over the particles of datum i
    (squared for DReG). With z = m + s e, the path derivative of log w_ki in m_i is
    g = -z + (x_i - z) + (z - m_i) / s_i^2."""
    x = torch.tensor([-1.0, 0.5, 2.0, 3.5, -0.2])
    guide = MeanField(local_model, init_scale=1.0)
    guide(x)
    elbo = IWAE(8, max_plate_nesting=1, gradient=gradient)
    pyro.set_rng_seed(3)
    elbo.loss_and_grads(local_model, guide, x)
    store = pyro.get_param_store()
    grad = store._params["MeanField.locs.z"].grad.clone()
    pyro.set_rng_seed(3)
    particles = elbo.particles(local_model, guide, (x,), {})
    z = particles.traces[0][1].nodes["z"]["value"].detach().reshape(8, 5)
    m, s = store["MeanField.locs.z"].detach(), store["MeanField.scales.z"].detach()
    v = torch.softmax(particles.log_weights.detach(), 0)
    coef = v.square() if gradient == "dreg" else v
    g = -z + (x - z) + (z - m) / s**2
    torch.testing.assert_close(grad, -(coef * g).sum(0), rtol=0, atol=1e-10)
