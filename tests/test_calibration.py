"""Expected calibration error: a hand-worked example, perfect calibration, multiclass, the
reliability-diagram bins, and input errors."""

import numpy as np
import pytest
import torch

from ppl_vi.stats import expected_calibration_error as ece


def test_hand_worked_binary_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.8 (class 0, right), 0.6 (right); bins of 0.2:
    # (0.4, 0.6]: 1 hit at 0.6; (0.6, 0.8]: 1 hit at 0.8; (0.8, 1]: 1 of 2 at 0.9
    probs, labels = [0.9, 0.9, 0.2, 0.6], [1, 0, 0, 1]
    expected = 0.25 * abs(1 - 0.6) + 0.25 * abs(1 - 0.8) + 0.5 * abs(0.5 - 0.9)
    assert ece(probs, labels, num_bins=5) == pytest.approx(expected, abs=1e-12)
    # one bin: |overall accuracy - mean confidence|
    assert ece(probs, labels, num_bins=1) == pytest.approx(abs(0.75 - 0.8), abs=1e-12)
    # tensors, float labels and (N, 2) rows give the same
    same = ece(torch.tensor(probs, dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0, 1.0]), 5)
    rows = np.stack([1 - np.array(probs), probs], axis=1)
    assert same == pytest.approx(expected, abs=1e-12)
    assert ece(rows, labels, num_bins=5) == pytest.approx(expected, abs=1e-12)


def test_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # 0.7 is in (0.6, 0.7]: alone with accuracy 1 there; in (0.7, 0.8] it would pair with 0.75
    probs, labels = [0.7, 0.75, 0.75], [1, 0, 0]
    expected = (abs(1 - 0.7) + 2 * abs(0 - 0.75)) / 3
    assert ece(probs, labels, num_bins=10) == pytest.approx(expected, abs=1e-12)


def test_perfect_calibration_is_zero():
    # in each bin, the fraction right equals the confidence exactly
    probs = [0.8] * 5 + [0.6] * 5 + [1.0] * 3
    labels = [1, 1, 1, 1, 0] + [1, 1, 1, 0, 0] + [1, 1, 1]
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # labels drawn from the probabilities themselves: ECE -> 0 (only binning noise remains)
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = rng.uniform(size=p.size) < p
    assert ece(p, y) < 0.01
    # and an overconfident predictor is far from 0: power of the check above
    assert ece(np.clip(2 * p - 0.5, 0, 1), y) > 0.05


def test_multiclass_and_bins():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]])
    labels = np.array([0, 2, 2, 2])
    # top classes 0, 1, 2, 2 (right, wrong, right, right) at 0.7, 0.5, 0.4, 0.9
    value, bins = ece(probs, labels, num_bins=10, return_bins=True)
    expected = (abs(1 - 0.7) + abs(0 - 0.5) + abs(1 - 0.4) + abs(1 - 0.9)) / 4
    assert value == pytest.approx(expected, abs=1e-12)
    assert ece(probs, labels, num_bins=10) == value
    np.testing.assert_allclose(bins["edges"], np.linspace(0, 1, 11))
    np.testing.assert_array_equal(bins["count"], [0, 0, 0, 1, 1, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(bins["confidence"][[3, 4, 6, 8]], [0.4, 0.5, 0.7, 0.9])
    np.testing.assert_allclose(bins["accuracy"][[3, 4, 6, 8]], [1, 0, 1, 1])
    assert np.isnan(bins["accuracy"][0]) and np.isnan(bins["confidence"][9])
    # the bins reproduce the ECE
    keep = bins["count"] > 0
    weights = bins["count"][keep] / 4
    recomputed = (weights * np.abs(bins["accuracy"][keep] - bins["confidence"][keep])).sum()
    assert recomputed == pytest.approx(value, abs=1e-12)


def test_default_bins_and_bins_holding_several_predictions():
    # confidences 0.89 and 0.85 (both right) in (0.8, 0.9], 0.95 and 0.905 (both wrong) in
    # (0.9, 1] with the default ten bins; nine or eleven bins would move 0.89 or 0.905 across
    probs, labels = [0.89, 0.85, 0.05, 0.095], [1, 1, 1, 1]
    value, bins = ece(probs, labels, return_bins=True)
    assert value == pytest.approx((abs(2 - 1.74) + abs(0 - 1.855)) / 4, abs=1e-12)
    np.testing.assert_array_equal(bins["count"], [0] * 8 + [2, 2])
    np.testing.assert_allclose(bins["accuracy"][8:], [1.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(bins["confidence"][8:], [0.87, 0.9275], rtol=1e-12)
    assert np.isnan(bins["accuracy"][:8]).all() and np.isnan(bins["confidence"][:8]).all()
    assert ece(probs, labels, num_bins=9) == pytest.approx((0.15 + 1.745) / 4, abs=1e-12)
    assert ece(probs, labels, num_bins=11) == pytest.approx((0.95 + 0.645) / 4, abs=1e-12)


@pytest.mark.parametrize(
    ("probs", "labels", "kwargs", "error", "match"),
    [
        (
            [0.5],
            [1],
            {"num_bins": 0},
            ValueError,
            r"num_bins must be an integer >= 1 \(got num_bins=0\)",
        ),
        ([0.5], [1], {"num_bins": 2.5}, ValueError, r"num_bins must be an integer >= 1"),
        ([[0.5]], [1], {}, ValueError, r"probs must have shape \(N,\) .* \(got shape \(1, 1\)\)"),
        ([], [], {}, ValueError, r"at least one prediction \(got N = 0\)"),
        ([0.5, 0.2], [1], {}, ValueError, r"labels must have shape \(2,\), one per row of probs"),
        ([1.5], [1], {}, ValueError, r"probs must be probabilities in \[0, 1\]"),
        # rows that sum to 1 but hold a negative probability (or one above 1)
        ([[-0.5, 1.0, 0.5]], [1], {}, ValueError, r"probs must be probabilities in \[0, 1\]"),
        ([[1.5, -0.5]], [0], {}, ValueError, r"probs must be probabilities in \[0, 1\]"),
        ([[1.5, 0.0]], [0], {}, ValueError, r"probs must be probabilities in \[0, 1\]"),
        (
            [0.5, 0.5],
            [-1, 0],
            {},
            ValueError,
            r"labels must be class indices 0, ..., 1 \(got values from -1 to 0\)",
        ),
        ([float("nan")], [1], {}, ValueError, r"probs must be probabilities"),
        ([[0.5, 0.6]], [1], {}, ValueError, r"must sum to 1 \(got row sums off by up to 0.1\)"),
        (
            [0.5],
            [2],
            {},
            ValueError,
            r"labels must be class indices 0, ..., 1 \(got values from 2 to 2\)",
        ),
        ([0.5], [0.5], {}, ValueError, r"labels must be class indices"),
        ([0.5], ["a"], {}, TypeError, r"labels must be an array or tensor of numbers \(got list\)"),
        (
            object(),
            [1],
            {},
            TypeError,
            r"probs must be an array or tensor of numbers \(got object\)",
        ),
    ],
)
def test_bad_inputs(probs, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        ece(probs, labels, **kwargs)
