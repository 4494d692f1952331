"""The policies' arithmetic against independent computations: the stopping rule's slope bound,
the final phase's length and learning-rate decay, and their argument checks."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ppl_vi import Convergence, Polish
from ppl_vi.policies import LRSchedule


def test_relative_decrease_is_the_slope_bound_of_a_least_squares_line():
    rule = Convergence(window=10, lag=3, z=2.0)
    rng = np.random.default_rng(0)
    losses = list(5.0 - 0.01 * np.arange(50) + 0.05 * rng.standard_normal(50))
    y = np.asarray(losses[-30:])
    t = np.arange(30.0)
    slope = np.polyfit(t, y, 1)[0]
    resid = y - np.polyval(np.polyfit(t, y, 1), t)
    se = math.sqrt(resid @ resid / (30 - 2) / ((t - t.mean()) @ (t - t.mean())))
    expected = (abs(slope) + 2.0 * se) * 10 / max(abs(y[-10:].mean()), 1.0)
    assert rule.relative_decrease(losses) == pytest.approx(expected, rel=1e-10)
    assert rule.relative_decrease(losses[:29]) is None
    # losses near 0: the denominator is 1, not |mean| (which would blow the bound up)
    small = [0.01 * v for v in losses]
    y = np.asarray(small[-30:])
    resid = y - np.polyval(np.polyfit(t, y, 1), t)
    se = math.sqrt(resid @ resid / 28 / ((t - t.mean()) @ (t - t.mean())))
    expected = (abs(np.polyfit(t, y, 1)[0]) + 2.0 * se) * 10 / 1.0
    assert rule.relative_decrease(small) == pytest.approx(expected, rel=1e-10)


def test_the_rule_fires_only_at_window_ends_after_min_steps_and_strictly_below_tol():
    flat = [1.0] * 40
    rule = Convergence(window=10, lag=2, min_steps=20, tol=1e-3)
    assert [n for n in range(1, 41) if rule.check(flat[:n])] == [20, 30, 40]
    # r equals tol exactly: not converged (r < tol is the rule)
    ramp = list(1.0 + 1e-3 * np.arange(20) / 10)  # slope 1e-4 per step, no noise
    exact = Convergence(window=10, lag=2, min_steps=20, z=0.0, tol=1e-3)
    r = exact.relative_decrease(ramp)
    assert r == pytest.approx(1e-3 / max(np.mean(ramp[-10:]), 1.0))  # slope 1e-4 x window 10
    assert not Convergence(window=10, lag=2, min_steps=20, z=0.0, tol=r).check(ramp)
    assert Convergence(window=10, lag=2, min_steps=20, z=0.0, tol=r * 1.000001).check(ramp)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, r"Convergence.window must be an integer >= 1"),
        ({"lag": True}, r"Convergence.lag must be an integer >= 1"),
        ({"window": 2, "lag": 1}, r"lag \* window >= 3"),
        ({"z": -0.5}, r"Convergence.z must be >= 0"),
        ({"z": float("nan")}, r"Convergence.z must be >= 0"),
        ({"z": "2"}, r"Convergence.z must be >= 0"),
    ],
)
def test_convergence_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Convergence(**kwargs)
    Convergence(window=3, lag=1, z=0.0)  # the smallest valid span and z


def polish_state(step, start, end, num_steps=100):
    return SimpleNamespace(phase="polish", step=step, polish_start=start, end=end,
                           num_steps=num_steps)  # fmt: skip


def test_final_phase_learning_rate_decays_geometrically_to_lr_factor():
    polish = Polish(fraction=0.25, lr_factor=0.01)
    assert polish.length(SimpleNamespace(num_steps=100)) == 25
    assert polish.length(SimpleNamespace(num_steps=1)) == 1  # never 0 steps
    assert polish.lr_scale(polish_state(40, 40, 65)) == 1.0
    assert polish.lr_scale(polish_state(50, 40, 65)) == pytest.approx(0.01 ** (10 / 25))
    assert polish.lr_scale(polish_state(64, 40, 65)) == pytest.approx(0.01 ** (24 / 25))
    main = SimpleNamespace(phase="main", step=50, polish_start=None, end=100)
    assert polish.lr_scale(main) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_particles": 0}, r"Polish.num_particles must be an integer >= 1"),
        ({"num_particles": True}, r"Polish.num_particles must be an integer >= 1"),
        ({"fraction": 0.0}, r"Polish.fraction must be in \(0, 1\)"),
        ({"fraction": 1.0}, r"Polish.fraction must be in \(0, 1\)"),
        ({"lr_factor": 0.0}, r"Polish.lr_factor must be in \(0, 1\]"),
        ({"lr_factor": 1.5}, r"Polish.lr_factor must be in \(0, 1\]"),
    ],
)
def test_polish_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Polish(**kwargs)
    Polish(num_particles=1, fraction=0.5, lr_factor=1.0)  # the edges that are allowed


def test_lr_schedule_factors_are_checked_once_and_extended_when_needed():
    calls = []

    def schedule(step):
        calls.append(step)
        return 0.5**step

    policy = LRSchedule(schedule)
    policy.check(3)
    policy.start(None, SimpleNamespace(num_steps=3))
    assert calls == [0, 1, 2]  # not recomputed for as many steps as checked
    assert policy.lr_scale(SimpleNamespace(step=2)) == 0.25 and calls == [0, 1, 2]
    policy.start(None, SimpleNamespace(num_steps=5))
    assert calls == [0, 1, 2, 0, 1, 2, 3, 4] and policy.factors[4] == 0.5**4
    assert policy.lr_scale(SimpleNamespace(step=5)) == 0.5**5  # just past the checked steps
    assert policy.lr_scale(SimpleNamespace(step=7)) == 0.5**7
