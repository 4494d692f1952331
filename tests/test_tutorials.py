"""Tutorials run in smoke mode; failures name the cell; `ppl-vi notebook` on a user's model."""

import json
import textwrap
from pathlib import Path

import nbformat
import pytest

from ppl_vi import notebooks
from ppl_vi.cli import main

ROOT = Path(__file__).resolve().parents[1]
SOURCES = notebooks.tutorial_sources(ROOT / "tutorials")


def outputs(nb):
    for cell in nb.cells:
        yield from cell.get("outputs", [])


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_tutorial_runs_in_smoke_mode(source, tmp_path):
    (path,) = notebooks.build([source], tmp_path)
    (record,) = notebooks.run([path], smoke=True, cwd=ROOT / "tutorials")
    nb = nbformat.read(path, as_version=4)
    assert not [o for o in outputs(nb) if o["output_type"] == "error"]
    assert record.cells == len(nb.cells) > 2


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_committed_notebook_is_the_executed_source(source, tmp_path):
    # The .ipynb next to each source is its full-mode run: same cells, outputs present.
    fresh = nbformat.read(notebooks.build([source], tmp_path)[0], as_version=4)
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in fresh.cells]
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "run `ppl-vi tutorials run`"
    assert any(o.get("data", {}).get("image/png") for o in outputs(committed))
    assert not [o for o in outputs(committed) if o["output_type"] == "error"]


def test_failing_cell_is_named(tmp_path):
    src = tmp_path / "01_broken.py"
    src.write_text(
        "# %% [markdown]\n# # Broken\n\n# %%\nx = 1\n\n# %%\nraise ValueError('bad value')\n"
    )
    (path,) = notebooks.build([src])
    with pytest.raises(notebooks.NotebookError, match=r"01_broken.ipynb: cell 3 .*ValueError: bad"):
        notebooks.run([path], smoke=True)


def test_smoke_switch(monkeypatch):
    monkeypatch.setenv(notebooks.SMOKE_ENV, "1")
    assert notebooks.smoke() and notebooks.steps(3000, 20) == 20
    monkeypatch.setenv(notebooks.SMOKE_ENV, "0")
    assert not notebooks.smoke() and notebooks.steps(3000, 20) == 3000


USER_MODEL = """
import pyro
import pyro.distributions as dist
import torch


def model(x, y=None):
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


def load_data():
    x = torch.linspace(-2, 2, 30)
    y = 1.0 + 0.5 * x + 0.3 * torch.randn(30, generator=torch.Generator().manual_seed(0))
    return {"x": x, "y": y}
"""


def test_notebook_command_on_a_new_users_model(tmp_path, monkeypatch):
    (tmp_path / "my_model.py").write_text(textwrap.dedent(USER_MODEL))
    monkeypatch.chdir(tmp_path)
    assert main(["notebook", "my_model.py", "--out", "report.ipynb", "--smoke"]) == 0
    nb = nbformat.read(tmp_path / "report.ipynb", as_version=4)
    assert not [o for o in outputs(nb) if o["output_type"] == "error"]
    text = json.dumps([o for o in outputs(nb)])
    assert "max_abs_mean_error_sd" in text and "Comparison table" in text
    assert "mean-field + ELBO" in text and "NUTS" in text
    assert "Use " in text  # the recommendation
    assert any(o.get("data", {}).get("image/png") for o in outputs(nb))


def test_committed_notebooks_carry_no_stderr_or_machine_paths():
    """Outputs are what a reader should see: no warnings on stderr, no temporary folders."""
    import json
    import re

    paths = sorted(Path("tutorials").glob("[0-9][0-9]_*.ipynb"))
    assert paths
    machine = re.compile(r"/tmp/|/root/|/home/|/work/|ipykernel_|site-packages")
    for path in paths:
        for i, cell in enumerate(json.loads(path.read_text())["cells"], start=1):
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", "")) + "".join(
                    "".join(v) if isinstance(v, list) else str(v)
                    for k, v in out.get("data", {}).items()
                    if k.startswith("text/")
                )
                assert out.get("name") != "stderr", f"{path.name} cell {i}: stderr {text[:200]}"
                assert not machine.search(text), f"{path.name} cell {i}: {text[:200]}"
