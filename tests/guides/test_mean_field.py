"""MeanField: supports, initialisation, plates, errors, and fits against exact posteriors."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi.guides import MeanField
from ppl_vi.models import bayes_linear_regression, beta_bernoulli, eight_schools, normal_normal


def constrained_model():
    pyro.sample("p", dist.Beta(2.0, 3.0))
    pyro.sample("s", dist.HalfNormal(1.0))
    pyro.sample("w", dist.Dirichlet(torch.ones(3)))
    pyro.sample("u", dist.Uniform(-1.0, 2.0))
    with pyro.plate("g", 4):
        pyro.sample("r", dist.LogNormal(0.0, 1.0))


def draw(guide, n=1000):
    with pyro.plate("_n", n, dim=-2):
        return guide()


def test_draws_respect_supports_and_shapes():
    guide = MeanField(constrained_model, init_scale=1.0)
    values = draw(guide)
    supports = {"p": (0, 1), "s": (0, math.inf), "u": (-1, 2), "r": (0, math.inf)}
    for site, (lo, hi) in supports.items():
        assert ((values[site] > lo) & (values[site] < hi)).all(), site
    assert values["w"].shape == (1000, 1, 3)
    torch.testing.assert_close(values["w"].sum(-1), torch.ones(1000, 1))
    assert values["r"].shape == (1000, 4)


def test_init_strategies():
    def locs(**kwargs):
        pyro.clear_param_store()
        guide = MeanField(constrained_model, **kwargs)
        guide()
        return {name: getattr(guide.locs, name).detach() for name in ("p", "s", "u")}

    feasible = locs(init_loc_fn="feasible")
    assert all(torch.equal(v, torch.zeros_like(v)) for v in feasible.values())
    given = locs(init_loc_fn={"p": torch.tensor(0.25), "s": torch.tensor(2.0)})
    assert given["p"].item() == pytest.approx(math.log(0.25 / 0.75), abs=1e-6)
    assert given["s"].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert given["u"].item() == 0.0  # falls back to a feasible point
    pyro.set_rng_seed(0)
    median = locs(init_loc_fn="median")
    assert median["p"].item() != 0.0
    with pytest.raises(ValueError, match=r"init_loc_fn must be one of \['feasible'"):
        MeanField(constrained_model, init_loc_fn="middle")


def test_init_scale():
    guide = MeanField(constrained_model, init_scale=0.3)
    guide()
    torch.testing.assert_close(guide.scales.r.detach(), torch.full((4,), 0.3))
    with pytest.raises(ValueError, match=r"init_scale must be > 0 \(got init_scale=0\)"):
        MeanField(constrained_model, init_scale=0)
    with pytest.raises(TypeError, match=r"init_scale must be a positive number"):
        MeanField(constrained_model, init_scale="0.1")


def test_discrete_site_error_points_to_score_function_elbo():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    message = r"discrete sample site 'z'.*score-function ELBO \(elbo='rb_score'\)"
    with pytest.raises(ValueError, match=message):
        ppl_vi.fit(model, num_steps=10, progress=False)


def test_local_parameters_follow_the_subsample():
    n = 10

    def model(batch):
        with pyro.plate("data", n, subsample_size=batch):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    guide = MeanField(model)
    guide(n)  # full-size parameters
    with torch.no_grad():
        guide.locs.z = torch.arange(float(n))
    trace = pyro.poutine.trace(guide).get_trace(3)
    idx = trace.nodes["data"]["value"]
    fn = trace.nodes["z_unconstrained"]["fn"]
    torch.testing.assert_close(getattr(fn, "base_dist", fn).loc, idx.float())


# ---------------------------------------------------------------- fits with default settings
def fitted_mean_sd(module, site, num_samples=100_000):
    data = module.load_data()
    result = ppl_vi.fit(module.model, **data, progress=False)
    draws = result.sample(num_samples, seed=0)[site].double()
    return data, result, draws.mean(0), draws.std(0)


@pytest.mark.parametrize("module", [normal_normal, beta_bernoulli])
def test_default_fit_recovers_one_dimensional_posteriors(module):
    site = "mu" if module is normal_normal else "p"
    data, _, mean, sd = fitted_mean_sd(module, site)
    exact = module.exact_posterior(**data)[site]
    exact_sd = exact.variance.sqrt().double()
    # Monte Carlo error of the draws' mean is sd / sqrt(1e5) = 0.003 sd, inside the tolerance;
    # the logit-normal's KL-optimal mean equals the Beta mean to 1e-7 (quadrature check).
    assert abs(mean - exact.mean.double()) / exact_sd < 0.05
    assert abs(sd / exact_sd - 1) < 0.10


def test_default_fit_on_correlated_linear_regression():
    data, result, mean, sd = fitted_mean_sd(bayes_linear_regression, "beta")
    exact = bayes_linear_regression.exact_posterior(**data)["beta"]
    cov = exact.covariance_matrix.double()
    marginal_sd = cov.diagonal().sqrt()
    assert ((mean - exact.mean.double()).abs() / marginal_sd).max() < 0.05
    # mean field can only reach the conditional variances 1 / Lambda_ii, which are below the
    # marginal ones; the fitted variances must not exceed the marginal variances
    conditional_sd = exact.precision_matrix.double().diagonal().rsqrt()
    assert (sd <= marginal_sd * 1.01).all()
    assert ((sd / conditional_sd - 1).abs() < 0.10).all()
    assert (conditional_sd / marginal_sd).min() < 0.5, "the posterior is strongly correlated"


def test_default_fit_on_eight_schools_matches_reference_means():
    data = eight_schools.load_data()
    result = ppl_vi.fit(eight_schools.model, **data, progress=False)
    draws = result.sample(20_000, seed=0)
    reference = eight_schools.reference_draws()
    errors = {}
    for site in ("mu", "tau"):
        ref = torch.as_tensor(reference[site])
        # reference MC error: sd / sqrt(ESS ~ 1000) ~ 0.03 sd; ours ~ 0.007 sd
        errors[site] = float((draws[site].double().mean() - ref.mean()) / ref.std())
    assert abs(errors["mu"]) < 0.2
    # tau: the mean-field optimum itself sits 0.25 reference sd low (measured with 20000 steps
    # and a 64-particle polish: E_q[tau] = 2.94 vs 3.72); a correct fit lands on that
    # known under-estimate, not within 0.2 sd, and never above the reference mean
    assert -0.35 < errors["tau"] < -0.15


def test_works_with_plain_pyro_svi():
    data = normal_normal.load_data()
    guide = MeanField(normal_normal.model)
    svi = pyro.infer.SVI(
        normal_normal.model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO()
    )
    for _ in range(1500):
        svi.step(**data)
    exact = normal_normal.exact_posterior(**data)["mu"]
    # plain Adam at lr 0.05 jitters by a fraction of a posterior sd; 0.5 sd is a loose budget
    assert abs(guide.locs.mu.item() - exact.mean.item()) < 0.5 * exact.stddev.item()
