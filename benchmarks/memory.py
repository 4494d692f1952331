"""Peak memory and step time of a VAE training step at mini-batch sizes 128 and 1024.

The VAE is ``models/vae_digits`` (latent size 8, decoder hidden 128) with the ``Amortized``
guide (encoder hidden 128), ``Trace_ELBO(max_plate_nesting=1)`` and Adam (lr 0.01) in a plain
``pyro.infer.SVI`` loop, mini-batches drawn by the model's plate (``subsample_size``) from the
1500 training images, without replacement: 1024 fits inside the training set, so no image
repeats within a batch. Each (batch size, repeat) runs in a fresh child process (this script
with ``--child``), interleaved 128, 1024, 128, ..., that loads torch, Pyro and the data, reads
its resident set size (RSS, ``/proc/self/statm``) as the baseline, runs the steps and reports
the peak RSS (``VmHWM`` of /proc/self/status; ``ru_maxrss`` elsewhere) minus that baseline,
and on CUDA ``torch.cuda.max_memory_allocated``. Step time is CPU time (``time.process_time``)
on CPU and wall time after ``torch.cuda.synchronize()`` on CUDA, per step after the first
(which builds the parameters). Writes ``benchmarks/results/memory.json``.

    python benchmarks/memory.py [--steps 20] [--repeats 3] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BATCH_SIZES = (128, 1024)
MIB = 2.0**20


def _rss_bytes() -> int | None:
    """Current resident set size of this process, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process image.

    On Linux this is ``VmHWM`` from /proc/self/status, which starts afresh at ``exec``;
    ``getrusage``'s ``ru_maxrss`` survives ``exec`` and so reports the parent's peak in a child
    started from a large process (e.g. ``run_all.py`` with JAX loaded).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def child(batch_size: int, steps: int, threads: int, device: str) -> dict:
    """Build the VAE, run ``steps`` SVI steps, measure memory and time (in a fresh process)."""
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO

    from ppl_vi.guides import Amortized
    from ppl_vi.models import vae_digits

    torch.set_num_threads(threads)
    cuda = device == "cuda"
    data = {k: v.to(device) for k, v in vae_digits.load_data().items()}
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with torch.device(device) if cuda else contextlib.nullcontext():
        guide = Amortized(vae_digits.model, hidden_dims=(128,))
        svi = SVI(
            vae_digits.model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(max_plate_nesting=1)
        )
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_baseline = torch.cuda.memory_allocated()
        rss_baseline, peak_before = _rss_bytes(), _peak_rss_bytes()
        svi.step(**data, subsample_size=batch_size)  # builds the parameters
        if cuda:
            torch.cuda.synchronize()
        rss_after_first = _rss_bytes()
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        for _ in range(steps - 1):
            svi.step(**data, subsample_size=batch_size)
        if cuda:
            torch.cuda.synchronize()
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    peak = _peak_rss_bytes()
    out = {
        "batch_size": batch_size,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "baseline_rss_mib": None if rss_baseline is None else rss_baseline / MIB,
        "peak_rss_before_steps_mib": peak_before / MIB,
        "rss_after_first_step_mib": None if rss_after_first is None else rss_after_first / MIB,
        "peak_rss_mib": peak / MIB,
        "peak_rss_increase_mib": None if rss_baseline is None else (peak - rss_baseline) / MIB,
        # resident growth that survives the first step (lazy imports, parameters, allocator)
        "first_step_rss_increase_mib": (
            None if rss_baseline is None else (rss_after_first - rss_baseline) / MIB
        ),
        "ms_per_step": (wall if cuda else cpu) / max(steps - 1, 1) * 1e3,
        "clock": "wall" if cuda else "process_time",
    }
    if cuda:
        peak_cuda = torch.cuda.max_memory_allocated()
        out["cuda_max_memory_allocated_mib"] = peak_cuda / MIB
        out["cuda_increase_mib"] = (peak_cuda - cuda_baseline) / MIB
    return out


def _run_child(batch_size, args, device):
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--batch-size",
        str(batch_size),
    ]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child for batch {batch_size} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return dict.fromkeys(("median", "min", "max"))
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps must be >= 2 (got --steps {args.steps})")
    if args.child:
        result = child(args.batch_size, args.steps, args.threads, args.device)
        print(json.dumps(result))
        return result

    import pyro
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    runs = {b: [] for b in BATCH_SIZES}
    for _ in range(args.repeats):  # interleaved: 128, 1024, 128, 1024, ...
        for b in BATCH_SIZES:
            runs[b].append(_run_child(b, args, device))
    report = {
        "device": device,
        "torch_threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "num_train": 1500,
        "sampling": "subsample_size without replacement from the 1500 training images",
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "batch_sizes": {},
    }
    keys = ["peak_rss_increase_mib", "first_step_rss_increase_mib", "baseline_rss_mib"]
    keys += ["peak_rss_mib", "ms_per_step"]
    if device == "cuda":
        keys += ["cuda_max_memory_allocated_mib", "cuda_increase_mib"]
    print(
        f"device: {device}, torch threads: {args.threads}, {args.steps} steps per child, "
        f"{args.repeats} repeats, batches drawn without replacement from 1500 images"
    )
    for b, results in runs.items():
        row = {key: _stats([r.get(key) for r in results]) for key in keys}
        row["runs"] = results
        report["batch_sizes"][str(b)] = row
        line = (
            f"batch {b:5d}: peak RSS - baseline {_fmt(row['peak_rss_increase_mib'])} MiB "
            f"(baseline {_num(row['baseline_rss_mib']['median'], 1)} MiB), "
            f"{_fmt(row['ms_per_step'])} ms/step"
        )
        if device == "cuda":
            line += f", CUDA max allocated {_fmt(row['cuda_max_memory_allocated_mib'])} MiB"
        print(line)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _num(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt(stats, digits=2):
    return (
        f"{_num(stats['median'], digits)} ({_num(stats['min'], digits)}-"
        f"{_num(stats['max'], digits)})"
    )


def markdown(report: dict) -> str:
    """The report as a markdown section: title, one sentence, a table."""
    cuda = report["device"] == "cuda"
    clock = "wall time after `torch.cuda.synchronize()`" if cuda else "CPU time"
    lines = [
        "#### Memory of a VAE training step",
        "",
        f"Peak resident memory (`VmHWM`) minus the RSS just before the first step, and "
        f"{clock} per step, of {report['steps']} `pyro.infer.SVI` steps of the digits VAE "
        f"(Amortized guide, hidden 128, `Trace_ELBO`) on {report['device']}, "
        f"{report['torch_threads']} torch thread(s), each batch size in a fresh process, "
        f"median (min-max) of {report['repeats']} interleaved repeats; batches are drawn "
        f"without replacement from the {report['num_train']} training images; most of the "
        f"increase is one-time growth in the first step, which the third column isolates.",
        "",
    ]
    header = (
        "| batch | peak RSS - baseline (MiB) | RSS after first step - baseline (MiB) "
        "| baseline RSS (MiB) | ms/step |"
    )
    rule = "|---:|---:|---:|---:|---:|"
    if cuda:
        header += " CUDA max allocated (MiB) |"
        rule += "---:|"
    lines += [header, rule]
    for b, row in report["batch_sizes"].items():
        line = (
            f"| {b} | {_fmt(row['peak_rss_increase_mib'])} "
            f"| {_fmt(row['first_step_rss_increase_mib'])} "
            f"| {_num(row['baseline_rss_mib']['median'], 1)} | {_fmt(row['ms_per_step'])} |"
        )
        if cuda:
            line += f" {_fmt(row['cuda_max_memory_allocated_mib'])} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
