"""VIResult: draws, log weights, InferenceData, summaries, evidence, save and load."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from torch.distributions import transform_to

import ppl_vi
from ppl_vi import CheckpointError
from ppl_vi.models import eight_schools, normal_normal

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

QUICK = {"num_steps": 300, "progress": False, "convergence": None}


@pytest.fixture(scope="module")
def eight():
    pyro.clear_param_store()
    data = eight_schools.load_data()
    result = ppl_vi.fit(eight_schools.model, **data, **QUICK, seed=1)
    return result, data


def set_guide_to_posterior(result, loc, scale):
    """Put the MeanField guide of a normal_normal fit exactly at N(loc, scale)."""
    with result.param_scope():
        store = pyro.get_param_store()
        with torch.no_grad():
            store._params["MeanField.locs.mu"].copy_(loc)
            unconstrained = transform_to(constraints.softplus_positive).inv(scale)
            store._params["MeanField.scales.mu"].copy_(unconstrained)


def test_sample_shapes_and_deterministic_sites(eight):
    result, _ = eight
    draws = result.sample(500, seed=0)
    assert set(draws) == {"mu", "tau", "theta_t", "theta"}
    assert draws["mu"].shape == (500,) and draws["tau"].shape == (500,)
    assert draws["theta_t"].shape == (500, 8) and draws["theta"].shape == (500, 8)
    assert (draws["tau"] > 0).all()
    expected = draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_t"]
    torch.testing.assert_close(draws["theta"], expected)


def test_sample_is_reproducible_with_seed_and_chunks_agree(eight, monkeypatch):
    result, _ = eight
    a = result.sample(300, seed=7)
    b = result.sample(300, seed=7)
    for k in a:
        assert torch.equal(a[k], b[k])
    c = result.sample(300, seed=8)
    assert not torch.equal(a["mu"], c["mu"])
    monkeypatch.setattr("ppl_vi.result.CHUNK", 128)  # several vectorized passes
    chunked = result.sample(300, seed=7)
    assert chunked["theta"].shape == (300, 8)


def test_log_p_and_log_q_match_hand_computation(eight):
    result, data = eight
    idata = result.to_inference_data(num_samples=20, seed=3)
    post = idata.posterior
    log_p = idata.sample_stats["log_p"].values[0]
    log_q = idata.sample_stats["log_q"].values[0]
    params = result.params
    for i in range(20):
        values = {
            "mu": torch.tensor(post["mu"].values[0, i]),
            "tau": torch.tensor(post["tau"].values[0, i]),
            "theta_t": torch.tensor(post["theta_t"].values[0, i]),
        }
        conditioned = poutine.condition(eight_schools.model, data=values)
        expected_p = poutine.trace(conditioned).get_trace(**data).log_prob_sum()
        assert log_p[i] == pytest.approx(expected_p.item(), rel=1e-5, abs=1e-4)
        # mean field: Normal in unconstrained space, log tau for tau, with the Jacobian of exp
        lq = 0.0
        for site, u, jac in [
            ("mu", values["mu"], 0.0),
            ("tau", values["tau"].log(), -values["tau"].log()),
            ("theta_t", values["theta_t"], 0.0),
        ]:
            loc = params[f"MeanField.locs.{site}"]
            scale = params[f"MeanField.scales.{site}"]
            lq = lq + dist.Normal(loc, scale).log_prob(u).sum() + jac
        assert log_q[i] == pytest.approx(float(lq), rel=1e-5, abs=1e-4)


def test_inference_data_layout(eight):
    result, data = eight
    idata = result.to_inference_data(num_samples=200, seed=0)
    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data"}
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 200
    assert idata.posterior["theta"].shape == (1, 200, 8)
    np.testing.assert_array_equal(idata.sample_stats["loss"].values, result.losses)
    np.testing.assert_array_equal(idata.observed_data["y"].values, data["y"].numpy())
    summary = az.summary(idata, kind="stats")
    assert summary.loc["mu", "mean"] == pytest.approx(idata.posterior["mu"].values.mean(), abs=1e-2)


def test_summary_matches_draws(eight):
    result, _ = eight
    table = result.summary(num_samples=2000, seed=4)
    draws = result.sample(2000, seed=4)
    assert {"mean", "sd", "q05", "q25", "q50", "q75", "q95"} <= set(table.columns)
    tau = draws["tau"].double().numpy()
    assert table.loc["tau", "mean"] == pytest.approx(tau.mean(), rel=1e-6)
    assert table.loc["tau", "sd"] == pytest.approx(tau.std(ddof=1), rel=1e-4)
    assert table.loc["tau", "q95"] == pytest.approx(np.quantile(tau, 0.95), rel=1e-6)
    assert table.loc["theta[3]", "q50"] == pytest.approx(
        np.quantile(draws["theta"][:, 3].double().numpy(), 0.5), rel=1e-6
    )


def test_exact_guide_gives_exact_evidence_for_every_particle(float64):
    data = normal_normal.load_data()
    result = ppl_vi.fit(normal_normal.model, **data, num_steps=1, progress=False)
    post = normal_normal.exact_posterior(**data)["mu"]
    set_guide_to_posterior(result, post.loc, post.scale)
    log_z = normal_normal.log_evidence(**data).item()
    log_p, log_q = result.log_weights(500, seed=0)
    assert log_p.dtype == torch.float64
    np.testing.assert_allclose((log_p - log_q).numpy(), log_z, rtol=0, atol=1e-8)
    assert result.log_marginal_likelihood(num_particles=2000) == pytest.approx(log_z, abs=1e-8)
    # a guide shifted by one sd: E_q[log w] = log Z - KL(q || p) = log Z - 1/2
    set_guide_to_posterior(result, post.loc + post.scale, post.scale)
    log_p, log_q = result.log_weights(4000, seed=1)
    lw = log_p - log_q
    se = lw.std() / math.sqrt(lw.numel())
    assert abs(lw.mean() - (log_z - 0.5)) < 4 * se
    assert 4 * se < 0.1, "the check would see a KL off by 0.1 nats"
    # away from the exact posterior the mean, the max and the log-mean-exp of the log weights
    # differ; the estimate is the log-mean-exp of these same draws, and p(x) = E_q[w] is
    # estimated without bias: Var_q[w / Z] = e^(shift^2) - 1 = e - 1 for a one-sd shift
    lml = result.log_marginal_likelihood(num_particles=4000, seed=1)
    assert lml == pytest.approx(float(torch.logsumexp(lw, 0) - math.log(lw.numel())), abs=1e-12)
    assert abs(lml - log_z) < 4 * math.sqrt((math.e - 1) / 4000)


def test_importance_means_correct_a_shifted_guide(float64):
    data = normal_normal.load_data()
    result = ppl_vi.fit(normal_normal.model, **data, num_steps=1, progress=False)
    post = normal_normal.exact_posterior(**data)["mu"]
    # a guide 0.5 sd off and 20% too wide: its own mean is 0.5 sd wrong
    set_guide_to_posterior(result, post.loc + 0.5 * post.scale, 1.2 * post.scale)
    n = 16000
    means, khat = result.importance_means(n, seed=2)
    plain = result.sample(n, seed=2)["mu"].mean()
    assert abs(plain - post.loc) / post.scale > 0.45
    # self-normalised importance sampling: sd of the estimate ~ posterior sd / sqrt(ESS)
    log_p, log_q = result.log_weights(n, seed=2)
    w = torch.softmax(log_p - log_q, 0)
    ess = 1.0 / (w**2).sum()
    assert abs(means["mu"] - post.loc) / post.scale < 4 / ess.sqrt()
    assert khat < 0.5 and ess > n / 4


def test_psis_khat_agrees_with_arviz_on_the_same_weights(eight):
    result, _ = eight
    khat = result.psis_khat(num_samples=1000, seed=11)
    log_p, log_q = result.log_weights(1000, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = az.psislw((log_p - log_q).double().numpy(), reff=1.0)
    assert khat == pytest.approx(float(expected), abs=1e-12)


def test_psis_khat_separates_good_and_poor_guides(float64):
    data = normal_normal.load_data()
    result = ppl_vi.fit(normal_normal.model, **data, num_steps=1, progress=False)
    post = normal_normal.exact_posterior(**data)["mu"]
    # q = N(m, s^2) against p = N(m, 1): k = 1 - s^2 (Yao et al. 2018, sec. 3)
    set_guide_to_posterior(result, post.loc, post.scale * 0.95)
    good = np.median([result.psis_khat(2000, seed=s) for s in range(5)])
    set_guide_to_posterior(result, post.loc, post.scale * 0.5)
    poor = np.median([result.psis_khat(2000, seed=s) for s in range(5)])
    assert good < 0.3 < 0.5 < poor


def test_save_load_round_trip_is_lossless(tmp_path, eight):
    result, _ = eight
    path = tmp_path / "fit.pt"
    result.save(path)
    loaded = ppl_vi.load(path, eight_schools.model)
    for name, value in result.params.items():
        assert torch.equal(loaded.params[name], value)
    np.testing.assert_array_equal(loaded.losses, result.losses)
    a, b = result.sample(100, seed=2), loaded.sample(100, seed=2)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert loaded.guide_spec["name"] == "mean_field"


def test_load_with_another_model_is_rejected(tmp_path, eight):
    result, _ = eight
    path = tmp_path / "fit.pt"
    result.save(path)
    missing = r"does not fit the model given .*sites \['tau', 'theta_t'\] are missing"
    with pytest.raises(CheckpointError, match=missing):
        ppl_vi.load(path, normal_normal.model, **normal_normal.load_data())


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"cannot read the saved result"):
        ppl_vi.load(bad, normal_normal.model)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=r"is not a ppl-vi file"):
        ppl_vi.load(foreign, normal_normal.model)


def test_load_custom_guide_needs_the_guide(tmp_path):
    data = normal_normal.load_data()

    def guide(x=None, **kwargs):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    result = ppl_vi.fit(normal_normal.model, **data, guide=guide, **QUICK)
    path = tmp_path / "custom.pt"
    result.save(path)
    with pytest.raises(ValueError, match=r"fitted with a custom guide .* pass a fresh instance"):
        ppl_vi.load(path, normal_normal.model)
    loaded = ppl_vi.load(path, normal_normal.model, guide=guide)
    assert loaded.params["scale"] == result.params["scale"]


def test_subsampled_plate_gets_per_datum_parameters():
    """Local latents in a subsampled plate: z_i ~ N(0, 1), x_i ~ N(z_i, 1) => z_i | x_i ~
    N(x_i / 2, 1/2). Each step updates 20 of the 100 local parameters."""
    n = 100
    x = torch.linspace(-3, 3, n)

    def model(x, batch=20):
        with pyro.plate("data", n, subsample_size=batch) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    result = ppl_vi.fit(model, x, num_steps=3000, lr=0.05, progress=False, convergence=None)
    loc = result.params["MeanField.locs.z"]
    assert loc.shape == (n,)
    # the optimisation budget (about 600 updates per datum) leaves each mean within 0.1 sd
    assert ((loc - x / 2).abs() / math.sqrt(0.5)).max() < 0.1
    draws = result.sample(4000, seed=0)
    assert draws["z"].shape == (4000, n)  # drawn at full plate size
    # full-data log density: every datum contributes, none is rescaled by n / batch
    log_p, log_q = result.log_weights(4, seed=0)
    z = result.sample(4, seed=0)["z"]
    expected = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(z, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(log_p, expected, rtol=1e-5, atol=1e-4)


def test_importance_of_a_joint_guide_on_a_model_with_explicit_subsample_indices():
    """A joint-space guide built at the mini-batch the model was given cannot be drawn at the
    full plate size: the importance set falls back to that mini-batch (with a warning) as
    ``sample`` does, instead of failing."""

    def model(y, idx, full_size):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
        with pyro.plate("data", full_size, subsample=idx):
            z = pyro.sample("z", dist.Normal(0.0, scale))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y)

    y = torch.randn(20)
    result = ppl_vi.fit(model, y, torch.arange(20), 100, guide="full_rank", num_steps=5,
                        progress=False)  # fmt: skip
    with pytest.warns(UserWarning, match="mini-batch the model was given"):  # on every use
        khat = result.psis_khat(500, seed=0)
        assert result.importance(500, seed=0).log_weights.shape == (500,)
    assert not math.isnan(khat)
