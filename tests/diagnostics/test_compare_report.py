"""compare(): per-component table, flags, Markdown and figure; LOO; PSIS resampling."""

import math

import arviz as az
import numpy as np
import pytest
import torch
from scipy.stats import norm, wasserstein_distance

import ppl_vi
from ppl_vi import diagnostics
from ppl_vi.models import eight_schools as es
from ppl_vi.models import normal_normal as nn_model


def exact_draws(data, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    post = nn_model.exact_posterior(**data)["mu"]
    return {"mu": post.loc + post.scale * torch.randn(n, generator=gen, dtype=post.loc.dtype)}


def test_normal_normal_mean_error_within_monte_carlo_error(float64, tmp_path):
    data = nn_model.load_data()
    fit = ppl_vi.fit(nn_model.model, **data, progress=False, seed=0)
    report = ppl_vi.compare(fit, exact_draws(data, 4000), num_samples=4000, warn=False)
    row = report.table.loc["mu"]
    # in posterior sds: SE of a difference of two means of 4000 independent draws each
    assert abs(row.mean_error) < 4 * math.sqrt(2 / 4000)
    # the sd of n normal draws has relative SE 1/sqrt(2n); a ratio of two such sds 1/sqrt(n)
    assert abs(row.sd_ratio - 1) < 4 / math.sqrt(4000)
    # W1 below the 99th percentile of its null: two independent exact samples of the same size
    null = []
    for seed in range(1, 101):
        a = exact_draws(data, 4000, seed)["mu"].numpy()
        b = exact_draws(data, 4000, 1000 + seed)["mu"].numpy()
        null.append(wasserstein_distance(a / a.std(), b / a.std()))
    assert row.w1 < np.quantile(null, 0.99), (row.w1, np.quantile(null, 0.99))
    assert report.khat < 0.5 and report.flags == []
    md = report.to_markdown()
    assert "| mu " in md and "PSIS k-hat" in md
    report.plot(tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_eight_schools_mean_field_tau_under_dispersed_and_flagged():
    fit = ppl_vi.fit(es.model, **es.load_data(), num_steps=3000, progress=False, seed=0)
    with pytest.warns(UserWarning, match="tau: VI sd is"):
        report = ppl_vi.compare(fit, es.reference_draws())
    assert report.table.loc["tau", "sd_ratio"] < 0.9
    assert any(f.startswith("tau: VI sd is") for f in report.flags)
    assert "under-dispersed" in report.to_markdown()


def test_compare_rejects_unrelated_reference():
    fit = ppl_vi.fit(nn_model.model, **nn_model.load_data(), num_steps=50, progress=False)
    with pytest.raises(ValueError, match="no site in common"):
        ppl_vi.compare(fit, {"beta": np.zeros((10,))})
    with pytest.raises(TypeError, match="reference must be a NUTSResult"):
        ppl_vi.compare(fit, [1, 2, 3])


def test_vi_loo_matches_exact_leave_one_out(float64):
    # normal_normal: p(x_i | x_-i) is Normal with the posterior of x_-i, closed form.
    data = nn_model.load_data()
    x = data["x"]
    fit = ppl_vi.fit(nn_model.model, **data, progress=False, seed=0)
    loo = diagnostics.loo(fit, num_samples=4000)
    exact = 0.0
    for i in range(len(x)):
        rest = torch.cat([x[:i], x[i + 1 :]])
        post = nn_model.exact_posterior(rest)["mu"]
        exact += norm.logpdf(x[i].item(), post.loc.item(), math.hypot(post.scale.item(), 1.0))
    assert not loo["warning"] and float(loo.pareto_k.max()) < loo["good_k"]
    assert abs(loo["elpd_loo"] - exact) < 0.05, (loo["elpd_loo"], exact)


def test_psis_resampling_corrects_a_too_narrow_guide(float64):
    data = nn_model.load_data()
    exact = nn_model.exact_posterior(**data)["mu"]
    fit = ppl_vi.fit(
        nn_model.model,
        **data,
        num_steps=1,
        progress=False,
        guide_kwargs={
            "init_loc_fn": {"mu": exact.loc.clone()},
            "init_scale": 0.6 * exact.scale.item(),
        },
        polish=None,
        lr=1e-6,
    )
    raw = fit.sample(4000, seed=1)["mu"]
    fixed = diagnostics.psis_resample(fit, 4000, seed=1)["mu"]  # from 16000 proposals
    assert raw.std() < 0.7 * exact.scale
    # Tolerance: relative SE of an sd from the proposals' effective sample size, 1/sqrt(2 ESS)
    _, log_p, log_q = fit._draws(16000, 1)
    lw, khat = diagnostics.psis((log_p - log_q).numpy())
    ess = 1.0 / np.exp(2 * lw).sum()
    assert khat < diagnostics.KHAT_BAD
    assert abs(fixed.std() / exact.scale - 1) < 4 / math.sqrt(2 * ess), (fixed.std(), ess)


def test_khat_verdicts():
    assert "trusted" in diagnostics.khat_verdict(0.2)
    assert "with care" in diagnostics.khat_verdict(0.6)
    assert "do not trust" in diagnostics.khat_verdict(0.9)


@pytest.mark.parametrize("method", ["vi", "nuts"])
def test_posterior_predictive_matches_closed_form(method, float64):
    # normal_normal: x_rep | data ~ N(m, s^2 + 1) with (m, s) the exact posterior of mu.
    data = nn_model.load_data()
    if method == "vi":
        result = ppl_vi.fit(nn_model.model, **data, progress=False, seed=0)
        # VI draws come from q: the log-likelihood group only on request (az.loo would not
        # correct for q; ppl_vi.diagnostics.loo does)
        assert "log_likelihood" not in result.to_inference_data(20, posterior_predictive=True)
        idata = result.to_inference_data(
            2000, seed=1, posterior_predictive=True, log_likelihood=True
        )
    else:
        result = ppl_vi.run_nuts(
            nn_model.model, **data, num_warmup=200, num_samples=1000, progress=False
        )
        idata = result.to_inference_data(posterior_predictive=True)
    rep = idata.posterior_predictive["x"].values  # (chain, draw, N)
    assert rep.shape[-1] == data["x"].shape[-1]
    assert idata.log_likelihood["x"].shape == rep.shape
    post = nn_model.exact_posterior(**data)["mu"]
    var = post.scale.item() ** 2 + 1.0
    # one replicated datum per draw: its mean and variance against the closed form
    first = rep[..., 0].ravel()
    ess = float(az.ess(first[None])) if method == "nuts" else len(first)
    assert abs(first.mean() - post.loc.item()) < 4 * math.sqrt(var / ess)
    assert abs(first.var() / var - 1) < 4 * math.sqrt(2 / ess)  # relative SE of a variance


def _report(error, ratio, khat, seconds, label):
    import pandas as pd

    table = pd.DataFrame({"mean_error": [error], "sd_ratio": [ratio]}, index=["a"])
    return ppl_vi.Report(
        table=table,
        khat=khat,
        elbo=0.0,
        elbo_se=0.0,
        vi_time=seconds,
        ref_time=10.0,
        ref_label="NUTS",
        vi_label=label,
    )


def test_recommend_picks_the_fastest_accurate_method_or_the_reference():
    from ppl_vi.compare import recommend

    reports = {
        "slow good": _report(0.05, 1.0, 0.3, 5.0, "slow good"),
        "fast good": _report(0.15, 0.9, 0.6, 1.0, "fast good"),
        "fast bad": _report(0.9, 0.5, 0.9, 0.5, "fast bad"),
    }
    text = recommend(reports)
    assert text.startswith("Use fast good:") and "Also accurate: slow good" in text
    text = recommend({"fast bad": reports["fast bad"]})
    assert text.startswith("Use NUTS:") and "fast bad" in text


def test_recommend_refuses_a_method_whose_worst_sd_ratio_is_out_of_band():
    """A good median (0.98) hides one component at 0.66: the method is not accurate."""
    import pandas as pd

    from ppl_vi.compare import recommend

    table = pd.DataFrame(
        {"mean_error": [0.02, 0.05, 0.01], "sd_ratio": [0.99, 0.98, 0.66]},
        index=["mu", "theta[0]", "sigma_alpha"],
    )
    report = ppl_vi.Report(
        table=table,
        khat=0.3,
        elbo=0.0,
        elbo_se=0.0,
        vi_time=1.0,
        ref_time=10.0,
        ref_label="NUTS",
        vi_label="IAF + ELBO",
    )
    assert report.worst_sd_ratio == ("sigma_alpha", 0.66)
    text = recommend({"IAF + ELBO": report})
    assert text.startswith("Use NUTS:") and "worst sd ratio 0.66 (sigma_alpha)" in text


def test_compare_flags_misspelled_missing_and_nan_sites():
    fit = ppl_vi.fit(nn_model.model, **nn_model.load_data(), num_steps=50, progress=False)
    rng = np.random.default_rng(0)
    ref = {"mu": rng.normal(size=500), "mu_typo": rng.normal(size=500)}
    with pytest.warns(
        UserWarning,
        match=r"reference site 'mu_typo' is not a site of the fit "
        r"\(did you mean 'mu'\?\); not compared",
    ):
        report = ppl_vi.compare(fit, ref, num_samples=200)
    assert list(report.table.index) == ["mu"]
    ref = {"mu": np.full(500, np.nan)}
    report = ppl_vi.compare(fit, ref, num_samples=200, warn=False)
    assert any("mu: NaN in the comparison" in f for f in report.flags)


def test_compare_flags_an_unhealthy_nuts_reference():
    data = nn_model.load_data()
    fit = ppl_vi.fit(nn_model.model, **data, num_steps=200, progress=False)
    one = ppl_vi.run_nuts(nn_model.model, **data, num_warmup=50, num_samples=100, progress=False)
    assert one.mcmc is not None and "mu" in one.mcmc.diagnostics()
    report = ppl_vi.compare(fit, one, num_samples=200, warn=False)
    assert any("has one chain, so R-hat cannot check" in f for f in report.flags)
    # two chains that have not mixed: R-hat far above 1.01 is flagged
    one.chains["mu"] = torch.stack([one.chains["mu"][0], one.chains["mu"][0] + 5.0])
    one.diverging = np.zeros((2, 100), dtype=bool)
    one.diverging[1, :3] = True
    report = ppl_vi.compare(fit, one, num_samples=200, warn=False)
    assert any("R-hat up to" in f and "on mu" in f for f in report.flags)
    assert any("3 divergent transitions" in f for f in report.flags)


def test_figure_names_its_method_shows_scalars_and_says_what_it_leaves_out(tmp_path):
    from ppl_vi.models import eight_schools

    data = eight_schools.load_data()
    fit = ppl_vi.fit(eight_schools.model, **data, num_steps=300, progress=False)
    report = ppl_vi.compare(
        fit,
        eight_schools.reference_draws(),
        num_samples=500,
        warn=False,
        vi_label="mean-field + ELBO",
    )
    shown = report.shown_components(6)
    assert shown[:2] == ["mu", "tau"] and len(shown) == 6
    fig = report.plot(tmp_path / "report.png", max_params=6)
    assert "mean-field + ELBO vs reference draws (showing 6 of 18 components" in (
        fig._suptitle.get_text()
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("mean-field + ELBO" in t for t in titles) == 3  # forest, loss, k-hat
    assert any(t.startswith("tau:") for t in titles)
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_compare_scales_by_the_reference_sd_where_the_sds_differ(float64):
    """Mean errors and W1 are in reference sds: checked on the same draws where the reference
    is twice as wide as the fit (with equal sds, dividing by the fit's sd would pass too)."""
    data = nn_model.load_data()
    fit = ppl_vi.fit(nn_model.model, **data, progress=False, seed=0)
    post = nn_model.exact_posterior(**data)["mu"]
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(4000, generator=gen, dtype=post.loc.dtype)
    ref = (post.loc + post.scale + 2 * post.scale * noise).numpy()  # one sd off, twice as wide
    row = ppl_vi.compare(fit, {"mu": ref}, num_samples=4000, seed=0, warn=False).table.loc["mu"]
    v = fit._draws(4000, 0)[0]["mu"].numpy()
    r_mean, r_sd = ref.mean(), ref.std(ddof=1)
    assert row.mean_error == pytest.approx((v.mean() - r_mean) / r_sd, rel=1e-10)
    assert row.sd_ratio == pytest.approx(v.std(ddof=1) / r_sd, rel=1e-10)
    assert row.w1 == pytest.approx(wasserstein_distance(v / r_sd, ref / r_sd), rel=1e-8)
    # and as properties: the fit is within 0.09 posterior sd of the exact posterior (the test
    # above), so the error is -1/2 reference sd, within that plus 4 Monte Carlo SEs
    se = math.sqrt(1 + 4) / 2 / math.sqrt(4000)
    assert abs(row.mean_error + 0.5) < 0.09 / 2 + 4 * se
    assert abs(row.sd_ratio - 0.5) < 0.05
