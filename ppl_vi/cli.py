"""Command line: ``ppl-vi fit | demo``."""

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

from ppl_vi import models
from ppl_vi.diagnostics import plot_losses
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


def write_outputs(result, out: Path, num_samples: int = 4000) -> pd.DataFrame:
    """Save a fit to ``out``: result.pt, losses.csv, summary.csv, loss.png, run.json."""
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "result.pt")
    pd.DataFrame({"step": np.arange(1, result.num_steps + 1), "loss": result.losses}).to_csv(
        out / "losses.csv", index=False
    )
    summary = result.summary(num_samples=num_samples, seed=0)
    summary.to_csv(out / "summary.csv")
    plot_losses(result.losses, out / "loss.png", title=f"{result.info.name}: training loss")
    info = {
        "model": result.info.name,
        "guide": result.guide_spec,
        "elbo": result.elbo_spec,
        "num_steps": result.num_steps,
        "converged": result.converged,
        "interrupted": result.interrupted,
        "wall_time_s": result.wall_time,
        "final_loss_mean_100": float(result.losses[-100:].mean()),
        "device": str(result.device),
    }
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return summary


def cmd_fit(args) -> int:
    model, data = load_model(args.model)
    result = fit(
        model,
        **data,
        guide=args.guide,
        elbo=args.elbo,
        num_steps=args.steps,
        lr=args.lr,
        num_particles=args.particles,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    summary = write_outputs(result, Path(args.out))
    print(result)
    print(summary.round(3).to_string())
    print(f"wrote {args.out}/: result.pt losses.csv summary.csv loss.png run.json")
    return 0


def demo(out: Path, num_steps: int = 5000, progress: bool = True) -> pd.DataFrame:
    """Fit eight schools with mean-field VI and compare it with ArviZ's bundled NUTS draws."""
    from ppl_vi.models import eight_schools

    start = time.perf_counter()
    result = fit(eight_schools.model, **eight_schools.load_data(), num_steps=num_steps,
                 progress=progress)
    summary = write_outputs(result, out)
    reference = eight_schools.reference_draws()
    components = [(name, name, reference[name]) for name in ("mu", "tau")]
    components += [
        (f"theta[{j}] ({school})", f"theta[{j}]", reference["theta"][:, j])
        for j, school in enumerate(eight_schools.SCHOOLS)
    ]
    rows = []
    for label, key, ref in components:
        vi_mean, vi_sd, ref_sd = summary.loc[key, "mean"], summary.loc[key, "sd"], ref.std(ddof=1)
        rows.append(
            {
                "parameter": label,
                "VI mean": vi_mean,
                "NUTS mean": ref.mean(),
                "error (NUTS sd)": (vi_mean - ref.mean()) / ref_sd,
                "VI sd": vi_sd,
                "NUTS sd": ref_sd,
                "sd ratio": vi_sd / ref_sd,
            }
        )
    table = pd.DataFrame(rows).set_index("parameter")
    khat = result.psis_khat(num_samples=4000, seed=0)
    verdict = "reliable" if khat < 0.5 else ("usable with care" if khat < 0.7 else "unreliable")
    elapsed = time.perf_counter() - start
    report = [
        "# ppl-vi demo: eight schools (non-centred), mean-field VI",
        "",
        f"{result.num_steps} steps in {result.wall_time:.1f} s of training "
        f"({elapsed:.1f} s in all, torch threads: {torch.get_num_threads()}).",
        f"PSIS k-hat of the guide: {khat:.2f} ({verdict} as an importance-sampling proposal; "
        "thresholds 0.5 / 0.7).",
        "",
        "Reference: ArviZ's bundled NUTS draws (`non_centered_eight`, 4 x 500 draws).",
        "",
        table.to_markdown(floatfmt=".3f"),
        "",
        "Mean-field VI under-estimates `tau` and its spread (sd ratio below 1): the family "
        "cannot represent the funnel-shaped dependence between `tau` and the school effects.",
        "",
        "![loss](loss.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(report))
    print(result)
    print(table.round(3).to_string())
    print(f"PSIS k-hat: {khat:.2f} ({verdict})")
    print(f"report: {out / 'report.md'} (with summary.csv, loss.png, result.pt)")
    return table


def cmd_demo(args) -> int:
    demo(Path(args.out), num_steps=args.steps, progress=not args.no_progress)
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
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=cmd_fit)
    d = sub.add_parser("demo", help="fit eight schools and compare with NUTS reference draws")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--steps", type=int, default=5000)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(run=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as e:
        print(f"ppl-vi: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
