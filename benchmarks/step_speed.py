"""Per-step time of ``fit(jit=True)`` against the hardware floor and NumPyro, and how mini-batch
steps scale with N.

Three implementations of the same fit (a mean-field Gaussian over the unconstrained latents,
``Trace_ELBO`` with one particle, Adam with lr 0.01) take steps in interleaved repeats:

- ``fit``: ``ppl_vi.fit(model, ..., jit=True)`` (the compiled step), timed inside the fit
  from step 5 to its last step by a callback (so set-up and compilation are left out, the
  fit's own loop, policies and checks are in; ``progress=False``, no final phase);
- ``floor``: a hand-written PyTorch loop of the same estimator (the model's log density written
  out in torch, ``torch.optim.Adam(foreach=True)``, mini-batches sliced from per-epoch
  permutations): what a step costs without any library, the practical floor here;
- ``numpyro``: NumPyro's SVI (``AutoNormal``, ``Trace_ELBO``, ``numpyro.optim.Adam(0.01)``,
  ``jax.jit``-compiled update; its plate draws its own mini-batch indices), when NumPyro is
  installed.

Workloads: eight schools (the zoo's data) and logistic regression on simulated data with
N in {1e3, 1e4, 1e5, 1e6} x D in {10, 100}, full batch and mini-batches of 1024, written as
the zoo writes it (one matrix product; rows gathered only when subsampling).

Times are CPU seconds of this process (``time.process_time``) on ``--threads`` torch threads
(JAX: single-threaded XLA CPU execution); each repeat runs each implementation for about
``--seconds`` (at least 10 steps); the table gives medians over repeats and the median (range)
of the per-repeat ratios, with the machine's load average.

    python benchmarks/step_speed.py [--repeats 5] [--seconds 0.5] [--threads 1] [--quick]
                                    [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

import ppl_vi
from ppl_vi.minibatch import EpochBatches
from ppl_vi.models import eight_schools, logistic_regression

sys.path.insert(0, str(Path(__file__).parent))
import _numpyro  # noqa: E402  (configures JAX before it is imported)
from _timing import format_ratio as _ratio  # noqa: E402
from _timing import ratio_stats  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LR = 0.01
WARM = 5  # steps before the clock starts (the compiled step is recorded at step 2)
BATCH = 1024
SIZES = [(1_000, 10), (1_000, 100), (10_000, 10), (10_000, 100), (100_000, 10),
         (100_000, 100), (1_000_000, 10), (1_000_000, 100)]  # fmt: skip
QUICK = [(1_000, 10), (10_000, 100), (1_000_000, 10)]


# ---------------------------------------------------------------------- workloads
def simulated(n: int, d: int, device) -> dict:
    gen = torch.Generator().manual_seed(n + d)
    X = torch.randn(n, d, generator=gen) / math.sqrt(d)
    beta = torch.randn(d, generator=gen)
    y = torch.bernoulli(torch.sigmoid(X @ beta + 0.5), generator=gen)
    return {"X": X.to(device), "y": y.to(device)}


def workloads(quick: bool, device) -> list:
    out = [("eight_schools", eight_schools.model, eight_schools.load_data(), None)]
    for n, d in QUICK if quick else SIZES:
        data = simulated(n, d, device)
        for batch in (None, BATCH) if n > BATCH else (None,):
            name = f"logreg N={n:.0e} D={d} " + ("full" if batch is None else f"B={batch}")
            out.append((name, logistic_regression.model, data, batch))
    return out


# ---------------------------------------------------------------------- ppl-vi
def fit_time(model, data, batch, steps) -> float:
    """CPU seconds per step of fit(jit=True) between step WARM and its last step."""
    marks = {}

    def clock(state):
        if state.step in (WARM, WARM + steps):
            marks[state.step] = time.process_time()

    extra = {} if batch is None else {"subsample_size": batch}
    result = ppl_vi.fit(
        model, **data, **extra, num_steps=WARM + steps, jit=True, lr=LR, progress=False,
        polish=None, convergence=None, callbacks=[clock], seed=0,
    )  # fmt: skip
    if result.method_info["jit"]["main"]["path"] != "compiled step":
        raise RuntimeError(f"the fit did not run compiled: {result.method_info['jit']}")
    return (marks[WARM + steps] - marks[WARM]) / steps


# ---------------------------------------------------------------------- the floor
def _softplus_inv(x: float) -> float:
    return math.log(math.expm1(x))


def floor_eight_schools(data, steps, device) -> float:
    y, sigma = data["y"].to(device), data["sigma"].to(device)
    dim = 2 + y.shape[0]
    loc = torch.zeros(dim, device=device, requires_grad=True)
    raw = torch.full((dim,), _softplus_inv(0.1), device=device, requires_grad=True)
    opt = torch.optim.Adam([loc, raw], lr=LR, foreach=True)
    half_cauchy = dist.HalfCauchy(torch.tensor(5.0, device=device))
    normal5 = dist.Normal(torch.tensor(0.0, device=device), 5.0)

    def step():
        scale = torch.nn.functional.softplus(raw)
        u = loc + scale * torch.randn(dim, device=device)
        mu, tau = u[0], u[1].exp()
        theta_t = u[2:]
        log_p = normal5.log_prob(mu) + half_cauchy.log_prob(tau) + u[1]
        log_p = log_p - 0.5 * (theta_t**2).sum()
        log_p = log_p + dist.Normal(mu + tau * theta_t, sigma).log_prob(y).sum()
        loss = -(log_p + scale.log().sum())  # entropy up to a constant
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return _time_loop(step, steps, device)


def floor_logreg(data, batch, steps, device) -> float:
    X, y = data["X"], data["y"]
    n, d = X.shape
    loc = torch.zeros(d + 1, device=device, requires_grad=True)
    raw = torch.full((d + 1,), _softplus_inv(0.1), device=device, requires_grad=True)
    opt = torch.optim.Adam([loc, raw], lr=LR, foreach=True)
    batches = EpochBatches(0, ["data"])
    counter = [0]

    def step():
        scale = torch.nn.functional.softplus(raw)
        u = loc + scale * torch.randn(d + 1, device=device)
        alpha, beta = u[0], u[1:]
        if batch is None:
            Xb, yb, weight = X, y, 1.0
        else:
            idx = batches.indices("data", n, batch, counter[0], device)
            counter[0] += 1
            Xb, yb, weight = X.index_select(0, idx), y.index_select(0, idx), n / batch
        logits = alpha + Xb @ beta
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, yb, reduction="sum"
        )
        log_p = weight * log_lik - 0.5 * (u**2).sum()
        loss = -(log_p + scale.log().sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return _time_loop(step, steps, device)


def _time_loop(step, steps, device) -> float:
    for _ in range(WARM):
        step()
    _sync(device)
    start = time.process_time()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.process_time() - start) / steps


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------- NumPyro
def numpyro_time(name, data, batch, steps) -> float:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    if name == "eight_schools":
        y, sigma = (jnp.asarray(np.asarray(data[k].cpu())) for k in ("y", "sigma"))

        def model():
            return _numpyro.eight_schools(len(y), sigma, y)

    else:
        X, yy = (jnp.asarray(np.asarray(data[k].cpu())) for k in ("X", "y"))
        n, d = X.shape

        def model():
            alpha = numpyro.sample("alpha", ndist.Normal(0.0, 1.0))
            beta = numpyro.sample("beta", ndist.Normal(jnp.zeros(d), 1.0).to_event(1))
            with numpyro.plate("data", n, subsample_size=batch) as idx:
                Xb = X if batch is None else X[idx]
                yb = yy if batch is None else yy[idx]
                numpyro.sample("y", ndist.Bernoulli(logits=alpha + Xb @ beta), obs=yb)

    svi = SVI(model, AutoNormal(model), numpyro.optim.Adam(LR), Trace_ELBO())
    update = jax.jit(svi.update)
    state = svi.init(jax.random.PRNGKey(0))
    for _ in range(WARM):
        state, loss = update(state)
    jax.block_until_ready(state)
    start = time.process_time()
    for _ in range(steps):
        state, loss = update(state)
    jax.block_until_ready((state, loss))
    return (time.process_time() - start) / steps


# ---------------------------------------------------------------------- the run
def _steps_for(seconds: float, per_step: float) -> int:
    return int(min(2000, max(10, seconds / max(per_step, 1e-6))))


def run_workload(name, model, data, batch, args, numpyro_ok, device) -> dict:
    contenders = {
        "fit": lambda s: fit_time(model, data, batch, s),
        "floor": (
            (lambda s: floor_eight_schools(data, s, device))
            if name == "eight_schools"
            else (lambda s: floor_logreg(data, batch, s, device))
        ),
    }
    if numpyro_ok and device.type == "cpu":
        contenders["numpyro"] = lambda s: numpyro_time(name, data, batch, s)
    steps = {k: _steps_for(args.seconds, f(10)) for k, f in contenders.items()}  # calibrate
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):  # interleaved
        for key, f in contenders.items():
            times[key].append(f(steps[key]))
    row = {"steps": steps, "ms_per_step": {k: statistics.median(v) * 1e3 for k, v in times.items()}}
    row["times"] = times
    row["fit_vs_floor"] = ratio_stats(times["fit"], times["floor"])
    if "numpyro" in times:
        row["fit_vs_numpyro"] = ratio_stats(times["fit"], times["numpyro"])
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="per contender and repeat")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 of the 8 (N, D) pairs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    numpyro_ok, numpyro_note = _numpyro.available()
    report = {
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "jax_note": _numpyro.threads_note() if numpyro_ok else numpyro_note,
        "numpyro": numpyro_note,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
        "rows": {},
    }
    print(f"torch threads {torch.get_num_threads()}, device {device}; {numpyro_note}", flush=True)
    for name, model, data, batch in workloads(args.quick, device):
        row = run_workload(name, model, data, batch, args, numpyro_ok, device)
        report["rows"][name] = row
        ms = row["ms_per_step"]
        line = f"{name:32s} " + " ".join(f"{k} {v:.3f}" for k, v in ms.items()) + " ms/step"
        line += f" | fit/floor {_ratio(row['fit_vs_floor'])}"
        if "fit_vs_numpyro" in row:
            line += f" | fit/numpyro {_ratio(row['fit_vs_numpyro'])}"
        print(line, flush=True)
    report["scaling"] = scaling(report["rows"])
    report["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    (RESULTS / f"step_speed{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return report


def scaling(rows: dict) -> dict:
    """Mini-batch step time at N = 1e6 over N = 1e4 (same D and batch), per implementation."""
    out = {}
    for d in (10, 100):
        small = rows.get(f"logreg N=1e+04 D={d} B={BATCH}")
        large = rows.get(f"logreg N=1e+06 D={d} B={BATCH}")
        if small and large:
            out[f"D={d}"] = {
                k: ratio_stats(large["times"][k], small["times"][k]) for k in large["times"]
            }
    return out


def markdown(report: dict) -> str:
    has_np = any("fit_vs_numpyro" in r for r in report["rows"].values())
    lines = [
        "#### Per-step time near the floor: compiled step vs hand-written PyTorch and NumPyro",
        "",
        f"Mean-field Gaussian, Trace_ELBO (1 particle), Adam 0.01; CPU ms per step, median of "
        f"{report['repeats']} interleaved repeats (ratios: median and range of the per-repeat "
        f"ratios). torch threads: {report['torch_threads']}, device {report['device']}. "
        f"{report['jax_note']}. Load average {report['load_before'][0]:.2f} before, "
        f"{report['load_after'][0]:.2f} after. `fit` = `fit(jit=True)` timed inside the fit "
        "(step 5 to the end); `floor` = the same estimator hand-written in PyTorch.",
        "",
        "| workload | fit | floor | " + ("NumPyro | " if has_np else "") + "fit / floor | "
        + ("fit / NumPyro |" if has_np else ""),
        "|---|---:|---:|" + ("---:|" if has_np else "") + "---:|" + ("---:|" if has_np else ""),
    ]
    for name, row in report["rows"].items():
        ms = row["ms_per_step"]
        cells = [name, f"{ms['fit']:.3f}", f"{ms['floor']:.3f}"]
        if has_np:
            cells.append(f"{ms['numpyro']:.3f}" if "numpyro" in ms else "-")
        cells.append(_ratio(row["fit_vs_floor"]))
        if has_np:
            cells.append(_ratio(row["fit_vs_numpyro"]) if "fit_vs_numpyro" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("scaling"):
        lines += ["", f"Mini-batch step time at N = 1e6 over N = 1e4 (batch {BATCH}):", ""]
        for d, by in report["scaling"].items():
            lines.append(f"- {d}: " + ", ".join(f"{k} {_ratio(r)}" for k, r in by.items()))
    gpu = RESULTS / "step_speed_cuda.json"
    if report["device"] == "cpu":
        lines += ["", "GPU: " + ("see below" if gpu.exists() else "not run (no CUDA device)")]
        if gpu.exists():
            lines += ["", markdown(json.loads(gpu.read_text())).split("\n", 2)[2]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
