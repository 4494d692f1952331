"""Bad input is reported before step 1, as what it is; numpy and pandas data just work."""

import math
import warnings

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi import DataError, NonFiniteLossError
from ppl_vi.models import normal_normal

QUICK = {"num_steps": 100, "progress": False, "convergence": None}


def never_called(state):
    raise AssertionError(f"training started (step {state.step})")


def gaussian(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def poisson(counts):
    rate = pyro.sample("rate", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(counts)):
        pyro.sample("counts", dist.Poisson(rate), obs=counts)


def bernoulli(flips):
    p = pyro.sample("p", dist.Beta(1.0, 1.0))
    with pyro.plate("data", len(flips)):
        pyro.sample("flips", dist.Bernoulli(p), obs=flips)


def regression(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 1.0), obs=y)


# ------------------------------------------------------------------ data outside the likelihood
@pytest.mark.parametrize(
    ("model", "data", "match"),
    [
        (
            gaussian,
            {"y": torch.tensor([0.1, math.nan, 0.3])},
            r"observed site 'y' \(from argument 'y'\) holds non-finite data at index \(1,\) "
            r"\(value nan\)\. .*obs_mask",
        ),
        (
            gaussian,
            {"y": torch.tensor([0.1, 0.2, math.inf])},
            r"site 'y' \(from argument 'y'\) holds non-finite data at index \(2,\) \(value inf\)",
        ),
        (
            poisson,
            {"counts": torch.tensor([1.0, 0.0, -2.0, 4.0])},
            r"site 'counts' \(from argument 'counts'\) has data outside the support of its "
            r"Poisson likelihood .* at index \(2,\) \(value -2.0\)",
        ),
        (
            poisson,
            {"counts": torch.tensor([1.0, 2.5])},
            r"outside the support of its Poisson likelihood .* index \(1,\) \(value 2.5\)",
        ),
        (
            bernoulli,
            {"flips": torch.tensor([0.0, 1.0, 2.0])},
            r"site 'flips' .* outside the support of its Bernoulli likelihood .* \(value 2.0\)",
        ),
        (
            bernoulli,
            {"flips": np.array([0, 1, 1])},
            r"site 'flips' \(from argument 'flips'\) receives torch.int64 data, which its "
            r"Bernoulli likelihood cannot evaluate .* np.asarray\(y, dtype=float\)",
        ),
        (
            regression,
            {"X": torch.tensor([[1.0, math.nan], [0.0, 1.0]]), "y": torch.tensor([0.5, 1.0])},
            r"argument 'X' has 1 non-finite values, first at index \(0, 1\) \(value nan\)",
        ),
        (
            gaussian,
            {"y": [0.1, 0.2]},
            r"argument 'y' is a Python list of numbers: pass data as tensors or numpy arrays",
        ),
    ],
)
def test_bad_data_is_a_data_error_before_step_one(model, data, match):
    with pytest.raises(DataError, match=match) as err:
        ppl_vi.fit(model, **data, **QUICK, callbacks=[never_called])
    assert "lr" not in str(err.value)


def test_the_data_check_ignores_masked_entries():
    from ppl_vi.data import check_observed
    from ppl_vi.infer_util import trace_model

    y = torch.tensor([0.1, math.nan, 0.3, 0.2])
    masked = pyro.poutine.mask(gaussian, mask=~torch.isnan(y))
    with pyro.validation_enabled(False):
        check_observed(trace_model(masked, (y,), {}), masked, (y,), {})  # NaN masked out
        with pytest.raises(DataError, match=r"non-finite data at index \(1,\)"):
            check_observed(trace_model(gaussian, (y,), {}), gaussian, (y,), {})


def test_user_validate_args_false_opts_out_of_the_support_check():
    def model(counts):
        logits = pyro.sample("logits", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("rows", len(counts)):
            pyro.sample("obs", dist.Multinomial(logits=logits, validate_args=False), obs=counts)

    counts = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])  # totals 4 and 7, not 1
    result = ppl_vi.fit(model, counts, **QUICK)
    assert np.isfinite(result.losses).all()


def test_model_without_latent_sites_is_refused():
    def model(y):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    with pytest.raises(DataError, match=r"no latent sample sites .* nothing for variational"):
        ppl_vi.fit(model, torch.zeros(3), **QUICK)


def test_a_model_that_fails_on_its_prior_says_so():
    def model(y):
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as err:
        ppl_vi.fit(model, torch.zeros(3), **QUICK)
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "failed when run once with draws from its prior" in notes
    assert "test_inputs.py" in notes


# ------------------------------------------------------------------ numpy, pandas, lists
def test_numpy_and_pandas_data_are_converted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))  # float64, as numpy makes it
    y = X @ np.array([1.0, -0.5]) + 0.1 * rng.normal(size=40)
    frame = pd.DataFrame(X, columns=["a", "b"])
    a = ppl_vi.fit(regression, X, y, **QUICK)
    b = ppl_vi.fit(regression, frame, pd.Series(y), **QUICK)
    c = ppl_vi.fit(
        regression, torch.tensor(X, dtype=torch.float32), torch.tensor(y).float(), **QUICK
    )
    assert a.model_args[0].dtype == torch.float32
    np.testing.assert_array_equal(a.losses, c.losses)
    np.testing.assert_array_equal(b.losses, c.losses)


def test_integer_arrays_stay_integer_indices():
    group = np.array([0, 1, 1, 2, 0, 2])
    y = np.array([0.1, 1.2, 0.9, 2.1, -0.2, 1.8])

    def model(group, y):
        with pyro.plate("groups", 3):
            alpha = pyro.sample("alpha", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(alpha[..., group], 0.5), obs=y)

    result = ppl_vi.fit(model, group, y, **QUICK)
    assert result.model_args[0].dtype == torch.int64
    assert result.sample(10)["alpha"].shape == (10, 3)


def test_pandas_categorical_is_refused_with_the_fix():
    group = pd.Series(["a", "b", "a"], dtype="category")
    with pytest.raises(DataError, match=r"pandas categorical; pass its integer codes"):
        ppl_vi.fit(gaussian, group, **QUICK)


def noisy_model(x, noise):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, noise), obs=x)


def test_numpy_scalar_data_round_trip_through_save_and_load(tmp_path):
    x = normal_normal.load_data()["x"].numpy()
    model = noisy_model
    result = ppl_vi.fit(model, x, noise=np.std(x), **QUICK)
    assert type(result.model_kwargs["noise"]) is float
    path = tmp_path / "fit.pt"
    result.save(path)
    loaded = ppl_vi.load(path, model)
    assert loaded.model_kwargs["noise"] == float(np.std(x))
    torch.testing.assert_close(
        loaded.params["MeanField.locs.mu"], result.params["MeanField.locs.mu"]
    )


def test_numpy_scalar_data_round_trip_through_nuts_save_and_load(tmp_path):
    x = normal_normal.load_data()["x"].numpy()
    model = noisy_model
    nuts = ppl_vi.run_nuts(
        model, x, noise=np.float32(1.5), num_warmup=20, num_samples=20, progress=False
    )
    path = tmp_path / "nuts.pt"
    nuts.save(path)
    loaded = ppl_vi.load_nuts(path, model)
    assert loaded.model_kwargs["noise"] == 1.5
    torch.testing.assert_close(loaded.samples["mu"], nuts.samples["mu"])


# ------------------------------------------------------------------ learning rates
@pytest.mark.parametrize("lr", [math.inf, math.nan, 0.0, -0.1, "0.01"])
def test_non_finite_or_non_positive_lr_is_refused(lr):
    with pytest.raises(ValueError, match=r"lr must be a positive number"):
        ppl_vi.fit(gaussian, torch.zeros(3), lr=lr, **QUICK)


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        (lambda t: math.nan if t == 50 else 1.0, r"lr_schedule\(50\) returned nan"),
        (lambda t: math.inf, r"lr_schedule\(0\) returned inf"),
        (lambda t: -1.0, r"lr_schedule\(0\) returned -1.0: .* climb the loss"),
        (lambda t: "fast", r"lr_schedule\(0\) returned 'fast', not a number"),
    ],
)
def test_bad_schedule_factors_are_refused_before_training(schedule, match):
    with pytest.raises(ValueError, match=match):
        ppl_vi.fit(
            gaussian, torch.zeros(3), lr_schedule=schedule, callbacks=[never_called], **QUICK
        )


def test_optimizer_with_non_finite_lr_is_refused():
    with pytest.raises(ValueError, match=r"optimizer's lr must be a finite number >= 0"):
        ppl_vi.fit(gaussian, torch.zeros(3), optim=pyro.optim.Adam({"lr": math.inf}), **QUICK)


# ------------------------------------------------------------------ failures during training
def test_nan_from_a_factor_names_the_step_and_the_site():
    flag = {"bad": False}

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", torch.tensor(math.nan) if flag["bad"] else -0.5 * mu**2)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def poison(state):
        flag["bad"] = state.step >= 40

    with pytest.raises(
        NonFiniteLossError,
        match=r"at step 41; first found at sample site "
        r"'penalty'",
    ) as err:
        ppl_vi.fit(model, torch.zeros(3), callbacks=[poison], **QUICK)
    assert err.value.step == 41 and err.value.result.num_steps == 40


def test_a_failing_callback_keeps_the_work():
    def broken(state):
        if state.step == 25:
            raise KeyError("oops")

    with pytest.raises(
        ppl_vi.FitError, match=r"callback .*broken raised KeyError after step 25"
    ) as err:
        ppl_vi.fit(gaussian, torch.zeros(3), callbacks=[broken], **QUICK)
    assert err.value.result.num_steps == 25
    assert isinstance(err.value.__cause__, KeyError)


def test_an_error_in_a_later_step_keeps_the_work():
    # the model keeps Python state between steps (a call counter), which a recorded step
    # would not run: jit=False runs the model's code at every step
    calls = {"n": 0}

    def model(y):
        calls["n"] += 1
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if calls["n"] == 200:
            raise IndexError("a bug that shows up late")
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(
        ppl_vi.FitError,
        match=r"step \d+ failed \(IndexError: a bug that shows up "
        r"late\) at test_inputs.py",
    ) as err:
        ppl_vi.fit(model, torch.zeros(3), polish=None, jit=False, **{**QUICK, "num_steps": 500})
    assert 100 < err.value.result.num_steps < 200
    assert err.value.step == err.value.result.num_steps + 1


def test_a_failing_final_phase_returns_the_main_phase_with_a_warning():
    calls = {"phase": "main"}

    def watch(state):
        calls["phase"] = state.phase

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if calls["phase"] == "polish" and mu.dim() == 0:
            raise RuntimeError("breaks in the final phase only")
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    # the final phase's 16-particle ELBO is batched; the model breaks on unbatched draws there
    with pytest.warns(RuntimeWarning, match=r"the final phase failed") as record:
        result = ppl_vi.fit(
            model, torch.zeros(3), callbacks=[watch], polish=ppl_vi.Polish(num_particles=1), **QUICK
        )
    assert 80 <= result.num_steps < 100
    (warning,) = [w for w in record if "final phase" in str(w.message)]
    # the phase's first step ran (the callback sees the phase after it), its second failed
    n = result.num_steps
    text = str(warning.message)
    assert text.startswith(
        f"the final phase failed at step {n + 1} (FitError: step {n + 1} failed (RuntimeError: "
        "breaks in the final phase only) at test_inputs.py:"
    )
    assert text.endswith(f"returning the fit as of step {n} (the main phase ended at step {n - 1})")
    assert warning.filename == __file__  # it points at the caller's line


# ------------------------------------------------------------------ k-hat from too few draws
def test_khat_from_too_few_draws_is_nan_with_a_warning():
    result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(), **QUICK)
    for n in (1, 3, 20):
        with pytest.warns(UserWarning, match=r"k-hat needs at least 21 draws"):
            assert math.isnan(result.psis_khat(n))
        with pytest.warns(UserWarning, match=r"k-hat needs at least 21 draws"):
            _, khat = result.importance_means(n)
        assert math.isnan(khat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(result.psis_khat(21, seed=0))


def test_khat_of_a_point_mass_guide_is_nan_with_a_warning():
    from pyro.infer.autoguide import AutoDelta

    result = ppl_vi.fit(gaussian, torch.zeros(3), guide=AutoDelta(gaussian), **QUICK)
    with pytest.warns(UserWarning, match=r"point-mass guide .* k-hat is NaN"):
        assert math.isnan(result.psis_khat(100))


def test_numpy_numbers_are_accepted_as_settings():
    a = ppl_vi.fit(
        gaussian,
        torch.zeros(3),
        **{**QUICK, "num_steps": np.int64(30)},
        lr=np.float32(0.01),
        seed=np.int64(2),
    )
    b = ppl_vi.fit(gaussian, torch.zeros(3), **{**QUICK, "num_steps": 30}, lr=0.01, seed=2)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
    steps = []
    ppl_vi.fit(gaussian, torch.zeros(3), callbacks=lambda s: steps.append(s.step), **QUICK)
    assert steps == list(range(1, 101))


def test_the_data_check_ignores_entries_masked_in_the_distribution():
    from ppl_vi.data import check_observed
    from ppl_vi.infer_util import trace_model

    y = torch.tensor([1.0, math.nan, 3.0, -1.0])
    keep = torch.tensor([True, False, True, False])

    def model(y):
        rate = pyro.sample("rate", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(rate).mask(keep), obs=y)

    with pyro.validation_enabled(False):
        trace = trace_model(model, (y,), {})
        check_observed(trace, model, (y,), {})  # the NaN and the -1 are masked out
        keep[3] = True
        trace = trace_model(model, (y,), {})
        with pytest.raises(
            DataError, match=r"outside the support of its Poisson .* \(value -1.0\)"
        ):
            check_observed(trace, model, (y,), {})


def test_a_non_finite_input_that_reaches_the_log_density_is_named_before_training():
    def model(x, y, unused):  # x: per-datum noise scales (an infinite scale is a valid one)
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(w, x), obs=y)

    x, y = torch.ones(5), torch.zeros(5)
    bad = x.clone()
    bad[3] = float("inf")
    with pytest.raises(
        DataError,
        match=r"log density is not finite on its data: argument 'x' has 1 non-finite values, "
        r"first at .*3.*\. Remove or impute missing values",
    ):
        ppl_vi.fit(model, bad, y, torch.zeros(2), num_steps=5, progress=False)
    # a NaN that the log density never sees is not an error
    unused = torch.tensor([float("nan"), 0.0])
    result = ppl_vi.fit(model, x, y, unused, num_steps=5, progress=False)
    assert np.isfinite(result.losses).all()
