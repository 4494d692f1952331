"""Data-parallel fits (``fit(..., distributed=True)``) with two gloo processes on CPU.

The processes run ``tests/distributed_worker.py`` once for the module (about 10 s); each test
checks one scenario's output. The central check compares the two-process fit with a
one-process computation that owns nothing of the distributed code: it evaluates each rank's
shard of every step with that rank's random stream, averages the two gradients by hand and
steps ``torch.optim.Adam``.
"""

from __future__ import annotations

import time

import distributed_worker as worker
import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.multiprocessing as mp

import ppl_vi
from ppl_vi.distributed import batch_indices, rank_seed
from ppl_vi.engine import Engine

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(
        worker.main, args=(str(folder),), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two ranks did not finish within {TIMEOUT_S} s (a hang)")
    out = {}
    for name in worker.SCENARIOS:
        pair = [torch.load(folder / f"{name}.rank{r}.pt", weights_only=False) for r in (0, 1)]
        for r, result in enumerate(pair):
            assert "crash" not in result, f"scenario {name} crashed on rank {r}:\n{result['crash']}"
        out[name] = pair
    return out


def _one_process_reference(r0, r1, num_steps):
    """Each step: rank r's shard with rank r's stream, gradients averaged, torch's Adam."""
    x, y = worker.data()
    half = worker.make_model(worker.BATCH // 2)  # a rank's shard is half the global batch
    ref = Engine(half, "mean_field", "elbo", seed=0, dtype=torch.float64)
    state = ref.init(x, y)
    streams = [r0["rng"].clone(), r1["rng"].clone()]
    losses = []
    with ref.session(state):
        names = sorted(r0["init"])
        params = [state.params[n] for n in names]
        with torch.no_grad():
            for n, p in zip(names, params, strict=True):
                p.copy_(r0["init"][n])
        adam = torch.optim.Adam(params, lr=worker.LR)
        for step in range(num_steps):
            grads, loss = [torch.zeros_like(p) for p in params], 0.0
            for r in (0, 1):
                idx = batch_indices(r0["batch_seed"], "data", step, worker.N, worker.BATCH, r, 2)
                torch.set_rng_state(streams[r])
                model = poutine.condition(half, data={"data": idx})
                guide = poutine.condition(ref.guide, data={"data": idx})
                loss += ref.elbo.loss_and_grads(model, guide, x, y) / 2
                streams[r] = torch.get_rng_state()
                for g, p in zip(grads, params, strict=True):
                    g += p.grad / 2
                    p.grad = None
            for g, p in zip(grads, params, strict=True):
                p.grad = g
            adam.step()
            adam.zero_grad(set_to_none=True)
            losses.append(loss)
        return {n: p.detach().clone() for n, p in zip(names, params, strict=True)}, losses


def test_ranks_start_and_stay_identical(ranks):
    r0, r1 = ranks["engine"]
    for name in r0["init"]:
        assert torch.equal(r0["init"][name], r1["init"][name]), name  # broadcast from rank 0
        assert torch.equal(r0["final"][name], r1["final"][name]), name
    assert r0["losses"] == r1["losses"]
    assert not torch.equal(r0["rng"], r1["rng"])  # particles differ per rank


@pytest.mark.filterwarnings("ignore:the model does not broadcast")
def test_two_processes_equal_one_process_averaging_the_same_shards(ranks):
    r0, r1 = ranks["engine"]
    expected, losses = _one_process_reference(r0, r1, num_steps=len(r0["losses"]))
    for name, value in expected.items():
        torch.testing.assert_close(r0["final"][name], value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(losses), rtol=1e-12,
                               atol=0)  # fmt: skip
    # the fit moved: a step that did nothing would also leave the ranks identical
    moved = max((r0["final"][n] - r0["init"][n]).abs().max().item() for n in r0["init"])
    assert moved > 10 * worker.LR


def test_network_parameters_of_guide_and_model_are_averaged(ranks):
    r0, r1 = ranks["vae"]
    assert any(name.startswith("vae_decoder") for name in r0["final"])  # model side
    assert len(r0["final"]) > 4  # encoder layers too
    for name, value in r0["final"].items():
        assert torch.equal(value, r1["final"][name]), name
        assert not torch.equal(value, r0["init"][name]), f"{name} did not move"


def test_every_guide_family_and_elbo_trains_data_parallel(ranks):
    r0, r1 = ranks["families"]
    assert len(r0) == len(worker.COMBINATIONS)
    for key, out in r0.items():
        assert "error" not in out, f"{key}: {out['error']}"
        assert out["losses"] == r1[key]["losses"] and len(out["losses"]) == 4, key
        for name, value in out["params"].items():
            assert torch.equal(value, r1[key]["params"][name]), f"{key}: {name}"


def test_per_datum_parameters_move_only_in_the_global_batch(ranks):
    r0, r1 = ranks["locals"]
    assert len(r0["batch"]) == worker.BATCH  # the two ranks' shards: disjoint, together B
    assert torch.equal(r0["moved"].sort().values, r0["batch"].sort().values)
    for name, value in r0["params"].items():
        assert torch.equal(value, r1["params"][name]), name


def test_a_pyromodule_with_priors_and_numpy_data_trains_on_two_ranks(ranks):
    r0, r1 = ranks["pyro_style"]
    assert len(r0["losses"]) == 20 and r0["losses"] == r1["losses"]
    for name, value in r0["params"].items():
        assert torch.equal(value, r1["params"][name]), name


def test_nan_on_one_rank_stops_both_at_that_step(ranks):
    for out in ranks["nan"]:
        assert out["type"] == "NonFiniteLossError"
        assert out["step"] == 4 and out["kept"] == 3
        assert out["message"].startswith("rank 1 of 2:")
        assert "at step 4" in out["message"] and "'y'" in out["message"]
    a, b = (out["params"] for out in ranks["nan"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failing_callback_on_one_rank_stops_both(ranks):
    r0, r1 = ranks["callback"]
    assert r0["type"] == r1["type"] == "FitError"
    assert r0["kept"] == r1["kept"] == 4
    assert "callback failed here" in r0["message"]
    assert r1["message"].startswith("rank 0 of 2:") and "callback failed here" in r1["message"]


def test_ctrl_c_on_one_rank_stops_both_and_resumes_bitwise(ranks):
    for out in ranks["interrupt"]:
        assert out["interrupted"] and out["warned"]
        assert out["first_steps"] == 5  # the step in which rank 1 got SIGINT is dropped
        assert out["saved_streams"] == 2  # rank 0 saved every rank's random stream
        assert out["resumed_losses"] == out["straight_losses"]
        for name, value in out["straight"].items():
            assert torch.equal(out["resumed"][name], value), name


def test_ctrl_c_raised_inside_one_ranks_model_stops_both(ranks):
    assert ranks["keyboard"][0] == ranks["keyboard"][1] == {"interrupted": True, "steps": 3}


def test_a_parameter_created_after_the_start_names_it_on_both_ranks(ranks):
    for out in ranks["late_param"]:
        assert out["message"].startswith(
            "rank 1 of 2: step 3 failed (FitError: parameters "
            "['late'] were created after the data-parallel fit"
        )
        assert out["step"] == 3


def test_refusals_name_the_fix(ranks):
    for out in ranks["odd_batch"]:
        assert out["message"].startswith("plate 'data' has subsample_size=15")
        assert "multiple of 2" in out["message"] and "Trace Shapes" not in out["message"]
    for out in ranks["no_plate"]:
        assert "has no subsampled plate" in out["message"]
        assert "subsample_size=B" in out["message"]
    for out in ranks["jit_true"]:
        assert out["message"].startswith("jit=True is not available with distributed=True")


def test_a_set_up_failure_on_one_rank_stops_both_before_step_one(ranks):
    r0, r1 = ranks["setup_error"]
    assert r1["type"] == "ValueError"
    assert r1["message"].startswith("rank 1 cannot take its first shard")
    assert r0 == {
        "type": "FitError",
        "message": "another rank failed the data-parallel fit's set-up (see its error)",
    }


def test_without_a_process_group_the_error_says_how_to_launch():
    def model():
        pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="torchrun"):
        ppl_vi.fit(model, num_steps=2, progress=False, distributed=True)
    with pytest.raises(ValueError, match="without stochastic gradients"):
        ppl_vi.fit(model, guide="pathfinder", progress=False, distributed=True)


def test_batch_indices_are_disjoint_shards_of_per_epoch_permutations():
    size, batch, world = 103, 20, 4
    per_epoch = size // batch
    for epoch in range(2):
        seen = []
        for k in range(per_epoch):
            step = epoch * per_epoch + k
            shards = [batch_indices(7, "data", step, size, batch, r, world) for r in range(world)]
            assert all(len(s) == batch // world for s in shards)
            seen += torch.cat(shards).tolist()
        assert len(set(seen)) == per_epoch * batch  # no index twice within an epoch
        assert all(0 <= i < size for i in seen)
    first = torch.cat([batch_indices(7, "data", s, size, batch) for s in range(per_epoch)])
    second = torch.cat([batch_indices(7, "data", s, size, batch) for s in range(per_epoch, 10)])
    assert not torch.equal(first, second)  # a new permutation each epoch
    assert not torch.equal(batch_indices(7, "data", 0, size, batch),
                           batch_indices(7, "other", 0, size, batch))  # fmt: skip
    with pytest.raises(ValueError, match="divisible"):
        batch_indices(7, "data", 0, size, 10, 0, 3)


def test_rank_seeds_differ_and_rank_zero_keeps_the_seed():
    seeds = [rank_seed(5, r) for r in range(4)]
    assert seeds[0] == 5 and len(set(seeds)) == 4
    assert rank_seed(None, 3) is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (NCCL path)")
def test_nccl_one_rank_per_gpu(tmp_path):
    world = min(torch.cuda.device_count(), 2)
    mp.start_processes(worker.nccl_main, args=(str(tmp_path), world), nprocs=world,
                       start_method="spawn")  # fmt: skip
    outs = [torch.load(tmp_path / f"nccl.rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, out in enumerate(outs):
        assert "crash" not in out, out.get("crash")
        assert out["device"] == f"cuda:{rank}"
        assert all(torch.isfinite(v).all() for v in out["params"].values())
    for name, value in outs[0]["params"].items():
        assert all(torch.equal(value, out["params"][name]) for out in outs), name
