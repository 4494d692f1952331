"""Tutorial notebooks: build them from py:percent sources, execute them, report failures.

The tutorials live in ``tutorials/`` as ``NN_topic.py`` files in jupytext's py:percent format
(``# %%`` code cells, ``# %% [markdown]`` prose cells). :func:`build` converts them to
``.ipynb`` with jupytext; :func:`run` executes notebooks in a fresh kernel with nbclient and
stores the outputs (figures included) in them. In *smoke mode* (environment variable
``PPL_VI_SMOKE=1``, set by ``run(..., smoke=True)``) a notebook reads :func:`smoke` and
shrinks its step counts so that it runs in seconds; the test suite runs every tutorial that
way. A cell that fails raises :class:`NotebookError` naming the notebook, the cell and the
error.

Command line: ``ppl-vi tutorials build``, ``ppl-vi tutorials run [--smoke]``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SMOKE_ENV",
    "NotebookError",
    "build",
    "model_report",
    "run",
    "smoke",
    "steps",
    "tutorial_sources",
]

#: Environment variable that switches notebooks to smoke mode.
SMOKE_ENV = "PPL_VI_SMOKE"


def smoke() -> bool:
    """Whether notebooks run in smoke mode (``PPL_VI_SMOKE`` set to a true value)."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def steps(full: int, quick: int = 20) -> int:
    """``full`` normally, ``quick`` in smoke mode: the one knob notebooks use for their sizes."""
    return quick if smoke() else full


class NotebookError(RuntimeError):
    """A notebook cell failed; the message names the notebook, the cell and the error."""


@dataclass
class RunRecord:
    path: Path
    seconds: float
    cells: int


def tutorial_sources(folder: str | os.PathLike = "tutorials") -> list[Path]:
    """The py:percent tutorial sources ``NN_*.py`` in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"tutorial folder {str(folder)!r} does not exist; run from the repository root or "
            "pass the folder"
        )
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py"))


def build(sources, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Convert py:percent sources to ``.ipynb`` (next to them, or in ``out_dir``).

    Outputs already stored in an existing notebook are dropped: a built notebook is
    unexecuted until :func:`run` fills it.
    """
    import jupytext

    written = []
    for src in map(Path, sources):
        nb = jupytext.read(src, fmt="py:percent")
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
        target = (Path(out_dir) if out_dir else src.parent) / (src.stem + ".ipynb")
        target.parent.mkdir(parents=True, exist_ok=True)
        jupytext.write(nb, target, fmt="ipynb")
        written.append(target)
    return written


def run(
    notebooks,
    smoke: bool = False,
    timeout: int = 1800,
    kernel_name: str = "python3",
    cwd: str | os.PathLike | None = None,
    write: bool = True,
    progress: bool = False,
) -> list[RunRecord]:
    """Execute notebooks in fresh kernels and store their outputs.

    Parameters
    ----------
    notebooks : iterable of paths
        ``.ipynb`` files (build them first).
    smoke : bool, default False
        Run with ``PPL_VI_SMOKE=1`` (seconds per notebook).
    timeout : int, default 1800
        Seconds allowed per cell.
    cwd : path, optional
        Working directory of the kernels (default: each notebook's folder).
    write : bool, default True
        Save the executed notebook over the input (figures included).
    progress : bool, default False
        Show a bar per notebook that advances as its code cells finish, labelled with the
        notebook and the cell that runs (a report notebook spends minutes in NUTS).

    Raises
    ------
    NotebookError
        On the first failing cell: notebook, cell number (1-based, code and prose cells
        counted), the cell's first line, the exception type and message.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    records = []
    previous = os.environ.get(SMOKE_ENV)
    os.environ[SMOKE_ENV] = "1" if smoke else "0"
    try:
        for path in map(Path, notebooks):
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(
                nb,
                timeout=timeout,
                kernel_name=kernel_name,
                resources={"metadata": {"path": str(cwd or path.parent)}},
            )
            bar = _cell_bar(client, nb, path.name) if progress else None
            start = time.perf_counter()
            try:
                client.execute()
            except CellExecutionError as err:
                index, cell = _failing_cell(nb)
                first = cell.source.strip().splitlines()[0] if cell and cell.source else ""
                raise NotebookError(
                    f"{path.name}: cell {index} ({first!r}) failed: {err.ename}: {err.evalue}"
                ) from None
            finally:
                if bar is not None:
                    bar.close()
            records.append(RunRecord(path, time.perf_counter() - start, len(nb.cells)))
            if write:
                nbformat.write(nb, path)
    finally:
        if previous is None:
            os.environ.pop(SMOKE_ENV, None)
        else:
            os.environ[SMOKE_ENV] = previous
    return records


def _cell_bar(client, nb, label: str):
    """A tqdm bar over the code cells, advanced by nbclient's cell hooks."""
    from tqdm import tqdm

    code = sum(1 for c in nb.cells if c.cell_type == "code")
    bar = tqdm(total=code, desc=label, unit="cell", dynamic_ncols=True)

    def start(cell, cell_index):
        if cell.cell_type == "code":
            first = (cell.source.strip().splitlines() or [""])[0]
            bar.set_postfix_str(first[:40], refresh=True)

    def done(cell, cell_index):
        bar.update()

    client.on_cell_start = start
    client.on_cell_complete = done
    return bar


def _failing_cell(nb):
    for i, cell in enumerate(nb.cells, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, cell
    return None, None


# ------------------------------------------------------------------ reports for user models
def _report_cells(model_spec: str, num_steps: int, num_warmup: int, num_samples: int):
    import nbformat.v4 as v4

    md, code = v4.new_markdown_cell, v4.new_code_cell
    name = Path(model_spec.partition(":")[0]).name
    return [
        md(
            f"# Model report: `{name}`\n\n"
            "Generated and executed by `ppl-vi notebook`. The model is fitted with several "
            "variational methods and with NUTS; each VI answer is compared with NUTS parameter "
            "by parameter (means in NUTS posterior sds, sd ratios, Wasserstein-1 distances), "
            "checked with PSIS k-hat (Yao et al., 2018: below 0.5 good, above 0.7 do not "
            "trust), and the notebook ends with a recommendation computed from these numbers."
        ),
        code(
            "import io\nimport warnings\n\n"
            "warnings.filterwarnings('ignore', message='IProgress not found')\n"
            "import pandas as pd\nimport torch\nfrom IPython.display import Image, Markdown, "
            "display\n\n"
            "import ppl_vi\nfrom ppl_vi.cli import load_model\n"
            "from ppl_vi.compare import STANDARD_METHODS, recommend\n"
            "from ppl_vi.notebooks import steps\n\n"
            "torch.set_num_threads(1)\n"
            f"model, data = load_model({model_spec!r})\n"
            f"NUM_STEPS = steps({num_steps}, 30)\n"
            f"NUM_WARMUP, NUM_SAMPLES = steps({num_warmup}, 30), steps({num_samples}, 30)\n"
            "print(f'data: {sorted(data)}; VI steps: {NUM_STEPS}; NUTS: {NUM_WARMUP} + "
            "{NUM_SAMPLES}')"
        ),
        md("## Fits\n\nEach method runs `ppl_vi.fit` with the same number of steps and seed."),
        code(
            "fits = {}\n"
            "for label, (guide, elbo, elbo_kwargs, _) in STANDARD_METHODS.items():\n"
            "    fits[label] = ppl_vi.fit(model, **data, guide=guide, elbo=elbo,\n"
            "                             elbo_kwargs=elbo_kwargs, num_steps=NUM_STEPS,\n"
            "                             progress=False, seed=0)\n"
            "    print(f'{label}: {fits[label].num_steps} steps in "
            "{fits[label].wall_time:.1f} s')"
        ),
        md(
            "## NUTS baseline\n\nPyro's NUTS, two chains (so that R-hat can check the "
            "reference itself); its draws are the reference below."
        ),
        code(
            "nuts = ppl_vi.run_nuts(model, **data, num_warmup=NUM_WARMUP, num_chains=2,\n"
            "                      num_samples=NUM_SAMPLES, progress=False, seed=0)\n"
            "print(nuts)\nnuts.summary()"
        ),
        md(
            "## Comparison\n\nOne row per method: the largest |mean error| in NUTS sds, the "
            "median and the worst sd ratio (VI / NUTS), PSIS k-hat with its Monte Carlo "
            "error, ELBO and wall times. The recommendation requires every component to pass."
        ),
        code(
            "reports = {}\n"
            "with warnings.catch_warnings():\n"
            "    warnings.simplefilter('ignore', UserWarning)\n"
            "    for label, (_, _, _, resample) in STANDARD_METHODS.items():\n"
            "        reports[label] = ppl_vi.compare(fits[label], nuts, vi_label=label,\n"
            "                                        resample=resample, warn=False)\n"
            "table = pd.DataFrame({label: r.summary() for label, r in reports.items()}).T\n"
            "table = table.drop(columns=['vi', 'reference', 'flags'])\n"
            "display(Markdown('**Comparison table**'))\ntable"
        ),
        md("## Marginals, forest plot, loss and k-hat of each method"),
        code(
            "for label, report in reports.items():\n"
            "    display(Markdown(f'### {label}'))\n"
            "    display(Markdown(report.to_markdown()))\n"
            "    buf = io.BytesIO()\n"
            "    report.plot().savefig(buf, format='png', dpi=90)\n"
            "    display(Image(buf.getvalue()))"
        ),
        md("## Recommendation"),
        code("display(Markdown(recommend(reports)))"),
    ]


def model_report(
    model_spec: str,
    out: str | os.PathLike,
    num_steps: int = 3000,
    num_warmup: int = 500,
    num_samples: int = 1000,
    smoke: bool = False,
    execute: bool = True,
) -> Path:
    """Write (and execute) a report notebook for a user's model file.

    Parameters
    ----------
    model_spec : str
        ``path/to/model.py`` (or ``path/to/model.py:function``) defining the model and
        ``load_data()``, or a zoo model name.
    out : path
        The ``.ipynb`` to write.
    num_steps, num_warmup, num_samples : int
        VI steps per method; NUTS warm-up and draws.
    smoke : bool, default False
        Execute in smoke mode (tiny sizes; for tests).
    execute : bool, default True
        Run the notebook after writing it (outputs stored in it).
    """
    import nbformat
    import nbformat.v4 as v4

    path, _, func = model_spec.partition(":")
    if path.endswith(".py"):
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise FileNotFoundError(f"model file {path!r} does not exist")
        model_spec = f"{file}:{func}" if func else str(file)
    out = Path(out)
    if out.suffix != ".ipynb":
        raise ValueError(f"out must be a .ipynb path (got out={str(out)!r})")
    nb = v4.new_notebook()
    nb.cells = _report_cells(model_spec, num_steps, num_warmup, num_samples)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    if execute:
        run([out], smoke=smoke, progress=True)
    return out
