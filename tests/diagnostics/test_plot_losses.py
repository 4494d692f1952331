"""plot_losses draws what it says: the losses per step, their running mean, a robust y range."""

import matplotlib.image
import numpy as np
import pytest

from ppl_vi.diagnostics import plot_losses


def _lines(fig):
    (ax,) = fig.axes
    return ax, ax.get_lines()


def test_the_running_mean_is_the_mean_of_the_last_window_steps():
    rng = np.random.default_rng(0)
    losses = 100.0 / np.arange(1, 401) + rng.normal(size=400)
    ax, (raw, smooth) = _lines(plot_losses(losses))
    np.testing.assert_array_equal(raw.get_xdata(), np.arange(1, 401))
    np.testing.assert_array_equal(raw.get_ydata(), losses)
    window = 20  # 400 steps // 20
    assert smooth.get_label() == f"mean of {window} steps"
    np.testing.assert_array_equal(smooth.get_xdata(), np.arange(window, 401))
    by_hand = [losses[i - window : i].mean() for i in range(window, 401)]
    np.testing.assert_allclose(smooth.get_ydata(), by_hand, rtol=1e-12)
    assert ax.get_xlabel() == "step" and "ELBO" in ax.get_ylabel()


@pytest.mark.parametrize(("steps", "window"), [(39, None), (40, 2), (2000, 100), (5000, 100)])
def test_the_window_is_a_twentieth_of_the_run_from_2_to_100_steps(steps, window):
    _, lines = _lines(plot_losses(np.linspace(5.0, 1.0, steps)))
    if window is None:  # fewer than 40 steps: a window of 1 step would repeat the losses
        assert len(lines) == 1
    else:
        assert lines[1].get_label() == f"mean of {window} steps"
        assert len(lines[1].get_ydata()) == steps - window + 1


def test_the_y_range_skips_the_first_percent_and_pads_by_five_percent():
    losses = np.concatenate([[1e6], np.linspace(10.0, 0.0, 999)])  # one huge first loss
    ax, _ = _lines(plot_losses(losses))
    lo, hi = np.percentile(losses, [1, 99])
    assert hi < 1e3  # the outlier is outside the 99th percentile
    assert ax.get_ylim() == pytest.approx((lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)))


def test_constant_losses_get_a_unit_wide_pad_and_no_losses_draw_an_empty_plot():
    ax, _ = _lines(plot_losses([3.0] * 50))
    assert ax.get_ylim() == pytest.approx((2.95, 3.05))
    ax, lines = _lines(plot_losses([]))
    assert len(lines[0].get_xdata()) == 0 and len(lines) == 1


def test_the_figure_is_saved_to_the_path(tmp_path):
    path = tmp_path / "loss.png"
    plot_losses(np.arange(100.0), path=path, title="run 7")
    assert matplotlib.image.imread(path).ndim == 3
    assert plot_losses([1.0, 2.0]).axes[0].get_title() == "Training loss"


def test_the_comparison_figure_draws_the_same_loss_panel():
    import pandas as pd

    import ppl_vi

    rng = np.random.default_rng(1)
    losses = 50.0 / np.arange(1, 201) + rng.normal(size=200)
    draws = {"a": rng.normal(size=300)}
    table = pd.DataFrame({"mean_error": [0.1], "sd_ratio": [0.9], "ref_mean": [0.0],
                          "ref_sd": [1.0]}, index=["a"])  # fmt: skip
    report = ppl_vi.Report(table=table, khat=0.3, elbo=0.0, elbo_se=0.0, vi_time=1.0,
                           ref_time=2.0, ref_label="NUTS", vi_label="mf", losses=losses,
                           vi_draws=draws, ref_draws=draws)  # fmt: skip
    panel = next(ax for ax in report.plot().axes if "loss" in ax.get_title())
    alone = plot_losses(losses).axes[0]
    for a, b in zip(panel.get_lines(), alone.get_lines(), strict=True):
        np.testing.assert_array_equal(a.get_xydata(), b.get_xydata())
    assert panel.get_ylim() == alone.get_ylim()
