"""The ppl-vi command line."""

import json
import sys
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
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "normal_normal", "--guide", "nope", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "invalid choice: 'nope' (choose from 'mean_field', " in capsys.readouterr().err
    code = main(["fit", "normal_normal", "--steps", "0", "--out", str(tmp_path)])
    assert code == 2
    assert "num_steps must be an integer >= 1" in capsys.readouterr().err


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


def test_fit_checks_the_output_folder_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(
        [
            "fit",
            "models.normal_normal",
            "--steps",
            "50",
            "--no-progress",
            "--out",
            str(blocker / "run"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write the --out folder's result file" in err and "fit" not in err.split(":")[0]


def test_fit_with_numpy_scalar_data_writes_a_result_that_loads(tmp_path):
    source = tmp_path / "noisy.py"
    source.write_text(
        textwrap.dedent(
            """
            import numpy as np
            import pyro
            import pyro.distributions as dist

            def model(x, noise):
                mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
                with pyro.plate("data", len(x)):
                    pyro.sample("x", dist.Normal(mu, noise), obs=x)

            def load_data():
                x = np.random.default_rng(0).normal(1.0, 2.0, size=30)
                return {"x": x, "noise": np.std(x)}
            """
        )
    )
    out = tmp_path / "noisy"
    assert main(["fit", str(source), "--steps", "100", "--no-progress", "--out", str(out)]) == 0
    module = {}
    exec(source.read_text(), module)  # noqa: S102 - the user's model file
    loaded = ppl_vi.load(out / "result.pt", module["model"])
    assert isinstance(loaded.model_kwargs["noise"], float)


def test_fit_failure_writes_the_partial_fit(tmp_path, capsys):
    source = tmp_path / "late.py"
    source.write_text(
        textwrap.dedent(
            """
            import pyro
            import pyro.distributions as dist
            import torch

            CALLS = [0]

            def model(x):
                CALLS[0] += 1
                mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
                scale = torch.tensor(float("nan")) if CALLS[0] > 60 else torch.tensor(1.0)
                with pyro.plate("data", len(x)):
                    pyro.sample("x", dist.Normal(mu, scale), obs=x)

            def load_data():
                return {"x": torch.zeros(5)}
            """
        )
    )
    out = tmp_path / "late"
    assert main(["fit", str(source), "--steps", "200", "--no-progress", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "wrote the fit up to step" in err
    losses = pd.read_csv(out / "losses.csv")
    assert 40 < len(losses) < 60


def test_help_lists_every_option_with_its_default_and_choices(capsys):
    import re

    from ppl_vi.cli import ELBO_NAMES, GUIDE_NAMES, METHOD_NAMES
    from ppl_vi.elbos import ELBOS
    from ppl_vi.guides import GUIDES

    assert GUIDE_NAMES == (*GUIDES, *METHOD_NAMES) and ELBO_NAMES == tuple(ELBOS)
    for command in (["fit"], ["demo"], ["notebook"], ["tutorials", "run"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        options = re.findall(r"^  (--[\w-]+)", text, flags=re.M)
        assert options, text
        blocks = re.split(r"\n  (?=-)", text.split("options:")[1])[1:]
        for block in blocks:
            if block.startswith(("-h", "--help")):
                continue
            flag = block.split()[0]
            takes_value = bool(re.match(r"--[\w-]+ [A-Z_{]", block))
            assert not takes_value or "(default:" in block, f"{command} {flag}: {block}"
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "{mean_field,full_rank,low_rank,iaf,hvm,amortized,diffusion,gaussian_mixture," in text
    assert "executed as Python code" in text.replace("\n", " ").replace("  ", " ")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("ppl-vi ")


def test_fit_options_reach_fit(tmp_path, monkeypatch):
    seen = {}
    real = __import__("ppl_vi.fit", fromlist=["fit"]).fit

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sys.modules["ppl_vi.fit"], "fit", spy)
    out = tmp_path / "a"
    argv = ["fit", "models.normal_normal", "--steps", "50", "--no-progress", "--out", str(out)]
    assert main([*argv, "--polish-particles", "4", "--khat-draws", "0"]) == 0
    assert seen["polish"].num_particles == 4 and seen["num_steps"] == 50
    assert main([*argv, "--no-polish", "--khat-draws", "0"]) == 0
    assert seen["polish"] is None and seen["kl_anneal"] is None
    assert main([*argv, "--kl-anneal", "20", "--khat-draws", "0"]) == 0
    assert seen["kl_anneal"] == 20


def test_fit_writes_elbo_and_khat_to_run_json(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fit", "models.normal_normal", "--steps", "300", "--no-progress", "--out", str(out)]
    assert main([*argv, "--khat-draws", "4000"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["khat_draws"] == 4000 and run["khat"] < 0.7 and run["elbo_estimate"] < 0
    assert "; PSIS k-hat" in capsys.readouterr().out
    loaded = ppl_vi.load(out / "result.pt", normal_normal.model)
    assert run["khat"] == pytest.approx(loaded.psis_khat(4000))


def test_ctrl_c_exits_130_and_keeps_the_fit(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "long"
    cmd = [
        sys.executable,
        "-m",
        "ppl_vi.cli",
        "fit",
        "models.normal_normal",
        "--steps",
        "1000000",
        "--khat-draws",
        "0",
        "--out",
        str(out),
    ]
    # the child takes Ctrl-C even when this run ignores SIGINT (started in the background)
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    deadline = time.time() + 120
    while "loss" not in seen and time.time() < deadline and proc.poll() is None:
        seen += proc.stderr.read(40)  # the bar shows the running loss from step 50 on
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert (out / "result.pt").is_file() and (out / "losses.csv").is_file()
    loaded = ppl_vi.load(out / "result.pt", normal_normal.model)
    assert loaded.interrupted and 50 <= loaded.num_steps < 1000000
    del os


def test_fit_with_a_gaussian_method_writes_its_diagnostics(tmp_path, capsys):
    out = tmp_path / "pf"
    assert main(["fit", "normal_normal", "--guide", "pathfinder", "--no-progress",
                 "--khat-draws", "2000", "--out", str(out)]) == 0  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["method_info"]["method"] == "pathfinder"
    assert run["method_info"]["num_grads"] > 0
    # the posterior is Gaussian and Pathfinder's Gaussian is exact: equal weights, k-hat -inf
    assert run["khat_verdict"].endswith("can be trusted")
    assert "pathfinder, 4 path(s)" in capsys.readouterr().out
    # an SGD option set on the command line is refused, naming it
    code = main(["fit", "normal_normal", "--guide", "pathfinder", "--lr", "0.1", "--no-progress",
                 "--out", str(tmp_path / "x")])  # fmt: skip
    assert code != 0 and "lr does not apply" in capsys.readouterr().err


def test_fit_nproc_launches_a_data_parallel_fit_with_torchrun(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fit", "logistic_regression", "--subsample-size", "64", "--steps", "60",
            "--no-progress", "--khat-draws", "0", "--nproc", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "--nproc-per-node=2" in err and "--nproc " not in err.split("launching")[1]
    run = json.loads((out / "run.json").read_text())
    assert run["num_steps"] == 60
    assert run["method_info"]["data_parallel"] == {
        "world_size": 2, "backend": "gloo", "global_batch": {"data": 64}}  # fmt: skip
    assert len(pd.read_csv(out / "losses.csv")) == 60


def test_fit_nproc_refuses_one_process_and_distributed_needs_torchrun(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["fit", "logistic_regression", "--nproc", "1", "--out", out]) == 2
    assert "--nproc must be >= 2" in capsys.readouterr().err
    assert main(["fit", "logistic_regression", "--distributed", "--out", out]) == 2
    assert "runs under torchrun" in capsys.readouterr().err
