"""loo() of a VI fit against closed forms: the effective number of parameters, ArviZ's
standard error and its warning threshold."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

import ppl_vi
from ppl_vi import diagnostics
from ppl_vi.models import normal_normal as nn_model


def guide_off_by(shift, scale):
    """A normal-mean fit whose guide is ``shift`` posterior sds off and ``scale`` times as wide
    (one step at lr 1e-9: the guide stays where it starts)."""
    data = nn_model.load_data()
    post = nn_model.exact_posterior(**data)["mu"]
    init = {"init_loc_fn": {"mu": post.loc + shift * post.scale},
            "init_scale": scale * post.scale.item()}  # fmt: skip
    fit = ppl_vi.fit(nn_model.model, **data, guide_kwargs=init, num_steps=1, lr=1e-9,
                     polish=None, progress=False)  # fmt: skip
    return fit, data, post


@pytest.fixture(scope="module")
def wide_fit():
    """A guide half a posterior sd off and 1.5 times as wide: the importance weights matter
    (unweighted guide draws give p_loo 0.14 instead of 0.51) and PSIS is reliable (k < 0)."""
    torch.set_default_dtype(torch.float64)
    try:
        yield guide_off_by(0.5, 1.5)
    finally:
        torch.set_default_dtype(torch.float32)


def test_elpd_and_p_loo_match_the_closed_forms_away_from_the_posterior(wide_fit):
    """A normal mean: lppd_i = log N(x_i | m_N, s_N^2 + 1) under the full posterior and
    elpd_i the same under the posterior without x_i; p_loo = sum(lppd_i - elpd_i). Tolerances:
    4 times the sd of the estimates over 20 seeds (0.013 nats for elpd, 0.009 for p_loo)."""
    fit, data, post = wide_fit
    x = data["x"]
    lppd = norm.logpdf(x.numpy(), post.loc.item(), math.hypot(post.scale.item(), 1.0)).sum()
    elpd = 0.0
    for i in range(len(x)):
        rest = nn_model.exact_posterior(torch.cat([x[:i], x[i + 1 :]]))["mu"]
        elpd += norm.logpdf(x[i].item(), rest.loc.item(), math.hypot(rest.scale.item(), 1.0))
    out = diagnostics.loo(fit, num_samples=4000)
    assert out["elpd_loo"] == pytest.approx(elpd, abs=0.06)
    assert out["p_loo"] == pytest.approx(lppd - elpd, abs=0.04)
    assert out["elpd_loo"] == pytest.approx(float(out.loo_i.sum()), rel=1e-12)
    # ArviZ's standard error of a sum of n pointwise terms: sqrt(n var(loo_i)), population var
    n = len(x)
    assert out["se"] == pytest.approx(math.sqrt(n * float(np.var(out.loo_i.values))), rel=1e-12)
    assert (out["n_samples"], out["n_data_points"], out["scale"]) == (4000, n, "log")
    assert out.loo_i.dims == out.pareto_k.dims == ("data",)  # the model's plate name


@pytest.mark.parametrize(("draws", "good_k"), [(100, 0.5), (1000, 2 / 3), (4000, 0.7)])
def test_the_warning_threshold_is_arvizs(wide_fit, draws, good_k):
    """good_k = min(1 - 1/log10(S), 0.7) (Vehtari et al. 2024), as az.loo uses."""
    out = diagnostics.loo(wide_fit[0], num_samples=draws)
    assert out["good_k"] == pytest.approx(good_k)
    assert out["warning"] == bool((out.pareto_k.values > good_k).any())


def test_psis_resample_picks_by_smoothed_weight_from_four_times_as_many_proposals(wide_fit):
    from ppl_vi.stats import psis, resample_indices

    fit = wide_fit[0]
    out = diagnostics.psis_resample(fit, 100, seed=3)["mu"]
    samples, log_p, log_q = fit._draws(400, 3)
    idx = resample_indices(psis((log_p - log_q).numpy())[0], 100, 3)
    torch.testing.assert_close(out, samples["mu"][idx], rtol=0, atol=0)
    few = diagnostics.psis_resample(fit, 100, num_proposals=30, seed=3)["mu"]
    assert set(few.tolist()) <= set(fit._draws(30, 3)[0]["mu"].tolist())


def test_psis_resample_warns_when_the_guide_misses_the_posterior(wide_fit):
    """Three posterior sds off and half as wide: k-hat 0.9 to 1.3 over seeds."""
    torch.set_default_dtype(torch.float64)
    try:
        fit = guide_off_by(3.0, 0.5)[0]
        with pytest.warns(UserWarning, match="PSIS resampling with k-hat .* >= 0.7"):
            diagnostics.psis_resample(fit, 1000, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            diagnostics.psis_resample(wide_fit[0], 1000, seed=0)  # k < 0: no warning
    finally:
        torch.set_default_dtype(torch.float32)
