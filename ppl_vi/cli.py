"""Command line: ``ppl-vi fit | demo | tutorials build|run | notebook``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Heavy imports (torch, Pyro, ArviZ) happen inside the commands, so `ppl-vi --help` is instant.
#: Guide and ELBO names of ppl_vi.guides.GUIDES and ppl_vi.elbos.ELBOS (a test keeps them equal).
METHOD_NAMES = ("pathfinder", "bam", "auto")
GUIDE_NAMES = ("mean_field", "full_rank", "low_rank", "iaf", "hvm", "amortized", "diffusion",
               "gaussian_mixture", "ladder", *METHOD_NAMES)  # fmt: skip
ELBO_NAMES = ("elbo", "rb_score", "iwae", "renyi", "stein")
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


def load_model(spec: str):
    """Resolve ``spec`` to ``(model, data)``.

    ``spec`` is a zoo name (``eight_schools``, ``models.eight_schools``) or a Python file
    ``path/to/file.py`` (optionally ``path/to/file.py:function``) that defines the model and a
    ``load_data()`` returning its keyword arguments.
    """
    from ppl_vi import models

    path, _, func = spec.partition(":")
    if path.endswith(".py"):
        file = Path(path)
        if not file.is_file():
            raise SystemExit(f"ppl-vi: model file '{file}' does not exist")
        print(f"ppl-vi: running model file {file} (its code is executed)", file=sys.stderr)
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


def write_outputs(result, out: Path, num_samples: int = 4000, khat_draws: int | None = None):
    """Save a fit to ``out``: result.pt, losses.csv, loss.png, run.json, then summary.csv.

    The files that need no model evaluation come first, so a model that can no longer be
    evaluated (the reason a fit stopped) still leaves the fit on disk; the summary is then
    skipped with a message and None is returned. ``run.json`` holds the ELBO estimate and the
    PSIS k-hat (with its Monte Carlo error) from ``khat_draws`` importance draws (default: the
    result's shared set; 0 skips them).
    """
    import numpy as np
    import pandas as pd

    from ppl_vi.diagnostics import plot_losses

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
        **_quality(result, khat_draws),
    }
    if result.verdict is not None:
        verdict = result.verdict
        info["verdict"] = {
            "status": verdict.status,
            "method": verdict.method,
            "reason": verdict.reason,
            "stages": verdict.stages,
        }
    if result.method_info:
        info["method_info"] = result.method_info
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


def _quality(result, khat_draws: int | None) -> dict:
    """ELBO estimate and PSIS k-hat of a fit (NaN-safe for JSON), from its importance set."""
    import math
    import warnings

    if khat_draws == 0 or not result.num_steps:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            imp = result.importance(khat_draws)
    except Exception as e:  # noqa: BLE001 - the fit is saved; say why the figures are missing
        print(f"ppl-vi: no k-hat: the model failed on draws from the fit ({e})", file=sys.stderr)
        return {}
    lw = imp.log_weights
    elbo, se = float(lw.mean()), float(lw.std(ddof=1) / math.sqrt(len(lw)))

    def plain(x):
        return x if math.isfinite(x) else None

    return {
        "elbo_estimate": plain(elbo),
        "elbo_estimate_se": plain(se),
        "khat": plain(imp.khat),
        "khat_se": plain(imp.khat_se),
        "khat_draws": len(lw),
        "khat_verdict": imp.verdict(),
    }


def launch(argv: list, nproc: int) -> int:
    """Run ``ppl-vi fit`` with ``argv`` in ``nproc`` processes under ``torchrun`` (one
    machine); each runs the fit with ``--distributed``. Returns torchrun's exit code."""
    if nproc < 2:
        raise ValueError(f"--nproc must be >= 2 to launch a data-parallel fit (got {nproc})")
    rest, skip = [], False
    for token in argv:  # the same command line without --nproc
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            rest.append(token)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "ppl_vi.cli", *rest, "--distributed"]  # fmt: skip
    print(f"ppl-vi: launching {nproc} processes: {' '.join(command[1:])}", file=sys.stderr)
    process, interrupted = subprocess.Popen(command), False
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:  # torchrun and the workers get Ctrl-C too: let them save
            interrupted = True
    if interrupted:  # torchrun reports the signal as its own failure; the fit was kept
        print("ppl-vi: interrupted; what rank 0 finished is in --out", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _join_process_group(args) -> int:
    """Under torchrun: join the process group (NCCL with one GPU per rank when CUDA is used,
    gloo otherwise); returns this process's rank."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise ValueError("--distributed runs under torchrun; use --nproc N to launch it")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if cuda:
        args.device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank()


def cmd_fit(args) -> int:
    if args.nproc is not None:
        return launch(args.argv, args.nproc)
    rank = _join_process_group(args) if args.distributed else 0
    try:
        return _fit_and_write(args, rank)
    finally:
        if args.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fit_and_write(args, rank: int) -> int:
    from ppl_vi import Polish, io
    from ppl_vi.errors import FitError
    from ppl_vi.fit import fit

    out = Path(args.out)
    io.check_writable(out / "result.pt", "--out folder's result file")  # before any training
    model, data = load_model(args.model)
    if args.subsample_size is not None:
        data = {**data, "subsample_size": args.subsample_size}
    polish = None if args.no_polish else Polish(num_particles=args.polish_particles)
    try:
        options = {
            "elbo": args.elbo,
            "num_steps": args.steps,
            "lr": args.lr,
            "num_particles": args.particles,
            "polish": polish,
            "jit": True if args.jit else (False if args.no_jit else "auto"),
            "checkpoint": args.checkpoint,
            "kl_anneal": args.kl_anneal,
        }
        if args.distributed:
            options["distributed"] = True
        if args.guide in METHOD_NAMES:  # options of SGD fits only when set on the command line
            defaults = {"elbo": "elbo", "lr": 0.01, "jit": "auto", "checkpoint": None,
                        "num_particles": None, "polish": Polish(), "kl_anneal": None}  # fmt: skip
            defaults["num_steps"] = 5000  # the command line's default: the method's own applies
            options = {k: v for k, v in options.items() if k not in defaults or v != defaults[k]}
        result = fit(
            model,
            guide=args.guide,
            seed=args.seed,
            device=args.device,
            progress="fit" if not args.no_progress and rank == 0 else False,
            resume=args.resume,
            model_kwargs=data,
            **options,
        )
    except FitError as err:
        if rank != 0:  # every rank has the same error; rank 0 reports it and keeps the fit
            return 1
        print(f"ppl-vi: {err}", file=sys.stderr)
        if err.result is not None and err.result.num_steps:
            write_outputs(err.result, out, khat_draws=0)
            print(f"wrote the fit up to step {err.result.num_steps} to {out}/", file=sys.stderr)
        return 1
    if rank != 0:  # every rank holds the result; rank 0 writes it
        return EXIT_INTERRUPTED if result.interrupted else 0
    summary = write_outputs(result, out, khat_draws=args.khat_draws)
    print(result)
    run = json.loads((out / "run.json").read_text())
    if run.get("elbo_estimate") is not None:
        print(
            f"ELBO {run['elbo_estimate']:.6g} +- {run['elbo_estimate_se']:.2g}; PSIS "
            f"{run['khat_verdict']}"
        )
    if summary is not None:
        print(summary.round(3).to_string())
    print(f"wrote {args.out}/: result.pt losses.csv summary.csv loss.png run.json")
    return EXIT_INTERRUPTED if result.interrupted else 0


def demo(
    out: Path,
    num_steps: int = 3000,
    progress: bool = True,
    num_warmup: int = 500,
    num_samples: int = 1000,
):
    """Fit eight schools with four VI methods, run NUTS, and write a comparison report."""
    import warnings

    import pandas as pd
    import torch

    from ppl_vi.compare import FAST_METHOD, STANDARD_METHODS, compare
    from ppl_vi.fit import fit
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
        result = fit(eight_schools.model, **data, **fit_kwargs, progress=progress and label, seed=0)
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
        f"NUTS (Pyro, 2 chains, {num_warmup} warm-up + {num_samples} draws each): "
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
    for record in notebooks.run(paths, smoke=args.smoke, progress=True):
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppl-vi")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ppl-vi", description="Variational inference on Pyro models.", formatter_class=fmt
    )
    parser.add_argument("--version", action="version", version=f"ppl-vi {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = (
        "a zoo model (e.g. eight_schools) or path/to/model.py[:function] defining the model and "
        "load_data(); a model file is executed as Python code, as `python model.py` would"
    )
    p = sub.add_parser(
        "fit", help="fit a zoo model or a model file and write the result", formatter_class=fmt
    )
    p.add_argument("model", help=model_help)
    p.add_argument(
        "--guide",
        default="mean_field",
        choices=GUIDE_NAMES,
        help="guide family, or a Gaussian method without SGD: pathfinder, bam (batch "
        "and match), auto (Pathfinder, then refinements until a trust check passes; "
        "prints a verdict)",
    )
    p.add_argument("--elbo", default="elbo", choices=ELBO_NAMES, help="objective")
    p.add_argument("--steps", type=int, default=5000, help="optimisation steps, final phase "
                   "included")  # fmt: skip
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument(
        "--particles",
        type=int,
        default=None,
        help="particles per step in the main phase (default: the ELBO's own)",
    )
    p.add_argument(
        "--polish-particles",
        type=int,
        default=16,
        help="particles per step in the final phase (when the model batches them)",
    )
    p.add_argument(
        "--no-polish",
        action="store_true",
        help="no final phase (learning-rate decay, more particles, averaging)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fit's random stream")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda[:N]")
    p.add_argument(
        "--jit",
        action="store_true",
        help="compile the step, else the loss alone (Pyro's JIT), warning when neither "
        "compiles (default: compile fits of 200+ steps where possible, silently)",
    )
    p.add_argument("--no-jit", action="store_true", help="run every step eagerly")
    p.add_argument(
        "--kl-anneal",
        type=int,
        default=None,
        metavar="N",
        help="KL warm-up: scale the latent terms by a coefficient rising linearly to 1 over N "
        "steps",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file: written during the fit, resumed if it matches",
    )
    p.add_argument(
        "--resume",
        default="auto",
        choices=["auto", "force", "restart"],
        help="for a checkpoint of a different fit: refuse (auto), continue from it "
        "(force) or overwrite it (restart)",
    )
    p.add_argument(
        "--khat-draws",
        type=int,
        default=None,
        help="importance draws for the ELBO and k-hat in run.json (None: the "
        "result's shared set of 2**18; 0 skips them)",
    )
    p.add_argument(
        "--subsample-size",
        type=int,
        default=None,
        help="mini-batch size, passed to the model as subsample_size= (zoo models with a "
        "subsampled data plate: logistic_regression, vae_digits, ppca, ...)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="data-parallel fit in this many processes on this machine (launched with "
        "torchrun; the model needs a subsampled plate, e.g. --subsample-size)",
    )
    p.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=cmd_fit)
    d = sub.add_parser(
        "demo", help="eight schools: four VI methods vs NUTS, with a report", formatter_class=fmt
    )
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--steps", type=int, default=3000, help="steps per VI method")
    d.add_argument("--warmup", type=int, default=500, help="NUTS warm-up per chain")
    d.add_argument("--draws", type=int, default=1000, help="NUTS draws per chain")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(run=cmd_demo)
    t = sub.add_parser(
        "tutorials", help="build (py:percent -> ipynb) or run the tutorials", formatter_class=fmt
    )
    tsub = t.add_subparsers(dest="action", required=True)
    tb = tsub.add_parser(
        "build", help="convert tutorials/NN_*.py to .ipynb (drops outputs)", formatter_class=fmt
    )
    tb.add_argument("sources", nargs="*", help="only these .py sources (default: all)")
    tb.add_argument("--src", default="tutorials", help="tutorial folder")
    tr = tsub.add_parser(
        "run", help="execute the notebooks and store their outputs", formatter_class=fmt
    )
    tr.add_argument("notebooks", nargs="*", help="only these .ipynb files (default: all)")
    tr.add_argument("--src", default="tutorials", help="tutorial folder")
    tr.add_argument("--smoke", action="store_true", help="tiny sizes (seconds per notebook)")
    t.set_defaults(run=cmd_tutorials)
    n = sub.add_parser(
        "notebook", help="write and execute a VI-vs-NUTS report for a model", formatter_class=fmt
    )
    n.add_argument("model", help=model_help)
    n.add_argument("--out", required=True, help="the .ipynb to write")
    n.add_argument("--steps", type=int, default=3000, help="steps per VI method")
    n.add_argument("--warmup", type=int, default=500, help="NUTS warm-up per chain")
    n.add_argument("--draws", type=int, default=1000, help="NUTS draws per chain")
    n.add_argument("--smoke", action="store_true", help="tiny sizes (a quick check)")
    n.set_defaults(run=cmd_notebook)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("ppl-vi: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError) as e:
        print(f"ppl-vi: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if type(e).__name__ != "CheckpointError":
            raise
        print(f"ppl-vi: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
