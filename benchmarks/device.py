"""Step time on CPU vs GPU: VAE training steps (batch 128, 1024) and IWAE K=64 on eight schools.

Workloads, each fitted with ``ppl_vi.fit(..., device="cpu")`` and ``device="cuda"`` (Adam, lr
0.01, no final phase, no stopping rule), the set-up of a short fit subtracted:

* ``vae_b128``, ``vae_b1024``: ``models/vae_digits`` with the ``Amortized`` guide (encoder
  hidden 128), ``Trace_ELBO(max_plate_nesting=1)``, mini-batches of 128 or 1024 of the 1500
  training images drawn by the model's plate (``subsample_size``, without replacement);
* ``iwae_k64_eight_schools``: ``models/eight_schools`` with the ``MeanField`` guide and
  ``IWAE(num_particles=64, max_plate_nesting=1)`` (vectorized particles).

``fit`` moves the data to the device and builds the guide's parameters there; the script checks
that every parameter ends up on the device. The GPU clock is wall time (``fit`` reads each
step's loss, which synchronizes); the CPU side uses CPU time (``time.process_time``) as the
other benchmark scripts do. Repeats are interleaved (CPU, GPU, next workload, ...) and the
script reports the GPU speed-up, CPU time / GPU time per repeat, as median and range. Without a
CUDA device it runs the CPU side only and says so. Writes ``benchmarks/results/device.json``.

    python benchmarks/device.py [--steps 200] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from _timing import per_step, ratio_stats
from pyro.infer import Trace_ELBO

import ppl_vi
from ppl_vi.elbos import IWAE
from ppl_vi.guides import Amortized, MeanField
from ppl_vi.models import eight_schools, vae_digits

RESULTS = Path(__file__).parent / "results"
NO_CUDA = "no CUDA device: CPU only"


def _vae(batch_size):
    def build():
        guide = Amortized(vae_digits.model, hidden_dims=(128,))
        data = dict(vae_digits.load_data(), subsample_size=batch_size)
        return vae_digits.model, guide, Trace_ELBO(max_plate_nesting=1), data

    return build


def _iwae_eight_schools():
    model = eight_schools.model
    elbo = IWAE(num_particles=64, max_plate_nesting=1)
    return model, MeanField(model), elbo, eight_schools.load_data()


WORKLOADS = {
    "vae_b128": _vae(128),
    "vae_b1024": _vae(1024),
    "iwae_k64_eight_schools": _iwae_eight_schools,
}


def _fit_seconds(build, steps: int, device: str) -> float:
    model, guide, elbo, data = build()
    clock = time.process_time if device == "cpu" else time.perf_counter
    start = clock()
    result = ppl_vi.fit(
        model,
        **data,
        guide=guide,
        elbo=elbo,
        num_steps=steps,
        device=device,
        progress=False,
        polish=None,
        convergence=None,
    )
    if result.device.type != device:
        raise RuntimeError(f"fit ran on {result.device}, not on {device}")
    params = result.params.values()
    if any(p.device.type != device for p in params):
        raise RuntimeError(f"some parameters were not created on {device}")
    if device == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def fit_step_time(build, steps: int, device: str) -> float:
    """Seconds per step of ``ppl_vi.fit(..., device=device)``, set-up taken out.

    CPU time on the CPU, wall time on the GPU (``fit`` reads every step's loss, which
    synchronizes the device).
    """
    return per_step(lambda n: _fit_seconds(build, n, device), steps, setup_steps=5)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    report = {
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "cpu_clock": "process_time",
        "gpu_clock": "wall time (fit synchronizes at every step's loss)",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "note": None if cuda else NO_CUDA,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "workloads": {},
    }
    print(
        f"torch threads: {torch.get_num_threads()}, steps per run: {args.steps}, "
        f"repeats: {args.repeats}, GPU: {report['gpu'] if cuda else NO_CUDA}"
    )
    times = {name: {"cpu": [], "gpu": []} for name in WORKLOADS}
    for build in WORKLOADS.values():  # one-time costs (lazy imports, CUDA context) go here
        for device in ["cpu"] + (["cuda"] if cuda else []):
            _fit_seconds(build, 2, device)
    for _ in range(args.repeats):  # interleaved: CPU, GPU, next workload, ...
        for name, build in WORKLOADS.items():
            times[name]["cpu"].append(fit_step_time(build, args.steps, "cpu"))
            if cuda:
                times[name]["gpu"].append(fit_step_time(build, args.steps, "cuda"))
    for name, series in times.items():
        row = {
            "cpu_ms_per_step": statistics.median(series["cpu"]) * 1e3,
            "cpu_ms_per_step_min": min(series["cpu"]) * 1e3,
            "cpu_ms_per_step_max": max(series["cpu"]) * 1e3,
            "gpu_ms_per_step": None,
        }
        line = f"{name:23s} CPU {row['cpu_ms_per_step']:.3f} ms/step"
        if cuda:
            row["gpu_ms_per_step"] = statistics.median(series["gpu"]) * 1e3
            speedup = ratio_stats(series["cpu"], series["gpu"])
            row.update({f"speedup_{stat}": value for stat, value in speedup.items()})
            line += (
                f" | GPU {row['gpu_ms_per_step']:.3f} ms/step | speed-up "
                f"{speedup['median']:.2f}x (range {speedup['min']:.2f}-{speedup['max']:.2f})"
            )
        else:
            line += f" (range {row['cpu_ms_per_step_min']:.3f}-{row['cpu_ms_per_step_max']:.3f})"
        report["workloads"][name] = row
        print(line)
    if not cuda:
        print(f"NOTE: {NO_CUDA} (torch.cuda.is_available() is False); no GPU timings taken")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "device.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _num(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    """The report as a markdown section: title, one sentence, a table."""
    cuda = report["gpu"] is not None
    where = f"CPU vs GPU ({report['gpu']})" if cuda else "CPU only"
    lines = [
        f"#### Step time: {where}",
        "",
        'Time per `ppl_vi.fit` step (`device="cpu"` / `"cuda"`) of the digits VAE '
        "(batches 128 and 1024) and of "
        f"IWAE (K=64) on eight schools, CPU time on the CPU with {report['torch_threads']} "
        f"torch thread(s)"
        + (", wall time on the GPU" if cuda else "")
        + f", median of {report['repeats']} interleaved repeats of {report['steps']} steps"
        + ("; speed-up is CPU time / GPU time per repeat, median (min-max)." if cuda else "."),
        "",
    ]
    if not cuda:
        lines += [f"**{report['note']}**: no GPU timings were taken.", ""]
        lines += ["| workload | CPU ms/step (min-max) |", "|---|---:|"]
        for name, row in report["workloads"].items():
            lines.append(
                f"| {name} | {_num(row['cpu_ms_per_step'])} ({_num(row['cpu_ms_per_step_min'])}-"
                f"{_num(row['cpu_ms_per_step_max'])}) |"
            )
    else:
        lines += ["| workload | CPU ms/step | GPU ms/step | GPU speed-up |", "|---|---:|---:|---:|"]
        for name, row in report["workloads"].items():
            lines.append(
                f"| {name} | {_num(row['cpu_ms_per_step'])} | {_num(row['gpu_ms_per_step'])} "
                f"| {_num(row['speedup_median'], 2)} ({_num(row['speedup_min'], 2)}-"
                f"{_num(row['speedup_max'], 2)}) |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
