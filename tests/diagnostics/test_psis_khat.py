"""PSIS k-hat: theory for Gaussian proposals, agreement with ArviZ, and VIResult.psis_khat."""

import warnings

import arviz as az
import numpy as np
import pytest

import ppl_vi
from ppl_vi import diagnostics
from ppl_vi.models import normal_normal as nn_model

REPEATS, DRAWS = 30, 10_000


def gaussian_log_weights(s, rng):
    """log p(z) - log q(z) for p = N(0, 1), q = N(0, s^2), z ~ q."""
    z = rng.normal(0.0, s, DRAWS)
    return -0.5 * z**2 + 0.5 * (z / s) ** 2 + np.log(s)


@pytest.mark.parametrize("s", [0.5, 0.95])
def test_khat_tracks_the_tail_index_of_gaussian_weights(s):
    # w = p/q has P(w > t) ~ t^(-1/(1 - s^2)), so the Pareto shape is k = 1 - s^2.
    # Tolerance from the repeated runs: the mean estimate must lie within one run-to-run
    # standard deviation of k (the estimator's finite-sample bias is smaller than its noise).
    rng = np.random.default_rng(0)
    khats = np.array([diagnostics.psis(gaussian_log_weights(s, rng))[1] for _ in range(REPEATS)])
    k = 1 - s**2
    assert abs(khats.mean() - k) < khats.std(ddof=1), (khats.mean(), khats.std(ddof=1), k)


def test_khat_separates_good_from_bad_proposals():
    rng = np.random.default_rng(1)
    bad = np.median([diagnostics.psis(gaussian_log_weights(0.5, rng))[1] for _ in range(9)])
    good = np.median([diagnostics.psis(gaussian_log_weights(0.95, rng))[1] for _ in range(9)])
    assert good < diagnostics.KHAT_GOOD < bad


def test_agrees_with_arviz_psislw():
    lw = gaussian_log_weights(0.7, np.random.default_rng(2))
    smoothed, khat = diagnostics.psis(lw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_lw, ref_k = az.psislw(lw.copy(), reff=1.0)
    assert khat == float(ref_k)
    np.testing.assert_array_equal(smoothed, ref_lw)


def test_vi_result_khat_uses_the_same_estimator():
    fit = ppl_vi.fit(nn_model.model, **nn_model.load_data(), num_steps=200, progress=False)
    log_p, log_q = fit.log_weights(2000, seed=3)
    assert fit.psis_khat(2000, seed=3) == diagnostics.psis((log_p - log_q).double().numpy())[1]


def test_equal_weights_mean_a_perfect_proposal():
    lw, khat = diagnostics.psis(np.full(1000, -3.0))
    assert khat == -np.inf and np.allclose(np.exp(lw).sum(), 1.0)
    assert "trusted" in diagnostics.khat_verdict(khat)
