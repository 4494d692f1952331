"""VIResult's documented contract: defaults, importance weights, text, flags and file format."""

import copy
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch.distributions import transform_to

import ppl_vi
from ppl_vi import io
from ppl_vi.models import eight_schools, normal_normal
from ppl_vi.result import VIResult
from ppl_vi.stats import resample_indices

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

DATA = normal_normal.load_data()
QUICK = {"num_steps": 300, "progress": False, "convergence": None}


@pytest.fixture(scope="module")
def normal():
    """A 300-step mean-field fit of the normal-normal model (one scalar latent, ``mu``)."""
    pyro.clear_param_store()
    return ppl_vi.fit(normal_normal.model, **DATA, **QUICK, seed=1)


@pytest.fixture(scope="module")
def eight():
    pyro.clear_param_store()
    return ppl_vi.fit(eight_schools.model, **eight_schools.load_data(), **QUICK, seed=1)


def shifted(loc_shift=1.0, scale_factor=1.2):
    """A normal-normal fit whose guide is N(m + loc_shift * s, (scale_factor * s)^2) for the
    exact posterior N(m, s^2): away from the posterior, so the importance weights vary."""
    result = ppl_vi.fit(normal_normal.model, **DATA, num_steps=1, progress=False)
    post = normal_normal.exact_posterior(**DATA)["mu"]
    with result.param_scope():
        store = pyro.get_param_store()
        with torch.no_grad():
            store._params["MeanField.locs.mu"].copy_(post.loc + loc_shift * post.scale)
            scale = transform_to(constraints.softplus_positive).inv(scale_factor * post.scale)
            store._params["MeanField.scales.mu"].copy_(scale)
    return result, post


def mean_field_state(result):
    """The fitted (unconstrained) parameters and constraints, as Pyro's store holds them."""
    with result.param_scope():
        state = pyro.get_param_store().get_state()
    return {"params": state["params"], "constraints": state["constraints"]}


# ---------------------------------------------------------------------------- defaults
def test_draw_methods_default_to_a_thousand_draws(normal):
    assert normal.sample(seed=3)["mu"].shape == (1000,)
    assert torch.equal(normal.sample(seed=3)["mu"], normal.sample(1000, seed=3)["mu"])
    log_p, log_q = normal.log_weights(seed=3)
    assert log_p.shape == log_q.shape == (1000,)
    assert normal.to_inference_data(seed=3).posterior.sizes["draw"] == 1000


def test_summary_defaults_to_4000_draws(normal):
    table = normal.summary(seed=5)
    mu = normal.sample(4000, seed=5)["mu"].double().numpy()
    assert abs(mu[:-1].mean() - mu.mean()) > 1e-5 * abs(mu.mean())  # 3999 draws would show
    assert table.loc["mu", "mean"] == pytest.approx(mu.mean(), rel=1e-6)  # float32 sums
    assert table.loc["mu", "sd"] == pytest.approx(mu.std(ddof=1), rel=1e-6)
    assert list(table.columns[-5:]) == ["q05", "q25", "q50", "q75", "q95"]


def test_log_marginal_likelihood_is_the_log_mean_of_a_thousand_weights_by_default():
    result, _ = shifted()
    log_p, log_q = result.log_weights(1000, seed=2)
    lw = (log_p - log_q).double().numpy()
    top = lw.max()
    expected = top + np.log(np.mean(np.exp(lw - top)))
    # away from the posterior, the mean, the log-mean-exp and the max of the weights differ
    assert lw.mean() + 0.05 < expected < top - 0.05
    assert result.log_marginal_likelihood(seed=2) == pytest.approx(expected, abs=1e-10)
    assert result.log_marginal_likelihood(1000, seed=2) == result.log_marginal_likelihood(seed=2)


def test_default_importance_set_is_2_18_draws_with_seed_0(normal, monkeypatch):
    monkeypatch.setattr("ppl_vi.result.CHUNK", 2**18)  # one vectorized pass
    imp = normal.importance()
    assert imp.log_weights.shape == (2**18,) and imp.seed == 0
    assert normal.importance(2**18, seed=0) is imp  # the same cached set
    assert normal.psis_khat() == imp.khat


# ---------------------------------------------------------------------------- importance
def test_importance_ess_is_the_inverse_sum_of_squared_normalised_smoothed_weights():
    result, _ = shifted(1.0, 0.8)
    imp = result.importance(2000, seed=1)
    log_p, log_q = result.log_weights(2000, seed=1)
    lw = (log_p - log_q).double().numpy()
    np.testing.assert_array_equal(imp.log_weights, lw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoothed, _ = az.psislw(lw, reff=1.0)
    w = np.exp(smoothed)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert imp.ess == pytest.approx(1.0 / (w**2).sum(), rel=1e-10)
    assert 20 < imp.ess < 1900  # unequal weights: fewer effective draws than draws


def test_resampled_results_draw_with_psis_weights_of_log_p_minus_log_q():
    result, post = shifted()
    n = 1000
    raw = result.sample(4 * n, seed=3)["mu"]
    log_p, log_q = result.log_weights(4 * n, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoothed, _ = az.psislw((log_p - log_q).double().numpy(), reff=1.0)
    result.resampled = True
    draws = result.sample(n, seed=3)["mu"]
    torch.testing.assert_close(draws, raw[resample_indices(smoothed, n, 3)], rtol=0, atol=0)
    # the guide's mean is one sd off; the resampled draws are centred on the posterior
    assert abs(raw.mean() - post.loc) / post.scale > 0.9
    ess = 1.0 / np.exp(2 * smoothed).sum()
    assert abs(draws.mean() - post.loc) / post.scale < 4 * math.sqrt(1 / n + 1 / ess)


def test_draw_counts_must_be_positive_integers(normal):
    for bad in (True, 2.5, 0, -3):
        with pytest.raises(ValueError, match=rf"must be an integer >= 1 \(got {bad!r}\)"):
            normal.sample(bad)


def test_importance_is_cached_until_the_parameters_change(normal):
    imp = normal.importance(300, seed=0)
    normal.sample(5, seed=0)  # opens the parameter scope without changing anything
    assert normal.importance(300, seed=0) is imp
    before = normal.params["MeanField.locs.mu"].clone()
    try:
        with normal.param_scope(), torch.no_grad():
            pyro.get_param_store()._params["MeanField.locs.mu"].add_(0.5)
        changed = normal.importance(300, seed=0)
        assert changed is not imp
        assert not np.array_equal(changed.log_weights, imp.log_weights)
    finally:
        with normal.param_scope(), torch.no_grad():
            pyro.get_param_store()._params["MeanField.locs.mu"].copy_(before)


def test_drawing_leaves_the_guide_tensors_as_they_were(normal):
    live = dict(normal.guide.named_parameters())
    before = {k: v.detach().clone() for k, v in live.items()}
    draws = normal.sample(50, seed=4)["mu"]
    try:
        with torch.no_grad():
            for value in live.values():
                value.add_(3.0)  # what a later fit that reuses the guide would do
        again = normal.sample(50, seed=4)["mu"]
        for name, value in live.items():
            torch.testing.assert_close(value.detach(), before[name] + 3.0, rtol=0, atol=0)
        assert torch.equal(again, draws)
    finally:
        with torch.no_grad():
            for name, value in live.items():
                value.copy_(before[name])


def test_kept_draws_follow_the_float_budget(eight, monkeypatch):
    # eight schools: mu, tau, theta_t (8) and theta (8) are 18 numbers per draw
    monkeypatch.setattr("ppl_vi.result.KEEP_FLOATS", 18 * 100)
    kept = eight.importance(100, seed=21)
    assert kept.samples is not None and kept.samples["theta"].shape == (100, 8)
    assert eight.importance(101, seed=21).samples is None
    # one number per draw (normal-normal's mu)
    result, _ = shifted()
    monkeypatch.setattr("ppl_vi.result.KEEP_FLOATS", 100)
    assert result.importance(100, seed=21).samples is not None
    assert result.importance(101, seed=21).samples is None


def test_importance_means_are_the_same_with_and_without_kept_draws(eight, monkeypatch):
    imp = eight.importance(400, seed=22)
    assert imp.samples is not None
    means, khat = eight.importance_means(400, seed=22)
    assert khat == imp.khat
    w = torch.as_tensor(np.exp(imp.smoothed))
    for name in ("mu", "theta"):
        assert means[name].shape == imp.samples[name].shape[1:]
        expected = (w[:, None] * imp.samples[name].double().reshape(400, -1)).sum(0)
        torch.testing.assert_close(means[name], expected.reshape(means[name].shape).float())
    monkeypatch.setattr("ppl_vi.result.KEEP_FLOATS", 1)
    eight._importance.clear()  # draw the set again under the smaller budget
    assert eight.importance(400, seed=22).samples is None
    again, _ = eight.importance_means(400, seed=22)  # a second pass over the same draws
    for name in means:
        torch.testing.assert_close(again[name], means[name], rtol=1e-6, atol=1e-6)


def test_point_mass_warning_needs_two_draws():
    from pyro.infer.autoguide import AutoDelta

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    x = torch.zeros(3)
    point = ppl_vi.fit(model, x, guide=AutoDelta(model), num_steps=2, progress=False)
    with pytest.warns(UserWarning) as record:
        assert math.isnan(point.psis_khat(2, seed=0))
    assert any("every draw from the guide is the same point" in str(w.message) for w in record)
    spread = ppl_vi.fit(model, x, num_steps=2, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert math.isnan(spread.psis_khat(1, seed=0))  # too few draws for k-hat
    texts = [str(w.message) for w in caught]
    assert any("k-hat needs at least" in t for t in texts)
    assert not any("same point" in t for t in texts)


# ---------------------------------------------------------------------------- mini-batch
FIRST_LINE = "the plate holds the full data set but y holds one mini-batch; " + "z" * 150


def batch_only_model(y, idx, full_size):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", full_size, subsample=idx):
        z = pyro.sample("z", dist.Normal(0.0, scale))
        if z.shape[-1] != y.shape[-1]:
            raise ValueError(FIRST_LINE + "\nsecond line of the message")
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)


def test_mini_batch_fallback_warning_names_the_error_and_points_at_the_caller():
    y = torch.randn(20)
    args = (y, torch.arange(20), 100)
    result = ppl_vi.fit(batch_only_model, *args, num_steps=2, progress=False)
    with pytest.warns(UserWarning) as record:
        log_p, _ = result.log_weights(5, seed=0)
    assert log_p.shape == (5,)
    [w] = [w for w in record if "mini-batch" in str(w.message)]
    assert f"(ValueError: {FIRST_LINE[:160]}); draws and log densities" in str(w.message)
    assert w.filename == __file__


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.sample(30, seed=0),
        lambda r: r.to_inference_data(30, seed=0),
        lambda r: r.psis_khat(30, seed=0),
        lambda r: r.importance(30, seed=0),
        lambda r: r.importance_means(30, seed=0),
    ],
    ids=["sample", "to_inference_data", "psis_khat", "importance", "importance_means"],
)
def test_mini_batch_fallback_warning_points_at_the_users_line(call):
    result = ppl_vi.fit(batch_only_model, torch.randn(20), torch.arange(20), 100, num_steps=2,
                        progress=False)  # fmt: skip
    with pytest.warns(UserWarning, match="mini-batch the model was given") as record:
        call(result)
    assert [w.filename for w in record if "mini-batch" in str(w.message)] == [__file__]


def test_importance_means_at_the_mini_batch_have_the_mini_batch_shape():
    result = ppl_vi.fit(batch_only_model, torch.randn(20), torch.arange(20), 100, num_steps=2,
                        progress=False)  # fmt: skip
    with pytest.warns(UserWarning, match="mini-batch the model was given"):
        means, _ = result.importance_means(200, seed=1)
        imp = result.importance(200, seed=1)
    assert means["z"].shape == (20,) and means["scale"].shape == ()
    w = torch.as_tensor(np.exp(imp.smoothed))
    torch.testing.assert_close(means["z"], (w[:, None] * imp.samples["z"].double()).sum(0).float())


# ---------------------------------------------------------------------------- InferenceData
def test_inference_data_adds_each_requested_group(normal):
    with_ll = normal.to_inference_data(20, seed=0, log_likelihood=True)
    assert "log_likelihood" in with_ll.groups() and "posterior_predictive" not in with_ll.groups()
    assert with_ll.log_likelihood["x"].shape == (1, 20, 20)
    with_pp = normal.to_inference_data(20, seed=0, posterior_predictive=True)
    assert "posterior_predictive" in with_pp.groups() and "log_likelihood" not in with_pp.groups()
    assert with_pp.posterior_predictive["x"].shape == (1, 20, 20)


# ---------------------------------------------------------------------------- construction, text
def test_results_are_built_from_keywords_with_unconverged_defaults(normal):
    state = mean_field_state(normal)
    parts = (normal.model, normal.guide, (), DATA, state, normal.info, [3.0, 2.0])
    with pytest.raises(TypeError):
        VIResult(*parts)
    result = VIResult(
        model=normal.model,
        guide=normal.guide,
        model_args=(),
        model_kwargs=DATA,
        param_state=state,
        info=normal.info,
        losses=[3.0, 2.0],
        guide_spec={"name": None, "class": "my_guides.Guide", "config": None},
    )
    assert result.converged is False and result.interrupted is False
    assert repr(result) == (
        "VIResult(model=ppl_vi.models.normal_normal.model, guide=my_guides.Guide, ran 2 steps "
        "(the early-stop rule did not fire), final mean loss=2.5)"
    )
    # built without the guide's live tensors, it draws from its own copies of the values
    for name, value in normal.params.items():
        assert torch.equal(result.params[name], value)
    assert torch.equal(result.sample(10, seed=1)["mu"], normal.sample(10, seed=1)["mu"])


def test_the_compiled_step_report_is_kept_only_when_jit_was_on(normal):
    assert set(normal.method_info["jit"]) >= {"main"}  # fit's default jit="auto"
    eager = ppl_vi.fit(normal_normal.model, **DATA, num_steps=2, progress=False, jit=False)
    assert "jit" not in eager.method_info


def test_repr_states_steps_stopping_and_the_mean_of_the_last_100_losses(normal):
    last = normal.losses[-100:].mean()
    assert abs(last - normal.losses[-99:].mean()) > 1e-5 * abs(last)
    assert abs(last - normal.losses[-101:].mean()) > 1e-5 * abs(last)
    head = "VIResult(model=ppl_vi.models.normal_normal.model, guide=mean_field, ran 300 steps"
    assert repr(normal) == f"{head} (the early-stop rule did not fire), final mean loss={last:.6g})"
    converged = copy.copy(normal)
    converged.converged = True
    flat = "stopped early: the loss was flat"
    assert repr(converged) == f"{head} ({flat}), final mean loss={last:.6g})"
    converged.interrupted = True
    assert repr(converged) == f"{head} (interrupted), final mean loss={last:.6g})"
    empty = VIResult(
        model=normal.model,
        guide=normal.guide,
        model_args=(),
        model_kwargs=DATA,
        param_state=mean_field_state(normal),
        info=normal.info,
        losses=[],
        interrupted=True,
    )
    assert repr(empty).endswith("ran 0 steps (interrupted), final mean loss=nan)")


# ---------------------------------------------------------------------------- save and load
def test_save_load_keeps_non_default_flags(tmp_path):
    result = ppl_vi.fit(normal_normal.model, **DATA, num_steps=3, progress=False)
    result.converged, result.interrupted, result.resampled = True, True, True
    result.info.batched = False
    path = tmp_path / "flags.pt"
    result.save(path)
    loaded = ppl_vi.load(path, normal_normal.model)
    assert loaded.converged and loaded.interrupted and loaded.resampled
    assert loaded.info.batched is False


def test_file_without_batched_and_resampled_entries_loads_as_batched_not_resampled(
    tmp_path, normal
):
    path = tmp_path / "older.pt"
    normal.save(path)
    payload = io.read(path, "result")
    del payload["batched"], payload["resampled"]
    io.atomic_save(payload, path)
    loaded = ppl_vi.load(path, normal_normal.model)
    assert loaded.info.batched is True and loaded.resampled is False


def scaled_model(x, link):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(link(mu), 1.0), obs=x)


def test_data_are_saved_only_when_args_and_kwargs_are_all_plain(tmp_path):
    x = DATA["x"]
    result = ppl_vi.fit(scaled_model, x, link=torch.sinh, num_steps=3, progress=False)
    path = tmp_path / "link.pt"
    result.save(path)
    assert io.read(path, "result")["args"] is None
    with pytest.raises(ValueError, match="does not contain the model's data"):
        ppl_vi.load(path, scaled_model)
    loaded = ppl_vi.load(path, scaled_model, x, link=torch.sinh)
    assert torch.equal(loaded.params["MeanField.locs.mu"], result.params["MeanField.locs.mu"])


def renamed_model(**kwargs):
    return normal_normal.model(**kwargs)


def test_loading_into_a_renamed_model_warns_at_the_call(tmp_path, normal):
    path = tmp_path / "fit.pt"
    normal.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ppl_vi.load(path, normal_normal.model)
    assert not [w for w in caught if "was saved for" in str(w.message)]
    with pytest.warns(UserWarning) as record:
        loaded = ppl_vi.load(path, renamed_model)
    [w] = [w for w in record if "was saved for" in str(w.message)]
    assert str(w.message) == (
        f"'{path}' was saved for ppl_vi.models.normal_normal.model; loading it into "
        f"{__name__}.renamed_model, which has the same sample sites"
    )
    assert w.filename == __file__
    assert torch.equal(loaded.params["MeanField.locs.mu"], normal.params["MeanField.locs.mu"])
