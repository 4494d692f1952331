"""The ppl-vi command line."""

import json
import textwrap

import numpy as np
import pandas as pd
import pytest

import ppl_vi
from ppl_vi.cli import main
from ppl_vi.models import normal_normal


def test_fit_writes_result_files(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["fit", "models.normal_normal", "--steps", "300", "--no-progress", "--out", str(out)]
    )
    assert code == 0
    for name in ("result.pt", "losses.csv", "summary.csv", "loss.png", "run.json"):
        assert (out / name).is_file(), name
    losses = pd.read_csv(out / "losses.csv")
    assert len(losses) == 300 and list(losses.columns) == ["step", "loss"]
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert list(summary.index) == ["mu"]
    run = json.loads((out / "run.json").read_text())
    assert run["num_steps"] == 300 and run["guide"]["name"] == "mean_field"
    loaded = ppl_vi.load(out / "result.pt", normal_normal.model)
    assert loaded.losses.tolist() == losses["loss"].tolist()
    assert "mu" in capsys.readouterr().out


def test_fit_accepts_a_user_model_file(tmp_path):
    source = tmp_path / "coin.py"
    source.write_text(
        textwrap.dedent(
            """
            import pyro
            import pyro.distributions as dist
            import torch

            def model(flips):
                p = pyro.sample("p", dist.Beta(1.0, 1.0))
                with pyro.plate("flips", len(flips)):
                    pyro.sample("obs", dist.Bernoulli(p), obs=flips)

            def load_data():
                return {"flips": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])}
            """
        )
    )
    out = tmp_path / "coin"
    assert main(["fit", str(source), "--steps", "200", "--no-progress", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert 0 < summary.loc["p", "mean"] < 1
    # the same fit with a compiled loss step: same result for the same seed
    again = tmp_path / "coin_jit"
    argv = ["fit", str(source), "--steps", "200", "--no-progress", "--jit", "--out", str(again)]
    assert main(argv) == 0
    assert json.loads((again / "run.json").read_text())["elbo"]["jit"] is True
    compiled = pd.read_csv(again / "losses.csv")["loss"]
    eager = pd.read_csv(out / "losses.csv")["loss"]
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["fit", "nope", "--out", "x"], r"unknown model 'nope'; available models: .*eight_schools"),
        (["fit", "missing.py", "--out", "x"], r"model file 'missing.py' does not exist"),
    ],
)
def test_fit_rejects_unknown_models(argv, match):
    with pytest.raises(SystemExit, match=match):
        main(argv)


def test_bad_option_is_reported_not_raised(tmp_path, capsys):
    code = main(["fit", "normal_normal", "--guide", "nope", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown guide 'nope'; available guides: mean_field, " in capsys.readouterr().err


def test_demo_writes_a_report(tmp_path):
    main(["demo", "--out", str(tmp_path), "--steps", "300", "--warmup", "100", "--draws", "100",
          "--no-progress"])
    report = (tmp_path / "report.md").read_text()
    assert "| tau " in report and "PSIS k-hat" in report
    for method in ("mean-field + ELBO", "IAF + ELBO", "mean-field + IWAE", "full-rank + ELBO"):
        assert f"## {method}" in report
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    for method in ("mean_field_elbo", "iaf_elbo", "mean_field_iwae", "full_rank_elbo"):
        assert (tmp_path / f"compare_{method}.png").stat().st_size > 10_000
