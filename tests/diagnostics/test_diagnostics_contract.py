"""Diagnostics' contract on small models: defaults, which site or plate they read, the unit
shapes of constrained and matrix-valued local latents, thresholds, and where warnings point."""

import types
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi import diagnostics
from ppl_vi.diagnostics import active_units, pointwise_log_likelihood
from ppl_vi.guides.amortized import Amortized

N, M = 30, 5


def two_plates(x, y):
    """Local z in the data plate, and a second observed site in another plate."""
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + mu, 0.5), obs=x)
    with pyro.plate("other", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(scope="module")
def two_plate_fit():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, generator=gen) + 1.0, torch.randn(M, generator=gen) + 1.0
    return ppl_vi.fit(two_plates, x, y, guide=Amortized, guide_kwargs={"data_plate": "data"},
                      num_steps=100, progress=False, seed=0)  # fmt: skip


def test_loo_asks_which_observed_site_when_there_are_several(two_plate_fit):
    with pytest.raises(ValueError, match=r"several observed sites \['x', 'y'\]; pass var_name="):
        diagnostics.loo(two_plate_fit)
    with pytest.raises(ValueError, match="var_name='nope' is not an observed site"):
        diagnostics.loo(two_plate_fit, var_name="nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = diagnostics.loo(two_plate_fit, var_name="y")
        default = diagnostics.loo(two_plate_fit, var_name="y", num_samples=4000, seed=0)
    assert out["n_data_points"] == M and out.loo_i.dims == ("other",)
    assert out["n_samples"] == 4000 and out["elpd_loo"] == default["elpd_loo"]


def test_loo_pareto_k_are_arvizs_for_the_corrected_ratios(two_plate_fit):
    """Per datum, PSIS of log p(x, z) - log q(z) - log p(x_i | z) over independent draws
    (relative efficiency 1), as az.psislw computes it (Magnusson et al. 2019)."""
    fit = two_plate_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = diagnostics.loo(fit, num_samples=1000, seed=3, var_name="x")
        samples, log_p, log_q = fit._draws(1000, 3)
        latent = {k: v for k, v in samples.items() if k in fit.info.latent}
        ll = pointwise_log_likelihood(fit.model, latent, fit.model_args, fit.model_kwargs,
                                      fit.info)["x"]  # fmt: skip
        ratio = (log_p - log_q).double().numpy()[None, :] - np.asarray(ll, np.float64).T
        _, khat = az.psislw(ratio.copy(), reff=1.0)
    np.testing.assert_allclose(out.pareto_k.values, khat, rtol=1e-10)


def test_active_units_reads_the_guides_data_plate(two_plate_fit):
    """Observed sites in two plates: only the guide's data_plate says which indexes the data."""
    au = active_units(two_plate_fit)
    assert au.num_data == N and au.variances["z"].shape == ()
    assert au.method == "exact"
    # without it the model is ambiguous: its observed sites lie in two plates
    trace = pyro.poutine.trace(two_plates).get_trace(*two_plate_fit.model_args)
    with pytest.raises(ValueError, match=r"observed sites lie in the plates \['data', 'other'\]"):
        diagnostics._local_latent_sites(trace, None)


def test_thresholds_defaults_and_seeds(two_plate_fit):
    au = active_units(two_plate_fit)
    value = float(au.variances["z"])
    assert active_units(two_plate_fit, threshold=value).active["z"] == 0  # strictly above
    assert active_units(two_plate_fit, threshold=0.0).active["z"] == int(value > 0)
    assert au.threshold == 0.01 and au.active["z"] == int(value > 0.01)
    mc = active_units(two_plate_fit, method="monte carlo", num_samples=5)
    again = active_units(two_plate_fit, method="monte carlo", num_samples=5, seed=0)
    other = active_units(two_plate_fit, method="monte carlo", num_samples=5, seed=1)
    assert float(mc.variances["z"]) == float(again.variances["z"])
    assert float(mc.variances["z"]) != float(other.variances["z"])
    with pytest.raises(TypeError, match="active_units needs a fit"):
        active_units(types.SimpleNamespace(guide=two_plate_fit.guide))


def _fit_local(site_fn, n=12):
    def model(x):
        with pyro.plate("data", len(x)):
            value = pyro.sample("w", site_fn())
            mean = value.reshape(value.shape[: value.dim() - site_fn().event_dim] + (-1,))
            pyro.sample("x", dist.Normal(mean[..., 0], 1.0), obs=x)

    x = torch.randn(n, generator=torch.Generator().manual_seed(1))
    return ppl_vi.fit(model, x, guide="mean_field", num_steps=20, progress=False, seed=0)


def test_units_of_a_simplex_are_its_unconstrained_coordinates():
    fit = _fit_local(lambda: dist.Dirichlet(torch.ones(3)))
    au = active_units(fit, num_samples=4)
    assert au.variances["w"].shape == (2,) and au.num_data == 12  # K - 1 coordinates


def test_units_of_a_matrix_valued_local_latent_keep_its_shape():
    fit = _fit_local(lambda: dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
    au = active_units(fit, num_samples=4)
    assert au.variances["w"].shape == (2, 3) and au.num_data == 12


def test_underdispersion_flags_ratios_strictly_below_0_9_by_default():
    table = pd.DataFrame({"sd_ratio": [0.9, 0.8999, 1.2]}, index=["a", "b", "c"])
    assert [f.split(":")[0] for f in diagnostics.underdispersion(table)] == ["b"]
    assert diagnostics.underdispersion(table, threshold=0.5) == []


def _narrow_fit():
    from ppl_vi.models import normal_normal as nn_model

    data = nn_model.load_data()
    post = nn_model.exact_posterior(**data)["mu"]
    init = {"init_loc_fn": {"mu": post.loc + 3 * post.scale},
            "init_scale": 0.5 * post.scale.item()}  # fmt: skip
    return ppl_vi.fit(nn_model.model, **data, guide_kwargs=init, num_steps=1, lr=1e-9,
                      polish=None, progress=False)  # fmt: skip


def test_psis_resample_defaults_and_its_warning_points_at_the_caller():
    fit = _narrow_fit()
    with pytest.warns(UserWarning, match="PSIS resampling") as record:
        out = diagnostics.psis_resample(fit)
    assert {w.filename for w in record if "PSIS" in str(w.message)} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        same = diagnostics.psis_resample(fit, 1000, 4000, seed=0)
    assert out["mu"].shape == (1000,)
    torch.testing.assert_close(out["mu"], same["mu"], rtol=0, atol=0)


def test_loo_warning_points_at_the_caller():
    fit = _narrow_fit()
    with pytest.warns(UserWarning, match="Estimated shape parameter") as record:
        diagnostics.loo(fit, num_samples=500)
    assert {w.filename for w in record if "shape parameter" in str(w.message)} == {__file__}
