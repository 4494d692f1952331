"""The NumPyro translations in ``benchmarks/_numpyro.py`` are the same models as the zoo's.

Float32 on both sides: a log joint summed over ``n`` terms carries a rounding error of a few
``eps * |log p|`` (eps = 1.2e-7), so ``1e-4 * (1 + |log p|)`` leaves a wide margin for rounding
and none for a wrong prior, scale or likelihood term, which moves ``log p`` by O(1) or more.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numpyro")

_PATH = Path(__file__).parents[1] / "benchmarks" / "_numpyro.py"
_spec = importlib.util.spec_from_file_location("_numpyro", _PATH)
_numpyro = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_numpyro)

RTOL = 1e-4


def _tolerance(logp: np.ndarray) -> np.ndarray:
    return RTOL * (1.0 + np.abs(logp))


def test_available_returns_flag_and_message():
    ok, message = _numpyro.available()
    assert isinstance(ok, bool) and isinstance(message, str)
    assert ok  # numpyro imported above
    assert message.startswith("numpyro ") and " / jax " in message


@pytest.mark.parametrize("name", _numpyro.MODELS)
def test_log_density_matches_pyro_model(name):
    pyro_logp, numpyro_logp = _numpyro.log_densities(name, num_points=5, seed=0)
    diff = np.abs(pyro_logp - numpyro_logp)
    assert np.all(diff <= _tolerance(pyro_logp)), (diff, pyro_logp)
    assert _numpyro.log_density_check(name, num_points=5, seed=0) == pytest.approx(diff.max())
    # Power: the log density varies between the random points by far more than the
    # tolerance, so a translation that got any term wrong would not pass by accident.
    mismatched = np.abs(pyro_logp - np.roll(numpyro_logp, 1))
    assert np.all(mismatched > 100 * _tolerance(pyro_logp)), mismatched


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match=r"name must be one of .*got name='eight'"):
        _numpyro.log_density_check("eight")


def test_num_points_below_one_raises():
    with pytest.raises(ValueError, match=r"num_points must be >= 1 \(got num_points=0\)"):
        _numpyro.log_densities("eight_schools", num_points=0)


def test_steps_below_one_raises():
    with pytest.raises(ValueError, match=r"steps and repeats must be >= 1 \(got steps=0"):
        _numpyro.svi_step_times("eight_schools", steps=0)
