"""Bayesian neural network: data split, density against a hand computation, batched draws in
both layouts, fitting (compiled, vectorized particles), predictive metrics, errors."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

import ppl_vi
from ppl_vi.models import bnn

Z = 4.0


def _weights(dims, seed=0, num=None, scale=0.5):
    """Random weights {site: value} for layer widths ``dims`` (with a leading ``num`` dim)."""
    g = torch.Generator().manual_seed(seed)
    lead = () if num is None else (num,)
    out = {}
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        out[f"layers.{i}.weight"] = scale * torch.randn(*lead, d_out, d_in, generator=g)
        out[f"layers.{i}.bias"] = scale * torch.randn(*lead, d_out, generator=g)
    return out


def _hand_f(x, weights, activation="relu"):
    act = torch.relu if activation == "relu" else torch.tanh
    n_layers = len(weights) // 2
    h = x
    for i in range(n_layers):
        h = h @ weights[f"layers.{i}.weight"].T + weights[f"layers.{i}.bias"]
        if i < n_layers - 1:
            h = act(h)
    return h[:, 0]


def _hand_log_joint(x, y, weights, task, sigma=None, idx=None, prior_scale=1.0, **kw):
    """log p(W) [+ log p(sigma)] + (N / B) sum_{n in idx} log p(y_n | x_n, W [, sigma])."""
    idx = torch.arange(x.shape[0]) if idx is None else idx
    prior = torch.distributions.Normal(0.0, prior_scale)
    total = sum(prior.log_prob(w).sum() for w in weights.values())
    f = _hand_f(x[idx], weights, **kw)
    if task == "regression":
        total = total + torch.distributions.HalfNormal(1.0).log_prob(sigma)
        loglik = -0.5 * ((y[idx] - f) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    else:
        loglik = y[idx] * torch.nn.functional.logsigmoid(f) + (1 - y[idx]) * (
            torch.nn.functional.logsigmoid(-f)
        )
    return total + x.shape[0] / len(idx) * loglik.sum()


def _data(task, n=None, split="train"):
    data = bnn.load_data(task=task, split=split, n=n)
    return data["x"], data["y"]


# ---------------------------------------------------------------------- data
@pytest.mark.parametrize(
    ("task", "sizes", "dim"),
    [("regression", (353, 89), 10), ("classification", (455, 114), 30)],
)
def test_load_data_split_and_standardization(float64, task, sizes, dim):
    from sklearn.datasets import load_breast_cancer, load_diabetes

    train, test = bnn.load_data(task, "train"), bnn.load_data(task, "test")
    assert train["task"] == test["task"] == task
    assert (train["x"].shape, test["x"].shape) == ((sizes[0], dim), (sizes[1], dim))
    assert (train["y"].shape, test["y"].shape) == ((sizes[0],), (sizes[1],))
    assert train["x"].dtype == train["y"].dtype == torch.float64
    # standardized with the training rows' statistics
    torch.testing.assert_close(train["x"].mean(0), torch.zeros(dim), atol=1e-10, rtol=0)
    torch.testing.assert_close(train["x"].std(0, correction=0), torch.ones(dim), atol=1e-10, rtol=0)
    raw_x, raw_y = (load_diabetes if task == "regression" else load_breast_cancer)(return_X_y=True)
    perm = np.random.RandomState(bnn.SPLIT_SEED).permutation(len(raw_y))
    rows = torch.as_tensor(raw_x[perm])
    mean, sd = rows[: sizes[0]].mean(0), rows[: sizes[0]].std(0, correction=0)
    both = torch.cat([train["x"], test["x"]])
    torch.testing.assert_close(both * sd + mean, rows, atol=1e-9, rtol=1e-12)
    target = torch.as_tensor(raw_y[perm], dtype=torch.float64)
    y = torch.cat([train["y"], test["y"]])
    if task == "regression":
        y_sd = target[: sizes[0]].std(correction=0)
        assert bnn.target_scale(task) == pytest.approx(float(y_sd))
        torch.testing.assert_close(y * y_sd + target[: sizes[0]].mean(), target)
    else:
        assert torch.equal(y, target) and bnn.target_scale(task) == 1.0
    # the test split does not see its own statistics: its mean is not 0
    assert test["x"].mean(0).abs().max() > 0.05
    assert bnn.load_data(task, "test", n=10)["x"].shape == (10, dim)


# ---------------------------------------------------------------------- density
@pytest.mark.parametrize(
    ("task", "hidden", "activation", "prior_scale"),
    [
        ("regression", (3,), "relu", 1.0),
        ("regression", (4, 3), "tanh", 0.7),
        ("classification", (5,), "relu", 2.0),
        ("classification", (), "tanh", 1.0),
    ],
)
def test_log_density_matches_hand_computation(float64, task, hidden, activation, prior_scale):
    x, y = _data(task, n=40)
    weights = _weights((x.shape[1], *hidden, 1), seed=len(hidden))
    cond = dict(weights)
    sigma = torch.tensor(0.8)
    if task == "regression":
        cond["sigma"] = sigma
    kw = dict(hidden_dims=hidden, task=task, activation=activation, prior_scale=prior_scale)
    trace = poutine.trace(poutine.condition(bnn.model, data=cond)).get_trace(x, y, **kw)
    assert set(cond) | {"y", "data"} == {n for n, s in trace.nodes.items() if s["type"] == "sample"}
    expected = _hand_log_joint(
        x, y, weights, task, sigma, prior_scale=prior_scale, activation=activation
    )
    torch.testing.assert_close(trace.log_prob_sum(), expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], _hand_f(x, weights, activation))


def test_plate_subsamples_and_scales(float64):
    x, y = _data("regression")
    weights = _weights((10, 6, 1))
    cond = {**weights, "sigma": torch.tensor(0.5)}
    model = poutine.condition(bnn.model, data=cond)
    trace = poutine.trace(model).get_trace(x, y, hidden_dims=(6,), subsample_size=32)
    idx = trace.nodes["data"]["value"]
    assert idx.shape == (32,) and len(set(idx.tolist())) == 32
    assert torch.equal(trace.nodes["y"]["value"], y[idx])
    assert trace.nodes["y"]["scale"] == pytest.approx(353 / 32)
    # no weight or sigma site is inside the data plate
    assert all(not trace.nodes[k]["cond_indep_stack"] for k in cond)
    expected = _hand_log_joint(x, y, weights, "regression", torch.tensor(0.5), idx=idx)
    torch.testing.assert_close(trace.log_prob_sum(), expected, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------- batched draws
def _loop(x, draws, num, task="classification", hidden=(4,)):
    out = []
    for s in range(num):
        one = {k: v[s] for k, v in draws.items()}
        out.append(poutine.condition(bnn.model, data=one)(x, hidden_dims=hidden, task=task))
    return torch.stack(out)


def test_vectorized_particle_layout_matches_per_draw_loop(float64):
    """Draws (K, 1, *shape) under a plate left of the data plate (vectorized particles)."""
    x, y = _data("classification", n=20)
    num = 5
    draws = _weights((30, 4, 1), num=num)

    def batched(*args, **kwargs):
        with pyro.plate("particles", num, dim=-2):
            return bnn.model(*args, **kwargs)

    data = {k: v.unsqueeze(1) for k, v in draws.items()}
    trace = poutine.trace(poutine.condition(batched, data=data)).get_trace(
        x, y, hidden_dims=(4,), task="classification"
    )
    trace.compute_log_prob()
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (num, 20) and trace.nodes["y"]["log_prob"].shape == (num, 20)
    torch.testing.assert_close(out, _loop(x, draws, num), atol=1e-12, rtol=0)
    per_draw = sum(trace.nodes[k]["log_prob"].sum(-1) for k in [*draws, "y"])
    expected = [
        _hand_log_joint(x, y, {k: v[s] for k, v in draws.items()}, "classification")
        for s in range(num)
    ]
    torch.testing.assert_close(per_draw, torch.stack(expected), atol=1e-9, rtol=0)


def test_predictive_layout_matches_per_draw_loop(float64):
    """pyro.infer.Predictive(parallel=True) conditions on draws (S, *shape) (no plate dim)."""
    x, _ = _data("classification", n=20)
    for num in (1, 6):
        draws = _weights((30, 4, 1), num=num, seed=num)
        predictive = Predictive(
            bnn.model, posterior_samples=draws, return_sites=["_RETURN", "y"], parallel=True
        )
        out = predictive(x, hidden_dims=(4,), task="classification")
        assert out["y"].shape == (num, 20)
        torch.testing.assert_close(out["_RETURN"], _loop(x, draws, num), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_follows_data_dtype(dtype):
    data = bnn.load_data(task="regression")
    x, y = data["x"].to(dtype), data["y"].to(dtype)
    trace = poutine.trace(bnn.model).get_trace(x, y, hidden_dims=(3,), subsample_size=10)
    for name in ("layers.0.weight", "layers.1.bias", "sigma", "y"):
        assert trace.nodes[name]["value"].dtype == dtype
    # with no y the model draws it, also in the data's dtype
    assert (
        poutine.trace(bnn.model).get_trace(x, hidden_dims=(3,)).nodes["y"]["value"].dtype == dtype
    )


# ---------------------------------------------------------------------- fitting
def test_fit_takes_the_compiled_path_with_vectorized_particles():
    data = bnn.load_data(task="classification")
    result = ppl_vi.fit(
        bnn.model, **data, hidden_dims=(8,), subsample_size=64, num_particles=4,
        num_steps=250, progress=False, convergence=None, polish=None,
    )  # fmt: skip
    assert result.method_info["jit"]["main"]["path"] == "compiled step"
    assert result.info.batched  # particles evaluated as one batch over a plate
    assert result.params["MeanField.locs.layers.0.weight"].shape == (8, 30)


def test_fitted_classifier_predicts_held_out_tumours():
    """Breast-cancer test accuracy: logistic regression reaches about 0.97; a BNN fitted by
    mean-field VI must do about as well (>= 0.93 on 114 test rows, 8 errors)."""
    train, test = (bnn.load_data(task="classification", split=s) for s in ("train", "test"))
    result = ppl_vi.fit(
        bnn.model, **train, hidden_dims=(16,), num_steps=2000, lr=0.01, progress=False,
        convergence=None, seed=0,
    )  # fmt: skip
    metrics = bnn.predictive_metrics(
        result, test["x"], test["y"], task="classification", hidden_dims=(16,)
    )
    assert metrics["accuracy"] >= 0.93
    assert metrics["log_lik"] > -0.25  # a constant predictor gets -0.66


# ---------------------------------------------------------------------- predictive metrics
def test_predictive_metrics_from_draws_match_hand_computation(float64):
    x, y = _data("regression", n=30, split="test")
    num = 7
    draws = _weights((10, 3, 1), num=num, seed=4)
    draws["sigma"] = torch.linspace(0.5, 1.1, num)
    m = bnn.predictive_metrics(draws, x, y, hidden_dims=(3,))
    f = torch.stack([_hand_f(x, {k: v[s] for k, v in draws.items()}) for s in range(num)])
    sig = draws["sigma"][:, None]
    log_lik = torch.distributions.Normal(f, sig).log_prob(y)  # (S, N)
    per_datum = torch.logsumexp(log_lik, 0) - math.log(num)
    torch.testing.assert_close(m["log_lik_per_datum"], per_datum, atol=1e-10, rtol=0)
    assert m["log_lik"] == pytest.approx(float(per_datum.mean()), abs=1e-10)
    torch.testing.assert_close(m["mean"], f.mean(0))
    torch.testing.assert_close(m["sd"], (f.var(0, correction=0) + (sig**2).mean()).sqrt())
    assert m["rmse"] == pytest.approx(float((f.mean(0) - y).pow(2).mean().sqrt()))

    xc, yc = _data("classification", n=30, split="test")
    draws = _weights((30, 3, 1), num=num, seed=5)
    m = bnn.predictive_metrics(draws, xc, yc, task="classification", hidden_dims=(3,))
    f = torch.stack([_hand_f(xc, {k: v[s] for k, v in draws.items()}) for s in range(num)])
    probs = torch.sigmoid(f).mean(0)
    torch.testing.assert_close(m["probs"], probs)
    per_datum = torch.log(torch.where(yc > 0.5, probs, 1 - probs))  # log-mean of p(y | W)
    torch.testing.assert_close(m["log_lik_per_datum"], per_datum, atol=1e-10, rtol=0)
    assert m["accuracy"] == pytest.approx(float(((probs > 0.5) == (yc > 0.5)).double().mean()))


def test_predictive_metrics_draw_from_the_fitted_guide(float64):
    """Guide draws through Predictive (under the fit's param scope) have the fit's moments."""
    data = bnn.load_data(task="regression")
    result = ppl_vi.fit(
        bnn.model, **data, hidden_dims=(3,), num_steps=30, progress=False, convergence=None,
        polish=None,
    )  # fmt: skip
    num = 4000
    draws = bnn._guide_draws(result, data["x"], num, {"hidden_dims": (3,)})
    assert set(draws) == set(bnn.latent_shapes(10, (3,)))
    reference = result.sample(num)
    for name, value in draws.items():
        assert value.shape == (num, *bnn.latent_shapes(10, (3,))[name])
        sd = reference[name].std(0)
        assert ((value.mean(0) - reference[name].mean(0)).abs() < Z * sd * math.sqrt(2 / num)).all()
    metrics = bnn.predictive_metrics(result, data["x"], data["y"], num_samples=50, hidden_dims=(3,))
    assert metrics["mean"].shape == metrics["sd"].shape == (353,)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"task": "ranking"},
            r"task must be 'regression' or 'classification' \(got task='ranking'\)",
        ),
        (
            {"activation": "gelu"},
            r"activation must be one of \['relu', 'tanh'\] \(got activation='gelu'\)",
        ),
        ({"hidden_dims": (8, 0)}, r"hidden_dims must be a sequence of integers >= 1"),
        ({"hidden_dims": 8}, r"hidden_dims must be a sequence .* \(got hidden_dims=8\)"),
        ({"prior_scale": 0.0}, r"prior_scale must be a finite number > 0 \(got prior_scale=0.0\)"),
    ],
)
def test_bad_model_options(kwargs, match):
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=match):
        bnn.model(x, **kwargs)


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor of shape \(N, D\) \(got list\)"):
        bnn.model([[0.0]])
    with pytest.raises(ValueError, match=r"x must have shape \(N, D\) \(got x of shape \(3,\)\)"):
        bnn.model(torch.zeros(3))
    with pytest.raises(ValueError, match=r"in_dim must be an integer >= 1 \(got in_dim=0\)"):
        bnn.BNN(0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\) \(got x of shape \(2, 4\)\)"):
        bnn.BNN(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test' \(got split='val'\)"):
        bnn.load_data(split="val")
    with pytest.raises(ValueError, match=r"task must be .* \(got task='ranking'\)"):
        bnn.load_data(task="ranking")
    with pytest.raises(TypeError, match=r"posterior must be a fit result .* \(got list\)"):
        bnn.predictive_metrics([], torch.zeros(2, 3), torch.zeros(2))
