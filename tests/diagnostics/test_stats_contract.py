"""PSIS edge cases, the k-hat's standard error and verdicts, importance resampling."""

import math
import sys
import warnings

import arviz as az
import numpy as np
import pytest
from scipy.special import logsumexp

from ppl_vi.stats import MIN_PSIS_DRAWS, khat_se, khat_verdict, psis, resample_indices


def test_too_few_draws_give_nan_and_normalised_unsmoothed_weights():
    lw = np.random.default_rng(0).normal(size=MIN_PSIS_DRAWS - 1) + 7.0
    with pytest.warns(UserWarning, match=r"at least 21 draws .* got 20, so k-hat is NaN"):
        out, khat = psis(lw)
    assert math.isnan(khat)
    np.testing.assert_allclose(out, lw - logsumexp(lw), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 21 draws: the tail fit runs, no warning
        assert math.isfinite(psis(np.append(lw, 6.0))[1])
    with pytest.raises(ValueError, match="at least one log weight"):
        psis([])


def test_non_finite_weights_are_named_and_get_no_mass():
    lw = np.random.default_rng(1).normal(size=30)
    lw[[3, 7]] = np.nan, -np.inf
    with pytest.warns(UserWarning, match="2 of 30 log importance weights are not finite"):
        out, khat = psis(lw)
    assert math.isnan(khat) and np.exp(out[[3, 7]]).sum() == 0.0
    finite = np.delete(lw, [3, 7])
    np.testing.assert_allclose(np.delete(out, [3, 7]), finite - logsumexp(finite), rtol=1e-12)
    with pytest.warns(UserWarning, match="30 of 30"):
        out, _ = psis(np.full(30, np.nan))  # nothing to normalise by: equal weights
    np.testing.assert_allclose(out, np.full(30, -np.log(30)))


def test_weights_equal_to_rounding_are_a_perfect_proposal_and_small_spread_is_not():
    base = np.full(1000, 1e4)
    _, khat = psis(base + np.random.default_rng(2).uniform(0, 1e-6, 1000))  # ptp < 1e-9 * 1e4
    assert khat == -np.inf
    _, khat = psis(base + np.random.default_rng(2).normal(0, 1e-3, 1000))
    assert math.isfinite(khat)


def test_equal_weights_are_judged_with_a_relative_tolerance_floored_at_one():
    # weights are equal when their spread is <= 1e-9 * max(1, max |lw|): near 0 the
    # tolerance is 1e-9 itself, not 1e-9 * max |lw| (which would be ~1e-21 here)
    rng = np.random.default_rng(5)
    assert psis(rng.uniform(0, 1e-12, 200))[1] == -np.inf
    assert psis(np.resize([0.0, 1e-9], 200))[1] == -np.inf  # spread exactly on the tolerance
    # 1.5 times the tolerance is a real spread: the tail fit runs and gives a finite k-hat
    assert math.isfinite(psis(rng.uniform(0, 1.5e-9, 200))[1])


def _weights_from_user_code(lw):
    return psis(lw)  # a library function between the user and psis, as khat_se or loo


def test_psis_warnings_point_at_the_line_that_called_the_library():
    with pytest.warns(UserWarning, match="at least 21 draws") as caught:
        _weights_from_user_code(np.zeros(5))
    assert caught[0].filename == __file__
    assert caught[0].lineno == sys._getframe().f_lineno - 2
    with pytest.warns(UserWarning, match="not finite") as caught:
        _weights_from_user_code(np.full(30, np.nan))
    assert caught[0].filename == __file__
    assert caught[0].lineno == sys._getframe().f_lineno - 2


def test_resampled_indices_follow_the_normalised_weights():
    p = np.array([0.1, 0.2, 0.7, 0.0])
    draws = 100_000
    with np.errstate(divide="ignore"):
        lw = np.log(p)
    lw[3] = -2000.0  # a weight 1e-869 times the others: the spread overflows exp from below
    idx = resample_indices(lw + 800.0, draws, seed=4)  # unnormalised
    freq = np.bincount(idx, minlength=4) / draws
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / draws)), freq
    np.testing.assert_array_equal(idx, resample_indices(lw, draws, seed=4))


def test_khat_se_is_the_scaled_spread_of_batch_khats():
    rng = np.random.default_rng(5)
    z = rng.normal(0.0, 0.7, 8 * 500)
    lw = -0.5 * z**2 + 0.5 * (z / 0.7) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ks = [float(az.psislw(part.copy(), reff=1.0)[1]) for part in lw.reshape(8, 500)]
    assert khat_se(lw) == pytest.approx(np.std(ks, ddof=1) * 8**-0.25, rel=1e-12)
    ks4 = [psis(part)[1] for part in lw.reshape(4, 1000)]
    assert khat_se(lw, batches=4) == pytest.approx(np.std(ks4, ddof=1) * 4**-0.25, rel=1e-12)
    assert math.isnan(khat_se(lw[: 8 * MIN_PSIS_DRAWS - 1]))  # a batch of 20 draws
    assert math.isfinite(khat_se(lw[: 8 * MIN_PSIS_DRAWS]))
    assert khat_se(np.zeros(800)) == 0.0  # every batch exact: no spread
    bad = lw.copy()
    bad[0] = np.inf
    assert math.isnan(khat_se(bad))


@pytest.mark.parametrize(
    ("khat", "se", "start", "band"),
    [
        (0.3, None, "k-hat 0.3 < 0.5:", "trusted"),
        (0.5, None, "k-hat 0.500 in [0.5, 0.7):", "with care"),
        (0.7, None, "k-hat 0.700 >= 0.7:", "do not trust"),
        (0.3, float("nan"), "k-hat 0.3 < 0.5:", "trusted"),
        (0.3, 0.05, "k-hat 0.30 +- 0.05 (0.20 to 0.40):", "trusted"),
        (0.4, 0.05, "k-hat 0.40 +- 0.05 (0.30 to 0.50, across 0.5):", "with care"),
        (0.45, 0.05, "k-hat 0.45 +- 0.05 (0.35 to 0.55, across 0.5):", "with care"),
        (0.62, 0.02, "k-hat 0.62 +- 0.02 (0.58 to 0.66):", "with care"),
        (0.66, 0.03, "k-hat 0.66 +- 0.03 (0.60 to 0.72, across 0.7):", "do not trust"),
        (0.8, 0.02, "k-hat 0.80 +- 0.02 (0.76 to 0.84):", "do not trust"),
        (0.6, 0.1, "k-hat 0.60 +- 0.10 (0.40 to 0.80, across 0.5 and 0.7):", "do not trust"),
        # the interval's lower end exactly on 0.5 does not cross it: only 0.7 is crossed
        (0.75, 0.125, "k-hat 0.75 +- 0.12 (0.50 to 1.00, across 0.7):", "do not trust"),
    ],
)
def test_verdicts_read_the_upper_end_of_two_standard_errors(khat, se, start, band):
    text = khat_verdict(khat, se)
    assert text.startswith(start) and band in text, text


@pytest.mark.parametrize("khat", [float("nan"), float("inf"), None])
def test_a_khat_that_could_not_be_estimated_is_not_read_as_good(khat):
    text = khat_verdict(khat)
    assert "could not be estimated" in text and "trusted" not in text
