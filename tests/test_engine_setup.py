"""Setting up an engine: the state ``init`` returns, the documented defaults (seed 0, keyword
arguments), where mini-batches come from (the fit's seed, or one drawn from the caller's
generator), and where the engine's warnings point (the caller's line)."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi import Engine, Polish, TrainState
from ppl_vi.minibatch import batch_indices
from ppl_vi.models import normal_normal

DATA = normal_normal.load_data()
N, B = 12, 4
Y = torch.linspace(-1.0, 1.0, N)


def _losses(engine, steps=3):
    state = engine.init(**DATA)
    for _ in range(steps):
        engine.step(state)
    return state.losses


def test_a_fresh_state_has_taken_and_asked_for_nothing():
    engine = Engine(normal_normal.model)
    state = engine.init(**DATA)
    assert isinstance(state, TrainState)
    assert (state.step, state.end, state.num_steps, state.phase) == (0, 0, 0, "main")
    assert (state.losses, state.avg, state.avg_count, state.converged) == ([], None, 0, False)
    assert state.last_lr_factor == 1.0  # no schedule has scaled a step yet
    assert state.interrupted is False
    # run() without a number of steps runs to where the state ends: nothing to do
    assert list(engine.run(state)) == [] and state.phase == "done" and state.step == 0


def test_engine_takes_its_arguments_by_keyword_and_defaults_to_seed_0():
    by_keyword = Engine(model=normal_normal.model, guide="mean_field", elbo="elbo", optim=None)
    default = _losses(by_keyword)
    assert by_keyword.compiled_step(by_keyword.elbo) is None  # by hand: eager unless asked
    assert default == _losses(Engine(normal_normal.model, seed=0))
    assert default != _losses(Engine(normal_normal.model, seed=1))


def test_seed_none_draws_from_the_callers_generators():
    def losses_after(global_seed):
        pyro.set_rng_seed(global_seed)
        return _losses(Engine(normal_normal.model, seed=None))

    assert losses_after(5) == losses_after(5)
    assert losses_after(5) != losses_after(6)


def _batched_model():
    seen = []

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", N, subsample_size=B) as idx:
            seen.append(idx.clone())
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    return model, seen


def _first_batch(seed):
    model, seen = _batched_model()
    engine = Engine(model, seed=seed)
    state = engine.init(Y)
    seen.clear()
    engine.step(state)
    return engine, seen[0]


def test_the_mini_batches_follow_the_fits_seed():
    for seed in (0, 5):
        _, first = _first_batch(seed)
        assert torch.equal(first, batch_indices(seed, "data", 0, N, B)), seed


def test_seed_none_draws_the_batch_seed_from_the_callers_generator():
    batches, seeds = [], []
    for global_seed in (1, 1, 2, 3):
        torch.manual_seed(global_seed)
        engine, first = _first_batch(None)
        batches.append(first)
        seeds.append(engine.batches.seed)
    assert torch.equal(batches[0], batches[1]) and seeds[0] == seeds[1]
    assert len(set(seeds[1:])) == 3
    # a 62-bit seed: below 2**40 with probability 2**-22 each
    assert all(2**40 < s < 2**62 for s in seeds), seeds
    for s, first in zip(seeds, batches, strict=True):
        assert torch.equal(first, batch_indices(s, "data", 0, N, B))


def _not_broadcasting(y):  # a matrix product on the particle dim
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(torch.ones(len(y), 2) @ w, 1.0), obs=y)


def test_the_batching_warning_points_at_the_callers_line():
    for start in (
        lambda: ppl_vi.fit(_not_broadcasting, Y, num_steps=1, progress=False),
        lambda: ppl_vi.fit(_not_broadcasting, Y, num_steps=1, num_particles=4, progress=False),
        lambda: Engine(_not_broadcasting).init(Y),
    ):
        with pytest.warns(RuntimeWarning, match="does not broadcast") as record:
            start()
        (warning,) = [w for w in record if "does not broadcast" in str(w.message)]
        assert warning.filename == __file__, warning.filename


def test_a_final_phase_elbo_that_fails_warns_at_the_callers_line():
    def model(y):  # breaks on more than 4 particles at once
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if mu.numel() > 4:
            raise ValueError("too many particles: " + "z" * 300)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.warns(RuntimeWarning, match="the polish phase's ELBO") as record:
        result = ppl_vi.fit(
            model, Y, num_steps=4, num_particles=2, polish=Polish(num_particles=8),
            progress=False, convergence=None,
        )  # fmt: skip
    (warning,) = record
    assert warning.filename == __file__
    cut = "ValueError: too many particles: " + "z" * (200 - len("too many particles: "))
    assert str(warning.message) == (
        f"the polish phase's ELBO with 8 particles failed on the model ({cut}); that phase "
        "uses the main ELBO (2 particle(s)) instead"
    )
    assert result.num_steps == 4


def test_a_final_phase_elbo_with_as_many_particles_is_not_added():
    engine = Engine(normal_normal.model, num_particles=4, policies=[Polish(num_particles=4)])
    engine.init(**DATA)
    assert sorted(engine.elbos) == ["main"]
    engine = Engine(normal_normal.model, num_particles=4, policies=[Polish(num_particles=5)])
    engine.init(**DATA)
    assert engine.elbos["polish"].num_particles == 5


def test_the_final_phase_keeps_an_elbo_given_as_an_instance_or_defined_by_its_particles():
    instance = pyro.infer.Trace_ELBO(num_particles=2, vectorize_particles=True)
    for elbo in (instance, "iwae"):
        engine = Engine(
            normal_normal.model, elbo=elbo, num_particles=2, policies=[Polish(num_particles=8)]
        )
        engine.init(**DATA)
        assert sorted(engine.elbos) == ["main"], elbo


def test_without_a_schedule_the_learning_rate_is_the_optimizers():
    engine = Engine(normal_normal.model, optim=pyro.optim.Adam({"lr": 0.05}))
    state = engine.init(**DATA)
    engine.step(state)
    lrs = {g["lr"] for adam in state.optim.optim_objs.values() for g in adam.param_groups}
    assert lrs == {0.05} and state.last_lr_factor == 1.0


def _breaks_on_many_particles(y):  # passes the two-particle probe, fails with four at once
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    if mu.numel() > 2:
        raise ValueError("more than two particles")
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_an_elbo_that_fails_batched_falls_back_to_one_particle_at_a_time():
    engine = Engine(_breaks_on_many_particles, num_particles=4, seed=0)
    with pytest.warns(RuntimeWarning, match="does not broadcast") as record:
        state = engine.init(Y)
    (warning,) = record
    assert warning.filename == __file__
    text = str(warning.message)
    assert text.startswith(
        "the model does not broadcast over a batch of particles (ValueError: more than two "
        "particles at test_engine_setup.py:"
    )
    assert text.endswith(" The final phase adds no extra particles.")
    assert engine.info.batched is False and engine.elbo.vectorize_particles is False
    engine.step(state)
    assert state.step == 1


def test_an_elbo_instance_that_fails_batched_is_an_error_before_training():
    elbo = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="more than two particles") as err:
            Engine(_breaks_on_many_particles, elbo=elbo).init(Y)
    assert err.value.__notes__ == [
        "ppl-vi: the ELBO could not be evaluated on the model before training"
    ]


def test_a_pyro_learning_rate_scheduler_steps_once_per_step():
    scheduler = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "gamma": 0.5}
    )
    engine = Engine(normal_normal.model, optim=scheduler, seed=0)
    state = engine.init(**DATA)
    for _ in range(3):
        engine.step(state)
    lrs = {g["lr"] for s in scheduler.optim_objs.values() for g in s.optimizer.param_groups}
    assert state.step == 3 and lrs == {0.1 * 0.5**3}
