"""run_nuts: draws, InferenceData, summary, save/load, argument errors."""

import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi.models import eight_schools as es
from ppl_vi.models import normal_normal as nn_model


@pytest.fixture(scope="module")
def eight_schools_nuts():
    torch.set_num_threads(1)
    return ppl_vi.run_nuts(
        es.model,
        **es.load_data(),
        num_warmup=300,
        num_samples=400,
        num_chains=2,
        progress=False,
        seed=1,
    )


def test_nuts_matches_exact_posterior_within_monte_carlo_error(float64):
    data = nn_model.load_data()
    nuts = ppl_vi.run_nuts(nn_model.model, **data, num_warmup=200, num_samples=1000, progress=False)
    exact = nn_model.exact_posterior(**data)["mu"]
    draws = nuts.samples["mu"].numpy()
    ess = float(az.ess(draws[None]))
    se = exact.scale.item() / math.sqrt(ess)
    assert abs(draws.mean() - exact.loc.item()) < 4 * se
    assert nuts.diverging.shape == (1, 1000) and nuts.num_divergences == 0
    assert np.isfinite(nuts.step_size).all() and (nuts.step_size > 0).all()


def test_inference_data_matches_vi_names_and_dims(eight_schools_nuts):
    vi = ppl_vi.fit(es.model, **es.load_data(), num_steps=300, progress=False)
    vi_idata, nuts_idata = vi.to_inference_data(500), eight_schools_nuts.to_inference_data()
    assert list(vi_idata.posterior.data_vars) == list(nuts_idata.posterior.data_vars)
    for name in vi_idata.posterior.data_vars:
        assert vi_idata.posterior[name].dims == nuts_idata.posterior[name].dims
    assert dict(nuts_idata.posterior.sizes)["chain"] == 2
    assert nuts_idata.sample_stats["diverging"].shape == (2, 400)
    assert set(nuts_idata.sample_stats.data_vars) >= {"diverging", "step_size"}
    np.testing.assert_array_equal(nuts_idata.observed_data["y"].values, es.load_data()["y"].numpy())
    for idata in (vi_idata, nuts_idata):
        az.summary(idata)
        az.plot_posterior(idata, var_names=["mu", "tau"])
    axes = az.plot_forest([vi_idata, nuts_idata], model_names=["VI", "NUTS"])
    assert axes.size >= 1


def test_summary_has_rhat_and_ess(eight_schools_nuts):
    table = eight_schools_nuts.summary()
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(table.columns)
    assert "tau" in table.index and "theta[7]" in table.index
    assert table["r_hat"].max() < 1.05  # two chains that agree


def test_save_load_round_trip(eight_schools_nuts, tmp_path):
    path = tmp_path / "nuts.pt"
    eight_schools_nuts.save(path)
    back = ppl_vi.load_nuts(path, es.model)
    for name, value in eight_schools_nuts.chains.items():
        assert torch.equal(back.chains[name], value)
    np.testing.assert_array_equal(back.diverging, eight_schools_nuts.diverging)
    assert back.wall_time == eight_schools_nuts.wall_time
    with pytest.raises(ppl_vi.CheckpointError, match="does not fit the model given"):
        ppl_vi.load_nuts(path, nn_model.model, **nn_model.load_data())


def test_improper_prior_needs_no_prior_draws():
    def model(y):
        mu = pyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
        sigma = pyro.sample("sigma", dist.ImproperUniform(dist.constraints.positive, (), ()))
        with pyro.plate("data", len(y), dim=-1):
            pyro.sample("y", dist.Normal(mu, sigma), obs=y)

    y = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0, 2.5])
    nuts = ppl_vi.run_nuts(
        model,
        y=y,
        num_warmup=200,
        num_samples=300,
        progress=False,
        init_values={"mu": y.mean(), "sigma": y.std()},
    )
    # flat prior on (mu, sigma): the posterior of mu is a t with mean ybar
    draws = nuts.samples["mu"].numpy()
    se = draws.std() / math.sqrt(float(az.ess(draws[None])))
    assert abs(nuts.samples["mu"].mean() - y.mean()) < 4 * se


def test_argument_errors():
    data = nn_model.load_data()
    with pytest.raises(ValueError, match=r"num_samples must be an integer >= 1 \(got"):
        ppl_vi.run_nuts(nn_model.model, **data, num_samples=0)
    with pytest.raises(ValueError, match=r"init_values names \['nope'\]"):
        ppl_vi.run_nuts(nn_model.model, **data, init_values={"nope": 1.0}, progress=False)
    with pytest.raises(ValueError, match="target_accept_prob must be in"):
        ppl_vi.run_nuts(nn_model.model, **data, target_accept_prob=1.5)

    def discrete():
        pyro.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match=r"\['k'\] are discrete"):
        ppl_vi.run_nuts(discrete, progress=False)
