"""Command line: ``ppl-vi fit | demo | tutorials build|run | notebook``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ppl_vi import io, models
from ppl_vi.diagnostics import plot_losses
from ppl_vi.errors import CheckpointError, FitError
from ppl_vi.fit import fit


def load_model(spec: str):
    """Resolve ``spec`` to ``(model, data)``.

    ``spec`` is a zoo name (``eight_schools``, ``models.eight_schools``) or a Python file
    ``path/to/file.py`` (optionally ``path/to/file.py:function``) that defines the model and a
    ``load_data()`` returning its keyword arguments.
    """
    path, _, func = spec.partition(":")
    if path.endswith(".py"):
        file = Path(path)
        if not file.is_file():
            raise SystemExit(f"ppl-vi: model file '{file}' does not exist")
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        func = func or "model"
    else:
        try:
            module = models.get(path)
        except ValueError as e:
            raise SystemExit(f"ppl-vi: {e} (or pass a path/to/model.py)") from None
        func = func or "model"
    if not callable(getattr(module, func, None)):
        raise SystemExit(f"ppl-vi: '{spec}' defines no function '{func}'")
    if not callable(getattr(module, "load_data", None)):
        raise SystemExit(f"ppl-vi: '{spec}' defines no load_data() returning the model's data")
    return getattr(module, func), module.load_data()


def write_outputs(result, out: Path, num_samples: int = 4000) -> pd.DataFrame | None:
    """Save a fit to ``out``: result.pt, losses.csv, loss.png, run.json, then summary.csv.

    The files that need no model evaluation come first, so a model that can no longer be
    evaluated (the reason a fit stopped) still leaves the fit on disk; the summary is then
    skipped with a message and None is returned.
    """
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "result.pt")
    pd.DataFrame({"step": np.arange(1, result.num_steps + 1), "loss": result.losses}).to_csv(
        out / "losses.csv", index=False
    )
    plot_losses(result.losses, out / "loss.png", title=f"{result.info.name}: training loss")
    info = {
        "model": result.info.name,
        "guide": result.guide_spec,
        "elbo": result.elbo_spec,
        "num_steps": result.num_steps,
        "converged": result.converged,
        "interrupted": result.interrupted,
        "wall_time_s": result.wall_time,
        "final_loss_mean_100": float(result.losses[-100:].mean()) if result.num_steps else None,
        "device": str(result.device),
    }
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    try:
        summary = result.summary(num_samples=num_samples, seed=0)
    except Exception as e:  # noqa: BLE001 - the other files are written; say why this one is not
        print(
            f"ppl-vi: no summary.csv: the model failed on draws from the fit ({e})", file=sys.stderr
        )
        return None
    summary.to_csv(out / "summary.csv")
    return summary


def cmd_fit(args) -> int:
    out = Path(args.out)
    io.check_writable(out / "result.pt", "--out folder's result file")  # before any training
    model, data = load_model(args.model)
    try:
        result = fit(
            model,
            guide=args.guide,
            elbo=args.elbo,
            num_steps=args.steps,
            lr=args.lr,
            num_particles=args.particles,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
            jit=args.jit,
            checkpoint=args.checkpoint,
            resume=args.resume,
            model_kwargs=data,
        )
    except FitError as err:
        print(f"ppl-vi: {err}", file=sys.stderr)
        if err.result is not None and err.result.num_steps:
            write_outputs(err.result, out)
            print(f"wrote the fit up to step {err.result.num_steps} to {out}/", file=sys.stderr)
        return 1
    summary = write_outputs(result, out)
    print(result)
    print(summary.round(3).to_string())
    print(f"wrote {args.out}/: result.pt losses.csv summary.csv loss.png run.json")
    return 0


def demo(
    out: Path,
    num_steps: int = 3000,
    progress: bool = True,
    num_warmup: int = 500,
    num_samples: int = 1000,
) -> pd.DataFrame:
    """Fit eight schools with four VI methods, run NUTS, and write a comparison report."""
    import warnings

    from ppl_vi.compare import FAST_METHOD, STANDARD_METHODS, compare
    from ppl_vi.models import eight_schools
    from ppl_vi.nuts import run_nuts

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = eight_schools.load_data()
    nuts = run_nuts(
        eight_schools.model,
        **data,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=2,  # R-hat needs two chains to check the reference itself
        progress=progress,
        seed=0,
    )
    nuts.save(out / "nuts.pt")
    rows, sections = [], []
    methods = [
        (label, {"guide": g, "elbo": e, "elbo_kwargs": kw, "num_steps": num_steps}, resample)
        for label, (g, e, kw, resample) in STANDARD_METHODS.items()
    ]
    fast_label, fast_kwargs, fast_steps = FAST_METHOD
    fast_steps = min(fast_steps, num_steps)
    methods.append((fast_label, {**fast_kwargs, "num_steps": fast_steps}, True))
    for k, (label, fit_kwargs, resample) in enumerate(methods):
        guide, elbo = fit_kwargs["guide"], fit_kwargs["elbo"]
        result = fit(eight_schools.model, **data, **fit_kwargs, progress=progress, seed=0)
        if k == 0:
            write_outputs(result, out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            report = compare(result, nuts, vi_label=label, resample=resample)
        figure = f"compare_{guide}_{elbo}.png"
        report.plot(out / figure)
        rows.append(
            {
                "method": label,
                **{
                    k: v
                    for k, v in report.summary().items()
                    if k not in ("vi", "reference", "flags")
                },
            }
        )
        sections += [f"## {label}", "", report.to_markdown(), f"![{label}]({figure})", ""]
    table = pd.DataFrame(rows).set_index("method")
    elapsed = time.perf_counter() - start
    lines = [
        "# ppl-vi demo: eight schools (non-centred), VI vs NUTS",
        "",
        f"NUTS (Pyro, 1 chain, {num_warmup} warm-up + {num_samples} draws): "
        f"{nuts.wall_time:.1f} s, {nuts.num_divergences} divergences. Each VI method: "
        f"{num_steps} steps (the full-rank recipe: {fast_steps}). Everything: "
        f"{elapsed:.0f} s, torch threads: "
        f"{torch.get_num_threads()}.",
        "",
        "Errors are in NUTS posterior sds; `speedup` = NUTS time / VI time; k-hat below 0.5 "
        "means the approximation can be trusted, above 0.7 that it cannot.",
        "",
        table.to_markdown(floatfmt=".3g"),
        "",
        *sections,
    ]
    (out / "report.md").write_text("\n".join(lines))
    print(table.round(3).to_string())
    print(f"report: {out / 'report.md'} (figures compare_*.png, result.pt, nuts.pt)")
    return table


def cmd_demo(args) -> int:
    demo(
        Path(args.out),
        num_steps=args.steps,
        progress=not args.no_progress,
        num_warmup=args.warmup,
        num_samples=args.draws,
    )
    return 0


def cmd_tutorials(args) -> int:
    from ppl_vi import notebooks

    src = Path(args.src)
    if args.action == "build":
        sources = [Path(p) for p in args.sources] or notebooks.tutorial_sources(src)
        for path in notebooks.build(sources):
            print(f"built {path}")
        return 0
    paths = [Path(p) for p in args.notebooks] or sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise ValueError(f"no notebooks in {src}; run 'ppl-vi tutorials build' first")
    for record in notebooks.run(paths, smoke=args.smoke):
        print(f"ran {record.path} ({record.cells} cells, {record.seconds:.0f} s)")
    return 0


def cmd_notebook(args) -> int:
    from ppl_vi.notebooks import model_report

    out = model_report(
        args.model,
        args.out,
        num_steps=args.steps,
        num_warmup=args.warmup,
        num_samples=args.draws,
        smoke=args.smoke,
    )
    print(f"report notebook: {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="ppl-vi", description="Variational inference on Pyro models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit a zoo model or a model file and write the result")
    p.add_argument("model", help="zoo name (e.g. eight_schools) or path/to/model.py[:function]")
    p.add_argument("--guide", default="mean_field")
    p.add_argument("--elbo", default="elbo")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--particles", type=int, default=None, help="default: the ELBO's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--jit", action="store_true", help="compile the loss step (Pyro's JIT)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (resumed if it matches)")
    p.add_argument(
        "--resume",
        default="auto",
        choices=["auto", "force", "restart"],
        help="what to do with an existing checkpoint of a different fit",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=cmd_fit)
    d = sub.add_parser("demo", help="fit eight schools with three VI methods, compare with NUTS")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--steps", type=int, default=3000)
    d.add_argument("--warmup", type=int, default=500)
    d.add_argument("--draws", type=int, default=1000)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(run=cmd_demo)
    t = sub.add_parser("tutorials", help="build (py:percent -> ipynb) or run the tutorials")
    tsub = t.add_subparsers(dest="action", required=True)
    tb = tsub.add_parser("build", help="convert tutorials/NN_*.py to .ipynb (drops outputs)")
    tb.add_argument("sources", nargs="*", help="only these .py sources (default: all)")
    tb.add_argument("--src", default="tutorials", help="tutorial folder")
    tr = tsub.add_parser("run", help="execute the notebooks and store their outputs")
    tr.add_argument("notebooks", nargs="*", help="only these .ipynb files (default: all)")
    tr.add_argument("--src", default="tutorials", help="tutorial folder")
    tr.add_argument("--smoke", action="store_true", help="tiny sizes (seconds per notebook)")
    t.set_defaults(run=cmd_tutorials)
    n = sub.add_parser("notebook", help="write and execute a VI-vs-NUTS report for a model file")
    n.add_argument("model", help="path/to/model.py[:function] (with load_data()) or zoo name")
    n.add_argument("--out", required=True, help="the .ipynb to write")
    n.add_argument("--steps", type=int, default=3000)
    n.add_argument("--warmup", type=int, default=500)
    n.add_argument("--draws", type=int, default=1000)
    n.add_argument("--smoke", action="store_true")
    n.set_defaults(run=cmd_notebook)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, CheckpointError) as e:
        print(f"ppl-vi: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
