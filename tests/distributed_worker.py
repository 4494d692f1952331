"""The program each process runs in tests/test_distributed.py (two gloo ranks on CPU).

Each scenario writes what the test checks to ``<folder>/<scenario>.rank<r>.pt``.
"""

from __future__ import annotations

import os
import signal
import traceback
import warnings

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist

import ppl_vi
from ppl_vi.engine import Engine

N, D, BATCH, SEED, LR = 64, 3, 16, 3, 0.05
#: Set by a callback on one rank to make that rank's next model call misbehave.
TRIGGER = {"what": None}


def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    logits = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(logits), generator=gen)
    return x, y


def make_model(batch):
    """Logistic regression written as Pyro users write it, with a mini-batch of ``batch``."""

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 2.0))
        what = TRIGGER["what"]
        if what == "nan":
            b = b * float("nan")
        elif what == "sigint":
            TRIGGER["what"] = None
            os.kill(os.getpid(), signal.SIGINT)
        elif what == "keyboard":  # Ctrl-C raised inside the model, not through the handler
            TRIGGER["what"] = None
            raise KeyboardInterrupt
        elif what == "late":
            pyro.param("late", torch.zeros(()))
        with pyro.plate("data", x.shape[0], subsample_size=batch) as idx:
            pyro.sample("y", dist.Bernoulli(logits=x[idx] @ w + b), obs=y[idx])

    return model


def _on_rank(rank, step, what):
    def callback(state):
        if state.step == step and tdist.get_rank() == rank:
            TRIGGER["what"] = what

    return callback


def _raise_on_rank(rank, step):
    def callback(state):
        if state.step == step and tdist.get_rank() == rank:
            raise RuntimeError("callback failed here")

    return callback


def _fit(steps, **options):
    x, y = data()
    options = {"lr": LR, "seed": SEED, "dtype": torch.float64, "progress": False,
               "convergence": None, "polish": None, **options}  # fmt: skip
    return ppl_vi.fit(make_model(options.pop("batch", BATCH)), x, y, num_steps=steps,
                      distributed=True, **options)  # fmt: skip


def _params(result):
    return {k: v.clone() for k, v in result.params.items()}


def scenario_engine(folder):
    """Engine by hand: the state right after init (per rank), then 12 steps."""
    x, y = data()
    engine = Engine(make_model(BATCH), "mean_field", "elbo", pyro.optim.Adam({"lr": LR}),
                    seed=SEED, dtype=torch.float64, distributed=True)  # fmt: skip
    state = engine.init(x, y)
    init = {k: v.detach().clone() for k, v in state.params.items()}
    rng = state.rng["torch"].clone()
    for _ in engine.run(state, 12):
        pass
    final = {k: v.detach().clone() for k, v in state.params.items()}
    return {"init": init, "rng": rng, "final": final, "losses": list(state.losses),
            "batch_seed": engine.parallel.epochs.seed}  # fmt: skip


def scenario_nan(folder):
    try:
        _fit(10, callbacks=[_on_rank(1, 3, "nan")])
    except ppl_vi.NonFiniteLossError as err:
        return {"type": type(err).__name__, "message": str(err), "step": err.step,
                "kept": err.result.num_steps, "params": _params(err.result)}  # fmt: skip
    return {"type": None}


def scenario_callback(folder):
    try:
        _fit(10, callbacks=[_raise_on_rank(0, 4)])
    except ppl_vi.FitError as err:
        return {"type": type(err).__name__, "message": str(err), "kept": err.result.num_steps}
    return {"type": None}


def scenario_interrupt(folder):
    path = os.path.join(folder, "interrupt.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _fit(12, checkpoint=path, callbacks=[_on_rank(1, 5, "sigint")])
    resumed = _fit(12, checkpoint=path)
    straight = _fit(12)
    return {"interrupted": first.interrupted, "first_steps": first.num_steps,
            "warned": any("interrupted" in str(w.message) for w in caught),
            "resumed": _params(resumed), "straight": _params(straight),
            "resumed_losses": list(resumed.losses), "straight_losses": list(straight.losses),
            "saved_streams": len(torch.load(path, weights_only=False)["rng_ranks"])}  # fmt: skip


def scenario_keyboard(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _fit(8, callbacks=[_on_rank(1, 3, "keyboard")])
    return {"interrupted": result.interrupted, "steps": result.num_steps}


def scenario_late_param(folder):
    try:
        _fit(8, callbacks=[_on_rank(1, 2, "late")])
    except ppl_vi.FitError as err:
        return {"message": str(err), "step": err.step}
    return {"message": None}


def scenario_odd_batch(folder):
    try:
        _fit(5, batch=15)
    except ValueError as err:
        return {"message": str(err)}
    return {"message": None}


def scenario_setup_error(folder):
    """Rank 1's model fails on its shard of the first step's batch: the set-up check (which
    evaluates that shard) stops both ranks before step 1, each with what it knows."""
    from ppl_vi.minibatch import batch_indices

    x, y = data()
    first_shard = batch_indices(SEED, "data", 0, N, BATCH, rank=1, world=2)

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        with pyro.plate("data", N, subsample_size=BATCH) as idx:
            if tdist.get_rank() == 1 and torch.equal(idx, first_shard):
                raise ValueError("rank 1 cannot take its first shard")
            pyro.sample("y", dist.Bernoulli(logits=x[idx] @ w), obs=y[idx])

    try:
        ppl_vi.fit(model, x, y, num_steps=3, seed=SEED, dtype=torch.float64, progress=False,
                   distributed=True)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - reported to the test
        return {"type": type(err).__name__, "message": str(err)}
    return {"type": None}


def scenario_jit_true(folder):
    try:
        _fit(3, jit=True)
    except ValueError as err:
        return {"message": str(err)}
    return {"message": None}


def scenario_no_plate(folder):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    try:
        ppl_vi.fit(model, torch.zeros(8), num_steps=3, progress=False, distributed=True)
    except ppl_vi.DataError as err:
        return {"message": str(err)}
    return {"message": None}


def scenario_vae(folder):
    """Amortized guide (an encoder network) and model-side network parameters
    (``pyro.module``): every parameter moves and stays identical across ranks."""
    from ppl_vi.models import vae_digits

    pyro.clear_param_store()
    engine = Engine(vae_digits.model, "amortized", "elbo", pyro.optim.Adam({"lr": 0.01}),
                    seed=SEED, distributed=True)  # fmt: skip
    state = engine.init(**vae_digits.load_data(n=256), subsample_size=32)
    init = {k: v.detach().clone() for k, v in state.params.items()}
    for _ in engine.run(state, 6):
        pass
    return {"init": init, "final": {k: v.detach().clone() for k, v in state.params.items()}}


def scenario_locals(folder):
    """Per-datum latents in the subsampled plate: the mean-field guide's local parameters are
    replicated on every rank; only the entries in a step's global batch move."""

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(y), subsample_size=BATCH) as idx:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(z, 0.5), obs=y[idx])

    y = torch.linspace(-2.0, 2.0, N)
    engine = Engine(model, "mean_field", "elbo", pyro.optim.Adam({"lr": LR}), seed=SEED,
                    distributed=True)  # fmt: skip
    state = engine.init(y)
    before = state.params["MeanField.locs.z"].detach().clone()
    for _ in engine.run(state, 1):
        pass
    moved = (state.params["MeanField.locs.z"] != before).nonzero().flatten()
    mine = engine.parallel.epochs.indices("data", N, BATCH, 0)
    batch = torch.cat([mine] + engine.parallel.gather(mine)).unique()
    return {"moved": moved, "batch": batch,
            "params": {k: v.detach().clone() for k, v in state.params.items()}}  # fmt: skip


def scenario_pyro_style(folder):
    """A model as Pyro's regression tutorial writes it: a PyroModule with PyroSample priors
    (``.expand`` locs), numpy data, alpha[group] in a plate, the data plate subsampled."""
    import numpy as np
    from pyro.nn import PyroModule, PyroSample

    rng = np.random.default_rng(0)
    x, group = rng.normal(size=(N, D)), rng.integers(0, 4, N)
    y = x @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=N) * 0.3

    class Regression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](D, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, D]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 5.0).expand([1]).to_event(1))

        def forward(self, x, group, y=None):
            sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
            with pyro.plate("groups", 4):
                alpha = pyro.sample("alpha", dist.Normal(0.0, 1.0))
            mean = self.linear(x).squeeze(-1) + alpha[group]
            with pyro.plate("data", x.shape[0], subsample_size=BATCH) as idx:
                pyro.sample("obs", dist.Normal(mean[..., idx], sigma), obs=y[idx])

    result = ppl_vi.fit(Regression(), x, group, y, num_steps=20, progress=False,
                        distributed=True)  # fmt: skip
    return {"params": _params(result), "losses": list(result.losses)}


#: Every other guide family and ELBO of the library in a data-parallel fit.
COMBINATIONS = [(g, "elbo") for g in ("full_rank", "low_rank", "iaf", "hvm")] + [
    ("mean_field", e) for e in ("iwae", "renyi", "rb_score", "stein")
]


def scenario_families(folder):
    out = {}
    for guide, elbo in COMBINATIONS:
        try:
            result = _fit(4, guide=guide, elbo=elbo, dtype=torch.float32)
            out[f"{guide}/{elbo}"] = {"params": _params(result), "losses": list(result.losses)}
        except Exception as err:  # noqa: BLE001 - reported per combination
            out[f"{guide}/{elbo}"] = {"error": f"{type(err).__name__}: {err}"}
    return out


SCENARIOS = {
    "engine": scenario_engine,
    "nan": scenario_nan,
    "callback": scenario_callback,
    "interrupt": scenario_interrupt,
    "keyboard": scenario_keyboard,
    "late_param": scenario_late_param,
    "odd_batch": scenario_odd_batch,
    "no_plate": scenario_no_plate,
    "setup_error": scenario_setup_error,
    "jit_true": scenario_jit_true,
    "vae": scenario_vae,
    "families": scenario_families,
    "locals": scenario_locals,
    "pyro_style": scenario_pyro_style,
}


def main(rank, folder, world=2):
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "the model does not broadcast", RuntimeWarning)
    tdist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    try:
        for name, scenario in SCENARIOS.items():
            TRIGGER["what"] = None
            try:
                out = scenario(folder)
            except BaseException:  # noqa: BLE001 - reported to the test
                out = {"crash": traceback.format_exc()}
            torch.save(out, os.path.join(folder, f"{name}.rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def nccl_main(rank, folder, world):
    """One rank per GPU on NCCL: a short fit with ``device="cuda"``, which means this rank's own
    GPU; writes its parameters and where they live."""
    torch.cuda.set_device(rank)
    tdist.init_process_group(
        "nccl", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    try:
        x, y = data()
        result = ppl_vi.fit(make_model(BATCH), x, y, num_steps=20, lr=LR, seed=SEED,
                            progress=False, device="cuda", distributed=True)  # fmt: skip
        out = {"params": {k: v.cpu() for k, v in result.params.items()},
               "device": str(next(iter(result.params.values())).device)}  # fmt: skip
    except BaseException:  # noqa: BLE001 - reported to the test
        out = {"crash": traceback.format_exc()}
    torch.save(out, os.path.join(folder, f"nccl.rank{rank}.pt"))
    tdist.destroy_process_group()
