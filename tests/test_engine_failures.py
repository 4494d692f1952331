"""What the engine says when a step fails: the step, the error's first line and the user's line,
and the last step whose work is kept; a non-finite gradient names only the parameters that
received it, and the failed step leaves no gradients behind."""

import math
import os
import signal

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vi import Engine, FitError, NonFiniteLossError
from ppl_vi.policies import Callbacks, Policy

X = torch.tensor([0.3, -1.2, 0.8, 2.0])


def _switchable(failure):
    """A two-latent model that runs ``failure(mu)`` once ``flag["on"]`` is set."""
    flag = {"on": False}

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        tau = pyro.sample("tau", dist.Normal(0.0, 1.0))
        if flag["on"]:
            failure(mu)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu + tau, 1.0), obs=x)

    return model, flag


def _fail_at_step_4(failure):
    model, flag = _switchable(failure)
    engine = Engine(model, seed=0)
    state = engine.init(X)
    for _ in range(3):
        engine.step(state)
    flag["on"] = True
    return engine, state


def _raise(error):
    def failure(mu):
        raise error

    return failure


def test_a_failed_step_names_the_step_the_first_line_and_the_step_kept():
    engine, state = _fail_at_step_4(_raise(RuntimeError("the first line\nthe second line")))
    with pytest.raises(FitError) as err:
        engine.step(state)
    text = str(err.value)
    assert text.startswith(
        "step 4 failed (RuntimeError: the first line) at test_engine_failures.py:"
    )
    assert "raise error" in text and "second line" not in text
    assert text.endswith(". The fit up to step 3 is kept (err.result)")
    assert err.value.step == 4 and err.value.state is state and state.step == 3
    assert not isinstance(err.value, NonFiniteLossError)


def test_a_long_error_message_is_cut_at_300_characters():
    engine, state = _fail_at_step_4(_raise(RuntimeError("x" * 400)))
    with pytest.raises(FitError) as err:
        engine.step(state)
    assert f"(RuntimeError: {'x' * 300}) at " in str(err.value)


def test_a_value_error_that_is_not_about_invalid_parameters_is_not_numeric():
    engine, state = _fail_at_step_4(_raise(ValueError("shapes do not match")))
    with pytest.raises(FitError, match=r"^step 4 failed \(ValueError: shapes do not match\)") as e:
        engine.step(state)
    assert not isinstance(e.value, NonFiniteLossError)


def _kink(mu):
    # the value is 0 and finite; its gradient d/dmu sqrt(mu - c) at mu = c is infinite
    pyro.factor("kink", torch.sqrt(mu - mu.detach()))


def test_a_non_finite_gradient_names_only_the_parameters_it_reached():
    engine, state = _fail_at_step_4(_kink)
    before = {name: value.detach().clone() for name, value in state.params.items()}
    with pytest.raises(NonFiniteLossError) as err:
        engine.step(state)
    text = str(err.value)
    assert text.startswith("a gradient became non-finite at step 4;")
    params = text.split("non-finite gradients in parameters ")[1].split("]")[0] + "]"
    assert params == str(sorted(n for n in state.params if n.endswith(".mu")))
    assert text.endswith(
        ". Training stopped; the parameters from step 3 are kept (err.result). Try a smaller "
        "lr, clip_norm=..., or check the model at that site."
    )
    assert err.value.step == 4 and state.step == 3
    for name, value in state.params.items():  # nothing applied, no gradient left behind
        assert torch.equal(value, before[name]) and value.grad is None, name


def test_a_non_finite_loss_is_named_with_its_value():
    def impossible(mu):
        pyro.factor("impossible", torch.tensor(-math.inf))

    engine, state = _fail_at_step_4(impossible)
    with pytest.raises(NonFiniteLossError, match=r"^the loss became inf at step 4; ") as err:
        engine.step(state)
    assert "the parameters from step 3 are kept" in str(err.value)


def test_invalid_distribution_parameters_are_a_numeric_failure():
    def nan_scale(mu):
        pyro.sample("bad", dist.Normal(mu, torch.tensor(math.nan)), obs=torch.tensor(0.0))

    engine, state = _fail_at_step_4(nan_scale)
    with pytest.raises(NonFiniteLossError) as err:
        engine.step(state)
    text = str(err.value)
    assert text.startswith(
        "a distribution received invalid (non-finite) parameters (Expected parameter scale "
    )
    assert "at step 4; first found at sample site 'bad'" in text
    assert "non-finite gradients" not in text and "from step 3 are kept" in text


class _Broken(Policy):
    def after_step(self, engine, state):
        if state.step == 3:
            raise ValueError("the first line:\nthe second line")
        return False


def test_a_policy_that_fails_names_itself_and_keeps_the_steps_taken():
    model, _ = _switchable(None)
    engine = Engine(model, policies=[_Broken()], seed=0)
    state = engine.init(X)
    with pytest.raises(FitError) as err:
        for _ in engine.run(state, num_steps=10):
            pass
    assert str(err.value) == (
        "_Broken failed after step 3 (ValueError: the first line). The fit up to step 3 is "
        "kept (err.result)"
    )
    assert err.value.step == 3 and state.step == 3


def test_ctrl_c_during_a_step_stops_the_run_at_the_last_complete_step(sigint_handled):
    model, flag = _switchable(lambda mu: os.kill(os.getpid(), signal.SIGINT))

    def arm(state):
        flag["on"] = state.step == 5

    engine = Engine(model, policies=[Callbacks([arm])], seed=0)
    state = engine.init(X)
    steps = [s.step for s in engine.run(state, num_steps=20)]
    assert state.interrupted and steps == [1, 2, 3, 4, 5] and state.step == 5
    assert len(state.losses) == 5 and all(p.grad is None for p in state.params.values())


def test_sparse_gradients_are_checked_like_dense_ones():
    embedding = torch.nn.Embedding(5, 1, sparse=True)
    flag = {"kink": False}

    def model(index, y):
        pyro.module("embedding", embedding)
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        shift = embedding(index).squeeze(-1)
        if flag["kink"]:  # the same values, an infinite gradient on the rows used
            shift = shift + torch.sqrt(shift - shift.detach())
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu + shift, 1.0), obs=y)

    engine = Engine(model, optim=pyro.optim.SGD({"lr": 0.01}), seed=0)
    state = engine.init(torch.tensor([0, 1, 1, 3]), X)
    for _ in range(3):
        engine.step(state)
    assert state.step == 3
    flag["kink"] = True
    with pytest.raises(NonFiniteLossError, match=r"in parameters \['embedding\$\$\$weight'\]\."):
        engine.step(state)
    assert state.step == 3 and all(p.grad is None for p in state.params.values())
