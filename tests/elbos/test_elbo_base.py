"""The shared particle base: defaults, the surrogate contract, particle stacking and its checks."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vi.elbos import IWAE
from ppl_vi.elbos._base import ParticleELBO


def test_defaults_are_the_documented_ones():
    elbo = ParticleELBO()
    assert elbo.num_particles == 1
    assert elbo.vectorize_particles is True and elbo.strict_enumeration_warning is True
    assert not elbo.is_vectorized  # one particle needs no particle plate


class ConstantELBO(ParticleELBO):
    """A bound with nothing to train: plain numbers for the loss and the surrogate."""

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        return 1.5, 0.0


def test_a_surrogate_without_gradient_is_not_differentiated():
    elbo = ConstantELBO()
    assert elbo.loss_and_grads(None, None) == 1.5
    assert elbo.loss(None, None) == 1.5
    value = elbo.differentiable_loss(None, None)
    assert value.item() == 1.5 and not value.requires_grad


def observations_only(x):
    """A model without latent variables: p(x) is the likelihood."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def empty_guide(x):
    pass


def empty_model(x):
    pass


def auxiliary_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("u", dist.Normal(x, 1.0), infer={"is_auxiliary": True})


@pytest.mark.filterwarnings("ignore:Found plate statements in guide but not model")
@pytest.mark.parametrize("vectorize", [True, False])
def test_a_side_without_sample_sites_adds_zero_to_every_particle_and_datum(float64, vectorize):
    """With no latents the plate encloses every site: one log weight per particle and datum,
    log p(x_i) from the model and 0 from the empty guide (and the other way round)."""
    x = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.1])
    elbo = IWAE(num_particles=3, vectorize_particles=vectorize)
    particles = elbo.particles(observations_only, empty_guide, (x,), {})
    expected = dist.Normal(0.0, 1.0).log_prob(x).expand(3, 5)
    torch.testing.assert_close(particles.log_weights, expected, rtol=0, atol=1e-12)
    assert particles.num_particles == 3
    assert elbo.loss(observations_only, empty_guide, x) == pytest.approx(-expected[0].sum().item())

    particles = elbo.particles(empty_model, auxiliary_guide, (x,), {})
    u = torch.stack([g.nodes["u"]["value"].reshape(-1, 5) for _, g in particles.traces])
    expected = -dist.Normal(x, 1.0).log_prob(u.reshape(3, 5))
    torch.testing.assert_close(particles.log_weights, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("vectorize", [True, False])
def test_an_enumerated_guide_site_is_reported_under_validation(vectorize):
    def model():
        pyro.sample("z", dist.Bernoulli(0.3))

    def guide():
        pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    elbo = IWAE(num_particles=2, vectorize_particles=vectorize)
    with pytest.warns(UserWarning, match="you need to use TraceEnum_ELBO"):
        elbo.loss(model, guide)


def test_summed_traces_must_pair_up_with_the_particles():
    x = torch.tensor([0.3, -1.2])
    elbo = IWAE(num_particles=3, vectorize_particles=False)
    particles = elbo.particles(observations_only, empty_guide, (x,), {})
    guides = [guide_trace for _, guide_trace in particles.traces]
    with pytest.raises(ValueError, match="zip"):
        elbo.stack_sums(particles.traces, guides[:2])


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def global_guide(x):
    pyro.sample("mu", dist.Normal(0.5, 0.8))


@pytest.mark.parametrize("vectorize", [True, False])
def test_stacked_sums_keep_the_summed_plate_as_a_size_1_dim(float64, vectorize):
    """(K, 1) in both particle modes: the data plate does not enclose mu, so it is summed."""
    x = torch.tensor([0.3, -1.2, 2.0])
    elbo = IWAE(num_particles=4, vectorize_particles=vectorize)
    particles = elbo.particles(global_model, global_guide, (x,), {})
    models = [model_trace for model_trace, _ in particles.traces]
    log_p = elbo.stack_sums(particles.traces, models)
    assert log_p.shape == (4, 1)
    torch.testing.assert_close(log_p.reshape(4), particles.log_p, rtol=0, atol=0)
