"""Logistic regression: data, density against a hand computation, mini-batch subsampling."""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from ppl_vi import models

logistic_regression = models.get("logistic_regression")

N, D = 569, 30


def _hand_log_joint(alpha, beta, X, y, idx=None, prior_scale=1.0):
    """log p(alpha) + log p(beta) + (N / B) * sum_{i in idx} log p(y_i | alpha, beta)."""
    idx = torch.arange(X.shape[0]) if idx is None else idx
    logits = alpha + X[idx] @ beta
    loglik = -F.binary_cross_entropy_with_logits(logits, y[idx], reduction="sum")
    log_prior = -0.5 * ((alpha / prior_scale) ** 2 + (beta / prior_scale).pow(2).sum()) - (
        1 + beta.numel()
    ) * (math.log(prior_scale) + 0.5 * math.log(2 * math.pi))
    return log_prior + X.shape[0] / len(idx) * loglik


def test_load_data(float64):
    from sklearn.datasets import load_breast_cancer

    data = logistic_regression.load_data()
    assert set(data) == {"X", "y"}
    X, y = data["X"], data["y"]
    assert X.shape == (N, D) and y.shape == (N,)
    assert X.dtype == torch.float64 and y.dtype == torch.float64
    torch.testing.assert_close(X.mean(0), torch.zeros(D), atol=1e-6, rtol=0)
    torch.testing.assert_close(X.std(0, correction=0), torch.ones(D), atol=1e-6, rtol=0)
    assert set(y.tolist()) == {0.0, 1.0} and int(y.sum()) == 357  # benign = 1
    raw = load_breast_cancer()
    assert torch.equal(y, torch.as_tensor(raw.target, dtype=torch.float64))
    # Standardization is an affine map of each raw column.
    raw_X = torch.as_tensor(raw.data)
    torch.testing.assert_close(X * raw_X.std(0, correction=0) + raw_X.mean(0), raw_X)


def test_full_data_log_density_matches_hand_computation(float64):
    data = logistic_regression.load_data()
    torch.manual_seed(3)
    for prior_scale in (1.0, 2.5):
        alpha, beta = torch.randn(()), 0.3 * torch.randn(D)
        conditioned = poutine.condition(
            logistic_regression.model, data={"alpha": alpha, "beta": beta}
        )
        trace = poutine.trace(conditioned).get_trace(**data, prior_scale=prior_scale)
        assert trace.nodes["y"]["value"].shape == (N,)
        assert trace.nodes["y"]["scale"] == 1.0
        expected = _hand_log_joint(alpha, beta, data["X"], data["y"], prior_scale=prior_scale)
        torch.testing.assert_close(trace.log_prob_sum(), expected, atol=1e-8, rtol=0)


def test_plate_subsamples_and_scales(float64):
    data = logistic_regression.load_data()
    alpha, beta = torch.tensor(0.4), 0.2 * torch.randn(D)
    conditioned = poutine.condition(logistic_regression.model, data={"alpha": alpha, "beta": beta})
    trace = poutine.trace(conditioned).get_trace(**data, subsample_size=32)
    idx = trace.nodes["data"]["value"]
    assert idx.shape == (32,) and len(set(idx.tolist())) == 32
    y_site = trace.nodes["y"]
    assert y_site["value"].shape == (32,)
    torch.testing.assert_close(y_site["value"], data["y"][idx], atol=0, rtol=0)
    assert y_site["scale"] == pytest.approx(N / 32)
    # The scaled mini-batch log likelihood is what Pyro sums.
    expected = _hand_log_joint(alpha, beta, data["X"], data["y"], idx=idx)
    torch.testing.assert_close(trace.log_prob_sum(), expected, atol=1e-8, rtol=0)
    # Different calls draw different mini-batches.
    other = poutine.trace(conditioned).get_trace(**data, subsample_size=32).nodes["data"]["value"]
    assert not torch.equal(idx, other)


def test_batched_latents_match_per_draw_loop(float64):
    """Under an outer plate (as with vectorized particles) each draw gets its own density."""
    data = logistic_regression.load_data()
    num = 5
    alphas, betas = torch.randn(num, 1), 0.3 * torch.randn(num, 1, D)

    def batched(**kw):
        with pyro.plate("draws", num, dim=-2):
            return logistic_regression.model(**kw)

    conditioned = poutine.condition(batched, data={"alpha": alphas, "beta": betas})
    trace = poutine.trace(conditioned).get_trace(**data)
    trace.compute_log_prob()
    assert trace.nodes["y"]["log_prob"].shape == (num, N)
    per_draw = sum(trace.nodes[s]["log_prob"].sum(-1) for s in ("alpha", "beta", "y"))
    expected = torch.stack(
        [_hand_log_joint(alphas[i, 0], betas[i, 0], data["X"], data["y"]) for i in range(num)]
    )
    torch.testing.assert_close(per_draw, expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_follows_data_dtype(dtype):
    data = {k: v.to(dtype) for k, v in logistic_regression.load_data().items()}
    trace = poutine.trace(logistic_regression.model).get_trace(**data, subsample_size=10)
    for name in ("alpha", "beta", "y"):
        assert trace.nodes[name]["value"].dtype == dtype
    assert trace.nodes["beta"]["value"].shape == (D,)
    assert trace.nodes["alpha"]["value"].shape == ()
