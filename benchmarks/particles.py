"""Cost of particles: vectorized vs sequential IWAE and Rényi (alpha 0.5) steps on eight schools.

For ``IWAE`` and ``RenyiELBO(alpha=0.5)`` (``ppl_vi.elbos``, ``max_plate_nesting=1``) with
K = 1, 4, 16, 64 particles, it times ``pyro.infer.SVI`` steps (Adam, lr 0.01) of the
``MeanField`` guide on ``models/eight_schools`` with the particles drawn in one batched pass
(``vectorize_particles=True``, the default) and in a Python loop (``vectorize_particles=False``).
Within each repeat every (K, vectorized / sequential) run is timed in turn, so all series see the
same machine load; the script reports per-repeat ratios as median and range: sequential over
vectorized, and vectorized K over vectorized K=1. The target is "IWAE K=64 vectorized costs at
most 4x the time of K=1"; it prints PASS or FAIL on the median ratio and writes
``benchmarks/results/particles.json``.

Times are CPU time of this process (``time.process_time``) per step, after five warm-up steps.

    python benchmarks/particles.py [--steps 300] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import pyro
import torch
from _timing import ratio_stats, svi_step_time

from ppl_vi.elbos import IWAE, RenyiELBO
from ppl_vi.guides import MeanField
from ppl_vi.models import eight_schools

RESULTS = Path(__file__).parent / "results"
NUM_PARTICLES = (1, 4, 16, 64)
ELBOS = {"IWAE": (IWAE, {}), "RenyiELBO(alpha=0.5)": (RenyiELBO, {"alpha": 0.5})}
TARGET = {"elbo": "IWAE", "num_particles": 64, "max_ratio": 4.0}


def step_time(elbo_cls, kwargs, num_particles, vectorize, data, steps):
    elbo = elbo_cls(
        num_particles=num_particles,
        max_plate_nesting=1,
        vectorize_particles=vectorize,
        **kwargs,
    )
    model = eight_schools.model
    return svi_step_time(model, MeanField(model), elbo, data, steps)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = eight_schools.load_data()
    report = {
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "model": "eight_schools",
        "guide": "MeanField",
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "elbos": {},
    }
    print(
        f"torch threads: {torch.get_num_threads()}, steps per run: {args.steps}, "
        f"repeats: {args.repeats}"
    )
    for name, (elbo_cls, kwargs) in ELBOS.items():
        times = {(k, v): [] for k in NUM_PARTICLES for v in (True, False)}
        errors = {}
        for _ in range(args.repeats):  # interleaved: every (K, mode) once per repeat
            for key in times:
                if key in errors:
                    continue
                try:
                    times[key].append(step_time(elbo_cls, kwargs, *key, data, args.steps))
                except Exception as err:  # reported, not fatal: the other runs still count
                    errors[key] = f"{type(err).__name__}: {err}"
        rows = {}
        base = times[(1, True)]
        for k in NUM_PARTICLES:
            vec, seq = times[(k, True)], times[(k, False)]
            row = {
                "vectorized_ms_per_step": statistics.median(vec) * 1e3 if vec else None,
                "sequential_ms_per_step": statistics.median(seq) * 1e3 if seq else None,
            }
            for label, num, den in (("sequential_over_vectorized", seq, vec), ("vs_K1", vec, base)):
                ok = len(num) == len(den) == args.repeats
                stats = ratio_stats(num, den) if ok else dict.fromkeys(("median", "min", "max"))
                row.update({f"{label}_{stat}": value for stat, value in stats.items()})
            for mode, flag in (("vectorized", True), ("sequential", False)):
                if (k, flag) in errors:
                    row[f"{mode}_error"] = errors[(k, flag)]
            rows[str(k)] = row
            print(f"{name:21s} K={k:<3d} {_fmt_row(row)}")
        report["elbos"][name] = rows
    target = report["elbos"][TARGET["elbo"]][str(TARGET["num_particles"])]["vs_K1_median"]
    passed = target is not None and target <= TARGET["max_ratio"]
    report["target"] = {**TARGET, "ratio_median": target, "passed": passed}
    print(
        f"target: {TARGET['elbo']} K={TARGET['num_particles']} vectorized at most "
        f"{TARGET['max_ratio']:g}x K=1 on eight_schools: {'PASS' if passed else 'FAIL'} "
        f"(median ratio {_num(target, 2)})"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "particles.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _num(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _range(row, label):
    return (
        f"{_num(row[f'{label}_median'], 2)} "
        f"({_num(row[f'{label}_min'], 2)}-{_num(row[f'{label}_max'], 2)})"
    )


def _fmt_row(row):
    return (
        f"vectorized {_num(row['vectorized_ms_per_step'])} ms/step | sequential "
        f"{_num(row['sequential_ms_per_step'])} ms/step | seq/vec "
        f"{_range(row, 'sequential_over_vectorized')} | vec K / vec K=1 {_range(row, 'vs_K1')}"
    )


def markdown(report: dict) -> str:
    """The report as a markdown section: title, one sentence, a table, the target's verdict."""
    lines = [
        "#### Particles: vectorized vs sequential (eight schools)",
        "",
        f"CPU time per `pyro.infer.SVI` step (MeanField guide, Adam) of IWAE and RenyiELBO "
        f"(alpha 0.5) with K particles, drawn in one batched pass or in a loop, on "
        f"{report['torch_threads']} torch thread(s), median of {report['repeats']} interleaved "
        f"repeats of {report['steps']} steps; ratios are medians (min-max) of per-repeat ratios.",
        "",
        "| ELBO | K | vectorized ms/step | sequential ms/step | sequential / vectorized "
        "| vectorized K / K=1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in report["elbos"].items():
        for k, row in rows.items():
            lines.append(
                f"| {name} | {k} | {_num(row['vectorized_ms_per_step'])} "
                f"| {_num(row['sequential_ms_per_step'])} "
                f"| {_range(row, 'sequential_over_vectorized')} | {_range(row, 'vs_K1')} |"
            )
    target = report["target"]
    lines += [
        "",
        f"Target: {target['elbo']} K={target['num_particles']} vectorized at most "
        f"{target['max_ratio']:g}x the time of K=1: **{'PASS' if target['passed'] else 'FAIL'}** "
        f"(median ratio {_num(target['ratio_median'], 2)}).",
    ]
    errors = [
        f"{name} K={k} {mode}: {row[f'{mode}_error']}"
        for name, rows in report["elbos"].items()
        for k, row in rows.items()
        for mode in ("vectorized", "sequential")
        if f"{mode}_error" in row
    ]
    if errors:
        lines += ["", "Failed runs:", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
