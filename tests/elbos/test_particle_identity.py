"""Every particle bound returns -log p(x) exactly at the exact posterior, in both particle modes.

A model with one global latent and a data plate, and a hand-written ``pyro.param`` guide set to
the exact posterior: every log weight equals log p(x), so every bound (any K, batched or one
particle at a time) equals it to rounding. This caught sequential particles pairing particle k
of the model with datum k of the guide (IWAE K=7: 62.2 instead of 8.93 here).
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vi.elbos import IWAE, RBScoreFunctionELBO, RenyiELBO

X = [0.3, -1.2, 2.0, 0.7, 1.1]
PRIOR_SD, NOISE_SD = 2.0, 1.0


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, NOISE_SD), obs=x)


def exact(x):
    precision = 1 / PRIOR_SD**2 + len(x) / NOISE_SD**2
    mean = x.sum() / NOISE_SD**2 / precision
    cov = NOISE_SD**2 * torch.eye(len(x)) + PRIOR_SD**2
    log_evidence = dist.MultivariateNormal(torch.zeros(len(x)), cov).log_prob(x)
    return float(mean), float(precision**-0.5), float(log_evidence)


def guide_at(mean, sd):
    def guide(x):
        loc = pyro.param("loc", torch.tensor(mean))
        scale = pyro.param("scale", torch.tensor(sd), constraint=dist.constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    return guide


BOUNDS = [
    (IWAE, {}),
    (IWAE, {"gradient": "dreg"}),
    (IWAE, {"gradient": "stl"}),
    (RenyiELBO, {"alpha": 0.5}),
    (RenyiELBO, {"alpha": -1.0}),
    (RenyiELBO, {"alpha": float("-inf")}),
    (RBScoreFunctionELBO, {"control_variates": False}),
]


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("num_particles", [1, 7])
@pytest.mark.parametrize(("cls", "options"), BOUNDS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_loss_is_minus_log_evidence_at_the_exact_posterior(
    float64, cls, options, num_particles, vectorize
):
    x = torch.tensor(X)
    mean, sd, log_evidence = exact(x)
    guide = guide_at(mean, sd)
    elbo = cls(num_particles=num_particles, vectorize_particles=vectorize, **options)
    assert elbo.loss(model, guide, x) == pytest.approx(-log_evidence, abs=1e-8)
    assert elbo.loss_and_grads(model, guide, x) == pytest.approx(-log_evidence, abs=1e-8)
    value = elbo.differentiable_loss(model, guide, x)
    assert float(value.detach()) == pytest.approx(-log_evidence, abs=1e-8)


@pytest.mark.parametrize("num_particles", [3, 7])
def test_control_variates_at_the_exact_posterior(float64, num_particles):
    x = torch.tensor(X)
    mean, sd, log_evidence = exact(x)
    for vectorize in (True, False):
        elbo = RBScoreFunctionELBO(num_particles=num_particles, vectorize_particles=vectorize)
        loss = elbo.loss_and_grads(model, guide_at(mean, sd), x)
        assert loss == pytest.approx(-log_evidence, abs=1e-8)
        # every particle's ELBO term is the same constant: the estimator is exactly zero
        for name in ("loc", "scale"):
            grad = pyro.param(name).unconstrained().grad
            assert grad is None or float(grad.abs().max()) < 1e-8
        pyro.clear_param_store()


@pytest.mark.parametrize("num_particles", [2, 7])
@pytest.mark.parametrize("vectorize", [True, False])
def test_each_log_weight_belongs_to_its_own_particle(float64, vectorize, num_particles):
    """Away from the posterior: each log weight is log p(x, mu_k) - log q(mu_k) of its draw."""
    x = torch.tensor(X)
    pyro.set_rng_seed(3)
    particles = IWAE(num_particles=num_particles, vectorize_particles=vectorize).particles(
        model, guide_at(0.5, 0.8), (x,), {}
    )
    mus = torch.cat([g.nodes["mu"]["value"].reshape(-1) for _, g in particles.traces])
    by_hand = (
        dist.Normal(0.0, PRIOR_SD).log_prob(mus)
        + dist.Normal(mus[:, None], NOISE_SD).log_prob(x).sum(-1)
        - dist.Normal(0.5, 0.8).log_prob(mus)
    )
    assert particles.log_weights.shape == (num_particles,)
    torch.testing.assert_close(particles.log_weights.detach(), by_hand)
