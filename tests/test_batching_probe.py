"""Batching decided by asking the model: ordinary models that do not broadcast over a particle
dim run (one particle at a time, with a warning naming the line and the fix) instead of
crashing in the final phase and losing the fit."""

import math
import re
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi.infer_util import model_info
from ppl_vi.models import normal_normal
from ppl_vi.probe import probe_batching

N, D, G = 60, 3, 4
GEN = torch.Generator().manual_seed(0)
X = torch.randn(N, D, generator=GEN)
W_TRUE = torch.tensor([1.0, -2.0, 0.5])
Y = X @ W_TRUE + 0.5 * torch.randn(N, generator=GEN)
GROUP = torch.arange(N) % G
PRIOR_SD, NOISE_SD = 1.0, 0.5


def regression(X, y):  # matrix product on a to_event site outside any plate
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), PRIOR_SD).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(X @ w, NOISE_SD), obs=y)


def varying_intercept(x, group, y):  # alpha[group] inside a data plate
    alpha = pyro.sample("alpha", dist.Normal(0.0, 1.0).expand([G]).to_event(1))
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(alpha[group] + beta * x, 1.0), obs=y)


def branching(y):  # Python `if` on a tensor
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = 1.0 if mu > 0 else 2.0
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, scale), obs=y)


def ridge(X, y):  # .sum() over all dims: runs batched, but adds up every particle's penalty
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 10.0).to_event(1))
    pyro.factor("ridge", -0.5 * (w**2).sum())
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((X * w).sum(-1), NOISE_SD), obs=y)


def regression_batched(X, y):  # the same model, written to broadcast
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), PRIOR_SD).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((X * w).sum(-1), NOISE_SD), obs=y)


CASES = [
    (regression, (X, Y), r"\(X \* w\)\.sum\(-1\)", 'pyro.sample("y", dist.Normal(X @ w'),
    (varying_intercept, (X[:, 0], GROUP, Y), r"alpha\[\.\.\., group\]", "alpha[group]"),
    (branching, (Y,), r"torch.where", "scale = 1.0 if mu > 0 else 2.0"),
    (ridge, (X, Y), r"w.sum\(-1\), not w.sum\(\)", 'pyro.factor("ridge", -0.5 * (w**2).sum())'),
]


@pytest.mark.parametrize(
    ("model", "args", "fix", "line"), CASES, ids=lambda v: getattr(v, "__name__", None)
)
def test_default_fit_runs_one_particle_at_a_time_with_a_warning(model, args, fix, line):
    with pytest.warns(RuntimeWarning, match=r"does not broadcast over a batch of particles") as w:
        result = ppl_vi.fit(model, *args, num_steps=300, progress=False)
    message = next(str(x.message) for x in w if "broadcast" in str(x.message))
    assert "test_batching_probe.py:" in message and line in message, message
    assert re.search(fix, message), message
    assert result.num_steps == 300 and np.isfinite(result.losses).all()
    assert result.info.batched is False
    summary = result.summary(num_samples=200, seed=0)
    assert np.isfinite(summary["mean"].to_numpy()).all()
    assert math.isfinite(result.psis_khat(num_samples=200, seed=0))
    idata = result.to_inference_data(num_samples=50, seed=0)
    assert idata.posterior.sizes["draw"] == 50


def test_a_model_written_to_broadcast_is_batched_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = ppl_vi.fit(regression_batched, X, Y, num_steps=50, progress=False)
    assert result.info.batched is True


def test_the_unbatched_fit_finds_the_posterior_mean():
    """Linear regression with known noise: the exact posterior mean is known, and mean field
    recovers the means of a Gaussian posterior exactly at its optimum."""
    precision = torch.eye(D) / PRIOR_SD**2 + X.T @ X / NOISE_SD**2
    cov = torch.linalg.inv(precision)
    mean = cov @ X.T @ Y / NOISE_SD**2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ppl_vi.fit(regression, X, Y, num_steps=3000, progress=False, lr=0.05)
    fitted = result.params["MeanField.locs.w"]
    error = (fitted - mean) / cov.diagonal().sqrt()
    # budget: 3000 Adam steps plus the final phase reach the optimum to ~0.1 posterior sd
    assert error.abs().max() < 0.25, error


def test_the_probe_sees_silent_particle_mixing():
    info = model_info(ridge, (X, Y), {})
    guide = ppl_vi.guides.MeanField(ridge)
    guide(X, Y)
    report = probe_batching(ridge, guide, (X, Y), {}, info)
    assert not report.batched and "site 'ridge' gets a different log density" in report.reason
    info = model_info(regression_batched, (X, Y), {})
    guide = ppl_vi.guides.MeanField(regression_batched)
    guide(X, Y)
    assert probe_batching(regression_batched, guide, (X, Y), {}, info).batched


def test_the_probe_draws_nothing_from_the_random_stream():
    info = model_info(regression_batched, (X, Y), {})
    guide = ppl_vi.guides.MeanField(regression_batched)
    guide(X, Y)
    pyro.set_rng_seed(3)
    probe_batching(regression_batched, guide, (X, Y), {}, info)
    after = torch.rand(2)
    pyro.set_rng_seed(3)
    assert torch.equal(torch.rand(2), after)


def test_draws_one_at_a_time_equal_the_batched_identity(float64):
    """At the exact posterior every log weight is log p(x), batched or one at a time."""
    data = normal_normal.load_data()
    result = ppl_vi.fit(normal_normal.model, **data, num_steps=1, progress=False)
    post = normal_normal.exact_posterior(**data)["mu"]
    with result.param_scope():
        store = pyro.get_param_store()
        with torch.no_grad():
            store._params["MeanField.locs.mu"].copy_(post.loc)
            unconstrained = dist.transforms.SoftplusTransform().inv(post.scale)
            store._params["MeanField.scales.mu"].copy_(unconstrained)
    log_z = normal_normal.log_evidence(**data).item()
    result.info.batched = False
    log_p, log_q = result.log_weights(30, seed=0)
    np.testing.assert_allclose((log_p - log_q).numpy(), log_z, rtol=0, atol=1e-8)
    draws = result.sample(2000, seed=1)["mu"]
    assert abs(float(draws.mean()) - float(post.loc)) < 4 * float(post.scale) / math.sqrt(2000)


def test_the_final_phase_adds_particles_only_when_they_batch():
    for model, args, batched in [(regression_batched, (X, Y), True), (branching, (Y,), False)]:
        engine = ppl_vi.Engine(model, policies=[ppl_vi.Polish(num_particles=16)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            engine.init(*args)
        assert engine.info.batched is batched
        assert sorted(engine.elbos) == (["main", "polish"] if batched else ["main"])
        if batched:
            assert engine.elbos["polish"].num_particles == 16
