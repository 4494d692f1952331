"""Exact posteriors and evidences of the conjugate models against the models' own densities.

For any latent value z, log p(data, z) - log p(z | data) = log p(data). Computing the left side
with Pyro's trace of the model and the exact posterior, at many z spread over and beyond the
posterior, checks posterior and evidence together against the Pyro program.
"""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from ppl_vi import models

normal_normal = models.get("normal_normal")
beta_bernoulli = models.get("beta_bernoulli")
bayes_linear_regression = models.get("bayes_linear_regression")


def _broad(name, data):
    """A distribution much wider than the posterior, covering the prior's bulk."""
    if name == "normal_normal":
        return torch.distributions.Normal(0.0, 5.0)
    if name == "beta_bernoulli":
        return torch.distributions.Uniform(0.001, 0.999)
    d = data["X"].shape[-1]
    return torch.distributions.Independent(torch.distributions.Normal(torch.zeros(d), 1.0), 1)


CASES = [
    # (module, load_data options, model / posterior keyword arguments)
    (normal_normal, {}, {}),
    (normal_normal, {"num_data": 3}, {"prior_loc": -1.0, "prior_scale": 0.5, "noise_scale": 2.0}),
    (beta_bernoulli, {}, {}),
    (beta_bernoulli, {}, {"alpha": 0.5, "beta": 3.0}),
    (bayes_linear_regression, {}, {}),
    (bayes_linear_regression, {"n": 40}, {"prior_scale": 0.3, "noise_scale": 1.5}),
]
IDS = [f"{m.__name__.rsplit('.', 1)[-1]}-{i}" for i, (m, _, _) in enumerate(CASES)]


def _log_joint(module, site, z, data, kwargs):
    conditioned = poutine.condition(module.model, data={site: z})
    return poutine.trace(conditioned).get_trace(**data, **kwargs).log_prob_sum()


@pytest.mark.parametrize(("module", "options", "kwargs"), CASES, ids=IDS)
def test_log_joint_minus_posterior_equals_evidence(module, options, kwargs, float64):
    name = module.__name__.rsplit(".", 1)[-1]
    data = module.load_data(**options)
    posterior = module.exact_posterior(**data, **kwargs)
    latent_sites = {
        n
        for n, s in poutine.trace(module.model).get_trace(**data, **kwargs).nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }
    assert set(posterior) == latent_sites
    (site, q) = next(iter(posterior.items()))
    log_z = module.log_evidence(**data, **kwargs)
    assert log_z.shape == () and log_z.dtype == torch.float64

    torch.manual_seed(7)
    zs = list(q.sample((50,))) + list(_broad(name, data).sample((50,)))
    log_joints = torch.stack([_log_joint(module, site, z, data, kwargs) for z in zs])
    log_q = torch.stack([q.log_prob(z) for z in zs])
    # The log joint itself must vary a lot over z, or the identity would be vacuous.
    assert log_joints.max() - log_joints.min() > 5.0
    torch.testing.assert_close(log_joints - log_q, log_z.expand(100), atol=1e-8, rtol=0)


@pytest.mark.parametrize(("module", "options", "kwargs"), CASES, ids=IDS)
def test_elbo_with_exact_posterior_guide_is_log_evidence(module, options, kwargs, float64):
    """With q = exact posterior every particle's ELBO term equals log p(data); this also runs
    the model under vectorized particles, i.e. with batched latents."""
    data = module.load_data(**options)
    posterior = module.exact_posterior(**data, **kwargs)

    def guide(*args, **kw):
        for site, q in posterior.items():
            pyro.sample(site, q)

    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss(module.model, guide, **data, **kwargs)
    log_z = module.log_evidence(**data, **kwargs)
    assert loss == pytest.approx(-log_z.item(), abs=1e-8)


def test_normal_normal_evidence_matches_dense_multivariate_normal(float64):
    x = normal_normal.load_data()["x"]
    n = x.shape[0]
    for loc, s0, s in [(0.0, 2.0, 1.0), (3.0, 0.1, 4.0)]:
        cov = s**2 * torch.eye(n) + s0**2 * torch.ones(n, n)
        dense = torch.distributions.MultivariateNormal(torch.full((n,), loc), cov).log_prob(x)
        got = normal_normal.log_evidence(x, prior_loc=loc, prior_scale=s0, noise_scale=s)
        torch.testing.assert_close(got, dense, atol=1e-10, rtol=0)


def test_normal_normal_posterior_values(float64):
    x = normal_normal.load_data()["x"]
    q = normal_normal.exact_posterior(x)["mu"]
    prec = 1 / 4 + 20 / 1
    assert q.scale.item() == pytest.approx(prec**-0.5, rel=1e-12)
    assert q.loc.item() == pytest.approx(x.sum().item() / prec, rel=1e-12)
    # The prior shrinks the posterior mean towards 0 relative to the sample mean.
    assert 0 < q.loc.item() < x.mean().item()


def test_beta_bernoulli_posterior_and_evidence_values(float64):
    y = beta_bernoulli.load_data()["y"]
    q = beta_bernoulli.exact_posterior(y)["p"]
    assert (q.concentration1.item(), q.concentration0.item()) == (20.0, 34.0)
    expected = (
        math.lgamma(20) + math.lgamma(34) - math.lgamma(54) - 2 * math.lgamma(2) + math.lgamma(4)
    )
    assert beta_bernoulli.log_evidence(y).item() == pytest.approx(expected, abs=1e-12)


def test_bayes_linear_regression_posterior_matches_numpy_ridge_and_is_correlated(float64):
    data = bayes_linear_regression.load_data()
    X, y = data["X"].numpy(), data["y"].numpy()
    s0, s = bayes_linear_regression.PRIOR_SCALE, bayes_linear_regression.NOISE_SCALE
    precision = X.T @ X / s**2 + np.eye(X.shape[1]) / s0**2
    mean = np.linalg.solve(precision, X.T @ y / s**2)
    cov = np.linalg.inv(precision)
    q = bayes_linear_regression.exact_posterior(**data)["beta"]
    np.testing.assert_allclose(q.mean.numpy(), mean, atol=1e-10)
    np.testing.assert_allclose(q.covariance_matrix.numpy(), cov, atol=1e-12)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    s1, s2 = (
        bayes_linear_regression.COLUMNS.index("s1"),
        bayes_linear_regression.COLUMNS.index("s2"),
    )
    assert corr[s1, s2] < -0.8  # a strongly correlated posterior, as documented


@pytest.mark.parametrize("module", [normal_normal, beta_bernoulli, bayes_linear_regression])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_default_and_data(module, dtype):
    torch.set_default_dtype(dtype)
    data = module.load_data()
    assert all(v.dtype == dtype for v in data.values())
    trace = poutine.trace(module.model).get_trace(**data)
    for node in trace.nodes.values():
        if node["type"] == "sample" and not site_is_subsample(node):
            assert node["value"].dtype == dtype, node["name"]
    assert module.log_evidence(**data).dtype == dtype
    for q in module.exact_posterior(**data).values():
        assert q.mean.dtype == dtype
    # Data in the other precision drive the model, not the default dtype.
    other = torch.float64 if dtype == torch.float32 else torch.float32
    cast = {k: v.to(other) for k, v in data.items()}
    trace = poutine.trace(module.model).get_trace(**cast)
    for node in trace.nodes.values():
        if node["type"] == "sample" and not site_is_subsample(node):
            assert node["value"].dtype == other, node["name"]
    trace.compute_log_prob()
    for node in trace.nodes.values():
        if node["type"] == "sample" and not site_is_subsample(node):
            assert node["log_prob"].dtype == other, node["name"]


def test_normal_normal_load_data(float64):
    x = normal_normal.load_data()["x"]
    assert x.shape == (20,)
    torch.testing.assert_close(x, normal_normal.load_data()["x"], atol=0, rtol=0)
    assert normal_normal.load_data(num_data=5)["x"].shape == (5,)
    # Simulated around the documented true mean with unit noise.
    assert abs(x.mean().item() - normal_normal.TRUE_MU) < 3 / math.sqrt(20)
    assert 0.5 < x.std().item() < 1.5


def test_beta_bernoulli_load_data():
    y = beta_bernoulli.load_data()["y"]
    assert y.shape == (50,) and y.dtype == torch.get_default_dtype()
    assert set(y.tolist()) == {0.0, 1.0}
    assert int(y.sum()) == 18
    assert not torch.equal(y, y.sort(descending=True).values)  # shuffled, not 18 ones first
    torch.testing.assert_close(y, beta_bernoulli.load_data()["y"], atol=0, rtol=0)


def test_bayes_linear_regression_load_data(float64):
    from sklearn.datasets import load_diabetes

    data = bayes_linear_regression.load_data()
    X, y = data["X"], data["y"]
    assert X.shape == (442, 11) and y.shape == (442,)
    assert torch.equal(X[:, 0], torch.ones(442))
    torch.testing.assert_close(X[:, 1:].mean(0), torch.zeros(10), atol=1e-6, rtol=0)
    torch.testing.assert_close(X[:, 1:].std(0, correction=0), torch.ones(10), atol=1e-6, rtol=0)
    assert abs(y.mean().item()) < 1e-6 and abs(y.std(correction=0).item() - 1) < 1e-6
    raw = load_diabetes(scaled=False)
    assert list(bayes_linear_regression.COLUMNS[1:]) == list(raw.feature_names)
    target = torch.as_tensor(raw.target)
    torch.testing.assert_close(y * target.std(correction=0) + target.mean(), target)
    # The documented noise scale is the rounded OLS residual sd on this scale.
    beta, *_ = torch.linalg.lstsq(X, y.unsqueeze(-1))
    resid = y - (X @ beta).squeeze(-1)
    resid_sd = math.sqrt(resid.pow(2).sum().item() / (442 - 11))
    assert resid_sd == pytest.approx(0.7032, abs=1e-4)
    assert bayes_linear_regression.NOISE_SCALE == round(resid_sd, 1)
    small = bayes_linear_regression.load_data(n=50)
    torch.testing.assert_close(small["X"], X[:50], atol=0, rtol=0)
    torch.testing.assert_close(small["y"], y[:50], atol=0, rtol=0)
