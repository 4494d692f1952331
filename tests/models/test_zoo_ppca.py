"""Probabilistic PCA: exact posterior and evidence against the model's own densities."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from ppl_vi.models import ppca


def _log_joint(z, data):
    conditioned = poutine.condition(ppca.model, data={"z": z})
    return poutine.trace(conditioned).get_trace(**data).log_prob_sum()


@pytest.mark.parametrize("n", [1, 30])
def test_log_joint_minus_posterior_equals_evidence(n, float64):
    data = ppca.load_data(n=n)
    post = ppca.exact_posterior(**data)["z"]
    assert post.batch_shape == (n,) and post.event_shape == (2,)
    log_z = ppca.log_evidence(**data)
    assert log_z.shape == () and log_z.dtype == torch.float64
    torch.manual_seed(7)
    zs = list(post.sample((30,))) + list(3.0 * torch.randn(30, n, 2))  # near and far
    log_joints = torch.stack([_log_joint(z, data) for z in zs])
    log_q = torch.stack([post.log_prob(z).sum() for z in zs])
    assert log_joints.max() - log_joints.min() > 5.0  # the identity is not vacuous
    torch.testing.assert_close(log_joints - log_q, log_z.expand(60), atol=1e-8, rtol=0)


def test_elbo_with_exact_posterior_guide_is_log_evidence(float64):
    data = ppca.load_data(n=40)
    post = ppca.exact_posterior(**data)["z"]

    def guide(**kwargs):
        with pyro.plate("data", 40, dim=-1):
            pyro.sample("z", post)

    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss(ppca.model, guide, **data)
    assert loss == pytest.approx(-ppca.log_evidence(**data).item(), abs=1e-8)


def test_default_loadings_make_the_posterior_diagonal(float64):
    W, sigma = ppca.W_DEFAULT, ppca.SIGMA_DEFAULT
    M = W.T @ W + sigma**2 * torch.eye(2)
    torch.testing.assert_close(
        M, torch.diag(torch.tensor([4.0, 1.0]) + sigma**2), atol=1e-12, rtol=0
    )
    cov = ppca.exact_posterior(**ppca.load_data(n=3))["z"].covariance_matrix[0]
    assert cov[0, 1].abs().item() < 1e-12
    expected = sigma**2 / torch.tensor([4.0 + sigma**2, 1.0 + sigma**2])
    torch.testing.assert_close(cov.diagonal(), expected, atol=1e-12, rtol=0)


def test_posterior_mean_formula(float64):
    data = ppca.load_data(n=5)
    x, W, mu, s = data["x"], data["W"], data["mu"], data["sigma"]
    M = W.T @ W + s**2 * torch.eye(2)
    expected = torch.linalg.solve(M, W.T @ (x - mu).T).T
    torch.testing.assert_close(ppca.exact_posterior(**data)["z"].mean, expected, atol=1e-12, rtol=0)


def test_load_data_is_fixed_and_splits_differ():
    a, b = ppca.load_data(n=50), ppca.load_data(n=50)
    torch.testing.assert_close(a["x"], b["x"], atol=0, rtol=0)
    test = ppca.load_data(n=50, split="test")
    assert not torch.allclose(a["x"], test["x"])
    assert a["x"].shape == (50, 5) and a["x"].dtype == torch.get_default_dtype()
    # simulated from the default model: sample covariance near W W^T + sigma^2 I
    big = ppca.load_data(n=4000)["x"].double()
    cov = torch.cov(big.T)
    target = ppca.W_DEFAULT @ ppca.W_DEFAULT.T + ppca.SIGMA_DEFAULT**2 * torch.eye(5)
    assert (cov - target).abs().max().item() < 0.25
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        ppca.load_data(split="valid")


def test_subsampling_shapes_and_scale():
    data = ppca.load_data(n=100)
    trace = poutine.trace(ppca.model).get_trace(**data, subsample_size=10)
    assert trace.nodes["z"]["value"].shape == (10, 2)
    assert trace.nodes["x"]["value"].shape == (10, 5)
    assert trace.nodes["x"]["scale"] == pytest.approx(10.0)
    idx = trace.nodes["data"]["value"]
    torch.testing.assert_close(trace.nodes["x"]["value"], data["x"][idx])


def test_prior_predictive_and_errors():
    trace = poutine.trace(ppca.model).get_trace(num_data=7)
    assert trace.nodes["x"]["value"].shape == (7, 5)
    with pytest.raises(ValueError, match="pass either x or num_data"):
        ppca.model()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_data(dtype):
    torch.set_default_dtype(dtype)
    data = ppca.load_data(n=4)
    assert all(v.dtype == dtype for v in data.values())
    trace = poutine.trace(ppca.model).get_trace(**data)
    for node in trace.nodes.values():
        if node["type"] == "sample" and not site_is_subsample(node):
            assert node["value"].dtype == dtype
    assert ppca.log_evidence(**data).dtype == dtype
    assert ppca.exact_posterior(**data)["z"].mean.dtype == dtype
