"""compare()'s contract on constructed inputs: flags at their thresholds, the global figures,
the Markdown and the figure's panels, checked against values computed here independently."""

import math
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import ppl_vi
from ppl_vi.compare import components, recommend
from ppl_vi.models import normal_normal as nn_model


def _report(table, **kw):
    base = dict(khat=0.3, elbo=-1.5, elbo_se=0.25, vi_time=2.0, ref_time=10.0,
                ref_label="NUTS", vi_label="mf")  # fmt: skip
    columns = {k: v for k, v in table.items() if k != "index"}
    return ppl_vi.Report(table=pd.DataFrame(columns, index=table["index"]), **{**base, **kw})


def test_components_are_named_as_arviz_names_them_row_major():
    theta = torch.arange(2 * 2 * 3.0).reshape(2, 2, 3)
    out = components({"s": np.array([1.0, 2.0]), "theta": theta})
    assert list(out) == ["s"] + [f"theta[{i},{j}]" for i in range(2) for j in range(3)]
    np.testing.assert_array_equal(out["theta[1,0]"], [3.0, 9.0])
    np.testing.assert_array_equal(out["s"], [1.0, 2.0])


def test_global_figures_read_the_table():
    table = {"index": ["a", "b[0]", "b[1]"], "mean_error": [0.1, -0.4, 0.3],
             "sd_ratio": [1.0, 0.55, 1.7]}  # fmt: skip
    report = _report(table)
    assert report.max_mean_error == 0.4  # |-0.4|: the sign does not hide an error
    # furthest from 1 on the log scale: |log 0.55| = 0.60 > |log 1.7| = 0.53 (not on the
    # linear scale, where 1.7 is further)
    assert report.worst_sd_ratio == ("b[0]", 0.55)
    assert report.speedup == 5.0
    summary = report.summary()
    assert summary["median_sd_ratio"] == 1.0 and summary["worst_sd_ratio"] == 0.55
    assert summary["speedup"] == 5.0 and summary["max_abs_mean_error_sd"] == 0.4
    assert (summary["vi_time_s"], summary["ref_time_s"]) == (2.0, 10.0)
    assert _report(table, vi_time=None).speedup is None
    assert _report(table, ref_time=None).speedup is None


def test_markdown_says_what_it_knows_and_only_that():
    table = {"index": ["a"], "mean_error": [0.123456], "sd_ratio": [0.98765]}
    md = _report(table, flags=["a: something"]).to_markdown(digits=2)
    assert md.startswith("**mf** vs **NUTS**\n")
    assert "- ELBO: -1.50 ± 0.25" in md and "- max |mean error|: 0.123 reference sd" in md
    assert "- VI wall time: 2.0 s" in md and "- NUTS wall time: 10.0 s" in md
    assert "- speed-up (reference time / VI time): 5.0x" in md
    assert "**Warnings**\n\n- a: something" in md
    assert "0.12 " in md and "0.99 " in md and "0.123456" not in md  # rounded to 2 digits
    md = _report(table, vi_time=None, ref_time=None).to_markdown()
    assert "wall time" not in md and "speed-up" not in md and "Warnings" not in md


def test_shown_components_take_scalars_then_the_worst_by_error_and_by_ratio():
    table = {"index": ["b[0]", "b[1]", "b[2]", "b[3]", "tau", "mu"],
             "mean_error": [0.0, -0.9, 0.1, 0.2, 0.0, 0.0],
             "sd_ratio": [1.1, 1.0, 1.0, 0.3, 1.0, 1.0]}  # fmt: skip
    report = _report(table)
    assert report.shown_components(4) == ["tau", "mu", "b[1]", "b[3]"]
    # then, alternating, the next worst by error (b[3], shown) and by ratio (b[0])
    assert report.shown_components(5) == ["tau", "mu", "b[1]", "b[3]", "b[0]"]
    assert report.shown_components(6) == ["tau", "mu", "b[1]", "b[3]", "b[0]", "b[2]"]
    assert report.shown_components(1) == ["tau"]
    assert len(report.shown_components(12)) == 6


def _plotted(khat, khat_se):
    rng = np.random.default_rng(0)
    ref, vi = rng.normal(1.0, 2.0, 4000), rng.normal(1.5, 1.0, 4000)
    table = {"index": ["a"], "mean_error": [0.25], "sd_ratio": [0.5], "ref_mean": [ref.mean()],
             "ref_sd": [ref.std(ddof=1)]}  # fmt: skip
    report = _report(table, khat=khat, khat_se=khat_se, vi_draws={"a": vi}, ref_draws={"a": ref})
    fig = report.plot()
    # panel name -> axes; the forest, loss and k-hat panels are found by their titles below
    by_title = {ax.get_title().split(":")[0]: ax for ax in fig.axes if ":" in ax.get_title()}
    return report, {**by_title, "all": fig.axes}, ref, vi


def test_forest_panel_draws_standardised_90_percent_intervals_and_medians():
    report, axes, ref, vi = _plotted(0.3, 0.05)
    forest = next(ax for ax in axes["all"] if "standardised" in ax.get_title())
    (ref_bar, vi_bar) = (c.get_segments()[0] for c in forest.collections[:2])
    for bar, draws, y in ((ref_bar, ref, 0.15), (vi_bar, vi, -0.15)):
        lo, hi = (np.quantile(draws, [0.05, 0.95]) - ref.mean()) / ref.std(ddof=1)
        np.testing.assert_allclose(bar, [[lo, y], [hi, y]], rtol=1e-12)
    medians = [line.get_xydata()[0] for line in forest.get_lines() if line.get_marker() == "o"]
    z = (np.median(vi) - ref.mean()) / ref.std(ddof=1)
    np.testing.assert_allclose(medians[1], [z, -0.15], rtol=1e-12)


def test_marginal_panel_overlays_both_densities_and_names_the_errors():
    _, axes, _, _ = _plotted(0.3, 0.05)
    panel = axes["a"]
    assert panel.get_title() == "a: err +0.25 sd, sd ratio 0.50"
    assert [line.get_label() for line in panel.get_lines()] == ["NUTS", "mf"]


def test_khat_panel_shows_the_estimate_with_two_standard_errors():
    _, axes, _, _ = _plotted(0.62, 0.05)
    panel = next(ax for ax in axes["all"] if "k-hat" in ax.get_title())
    assert panel.get_title() == "mf: PSIS k-hat 0.62 +- 0.10 (2 se)"
    (container,) = panel.containers
    assert float(container.lines[0].get_ydata()[0]) == pytest.approx(0.62)
    (segment,) = container.lines[2][0].get_segments()
    np.testing.assert_allclose(np.asarray(segment, float), [[0.3, 0.52], [0.3, 0.72]])
    assert panel.get_ylim() == (0.0, 1.2)
    _, axes, _, _ = _plotted(3.0, float("nan"))  # off the scale, no se: drawn at the top
    panel = next(ax for ax in axes["all"] if "k-hat" in ax.get_title())
    assert panel.get_title() == "mf: PSIS k-hat 3.00"
    assert float(panel.containers[0].lines[0].get_ydata()[0]) == pytest.approx(1.15)


def test_recommend_thresholds_are_inclusive_where_documented():
    def one(error, ratios, khat=0.3, khat_se=0.0, seconds=1.0):
        table = {"index": [f"x[{i}]" for i in range(len(ratios))],
                 "mean_error": [error] * len(ratios), "sd_ratio": ratios}  # fmt: skip
        return _report(table, khat=khat, khat_se=khat_se, vi_time=seconds)

    def accepted(report):
        return recommend({"m": report}).startswith("Use m:")

    assert accepted(one(0.2, [0.8, 1.25])) and accepted(one(-0.2, [1.0]))
    assert not accepted(one(0.21, [1.0])) and not accepted(one(-0.21, [1.0]))
    assert not accepted(one(0.1, [0.79, 1.0])) and not accepted(one(0.1, [1.0, 1.26]))
    assert accepted(one(0.1, [1.0], khat=0.69))
    assert not accepted(one(0.1, [1.0], khat=0.7))
    assert not accepted(one(0.1, [1.0], khat=0.6, khat_se=0.05))  # 0.6 + 2 se reaches 0.7
    assert accepted(one(0.1, [1.0], khat=0.6, khat_se=0.04))  # 0.68
    text = recommend({"slow": one(0.1, [1.0], seconds=3.0), "quick": one(0.1, [1.0]),
                      "untimed": one(0.1, [1.0], seconds=None)})  # fmt: skip
    assert text.startswith("Use quick:") and "Also accurate: slow, untimed." in text
    assert "10.0x the reference's speed" in text
    text = recommend({"far": one(0.9, [1.0]), "near": one(0.3, [0.7])})
    assert text.startswith("Use NUTS:") and "The closest, near, is off by up to 0.30 sd" in text
    assert "worst sd ratio 0.70 (x[0])" in text and text.endswith("k-hat 0.30. ")
    flagged = one(0.3, [0.7])
    flagged.flags = ["f1", "f2", "f3", "f4"]
    assert recommend({"near": flagged}).endswith("k-hat 0.30. Its flags: f1; f2; f3.")
    with pytest.raises(ValueError, match="at least one Report"):
        recommend({})


@pytest.fixture(scope="module")
def fit():
    return ppl_vi.fit(nn_model.model, **nn_model.load_data(), num_steps=300, progress=False,
                      seed=0)  # fmt: skip


def _shifted(fit, shift, scale):
    """Reference draws that are the fit's own compare draws, moved by ``shift`` of their sd and
    scaled by ``scale`` about their mean: the mean error is exactly ``-shift / scale`` and the
    sd ratio exactly ``1 / scale``."""
    v = fit._draws(1000, 0)[0]["mu"].double().numpy()
    return {"mu": v.mean() + (v - v.mean()) * scale + shift * v.std(ddof=1)}


@pytest.mark.parametrize(("shift", "flagged"), [(0.49, False), (0.51, True), (-0.51, True)])
def test_mean_errors_beyond_half_a_reference_sd_are_flagged(fit, shift, flagged):
    report = ppl_vi.compare(fit, _shifted(fit, shift, 1.0), num_samples=1000, warn=False)
    assert report.table.loc["mu", "mean_error"] == pytest.approx(-shift, rel=1e-9)
    assert report.table.loc["mu", "sd_ratio"] == pytest.approx(1.0, rel=1e-9)
    assert any(f.startswith("mu: VI mean is") for f in report.flags) == flagged
    if flagged:
        assert f"mu: VI mean is {-shift:+.2f} reference sd off" in report.flags


@pytest.mark.parametrize(("ratio", "flagged"), [(0.91, False), (0.89, True)])
def test_sd_ratios_below_0_9_are_flagged_as_under_dispersion(fit, ratio, flagged):
    report = ppl_vi.compare(fit, _shifted(fit, 0.0, 1 / ratio), num_samples=1000, warn=False)
    assert report.table.loc["mu", "sd_ratio"] == pytest.approx(ratio, rel=1e-9)
    assert any("under-dispersed" in f for f in report.flags) == flagged


def test_the_bound_the_times_and_the_label_come_from_the_fit(fit):
    ref = _shifted(fit, 0.0, 1.0)
    label = r"mean_field \+ elbo vs reference draws"
    with pytest.warns(UserWarning, match=label + ": mu: VI mean is -2.00 reference sd off"):
        report = ppl_vi.compare(fit, _shifted(fit, 2.0, 1.0), num_samples=1000)
    report = ppl_vi.compare(fit, ref, num_samples=1000, warn=False)
    lw = fit.importance().log_weights
    assert report.elbo == pytest.approx(float(lw.mean()), rel=1e-12)
    assert report.elbo_se == pytest.approx(float(lw.std(ddof=1)) / math.sqrt(len(lw)), rel=1e-9)
    assert report.khat == fit.importance().khat and report.vi_time == fit.wall_time
    assert report.ref_time is None and report.ref_label == "reference draws"
    np.testing.assert_array_equal(report.losses, fit.losses)
    # independent reference draws: the mean's Monte Carlo SE is 1/sqrt(S) reference sds
    assert report.table.loc["mu", "ref_mcse"] == pytest.approx(1 / math.sqrt(1000))
    assert ppl_vi.compare(fit, ref, num_samples=1000, vi_label="x", warn=False).vi_label == "x"


def test_the_method_labels_describe_their_settings():
    from ppl_vi.compare import FAST_METHOD, STANDARD_METHODS

    names = {"mean-field": "mean_field", "full-rank": "full_rank", "IAF": "iaf"}
    for label, (guide, elbo, options, resample) in STANDARD_METHODS.items():
        assert guide == names[label.split(" + ")[0]] and elbo.upper() in label
        particles = re.search(r"K=(\d+)", label)
        assert options.get("num_particles") == (int(particles[1]) if particles else None)
        assert ("DReG" in label) == (options.get("gradient") == "dreg")
        assert label.endswith("PSIS-resampled") == resample
    label, settings, steps = FAST_METHOD
    assert settings["guide"] == names[label.split(" + ")[0]] and settings["elbo"] == "elbo"
    assert settings["num_particles"] == int(re.search(r"K=(\d+)", label)[1])
    assert settings["lr"] == float(re.search(r"lr ([\d.]+)", label)[1])
    assert steps == int(re.search(r"(\d+) steps", label)[1]) and settings["jit"] == "auto"


def test_a_collapsed_component_is_the_worst_sd_ratio_without_a_log_of_zero_warning():
    table = {"index": ["x[0]", "x[1]", "x[2]"], "mean_error": [0.05, 0.1, 0.0],
             "sd_ratio": [1.2, 0.0, 0.5]}  # fmt: skip
    report = _report(table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log(0) would warn: the ratio is clipped first
        assert report.worst_sd_ratio == ("x[1]", 0.0)
        assert report.shown_components(3) == ["x[1]", "x[0]", "x[2]"]


def test_documented_defaults_of_the_markdown_and_the_figure():
    names = [f"x[{i}]" for i in range(15)]
    table = {"index": names, "mean_error": [0.01 * i for i in range(15)],
             "sd_ratio": [1.0 + 0.123456 * (i % 2) for i in range(15)]}  # fmt: skip
    report = _report(table)
    md = report.to_markdown()
    assert "1.123 " in md and "1.1235" not in md  # three digits by default
    assert len(report.shown_components()) == 12
    rng = np.random.default_rng(1)
    draws = {n: rng.normal(size=200) for n in names}
    report = _report(
        {**table, "ref_mean": [0.0] * 15, "ref_sd": [1.0] * 15}, vi_draws=draws, ref_draws=draws
    )
    fig = report.plot()
    assert "(showing 12 of 15 components" in fig._suptitle.get_text()


def test_figure_layout_four_marginals_per_row_above_the_three_summary_panels():
    names = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(2)
    draws = {n: rng.normal(size=300) for n in names}
    table = {"index": names, "mean_error": [0.0] * 5, "sd_ratio": [1.0] * 5,
             "ref_mean": [0.0] * 5, "ref_sd": [1.0] * 5}  # fmt: skip
    fig = _report(table, vi_draws=draws, ref_draws=draws).plot()
    # two rows of marginals (13 in wide, 2.4 in per row) and two rows for the summary panels
    np.testing.assert_allclose(fig.get_size_inches(), [13.0, 2 * 2.4 + 4.6])
    assert fig._suptitle.get_text() == "mf vs NUTS" and fig._suptitle.get_fontsize() == 10
    spans = {}
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        assert spec.get_gridspec().get_geometry() == (4, 4)
        spans[ax.get_title()] = (tuple(spec.rowspan), tuple(spec.colspan))

    def span(start):
        (found,) = (v for k, v in spans.items() if k.startswith(start))
        return found

    assert span("a:") == ((0,), (0,)) and span("d:") == ((0,), (3,)) and span("e:") == ((1,), (0,))
    assert span("mf vs NUTS: standardised") == ((2, 3), (0, 1))
    forest = next(ax for ax in fig.axes if "standardised" in ax.get_title())
    labels = [t.get_text() for t in forest.get_yticklabels()]
    rows = dict(zip(forest.get_yticks(), labels, strict=True))
    assert [rows[y] for y in sorted(rows, reverse=True)] == names  # read top to bottom
    assert span("mf: loss") == ((2, 3), (2,)) and span("mf: PSIS k-hat") == ((2, 3), (3,))
    # only the first marginal carries the legend
    legends = [ax.get_title().split(":")[0] for ax in fig.axes[:5] if ax.get_legend()]
    assert legends == ["a"]


def test_a_posteriordb_reference_is_named_by_its_posterior(fit):
    posterior = SimpleNamespace(reference=_shifted(fit, 0.0, 1.0), posterior_name="nn-nn")
    report = ppl_vi.compare(fit, posterior, num_samples=1000, warn=False)
    assert report.ref_label == "posteriordb nn-nn" and report.ref_time is None
    assert report.table.loc["mu", "mean_error"] == pytest.approx(0.0, abs=1e-9)


def _nuts_reference(fit, rhat, divergent=0, chains=2):
    """A NUTSResult with the fit's draws as chains and a given R-hat table."""
    from ppl_vi.nuts import NUTSResult

    draws = torch.as_tensor(_shifted(fit, 0.0, 1.0)["mu"]).reshape(chains, -1)
    diverging = np.zeros(draws.shape, dtype=bool)
    diverging[0, :divergent] = True
    ref = NUTSResult(None, (), {}, fit.info, {"mu": draws}, diverging, np.ones(draws.shape),
                     np.ones(chains), 1.0, {"num_chains": chains})  # fmt: skip
    ref.rhat = lambda: rhat
    return ref


@pytest.mark.parametrize(
    ("rhat", "flag"),
    [
        ({"mu": 1.009}, None),
        ({"mu": 1.01}, None),  # at the threshold: not above it
        ({"mu": 1.011, "nu": float("nan")}, "R-hat up to 1.011 (> 1.01, on mu)"),
        ({"mu": 1.5, "nu": 1.2}, "R-hat up to 1.500 (> 1.01, on mu)"),
    ],
)
def test_a_nuts_reference_with_r_hat_above_1_01_is_flagged(fit, rhat, flag):
    report = ppl_vi.compare(fit, _nuts_reference(fit, rhat), num_samples=1000, warn=False)
    flags = [f for f in report.flags if "R-hat" in f]
    assert flags == ([] if flag is None else [next(f for f in flags if flag in f)])
    assert not any("divergent" in f or "one chain" in f for f in report.flags)
    report = ppl_vi.compare(fit, _nuts_reference(fit, {}, 2, 1), num_samples=1000, warn=False)
    assert any("has 2 divergent transitions" in f for f in report.flags)
    assert any("has one chain" in f for f in report.flags)


def test_figure_marks_and_sizes(tmp_path):
    """The reference marks (the zero line, the k-hat bands of Yao et al. and their labels) and
    the figure's type sizes: suptitle 10, panel titles 8, ticks 7, legends 6 pt; a 110 dpi PNG."""
    report, axes, _, _ = _plotted(0.3, 0.05)
    marginal = axes["a"]
    forest = next(ax for ax in axes["all"] if "standardised" in ax.get_title())
    loss = next(ax for ax in axes["all"] if "loss" in ax.get_title())
    khat = next(ax for ax in axes["all"] if "k-hat" in ax.get_title())
    for ax in (marginal, forest, loss, khat):
        assert ax.title.get_fontsize() == 8
    assert marginal.xaxis.get_major_ticks()[0].label1.get_fontsize() == 7
    assert {t.get_fontsize() for t in forest.get_yticklabels()} == {7}
    for ax in (marginal, forest):
        assert {t.get_fontsize() for t in ax.get_legend().get_texts()} == {6}
    densities = marginal.get_lines()
    assert [(len(d.get_xdata()), d.get_linewidth()) for d in densities] == [(200, 1.4)] * 2
    (zero,) = [line for line in forest.get_lines() if line.get_marker() != "o"]
    assert list(zero.get_xdata()) == [0, 0] and zero.get_linewidth() == 0.8
    assert {c.get_linewidth()[0] for c in forest.collections} == {2.0}
    assert {m.get_markersize() for m in forest.get_lines() if m.get_marker() == "o"} == {4}
    bands = sorted((p.get_y(), p.get_y() + p.get_height()) for p in khat.patches)
    np.testing.assert_allclose(bands, [(0.0, 0.5), (0.5, 0.7), (0.7, 1.2)])
    labels = {t.get_text(): (t.get_position(), t.get_fontsize()) for t in khat.texts}
    assert labels == {"good": ((0.98, 0.25), 7), "usable with care": ((0.98, 0.6), 7),
                      "do not trust": ((0.98, 0.95), 7)}  # fmt: skip
    (caps,) = khat.containers[0].lines[1][:1]
    assert caps.get_markersize() == 2 * 4  # capsize 4 pt
    assert khat.get_xlim() == (0.0, 1.0) and list(khat.get_xticks()) == []
    report.plot(tmp_path / "r.png")
    import matplotlib.image

    height, width = matplotlib.image.imread(tmp_path / "r.png").shape[:2]
    assert (width, height) == (13 * 110, round((2.4 + 4.6) * 110))


def test_marginal_densities_need_finite_draws_that_vary():
    rng = np.random.default_rng(3)
    ref = rng.normal(0.0, 1.0, 500)
    table = {"index": ["a"], "mean_error": [0.0], "sd_ratio": [0.5], "ref_mean": [0.0],
             "ref_sd": [1.0]}  # fmt: skip
    for vi, shown in (
        (rng.normal(0.0, 0.5, 500), ["NUTS", "mf"]),  # sd 0.5: drawn
        (np.zeros(500), ["NUTS"]),  # collapsed: no density (gaussian_kde would fail)
        (np.r_[rng.normal(size=499), np.inf], ["NUTS"]),
    ):
        fig = _report(table, vi_draws={"a": vi}, ref_draws={"a": ref}).plot()
        panel = next(ax for ax in fig.axes if ax.get_title().startswith("a:"))
        assert [line.get_label() for line in panel.get_lines()] == shown


def test_a_reference_without_spread_compares_on_the_raw_scale(fit):
    report = ppl_vi.compare(fit, {"mu": np.full(1000, 0.5)}, num_samples=1000, warn=False)
    v = report.vi_draws["mu"]
    row = report.table.loc["mu"]
    assert row.ref_sd == 0.0 and row.mean_error == pytest.approx(v.mean() - 0.5, rel=1e-12)
    assert row.sd_ratio == pytest.approx(np.std(v, ddof=1), rel=1e-12)
    assert row.vi_sd == np.std(v, ddof=1)


def test_compare_defaults_to_4000_draws_and_warns_at_the_callers_line(fit):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = ppl_vi.compare(fit, _shifted(fit, 2.0, 1.0))
    assert len(report.vi_draws["mu"]) == 4000
    (warning,) = [w for w in caught if "reference sd off" in str(w.message)]
    assert warning.filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # flags, but warn=False: no warning
        report = ppl_vi.compare(fit, _shifted(fit, 2.0, 1.0), num_samples=1000, warn=False)
    assert report.flags


@pytest.mark.parametrize(
    ("khat", "se", "flagged"),
    [(0.4, 0.04, False), (0.4, 0.06, True), (0.49, float("nan"), False), (0.5, 0.0, True)],
)
def test_the_khat_flag_needs_the_upper_end_of_its_interval_below_0_5(
    fit, monkeypatch, khat, se, flagged
):
    real = fit.importance()
    fake = SimpleNamespace(khat=khat, khat_se=se, log_weights=real.log_weights)
    monkeypatch.setattr(fit, "importance", lambda: fake)
    report = ppl_vi.compare(fit, _shifted(fit, 0.0, 1.0), num_samples=1000, warn=False)
    assert any("k-hat" in f for f in report.flags) == flagged


def test_an_object_that_is_not_a_posterior_is_refused(fit):
    with pytest.raises(TypeError, match="reference must be a NUTSResult"):
        ppl_vi.compare(fit, SimpleNamespace(posterior_name="x"), num_samples=100)


def test_a_one_chain_reference_reads_its_mean_error_from_arviz_bulk_ess(fit):
    import arviz as az

    ref = _nuts_reference(fit, {}, chains=1)
    trend = np.sort(ref.chains["mu"].numpy(), axis=1)  # the most autocorrelated chain
    ref.chains["mu"] = torch.as_tensor(trend)
    report = ppl_vi.compare(fit, ref, num_samples=1000, warn=False)
    ess = float(az.ess(trend, method="bulk"))
    assert ess < 2.0  # an ESS this low is kept as it is
    assert report.table.loc["mu", "ref_mcse"] == pytest.approx(1 / math.sqrt(ess), rel=1e-12)


def test_a_mean_error_of_exactly_half_a_reference_sd_is_not_flagged(fit, monkeypatch):
    draws = {"mu": torch.full((3,), 0.5, dtype=torch.float64)}
    monkeypatch.setattr(fit, "_draws", lambda n, seed: (draws,))
    reference = {"mu": np.array([-1.0, 0.0, 1.0])}  # mean 0 and sd 1, both exact
    report = ppl_vi.compare(fit, reference, num_samples=3, warn=False)
    assert report.table.loc["mu", "mean_error"] == 0.5
    assert not any("VI mean is" in f for f in report.flags)
    reference = {"mu": np.array([-1.0, 0.0, 1.0]) - 2**-40}
    report = ppl_vi.compare(fit, reference, num_samples=3, warn=False)
    assert report.table.loc["mu", "mean_error"] > 0.5
    assert any("VI mean is +0.50" in f for f in report.flags)
