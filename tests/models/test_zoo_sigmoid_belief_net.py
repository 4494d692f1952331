"""Sigmoid belief network: data, parameters, guide, subsampling and exact log-likelihood."""

import itertools
import math
import re

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

from ppl_vi import models

sbn = models.get("sigmoid_belief_net")

N_TRAIN, N_TEST, D = 1500, 297, 64


def _log_bernoulli(v, logits):
    """sum_k log Bernoulli(v_k; sigmoid(logits_k)), written out."""
    return (v * logits - F.softplus(logits)).sum(-1)


def _hand_log_joint(x, h2, h1, p):
    """Per-image log p(h2) + log p(h1 | h2) + log p(x | h1)."""
    return (
        _log_bernoulli(h2, p["sbn.b2"])
        + _log_bernoulli(h1, h2 @ p["sbn.W1"].T + p["sbn.b1"])
        + _log_bernoulli(x, h1 @ p["sbn.W0"].T + p["sbn.b0"])
    )


def _random_params(K1, K2, scale=1.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"sbn.b2": (K2,), "sbn.W1": (K1, K2), "sbn.b1": (K1,), "sbn.W0": (D, K1)}
    shapes["sbn.b0"] = (D,)
    dtype = torch.get_default_dtype()
    return {n: scale * torch.randn(s, generator=gen, dtype=dtype) for n, s in shapes.items()}


def _set_params(params):
    pyro.clear_param_store()
    for name, value in params.items():
        pyro.param(name, value.clone())


def test_load_data_binarisation_and_splits():
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().data)
    assert raw.shape == (N_TRAIN + N_TEST, D) and raw.max() == 16
    train, test = sbn.load_data("train")["x"], sbn.load_data(split="test")["x"]
    assert train.shape == (N_TRAIN, D) and test.shape == (N_TEST, D)
    assert train.dtype == torch.get_default_dtype()
    both = torch.cat([train, test])
    assert set(both.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(both, (raw > 8).to(both.dtype))
    assert torch.equal(train, (raw[:N_TRAIN] > 8).to(both.dtype))
    # Threshold exactly at > 8: value 8 -> 0, value 9 -> 1 (both occur).
    assert (both[raw == 8] == 0).all() and (both[raw == 9] == 1).all()
    assert (raw == 8).any() and (raw == 9).any()
    assert both.mean().item() == pytest.approx(0.293, abs=5e-4)
    assert torch.equal(sbn.load_data(split="test", n=10)["x"], test[:10])
    assert sbn.load_data(n=7)["x"].shape == (7, D)
    assert (sbn.NUM_TRAIN, sbn.THRESHOLD, sbn.NUM_PIXELS) == (N_TRAIN, 8, D)
    with pytest.raises(ValueError, match=re.escape("split must be 'train' or 'test'")):
        sbn.load_data(split="valid")


def test_model_traces_with_guide_and_creates_params():
    data = sbn.load_data()
    guide_trace = poutine.trace(sbn.local_bernoulli_guide).get_trace(**data)
    trace = poutine.trace(poutine.replay(sbn.model, trace=guide_trace)).get_trace(**data)
    shapes = {"h2": (N_TRAIN, 10), "h1": (N_TRAIN, 20), "x": (N_TRAIN, D)}
    for name, shape in shapes.items():
        site = trace.nodes[name]
        assert site["value"].shape == shape, name
        assert site["fn"].batch_shape == (N_TRAIN,) and site["fn"].event_shape == shape[1:]
        assert set(site["value"].unique().tolist()) <= {0.0, 1.0}
    assert trace.nodes["x"]["is_observed"] and not trace.nodes["h1"]["is_observed"]
    for name in ("h2", "h1"):
        assert torch.equal(trace.nodes[name]["value"], guide_trace.nodes[name]["value"])
    assert torch.isfinite(trace.log_prob_sum())

    store = pyro.get_param_store()
    expected = {
        "sbn.b2": (10,),
        "sbn.W1": (20, 10),
        "sbn.b1": (20,),
        "sbn.W0": (D, 20),
        "sbn.b0": (D,),
        "q_h2_logits": (N_TRAIN, 10),
        "q_h1_logits": (N_TRAIN, 20),
    }
    assert {n: tuple(store[n].shape) for n in store.keys()} == expected
    assert set(sbn.PARAM_NAMES) == {n for n in expected if n.startswith("sbn.")}
    # Fixed-seed small random weights, zero biases, reproducible across param stores.
    w0 = store["sbn.W0"].detach().clone()
    assert 0.07 < w0.std().item() < 0.13 and (store["sbn.b0"] == 0).all()
    pyro.clear_param_store()
    poutine.trace(sbn.model).get_trace(**data)
    assert torch.equal(pyro.param("sbn.W0").detach(), w0)


def test_subsampling_scales_log_density_by_n_over_batch(float64):
    data = sbn.load_data()
    _set_params(_random_params(20, 10))
    params = {n: pyro.param(n).detach() for n in sbn.PARAM_NAMES}
    guide_trace = poutine.trace(sbn.local_bernoulli_guide).get_trace(**data, subsample_size=32)
    trace = poutine.trace(poutine.replay(sbn.model, trace=guide_trace)).get_trace(
        **data, subsample_size=32
    )
    idx = trace.nodes["data"]["value"]
    assert idx.shape == (32,) and len(set(idx.tolist())) == 32
    assert torch.equal(idx, guide_trace.nodes["data"]["value"])
    for name, k in (("h2", 10), ("h1", 20), ("x", D)):
        assert trace.nodes[name]["value"].shape == (32, k)
        assert trace.nodes[name]["scale"] == pytest.approx(N_TRAIN / 32)
    torch.testing.assert_close(trace.nodes["x"]["value"], data["x"][idx], atol=0, rtol=0)
    h2, h1 = trace.nodes["h2"]["value"], trace.nodes["h1"]["value"]
    expected = N_TRAIN / 32 * _hand_log_joint(data["x"][idx], h2, h1, params).sum()
    torch.testing.assert_close(trace.log_prob_sum(), expected, atol=0, rtol=1e-12)
    # The observed site alone is the scaled mini-batch likelihood.
    trace.compute_log_prob()
    x_lp = trace.nodes["x"]["log_prob_sum"]
    batch_lik = _log_bernoulli(data["x"][idx], h1 @ params["sbn.W0"].T + params["sbn.b0"]).sum()
    torch.testing.assert_close(x_lp, N_TRAIN / 32 * batch_lik, atol=0, rtol=1e-12)


def _model_log_joint_by_enumeration(x, K1, K2):
    """(2**(K1 + K2), N) per-image log joints of the Pyro model, one conditioned trace per
    hidden configuration (the same configuration for every image)."""
    n = x.shape[0]
    rows = []
    for bits in itertools.product([0.0, 1.0], repeat=K1 + K2):
        h = torch.tensor(bits)
        cond = {"h2": h[:K2].expand(n, K2), "h1": h[K2:].expand(n, K1)}
        trace = poutine.trace(poutine.condition(sbn.model, data=cond)).get_trace(x, K1=K1, K2=K2)
        trace.compute_log_prob()
        rows.append(sum(trace.nodes[s]["log_prob"] for s in ("h2", "h1", "x")))
    return torch.stack(rows)


def test_exact_log_likelihood_equals_enumeration_through_the_model(float64):
    K1, K2 = 3, 2
    x = sbn.load_data(split="test", n=5)["x"]
    params = _random_params(K1, K2)
    _set_params(params)
    log_joint = _model_log_joint_by_enumeration(x, K1, K2)
    assert log_joint.shape == (32, 5)
    assert (log_joint.max(0).values - log_joint.min(0).values > 5).all()  # non-vacuous
    brute = torch.logsumexp(log_joint, dim=0)
    exact = sbn.exact_log_likelihood(x, params, K1=K1, K2=K2)
    assert exact.shape == (5,) and exact.dtype == torch.float64
    torch.testing.assert_close(exact, brute, atol=1e-10, rtol=0)
    # Without params it uses the param store.
    torch.testing.assert_close(sbn.exact_log_likelihood(x, K1=K1, K2=K2), exact, atol=0, rtol=0)
    # And an independent dense sum over all configurations agrees.
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=K1 + K2)))
    dense = torch.stack(
        [_hand_log_joint(x, c[:K2].expand(5, K2), c[K2:].expand(5, K1), params) for c in configs]
    )
    torch.testing.assert_close(torch.logsumexp(dense, 0), exact, atol=1e-10, rtol=0)


def test_exact_log_likelihood_chunks_and_default_params(float64, monkeypatch):
    """Blocks of images give the same result as one block; default initial parameters."""
    x = sbn.load_data(split="test")["x"]
    K1, K2 = 8, 2
    whole = sbn.exact_log_likelihood(x, K1=K1, K2=K2)  # one block of 297 images
    monkeypatch.setattr(sbn, "_CHUNK_ELEMENTS", 2**10)  # blocks of 4 images
    chunked = sbn.exact_log_likelihood(x, K1=K1, K2=K2)
    assert chunked.shape == (N_TEST,)
    torch.testing.assert_close(chunked, whole, atol=1e-12, rtol=0)
    assert torch.isfinite(whole).all() and (whole < 0).all()
    # With the near-zero initial weights every pixel is close to Bernoulli(1/2).
    assert whole.mean().item() == pytest.approx(D * math.log(0.5), abs=2.0)


def test_exact_log_likelihood_refuses_large_networks():
    x = sbn.load_data(n=3)["x"]
    msg = re.escape("needs K1 + K2 <= 16 (got K1=20, K2=10)")
    with pytest.raises(ValueError, match=msg):
        sbn.exact_log_likelihood(x)
    with pytest.raises(ValueError, match=re.escape("(got K1=10, K2=7)")):
        sbn.exact_log_likelihood(x, K1=10, K2=7)
    msg = re.escape("params['sbn.b2'] has shape (2,), but K1=2, K2=3 need shape (3,)")
    with pytest.raises(ValueError, match=msg):
        sbn.exact_log_likelihood(x, _random_params(3, 2), K1=2, K2=3)


def test_changing_sizes_without_clearing_the_store_raises():
    x = sbn.load_data(n=4)["x"]
    sbn.model(x, K1=3, K2=2)
    with pytest.raises(ValueError, match=r"'sbn\.b2' with shape \(2,\), but K1=4, K2=3"):
        sbn.model(x, K1=4, K2=3)


def _exact_elbo_terms(x, K1, K2):
    """Per-image E_q[f] and Var_q[f] of f = log p(x, h) - log q(h), by enumeration."""
    log_joint = _model_log_joint_by_enumeration(x, K1, K2)  # (S, N)
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=K1 + K2)))
    q2, q1 = pyro.param("q_h2_logits").detach(), pyro.param("q_h1_logits").detach()
    log_q = torch.stack(
        [_log_bernoulli(c[:K2], q2) + _log_bernoulli(c[K2:], q1) for c in configs]
    )  # (S, N)
    f, w = log_joint - log_q, log_q.exp()
    mean = (w * f).sum(0)
    return mean, (w * (f - mean) ** 2).sum(0)


def test_elbo_with_reference_guide_matches_enumeration_and_bounds_log_likelihood(float64):
    K1, K2, n = 3, 2, 5
    x = sbn.load_data(split="test", n=n)["x"]
    params = _random_params(K1, K2)
    _set_params(params)
    gen = torch.Generator().manual_seed(1)
    pyro.param("q_h2_logits", torch.randn(n, K2, generator=gen))
    pyro.param("q_h1_logits", torch.randn(n, K1, generator=gen))
    mean, var = _exact_elbo_terms(x, K1, K2)
    exact_elbo, se = mean.sum(), (var.sum() / 4000).sqrt()
    elbo = Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    estimate = -elbo.loss(sbn.model, sbn.local_bernoulli_guide, x, K1=K1, K2=K2)
    assert abs(estimate - exact_elbo.item()) < 4 * se.item()
    # Jensen: the ELBO of each image is below its exact log-likelihood, strictly here.
    log_lik = sbn.exact_log_likelihood(x, params, K1=K1, K2=K2)
    assert (mean < log_lik - 1e-3).all()


def test_score_function_svi_step_updates_every_parameter():
    data = sbn.load_data(n=200)
    svi = SVI(sbn.model, sbn.local_bernoulli_guide, Adam({"lr": 0.05}), TraceGraph_ELBO())
    svi.step(**data, subsample_size=16)  # creates the parameters
    store = pyro.get_param_store()
    before = {n: store[n].detach().clone() for n in store.keys()}
    assert len(before) == 7
    for _ in range(2):
        loss = svi.step(**data, subsample_size=16)
    assert math.isfinite(loss)
    for name, value in before.items():
        assert not torch.equal(store[name].detach(), value), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_params_and_guide_follow_data_dtype(dtype):
    data = {"x": sbn.load_data(n=10)["x"].to(dtype)}
    guide_trace = poutine.trace(sbn.local_bernoulli_guide).get_trace(**data, K1=4, K2=3)
    trace = poutine.trace(poutine.replay(sbn.model, trace=guide_trace)).get_trace(
        **data, K1=4, K2=3
    )
    trace.compute_log_prob()
    for name in ("h2", "h1", "x"):
        assert trace.nodes[name]["value"].dtype == dtype
        assert trace.nodes[name]["log_prob"].dtype == dtype
    store = pyro.get_param_store()
    assert all(store[n].dtype == dtype for n in store.keys())
    assert sbn.exact_log_likelihood(data["x"], K1=4, K2=3).dtype == dtype
