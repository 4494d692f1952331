"""How the engine chooses between the compiled step and the eager one, and what it reports in
``method_info["jit"]``: every step is taken exactly once and returns the loss it recorded,
whichever path ran it."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi import Engine, Polish
from ppl_vi.models import normal_normal

DATA = normal_normal.load_data()
QUICK = {"progress": False, "convergence": None, "seed": 0}


def _unrecordable(x):  # Python control flow on a drawn value: runs, but cannot be recorded
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    if mu.item() > 100.0:
        mu = mu + 1.0
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_step_that_cannot_be_recorded_runs_eagerly_and_counts_once():
    engine = Engine(_unrecordable, jit=True, seed=0)
    state = engine.init(DATA["x"])
    losses = [engine.step(state)[1] for _ in range(3)]
    assert state.step == 3 and losses == state.losses and len(set(losses)) == 3
    report = engine.jit_report()["main"]
    assert report["path"] == "eager"
    assert report["reason"].endswith(
        "turns a traced tensor into a Python value, which a recorded graph would freeze at its "
        "first value"
    )
    assert report["reason"].startswith("test_engine_jit.py:")


def test_auto_reports_why_a_long_fit_could_not_be_compiled():
    with pytest.warns(RuntimeWarning, match="does not broadcast"):
        result = ppl_vi.fit(_unrecordable, DATA["x"], num_steps=201, polish=None, **QUICK)
    report = result.method_info["jit"]["main"]
    assert report["path"] == "eager"
    assert report["reason"].startswith("the step reads a tensor as a Python number")


def test_a_compiled_step_that_fails_is_taken_eagerly_on_the_same_draws():
    countdown = {"calls": None}

    def model(x):  # raises once, at the second model call after it is armed
        if countdown["calls"] is not None:
            countdown["calls"] -= 1
            if countdown["calls"] == 0:
                countdown["calls"] = None
                raise RuntimeError("a transient failure")
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    engine = Engine(model, jit=True, seed=0)
    state = engine.init(DATA["x"])
    engine.step(state)
    countdown["calls"] = 2  # the recording's model call, then the check's eager one
    _, loss = engine.step(state)
    assert state.step == 2 and state.losses[-1] == loss and len(state.losses) == 2
    assert engine.jit_report() == {
        "main": {
            "path": "compiled ELBO",
            "reason": "the compiled step failed (RuntimeError: a transient failure)",
        }
    }
    eager = Engine(model, jit=False, seed=0)
    eager_state = eager.init(DATA["x"])
    for _ in range(2):
        eager.step(eager_state)
    torch.testing.assert_close(state.losses, eager_state.losses, rtol=1e-6, atol=0)


def test_every_phase_is_reported_and_the_compile_time_in_milliseconds():
    engine = Engine(normal_normal.model, jit=True, seed=0, policies=[Polish(num_particles=8)])
    state = engine.init(**DATA)
    for _ in engine.run(state, num_steps=8):
        pass
    report = engine.jit_report()
    assert sorted(report) == ["main", "polish"]
    assert all(r["path"] == "compiled step" for r in report.values()), report
    engine.compiled_step(engine.elbos["polish"]).compile_seconds = 0.0123456
    assert engine.jit_report()["polish"]["compile_s"] == 0.012


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_pyros_own_jit_elbo_runs_as_given():
    engine = Engine(normal_normal.model, elbo=pyro.infer.JitTrace_ELBO(), jit=True, seed=0)
    state = engine.init(**DATA)
    for _ in range(3):
        engine.step(state)
    assert engine.compiled_step(engine.elbo) is None
    assert engine.jit_report() == {"main": {"path": "eager", "reason": None}}


def test_only_jit_true_changes_the_trajectory_settings():
    settings = {}
    for jit in (True, False, "auto"):
        engine = Engine(normal_normal.model, jit=jit)
        engine.init(**DATA)
        settings[jit] = engine.settings()["jit"]
    assert settings == {True: True, False: False, "auto": False}


@pytest.mark.parametrize(("jit", "num_steps"), [(True, 20), ("auto", 206)])
def test_annealed_fits_compile_the_steps_after_the_warm_up(jit, num_steps):
    # kl_anneal=5: the coefficient is 1 from step 5 on ("auto" needs 200 steps to go then)
    result = ppl_vi.fit(
        normal_normal.model, **DATA, num_steps=num_steps, kl_anneal=5, jit=jit, polish=None,
        **QUICK,
    )  # fmt: skip
    assert result.method_info["jit"]["main"]["path"] == "compiled step"
    if jit is True:  # the warm-up steps ran eagerly, with their coefficients
        eager = ppl_vi.fit(
            normal_normal.model, **DATA, num_steps=num_steps, kl_anneal=5, jit=False,
            polish=None, **QUICK,
        )  # fmt: skip
        torch.testing.assert_close(result.losses, eager.losses, rtol=1e-5, atol=0)


def test_a_step_given_new_data_uses_them():
    shifted = DATA["x"] + 3.0
    a, b, c = (Engine(normal_normal.model, seed=0) for _ in range(3))
    states = [e.init(**DATA) for e in (a, b, c)]
    _, same = a.step(states[0])
    _, explicit = b.step(states[1], DATA["x"])
    _, new = c.step(states[2], shifted)
    assert same == explicit and new != same
