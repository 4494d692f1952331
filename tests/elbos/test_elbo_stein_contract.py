"""SteinOperatorELBO's smaller contracts: the median bandwidth over distinct pairs, the Stein
kernel's default bandwidth, the OVI objective against its formula, the unconstrained score of
a masked event site, the plate nesting it keeps or finds, and Pyro's model/guide check."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from ppl_vi.elbos.stein import (
    SteinOperatorELBO,
    SteinTestFunction,
    median_bandwidth,
    ovi_objective,
    stein_kernel,
)

DT = torch.float64


def test_median_bandwidth_is_the_median_distance_between_distinct_particles():
    # five particles in two dimensions: 10 distinct pairs, all closer than 1 (their median 0.4;
    # with the 5 self-pairs it would be 0.2, without the 4 neighbouring pairs 0.6)
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [0.6, 0.0], [0.95, 0.0]], dtype=DT)
    pairs = [(x[i] - x[j]).norm() for i, j in itertools.combinations(range(5), 2)]
    expected = torch.stack(pairs).median()
    assert median_bandwidth(x) == expected and expected == pytest.approx(0.4)
    # every particle in one place: no scale to read, the bandwidth is 1
    assert median_bandwidth(torch.zeros(4, 3, dtype=DT)) == 1.0


def test_seeded_network_weights_follow_nn_linears_uniform_scheme():
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every weight and bias: within the bound, and
    # filling it on both sides
    net = SteinTestFunction(dim=3, hidden_size=200, seed=7)
    for layer in (net.hidden, net.output):
        bound = layer.in_features**-0.5
        for p in (layer.weight, layer.bias):
            assert p.abs().max() <= bound
        weight = layer.weight  # 600 entries each
        assert weight.max() > 0.95 * bound and weight.min() < -0.95 * bound
    again = SteinTestFunction(dim=3, hidden_size=200, seed=7)
    assert torch.equal(again.output.weight, net.output.weight)


def test_stein_kernel_default_bandwidth_is_one():
    gen = torch.Generator().manual_seed(0)
    x, s = torch.randn(4, 2, generator=gen, dtype=DT), torch.randn(4, 2, generator=gen, dtype=DT)
    for kernel in ("rbf", "imq"):
        default = stein_kernel(x, s, kernel)
        torch.testing.assert_close(default, stein_kernel(x, s, kernel, bandwidth=1.0))
        assert not torch.allclose(default, stein_kernel(x, s, kernel, bandwidth=2.0))


def test_ovi_objective_is_the_pair_average_over_the_mean_squared_output_plus_1e6():
    torch.manual_seed(1)
    net = SteinTestFunction(dim=2, hidden_size=5, seed=3).double()
    u = torch.randn(6, 2, dtype=DT)
    score = -u
    f, div = net.value_and_divergence(u, "normal")
    op = (score * f).sum(-1) + div
    cross = sum(op[i] * op[j] for i, j in itertools.permutations(range(6), 2)) / (6 * 5)
    expected = cross / ((f**2).sum(-1).mean() + 1e-6)
    torch.testing.assert_close(ovi_objective(net, u, score), expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("prior", ["lognormal", "improper"])
def test_score_of_a_masked_positive_event_site_counts_its_jacobian_per_datum(prior):
    # An event of 2 positive coordinates inside a plate of 3, the middle datum masked out.
    # LogNormal(0, 1) per coordinate: with u = log z the unconstrained density is N(u; 0, 1),
    # score -u. ImproperUniform(positive) with event shape (2,): its support is elementwise,
    # so the Jacobian log|dz/du| = u is summed over the event per datum; the density is flat
    # and the score is 1. The masked datum scores 0 (neither its density nor its Jacobian).
    keep = torch.tensor([True, False, True])

    def model():
        with pyro.plate("n", 3), poutine.mask(mask=keep):
            if prior == "lognormal":
                pyro.sample("z", dist.LogNormal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
            else:
                pyro.sample("z", dist.ImproperUniform(dist.constraints.positive, (3,), (2,)))

    def guide():
        with pyro.plate("n", 3):
            pyro.sample("z", dist.LogNormal(torch.full((2,), 0.2, dtype=DT), 0.5).to_event(1))

    for vectorize in (True, False):
        pyro.set_rng_seed(0)
        elbo = SteinOperatorELBO(num_particles=4, vectorize_particles=vectorize)
        u, score = elbo.unconstrained_particles(model, guide)
        assert u.shape == (4, 6)
        exact = -u.detach() if prior == "lognormal" else torch.ones_like(u)
        expected = torch.where(keep.repeat_interleave(2), exact, torch.zeros_like(u))
        torch.testing.assert_close(score, expected, rtol=1e-12, atol=1e-12)


def one_plate_model():
    loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    with pyro.plate("n", 3):
        pyro.sample("z", dist.Normal(loc, 1.0))


def one_plate_guide():
    pyro.sample("loc", dist.Normal(torch.tensor(0.1, dtype=DT), 0.5))
    with pyro.plate("n", 3):
        pyro.sample("z", dist.Normal(torch.zeros(3, dtype=DT), 0.5))


def test_plate_nesting_is_found_when_not_given_and_kept_when_given():
    pyro.set_rng_seed(0)
    found = SteinOperatorELBO(num_particles=4)
    u, _ = found.unconstrained_particles(one_plate_model, one_plate_guide)
    # one plate of the model, plus the particle plate to its left (as Pyro counts it)
    assert found.max_plate_nesting == 2 and u.shape == (4, 4)
    given = SteinOperatorELBO(num_particles=4, max_plate_nesting=3)
    u, _ = given.unconstrained_particles(one_plate_model, one_plate_guide)
    assert given.max_plate_nesting == 3 + 1 and u.shape == (4, 4)


def test_model_and_guide_are_checked_against_each_other_under_validation():
    def guide_with_extra():
        one_plate_guide()
        pyro.sample("extra", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))

    elbo = SteinOperatorELBO(num_particles=3)
    with pyro.validation_enabled(True):
        with pytest.warns(UserWarning, match=r"Found non-auxiliary vars in guide but not model"):
            elbo.unconstrained_particles(one_plate_model, guide_with_extra)


def test_defaults_and_the_smallest_network():
    elbo = SteinOperatorELBO()
    assert (elbo.test_function, elbo.kernel, elbo.num_particles, elbo.hidden_size) == (
        "kernel", "rbf", 16, 32
    )  # fmt: skip
    assert elbo.vectorize_particles is True
    assert SteinOperatorELBO(hidden_size=1).hidden_size == 1  # one hidden unit is a network
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"hidden_size must be an integer >= 1"):
            SteinOperatorELBO(hidden_size=bad)


def test_the_network_is_linear_tanh_linear():
    net = SteinTestFunction(dim=3, hidden_size=4, seed=2).double()
    u = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    f, _ = net.value_and_divergence(u)
    torch.testing.assert_close(f, net.output(torch.tanh(net.hidden(u))), rtol=1e-14, atol=0.0)


def test_each_fit_draws_its_network_seed_from_the_global_generator():
    seeds = set()
    for s in range(100):
        pyro.clear_param_store()
        torch.manual_seed(s)
        elbo = SteinOperatorELBO(test_function="neural")
        elbo._test_network(torch.zeros(4, 2, dtype=DT))
        seeds.add(elbo.network_seed)
        assert 0 <= elbo.network_seed < 2**31 - 1
    assert len(seeds) == 100  # 100 global seeds, 100 different networks
    pyro.clear_param_store()
    torch.manual_seed(0)
    first = SteinOperatorELBO(test_function="neural")._test_network(torch.zeros(4, 2, dtype=DT))
    torch.manual_seed(0)
    pyro.clear_param_store()
    again = SteinOperatorELBO(test_function="neural")._test_network(torch.zeros(4, 2, dtype=DT))
    assert torch.equal(first.hidden.weight, again.hidden.weight)
    pyro.clear_param_store()


def test_the_network_module_is_built_once_per_fit():
    pyro.clear_param_store()
    elbo = SteinOperatorELBO(test_function="neural")
    net = elbo._test_network(torch.zeros(4, 2, dtype=DT))
    assert elbo._test_network(torch.zeros(4, 2, dtype=DT)) is net
    pyro.clear_param_store()
