"""The explicit-state engine: init, step and run by hand give what fit gives; a failed step leaves
the state exactly as it was."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi import Engine, FitError, NonFiniteLossError, Polish, TrainState, VIResult
from ppl_vi.models import normal_normal

DATA = normal_normal.load_data()


def test_engine_by_hand_equals_fit():
    fitted = ppl_vi.fit(
        normal_normal.model,
        **DATA,
        num_steps=120,
        progress=False,
        convergence=None,
        polish=Polish(fraction=0.25),
        seed=7,
    )
    engine = Engine(
        normal_normal.model, "mean_field", "elbo", policies=[Polish(fraction=0.25)], seed=7
    )
    state = engine.init(**DATA)
    assert isinstance(state, TrainState) and state.step == 0 and state.phase == "main"
    seen = [(s.step, s.phase) for s in engine.run(state, num_steps=120)]
    assert [step for step, _ in seen] == list(range(1, 121))
    assert seen[89][1] == "main" and seen[90][1] == "polish"
    assert state.phase == "done"
    result = VIResult.from_state(state, engine)
    np.testing.assert_array_equal(result.losses, fitted.losses)
    for name, value in fitted.params.items():
        assert torch.equal(result.params[name], value)


def test_step_and_run_continue_each_other():
    a = Engine(normal_normal.model, seed=1)
    state_a = a.init(**DATA)
    for _ in range(10):
        state_a, loss = a.step(state_a)
        assert math.isfinite(loss)
    for _ in a.run(state_a, num_steps=30):
        pass
    b = Engine(normal_normal.model, seed=1)
    state_b = b.init(**DATA)
    for _ in b.run(state_b, num_steps=30):
        pass
    assert state_a.step == state_b.step == 30
    np.testing.assert_array_equal(state_a.losses, state_b.losses)


def test_a_failed_step_leaves_the_state_as_it_was():
    flag = {"bad": False}

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = torch.tensor(math.nan) if flag["bad"] else torch.tensor(1.0)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, scale), obs=x)

    engine = Engine(model, seed=2)
    state = engine.init(DATA["x"])
    for _ in range(5):
        engine.step(state)
    before = {k: v.detach().clone() for k, v in state.params.items()}
    moments = [opt.state[p]["exp_avg"].clone() for p, opt in state.optim.optim_objs.items()]
    rng = dict(state.rng)
    flag["bad"] = True
    with pytest.raises(NonFiniteLossError, match="at step 6") as err:
        engine.step(state)
    assert err.value.state is state and state.step == 5 and len(state.losses) == 5
    for name, value in before.items():
        assert torch.equal(state.params[name], value)
        assert state.params[name].grad is None
    assert torch.equal(state.rng["torch"], rng["torch"])
    after = [opt.state[p]["exp_avg"] for p, opt in state.optim.optim_objs.items()]
    assert len(after) == 2 and all(torch.equal(a, b) for a, b in zip(after, moments, strict=True))
    # and the next good step is the step an uninterrupted engine takes
    flag["bad"] = False
    engine.step(state)
    other = Engine(model, seed=2)
    other_state = other.init(DATA["x"])
    for _ in range(6):
        other.step(other_state)
    np.testing.assert_array_equal(state.losses, other_state.losses)


def test_a_failure_inside_run_raises_with_the_last_good_state():
    def stop(state):
        if state.step == 7:
            raise ValueError("no")

    engine = Engine(normal_normal.model, policies=[ppl_vi.policies.Callbacks([stop])])
    state = engine.init(**DATA)
    with pytest.raises(FitError, match="after step 7") as err:
        for _ in engine.run(state, num_steps=20):
            pass
    assert err.value.state.step == 7


def test_engine_checks_its_arguments():
    with pytest.raises(TypeError, match="model must be a callable"):
        Engine("model")
    with pytest.raises(TypeError, match="seed must be an integer or None"):
        Engine(normal_normal.model, seed=1.5)


def test_leaving_the_loop_early_finishes_the_policies_and_releases_the_fit(tmp_path):
    from ppl_vi.policies import Checkpointing

    engine = Engine(normal_normal.model)
    state = engine.init(**DATA)
    path = tmp_path / "early.ckpt"
    engine.policies.append(Checkpointing(path, every=1000, fingerprint={}))
    run = engine.run(state, num_steps=50)
    for s in run:
        if s.step == 12:
            break
    run.close()
    assert torch.load(path, weights_only=True)["loop"]["step"] == 12
    # the process-wide lock is free again: another fit runs at once
    assert ppl_vi.fit(normal_normal.model, **DATA, num_steps=5, progress=False).num_steps == 5


def test_a_checkpoint_that_cannot_be_written_at_the_end_warns_and_keeps_the_result(tmp_path):
    from ppl_vi.policies import Checkpointing

    engine = Engine(normal_normal.model)
    state = engine.init(**DATA)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    engine.policies.append(Checkpointing(blocked / "fit.ckpt", every=1000, fingerprint={}))
    with pytest.warns(RuntimeWarning, match=r"Checkpointing failed when the run ended at step 20"):
        for _ in engine.run(state, num_steps=20):
            pass
    assert state.step == 20 and state.phase == "done"


def test_multi_tensor_adam_update_is_torch_adam():
    """The engine's one-call Adam update equals ``torch.optim.Adam`` bit for bit, step counter
    and bias correction included (an off-by-one there changes the first update by 26%)."""
    from ppl_vi import optim as optim_lib

    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(3, generator=gen), torch.randn(2, 2, generator=gen)]
    ours = [p.requires_grad_() for p in ours]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    optim = pyro.optim.Adam({"lr": 0.1, "betas": (0.8, 0.95)})
    reference = torch.optim.Adam(theirs, lr=0.1, betas=(0.8, 0.95), foreach=True)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        optim_lib.prepare(optim, ours)
        optim_lib.apply_update(optim, ours)
        reference.step()
        for p, q in zip(ours, theirs, strict=True):
            assert torch.equal(p, q)


def test_step_returns_the_loss_it_recorded_compiled_or_eager():
    for jit in (True, False):
        engine = Engine(normal_normal.model, jit=jit, seed=0)
        state = engine.init(**DATA)
        losses = [engine.step(state)[1] for _ in range(5)]
        assert losses == state.losses and len(set(losses)) == 5
        if jit:
            assert engine.jit_report()["main"]["path"] == "compiled step"


@pytest.mark.parametrize("jit", [True, False])
def test_a_learning_rate_schedule_reaches_every_step(jit):
    # a factor of 0 from step 5 on freezes the parameters: the fit equals a 5-step fit, on the
    # compiled path (the factor is set before the graph runs) as on the eager one
    options = {"progress": False, "polish": None, "convergence": None, "seed": 3, "jit": jit}
    frozen = ppl_vi.fit(
        normal_normal.model, **DATA, num_steps=12, lr_schedule=lambda t: float(t < 5), **options
    )
    short = ppl_vi.fit(normal_normal.model, **DATA, num_steps=5, **options)
    for name, value in short.params.items():
        assert torch.equal(frozen.params[name], value), name
    moving = ppl_vi.fit(normal_normal.model, **DATA, num_steps=12, **options)
    assert any(not torch.equal(moving.params[n], v) for n, v in short.params.items())


def test_auto_compiles_from_exactly_auto_steps_to_go_and_not_with_callbacks():
    from ppl_vi.engine import AUTO_STEPS

    assert AUTO_STEPS == 200  # the number fit's documentation gives for jit="auto"
    options = {"progress": False, "polish": None, "convergence": None, "seed": 0}
    # step 1 is the first that may be recorded: AUTO_STEPS + 1 steps leave AUTO_STEPS to go
    enough = ppl_vi.fit(normal_normal.model, **DATA, num_steps=AUTO_STEPS + 1, **options)
    assert enough.method_info["jit"]["main"]["path"] == "compiled step"
    short = ppl_vi.fit(normal_normal.model, **DATA, num_steps=AUTO_STEPS, **options)
    assert short.method_info["jit"] == {
        "main": {"path": "eager", "reason": f"fewer than {AUTO_STEPS} steps to go: not worth "
                 "recording"}
    }  # fmt: skip
    watched = ppl_vi.fit(
        normal_normal.model, **DATA, num_steps=AUTO_STEPS + 50, callbacks=[lambda s: False],
        **options,
    )  # fmt: skip
    report = watched.method_info["jit"]["main"]
    assert report["path"] == "eager" and report["reason"].startswith("callbacks may change")
    np.testing.assert_array_equal(
        watched.losses,
        ppl_vi.fit(
            normal_normal.model, **DATA, num_steps=AUTO_STEPS + 50, **options, jit=False
        ).losses,
    )


def test_the_final_phase_returns_the_average_of_its_iterates():
    # Polyak averaging: the fitted parameters are the mean of the live parameters after each
    # step of the final phase (and differ from the last iterate)
    engine = Engine(
        normal_normal.model, "mean_field", "elbo", policies=[Polish(fraction=0.5)], seed=0
    )
    state = engine.init(**DATA)
    iterates = []
    for st in engine.run(state, 20):
        if st.phase == "polish":
            iterates.append({n: v.detach().clone() for n, v in st.params.items()})
    assert len(iterates) == 10 and state.phase == "done"
    for name, value in state.params.items():
        mean = torch.stack([it[name] for it in iterates]).mean(0)
        torch.testing.assert_close(value.detach(), mean, rtol=1e-6, atol=1e-7)
        assert not torch.equal(value.detach(), iterates[-1][name])


def _unconstrained(state=None):
    if state is not None:
        return {n: v.detach().clone() for n, v in state.params.items()}
    store = pyro.get_param_store()  # (a callback sees the fit's store)
    return {n: store._params[n].detach().clone() for n in store.keys()}


def test_ctrl_c_in_the_final_phase_returns_the_average_so_far():
    iterates = []

    def record_then_interrupt(state):
        if state.phase == "polish":
            iterates.append(_unconstrained())
            if len(iterates) == 4:
                raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="fit interrupted at step 14 of 20"):
        result = ppl_vi.fit(
            normal_normal.model, **DATA, num_steps=20, polish=Polish(fraction=0.5),
            callbacks=[record_then_interrupt], convergence=None, progress=False, seed=0,
        )  # fmt: skip
    assert result.interrupted and len(iterates) == 4
    with result.param_scope():
        store = pyro.get_param_store()
        for name in store.keys():
            mean = torch.stack([it[name] for it in iterates]).mean(0)
            torch.testing.assert_close(store._params[name].detach(), mean, rtol=1e-6, atol=1e-7)
            assert not torch.equal(store._params[name].detach(), iterates[-1][name])


def test_an_extended_fit_averages_only_the_new_final_phase():
    engine = Engine(
        normal_normal.model, "mean_field", "elbo", policies=[Polish(fraction=0.25)], seed=0
    )
    state = engine.init(**DATA)
    for _ in engine.run(state, 20):
        pass
    state.converged = True  # as if the stopping rule had fired in the first run
    state.reopen(40)
    assert (state.phase, state.converged, state.end, state.avg) == ("main", False, 40, None)
    iterates = [_unconstrained(s) for s in engine.run(state, 40) if s.phase == "polish"]
    assert len(iterates) == 10 and state.step == 40
    for name, value in state.params.items():
        mean = torch.stack([it[name] for it in iterates]).mean(0)
        torch.testing.assert_close(value.detach(), mean, rtol=1e-6, atol=1e-7)
