"""Outputs in ArviZ's and Pyro's conventions: predictive shapes as pyro.infer.Predictive gives
them, dims named from plates, LOO that az.compare accepts."""

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi import diagnostics
from ppl_vi.models import eight_schools

DATA = eight_schools.load_data()


@pytest.fixture(scope="module")
def fits():
    pyro.set_rng_seed(0)
    vi = ppl_vi.fit(eight_schools.model, **DATA, num_steps=800, progress=False)
    nuts = ppl_vi.run_nuts(
        eight_schools.model, **DATA, num_warmup=150, num_samples=150, num_chains=2, progress=False
    )
    return vi, nuts


def replicated(model, samples, names, args=(), kwargs=None):
    """What pyro.infer.Predictive returns for the observed sites when the data are left out."""
    pred = pyro.infer.Predictive(model, posterior_samples=samples, return_sites=names)
    return pred(*args, **(kwargs or {}))


def test_posterior_predictive_shapes_equal_pyro_predictive(fits):
    vi, nuts = fits
    for result, chains in ((vi, 1), (nuts, 2)):
        idata = (
            result.to_inference_data(200, seed=0, posterior_predictive=True)
            if result is vi
            else result.to_inference_data(posterior_predictive=True)
        )
        draws = idata.posterior.sizes["draw"]
        post = idata.posterior
        samples = {
            k: torch.as_tensor(post[k].values.reshape((chains * draws,) + post[k].shape[2:]))
            for k in ("mu", "tau", "theta_t")
        }
        data = {**DATA, "y": None}  # Pyro's way to predict: leave the observations out
        reference = replicated(eight_schools.model, samples, ["y", "theta"], kwargs=data)
        assert (
            idata.posterior_predictive["y"].shape
            == (chains, draws) + tuple(reference["y"].shape[1:])
            == (chains, draws, 8)
        )
        assert idata.posterior["theta"].shape[2:] == reference["theta"].shape[1:]
        # replicated data, not the data: they vary around theta with the data's noise
        rep = idata.posterior_predictive["y"].values.reshape(-1, 8)
        theta = idata.posterior["theta"].values.reshape(-1, 8)
        resid = (rep - theta) / DATA["sigma"].numpy()
        n = resid.size
        assert abs(resid.mean()) < 4 / math.sqrt(n) and abs(resid.std() - 1) < 4 / math.sqrt(2 * n)


def test_deterministic_site_inside_a_plate_keeps_its_shape():
    def model(x, y=None):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            mean = pyro.deterministic("mean", a * x)
            pyro.sample("y", dist.Normal(mean, 0.1), obs=y)

    x = torch.linspace(-1, 1, 5)
    result = ppl_vi.fit(model, x, 2 * x, num_steps=200, progress=False)
    idata = result.to_inference_data(50, seed=0, posterior_predictive=True, log_likelihood=True)
    reference = replicated(
        model, {"a": torch.as_tensor(idata.posterior["a"].values[0])}, ["y", "mean"], (x,)
    )
    assert idata.posterior_predictive["y"].shape == (1, 50) + tuple(reference["y"].shape[1:])
    assert idata.posterior["mean"].shape == (1, 50) + tuple(reference["mean"].shape[1:])
    assert idata.posterior["mean"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")


def test_dims_are_named_from_plates_and_take_coords(fits):
    vi, nuts = fits
    schools = list("ABCDEFGH")
    for idata in (
        vi.to_inference_data(100, seed=0, coords={"school": schools}),
        nuts.to_inference_data(coords={"school": schools}),
    ):
        for name in ("theta", "theta_t"):
            assert idata.posterior[name].dims == ("chain", "draw", "school")
        assert idata.observed_data["y"].dims == ("school",)
        assert list(idata.posterior.school.values) == schools
    renamed = vi.to_inference_data(100, seed=0, dims={"theta": ["unit"]})
    assert renamed.posterior["theta"].dims == ("chain", "draw", "unit")


def test_az_loo_works_on_nuts_and_az_compare_takes_vi_and_nuts_loo(fits):
    vi, nuts = fits
    idata = nuts.to_inference_data()
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "school")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        direct = az.loo(idata, pointwise=True)
        nuts_loo = diagnostics.loo(nuts)
        vi_loo = diagnostics.loo(vi)
    assert nuts_loo["elpd_loo"] == pytest.approx(direct["elpd_loo"])
    assert vi_loo.loo_i.dims == ("school",) and vi_loo["n_data_points"] == 8
    table = az.compare({"vi": vi_loo, "nuts": nuts_loo})
    assert set(table.index) == {"vi", "nuts"}
    # both estimate the same elpd: within their combined standard errors
    gap = abs(vi_loo["elpd_loo"] - nuts_loo["elpd_loo"])
    assert gap < 4 * math.hypot(vi_loo["se"], nuts_loo["se"]) / math.sqrt(8)


def test_vi_loo_warns_when_a_datum_has_high_k():
    """A guide far too narrow: the leave-one-out ratios have heavy tails, and loo says so."""
    from pyro.infer.autoguide import AutoNormal

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.0, 0.5, -0.3, 8.0])  # one outlier
    guide = AutoNormal(model, init_scale=0.01)
    result = ppl_vi.fit(model, y, guide=guide, num_steps=1, lr=1e-9, polish=None, progress=False)
    with pytest.warns(
        UserWarning,
        match=r"Estimated shape parameter of Pareto distribution is "
        r"greater than 0.70 .* of 4 data",
    ):
        out = diagnostics.loo(result, num_samples=2000)
    assert out["warning"] and float(out.pareto_k.max()) > 0.7


def test_predictive_of_a_model_that_does_not_broadcast():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = 1.0 if mu > 0 else 2.0  # runs one draw at a time
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, scale), obs=y)

    y = torch.tensor([0.3, 0.8, 1.2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ppl_vi.fit(model, y, num_steps=100, progress=False)
    assert not result.info.batched
    idata = result.to_inference_data(30, seed=0, posterior_predictive=True, log_likelihood=True)
    assert idata.posterior_predictive["y"].shape == (1, 30, 3)
    ll = idata.log_likelihood["y"].values[0]
    mu = idata.posterior["mu"].values[0]
    scale = np.where(mu > 0, 1.0, 2.0)
    expected = -0.5 * ((y.numpy()[None] - mu[:, None]) / scale[:, None]) ** 2 - np.log(
        scale[:, None] * math.sqrt(2 * math.pi)
    )
    np.testing.assert_allclose(ll, expected, rtol=1e-5)
    nuts = ppl_vi.run_nuts(model, y, num_warmup=30, num_samples=30, progress=False)
    assert not nuts.info.batched
    assert nuts.to_inference_data(posterior_predictive=True).posterior_predictive["y"].shape == (
        1,
        30,
        3,
    )


def test_khat_is_stable_across_seeds_and_the_same_everywhere():
    """With the default draws the k-hat's spread across 8 seeds is below 0.05 on eight
    schools; its stated Monte Carlo error describes that spread; every reader of the same fit
    gets the same k-hat and verdict."""
    result = ppl_vi.fit(eight_schools.model, **DATA, progress=False)
    imps = [result.importance(seed=s) for s in range(8)]
    ks = np.array([imp.khat for imp in imps])
    sd = ks.std(ddof=1)
    assert sd < 0.05, ks
    # sd of 8 values over the true sd ~ sqrt(chi2_7 / 7): 99.8% of it lies in [0.29, 1.86]
    ratio = sd / np.mean([imp.khat_se for imp in imps])
    assert 0.29 < ratio < 1.86, (sd, [imp.khat_se for imp in imps])
    khat = result.psis_khat()
    assert khat == result.importance_means()[1] == imps[0].khat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = ppl_vi.compare(result, eight_schools.reference_draws(), warn=False)
    assert report.khat == khat and report.khat_verdict == imps[0].verdict()
