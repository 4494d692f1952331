"""``fit`` on models written the way Pyro's examples and tutorials write them (tests/corpus).

Each model runs with ``fit``'s defaults (fewer steps) on its data as the user holds it (numpy
arrays and pandas columns included) and either fits, or stops before step 1 with a clear
error; no case fails after step 1. Where plain ``pyro.infer.SVI`` + ``AutoNormal`` fits a model
(measured by ``tests/corpus/check_pyro.py``), ``fit`` must fit it too, and where Pyro's
original trains with another guide and ELBO, ``fit`` must accept those. On every fitted case,
draws, summaries, k-hat and InferenceData work.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from corpus import CASES

import ppl_vi
from ppl_vi.errors import FitError

NUM_STEPS = 120
DRAWS = 60  # a few draws: sequential fallbacks draw one at a time


def _cases(recipe=False):
    out = []
    for case in CASES:
        if recipe and case.pyro_recipe is None:
            continue
        marks = [pytest.mark.slow] if case.slow else []
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


def _fit(case, **options):
    steps = []
    args, kwargs = case.data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = ppl_vi.fit(
                case.model,
                *args,
                num_steps=NUM_STEPS,
                progress=False,
                callbacks=[lambda s: steps.append(s.step)],
                model_kwargs=kwargs,
                **options,
            )
        except FitError:
            raise
        except Exception as err:  # a refusal: it must come before step 1, with a clear text
            assert steps == [], f"{case.name}: {type(err).__name__} after step {len(steps)}"
            return None, err
    assert steps == list(range(1, NUM_STEPS + 1))
    return result, None


def _check_result(case, result):
    assert np.isfinite(result.losses).all(), case.name
    draws = result.sample(DRAWS, seed=1)
    for name, shape in result.info.latent.items():
        # full plates, or the mini-batch a model with explicit subsample indices was given
        assert draws[name].shape in ((DRAWS, *shape), (DRAWS, *result.info.traced[name])), name
        if draws[name].is_floating_point():
            assert torch.isfinite(draws[name]).all(), name
    summary = result.summary(num_samples=DRAWS, seed=1)
    assert np.isfinite(summary["mean"].to_numpy()).all()
    idata = result.to_inference_data(num_samples=DRAWS, seed=1)
    assert set(result.info.latent) <= set(idata.posterior.data_vars)
    khat = result.psis_khat(num_samples=DRAWS, seed=1)
    assert isinstance(khat, float) and khat != -math.inf


@pytest.mark.parametrize("case", _cases())
def test_fit_with_defaults_fits_or_refuses_before_step_one(case):
    result, error = _fit(case)
    if case.autonormal_fits:
        assert error is None, f"plain Pyro fits {case.name}, fit raised {error!r}"
    if error is not None:
        text = str(error)
        assert len(text) > 40 and ("site" in text or "argument" in text), text
        return
    _check_result(case, result)


@pytest.mark.parametrize("case", _cases(recipe=True))
def test_fit_accepts_the_guide_and_elbo_of_pyros_original(case):
    result, error = _fit(case, guide=case.pyro_guide(), elbo=case.pyro_elbo())
    assert error is None, f"{case.name}: {error!r}"
    assert np.isfinite(result.losses).all()
    draws = result.sample(DRAWS, seed=1)
    assert set(draws) >= set(result.info.latent) - set(result.info.discrete)
    khat = result.psis_khat(num_samples=DRAWS, seed=1)
    assert isinstance(khat, float) and khat != -math.inf


#: Corpus models whose step must compile (``fit(jit=True)``): every continuous model there
#: except those that read tensors as Python numbers (coal_mining_python_if's `if`,
#: coin_sequential_plate's sequential plate).
MUST_COMPILE = {
    "baseball_fully_pooled", "baseball_partially_pooled", "bayesian_regression_module",
    "bayesian_regression_functional", "linear_regression_to_event", "radon_varying_intercept",
    "osic_hierarchical_pandas", "bnn_pyromodule", "logistic_regression_subsample",
    "missing_covariate_obs_mask", "horseshoe_regression", "mvn_unknown_covariance",
    "sparse_regression", "poisson_glm_varying_intercept", "eight_schools_centered",
    "conditioned_scale", "weighted_regression_scale", "occupancy_marginalized",
}  # fmt: skip


@pytest.mark.parametrize("case", [c for c in _cases() if c.id in MUST_COMPILE])
def test_compiled_step_on_the_corpus_equals_the_eager_fit_bit_for_bit(case):
    """The whole-step graph on models as users write them (numpy and pandas data, non-tensor
    positional arguments, PyroModules, masks, pyro.factor, subsampling): the same losses and
    parameters as the eager fit, bit for bit."""
    args, kwargs = case.data()
    runs = {}
    for jit in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs[jit] = ppl_vi.fit(
                case.model, *args, model_kwargs=kwargs, num_steps=25, jit=jit,
                polish=None, progress=False, seed=0,
            )  # fmt: skip
    eager, fast = runs[False], runs[True]
    assert fast.method_info["jit"]["main"]["path"] == "compiled step", fast.method_info["jit"]
    np.testing.assert_array_equal(fast.losses, eager.losses)
    for name, value in eager.params.items():
        assert torch.equal(value, fast.params[name]), name
