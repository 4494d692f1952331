"""Engine checkpoints by hand: a resumed fit draws the random numbers the saved fit would have
drawn next, also when the fit has no seed of its own; a checkpoint's CUDA stream is dropped on
a CPU; in a data-parallel resume each rank takes its own saved stream, and ranks the checkpoint
did not have keep theirs."""

import types

import pyro
import torch

from ppl_vi import Engine
from ppl_vi.models import normal_normal
from ppl_vi.runtime import rng_state

DATA = normal_normal.load_data()


def _saved(tmp_path, seed, steps_before=4, steps_after=4):
    """A fit's checkpoint after ``steps_before`` steps, and its losses over the next ones."""
    engine = Engine(normal_normal.model, seed=seed)
    state = engine.init(**DATA)
    for _ in range(steps_before):
        engine.step(state)
    path = tmp_path / "fit.ckpt"
    with engine.session(state):
        engine.save_checkpoint(state, path, fingerprint={})
    for _ in range(steps_after):
        engine.step(state)
    return torch.load(path, weights_only=True), state.losses[steps_before:]


def _resumed_losses(payload, seed, steps=4, parallel=None):
    engine = Engine(normal_normal.model, seed=seed)
    state = engine.init(**DATA)
    engine.parallel = parallel
    engine.load_checkpoint(state, payload, "fit.ckpt")
    engine.parallel = None
    for _ in range(steps):
        engine.step(state)
    return state, state.losses[-steps:]


def test_a_fit_without_a_seed_resumes_on_the_saved_stream(tmp_path):
    pyro.set_rng_seed(11)
    payload, expected = _saved(tmp_path, seed=None)
    pyro.set_rng_seed(12)  # the caller's generators moved on meanwhile
    state, losses = _resumed_losses(payload, seed=None)
    assert state.step == 8 and losses == expected


def test_a_checkpoint_from_a_gpu_resumes_on_a_cpu(tmp_path):
    payload, expected = _saved(tmp_path, seed=3)
    payload["rng"]["cuda"] = {0: torch.zeros(16, dtype=torch.uint8)}
    state, losses = _resumed_losses(payload, seed=3)
    assert losses == expected and "cuda" not in state.rng


def test_each_rank_resumes_on_its_own_saved_stream(tmp_path):
    payload, expected = _saved(tmp_path, seed=3)
    other = Engine(normal_normal.model, seed=4)  # rank 1's stream: another seed's
    other_state = other.init(**DATA)
    with other.session(other_state):
        stream = rng_state()
    rank1 = types.SimpleNamespace(rank=1, world=2)
    payload["rng_ranks"] = [payload["rng"], {"torch": stream["torch"]}]
    state, _ = _resumed_losses(payload, seed=3, steps=0, parallel=rank1)
    assert torch.equal(state.rng["torch"], stream["torch"]) and state.step == 4
    # a rank the checkpoint did not have (resumed on more ranks) keeps its own stream
    payload["rng_ranks"] = [payload["rng"]]
    fresh = Engine(normal_normal.model, seed=5)
    fresh_state = fresh.init(**DATA)
    own = fresh_state.rng["torch"].clone()
    fresh.parallel = rank1
    fresh.load_checkpoint(fresh_state, payload, "fit.ckpt")
    assert torch.equal(fresh_state.rng["torch"], own) and fresh_state.step == 4


def test_in_a_data_parallel_fit_rank_0_writes_every_ranks_stream(tmp_path):
    engine = Engine(normal_normal.model, seed=3)
    state = engine.init(**DATA)
    engine.step(state)
    for rank in (1, 0):
        engine.parallel = types.SimpleNamespace(
            rank=rank, world=2, gather=lambda obj: [obj, {"torch": torch.zeros(3)}]
        )
        path = tmp_path / f"rank{rank}.ckpt"
        with engine.session(state):
            engine.save_checkpoint(state, path, fingerprint={})
        assert path.exists() is (rank == 0)
    payload = torch.load(tmp_path / "rank0.ckpt", weights_only=True)
    assert torch.equal(payload["rng_ranks"][0]["torch"], payload["rng"]["torch"])
    assert torch.equal(payload["rng_ranks"][1]["torch"], torch.zeros(3))
