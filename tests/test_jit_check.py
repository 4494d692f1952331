"""JitELBO's safety net: the check of the compiled step against the eager one, the score-function
surrogate it records, tracer warnings, fallback messages and the random-number streams."""

import math
import types
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from ppl_vi.elbos import RBScoreFunctionELBO
from ppl_vi.guides import MeanField
from ppl_vi.jit import JitELBO, _cuda_rng_state, _mismatch, _set_rng, trace_elbo_terms
from ppl_vi.models import normal_normal

X = torch.tensor([0.3, 1.2, -0.4, 2.0])


def _grads(values):
    return [torch.tensor(v, dtype=torch.float64) for v in values]


# ------------------------------------------------------------------ the compiled-vs-eager check


@pytest.mark.parametrize(
    "a, b, rtol, differs",
    [
        (1.0, 1.0 + 0.5e-4, 1e-4, False),
        (1.0, 1.0 + 1.5e-4, 1e-4, True),  # just above rtol for a loss of size 1
        (0.0, 5e-5, 1e-4, False),  # absolute below 1: a loss near 0 is not held to 0
        (1000.0, 1000.05, 1e-4, False),  # relative above 1
        (1000.0, 1000.2, 1e-4, True),
        (-1000.0, -1000.2, 1e-4, True),
        (0.0, 0.5, 0.5, False),  # exactly at the tolerance passes
        (math.nan, math.nan, 1e-4, False),  # a NaN loss on both sides agrees
        (math.inf, math.inf, 1e-4, False),
        (-math.inf, -math.inf, 1e-4, False),
        (math.nan, 1.0, 1e-4, True),
        (1.0, math.nan, 1e-4, True),
        (math.nan, math.inf, 1e-4, True),
        (math.inf, -math.inf, 1e-4, True),
        (math.inf, 1e30, 1e-4, True),
    ],
)
def test_losses_differ_beyond_rtol_relative_to_their_size(a, b, rtol, differs):
    expected = f"loss ({a:.8g} vs {b:.8g})" if differs else None
    assert _mismatch((a, []), (b, []), rtol) == expected
    assert _mismatch((b, []), (a, []), rtol) == (f"loss ({b:.8g} vs {a:.8g})" if differs else None)


@pytest.mark.parametrize(
    "compiled, eager, message",
    [
        ([1.095], [1.0], None),  # 10 * rtol of the gradient's norm is allowed
        ([1.105], [1.0], "gradient (relative difference 0.105)"),
        ([2.19], [2.0], None),  # relative to the norm
        ([3.0, 4.45], [3.0, 4.0], None),  # one norm over all parameters: 0.45 <= 0.1 * 5
        ([3.0, 4.55], [3.0, 4.0], "gradient (relative difference 0.11)"),
        ([0.6], [0.5], "gradient (relative difference 0.2)"),
        ([0.0, 0.0], [0.0, 0.0], None),  # parameters without a gradient on both sides
        ([1e-12], [0.0], None),  # an absolute floor of 1e-12
        ([3e-12], [0.0], "gradient (relative difference 3e+18)"),
    ],
)
def test_gradients_differ_beyond_ten_rtol_of_their_norm(compiled, eager, message):
    assert _mismatch((1.0, _grads(compiled)), (1.0, _grads(eager)), 1e-2) == message


def test_a_loss_mismatch_is_reported_before_a_gradient_mismatch():
    assert _mismatch((1.0, _grads([5.0])), (2.0, _grads([1.0])), 1e-4) == "loss (1 vs 2)"


class _TracedDifferently:
    """A guide whose recorded graph is deliberately wrong: code that takes another path while
    ``torch.jit`` records (a "fast path" with a bug) changes the loss or only the gradient."""

    def __init__(self, change):
        self.change = change

    def __call__(self, x):
        loc = pyro.param("loc", torch.tensor(0.2))
        scale = pyro.param("scale", torch.tensor(1.1), constraint=dist.constraints.positive)
        if torch.jit.is_tracing():
            if self.change == "loss":
                scale = scale * 1.05
            elif self.change == "gradient":
                loc = loc.detach()  # same values, no gradient for loc
        pyro.sample("mu", dist.Normal(loc, scale))


@pytest.mark.parametrize("change", ["loss", "gradient"])
def test_a_wrong_recorded_graph_is_rejected_and_the_steps_run_eagerly(change):
    def run(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(4)
        guide = _TracedDifferently(change)
        svi = SVI(normal_normal.model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        return [svi.step(X) for _ in range(5)], pyro.param("loc").item()

    elbo = JitELBO(Trace_ELBO())
    with pytest.warns(RuntimeWarning, match=f"runs uncompiled: the compiled step's {change}") as w:
        losses, loc = run(elbo)
    assert not elbo.compiled and elbo.fallback.startswith(f"the compiled step's {change} ")
    assert [x.filename for x in w if "jit:" in str(x.message)] == [__file__]
    assert (losses, loc) == run(Trace_ELBO())  # the same draws, bit for bit


# ------------------------------------------------------------------ the score-function surrogate


def _discrete_model(x):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(w + 2.0 * z, 1.0), obs=x)


def _discrete_guide(x):
    loc = pyro.param("loc", torch.tensor(0.2))
    probs = pyro.param(
        "probs", torch.full((x.shape[0],), 0.6), constraint=dist.constraints.unit_interval
    )
    pyro.sample("w", dist.Normal(loc, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(probs))


def _params():
    return {k: v.unconstrained() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("num_particles, vectorize", [(1, False), (3, False), (3, True)])
def test_trace_elbo_terms_give_pyros_loss_and_score_function_gradients(num_particles, vectorize):
    elbo = Trace_ELBO(
        num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1
    )
    _discrete_guide(X)
    params = _params()
    pyro.set_rng_seed(5)
    loss_a = elbo.loss_and_grads(_discrete_model, _discrete_guide, X)
    grads_a = {k: p.grad.clone() for k, p in params.items()}
    assert all(g.abs().sum() > 0 for g in grads_a.values())
    pyro.set_rng_seed(5)
    loss_b, surrogate = trace_elbo_terms(elbo, _discrete_model, _discrete_guide, (X,), {})
    grads_b = dict(zip(params, torch.autograd.grad(surrogate, list(params.values())), strict=True))
    assert loss_b.item() == loss_a
    for k in params:
        torch.testing.assert_close(grads_b[k], grads_a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("num_particles", [1, 3])
def test_trace_elbo_terms_surrogate_equals_the_loss_without_score_function_terms(num_particles):
    """With reparameterized sites only, the surrogate is the (float32) loss itself."""
    elbo = Trace_ELBO(num_particles=num_particles)
    guide = MeanField(normal_normal.model)
    loss, surrogate = trace_elbo_terms(elbo, normal_normal.model, guide, (X,), {})
    assert surrogate.item() == pytest.approx(loss.item(), rel=1e-6)


def test_jit_elbo_with_a_discrete_latent_matches_trace_elbo_step_for_step():
    def run(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(6)
        svi = SVI(_discrete_model, _discrete_guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        losses = [svi.step(X) for _ in range(6)]
        return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    elbo = JitELBO(Trace_ELBO(num_particles=3, max_plate_nesting=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        losses, params = run(elbo)
    assert elbo.compiled
    eager_losses, eager_params = run(Trace_ELBO(num_particles=3, max_plate_nesting=1))
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-6, atol=0)
    for k in params:
        torch.testing.assert_close(params[k], eager_params[k], rtol=1e-5, atol=1e-6, msg=k)


def test_differentiable_loss_has_trace_elbos_value_and_gradients():
    guide = MeanField(normal_normal.model)
    guide(X)  # set up (its initial draws) before the seeded calls
    elbo, jit = Trace_ELBO(), JitELBO(Trace_ELBO())
    for _ in range(3):  # the first call runs eagerly, the later ones compiled
        pyro.set_rng_seed(8)
        expected = elbo.differentiable_loss(normal_normal.model, guide, X)
        params = _params()
        grads = torch.autograd.grad(expected, list(params.values()))
        pyro.set_rng_seed(8)
        value = jit.differentiable_loss(normal_normal.model, guide, X)
        assert value.item() == pytest.approx(expected.item(), rel=1e-6)
        for g, f in zip(grads, torch.autograd.grad(value, list(params.values())), strict=True):
            torch.testing.assert_close(f, g, rtol=1e-5, atol=1e-6)
    assert jit.compiled and len(jit._checked) == 1


# ------------------------------------------------------------------ parameters and arguments


def _observed_only(x):
    pyro.sample("x", dist.Normal(0.0, 1.0).expand([x.shape[0]]).to_event(1), obs=x)


def _no_guide(x):
    pass


@pytest.mark.parametrize("model", [_observed_only, _no_guide], ids=["observed only", "empty"])
def test_a_model_without_parameters_or_latents_gives_its_log_likelihood(model):
    jit = JitELBO(Trace_ELBO())
    expected = Trace_ELBO().loss_and_grads(model, _no_guide, X)
    assert expected == (
        -dist.Normal(0.0, 1.0).log_prob(X).sum().item() if model is _observed_only else 0.0
    )
    for _ in range(3):
        loss = jit.loss_and_grads(model, _no_guide, X)
        assert loss == pytest.approx(expected, rel=1e-6)
    assert jit.compiled


def _guide_with_a_fixed_scale(x):
    scale = pyro.param("scale", torch.tensor(0.5), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(0.0, scale.detach()))  # held fixed: no gradient reaches it


def _guide_with_an_unused_parameter(x):
    loc = pyro.param("loc", torch.tensor(0.1))
    pyro.param("unused", torch.tensor(3.0))
    pyro.sample("mu", dist.Normal(loc, 1.0))


@pytest.mark.parametrize("guide", [_guide_with_a_fixed_scale, _guide_with_an_unused_parameter])
def test_parameters_that_get_no_gradient_are_compiled_and_left_alone(guide):
    jit = JitELBO(Trace_ELBO())
    svi = SVI(normal_normal.model, guide, pyro.optim.Adam({"lr": 0.1}), jit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(4):
            svi.step(X)
    assert jit.compiled and len(jit._checked) == 1
    for name, value in {"scale": 0.5, "unused": 3.0}.items():
        if name in pyro.get_param_store():
            assert pyro.param(name).item() == pytest.approx(value)


def _model_with_optional_data(x, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0]]).to_event(1), obs=x)
    if y is not None:
        pyro.sample("y", dist.Normal(mu, 0.5).expand([y.shape[0]]).to_event(1), obs=y)


def test_a_different_number_of_positional_arguments_records_its_own_graph():
    guide = MeanField(_model_with_optional_data)
    guide(X)
    jit, eager = JitELBO(Trace_ELBO()), Trace_ELBO()
    y = torch.tensor([3.0, 2.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for args in [(X,), (X,), (X, y), (X, y), (X, y), (X,)]:
            pyro.set_rng_seed(9)
            expected = eager.loss(_model_with_optional_data, guide, *args)
            pyro.set_rng_seed(9)
            assert jit.loss_and_grads(_model_with_optional_data, guide, *args) == pytest.approx(
                expected, rel=1e-6
            )
    assert jit.compiled and len(jit._checked) == 2


def _model_with_a_count(x, n):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    pyro.sample("x", dist.Normal(mu, 1.0).expand([n]).to_event(1), obs=x)


def test_non_tensor_positional_arguments_run_uncompiled_with_a_warning_at_the_step():
    def run(elbo, steps=3):
        pyro.clear_param_store()
        pyro.set_rng_seed(2)
        guide = MeanField(_model_with_a_count)
        svi = SVI(_model_with_a_count, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        return [svi.step(X, 4) for _ in range(steps)]

    jit = JitELBO(Trace_ELBO())
    with pytest.warns(RuntimeWarning, match=r"positional model arguments must be tensors") as w:
        losses = run(jit)
    assert not jit.compiled
    # step 1 runs eagerly in any case (fit's own compiled step may take over from step 2), so
    # the warning comes with step 2
    single = JitELBO(Trace_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert run(single, steps=1) == losses[:1] and single.compiled
    assert [(x.filename, x.lineno) for x in w] == [(__file__, _line_of("svi.step(X, 4)"))]
    assert losses == run(Trace_ELBO())


def _line_of(text):
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line and "_line_of" not in line)


def test_options_are_keyword_only_and_the_elbo_must_be_a_pyro_elbo():
    with pytest.raises(TypeError):
        JitELBO(Trace_ELBO(), False)
    with pytest.raises(TypeError, match=r"JitELBO wraps a pyro.infer.ELBO \(got function\)"):
        JitELBO(normal_normal.model)


def test_an_elbo_that_cannot_be_recorded_warns_at_the_line_that_wraps_it():
    with pytest.warns(RuntimeWarning, match="RBScoreFunctionELBO runs uncompiled") as w:
        jit = JitELBO(RBScoreFunctionELBO(num_particles=4, max_plate_nesting=1))
    assert not jit.compiled
    assert [(x.filename, x.lineno) for x in w] == [(__file__, _line_of("jit = JitELBO(RBScore"))]


# ------------------------------------------------------------------ recording failures, warnings


class _FailsWhenRecorded(Trace_ELBO):
    """An ELBO whose loss cannot be recorded (it raises while ``torch.jit`` records)."""

    def __init__(self, message):
        super().__init__()
        self.message = message

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        if torch.jit.is_tracing():
            raise ValueError(self.message)
        return trace_elbo_terms(self, model, guide, args, kwargs)


@pytest.mark.parametrize(
    "message, shown",
    [
        ("  cannot record this\nbecause of that\nand more  ", "cannot record this"),
        ("", "ValueError"),
        (" \n ", "ValueError"),
    ],
)
def test_a_model_that_cannot_be_recorded_falls_back_with_the_errors_first_line(message, shown):
    def run(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        guide = MeanField(normal_normal.model)
        return [elbo.loss_and_grads(normal_normal.model, guide, X) for _ in range(3)]

    jit = JitELBO(_FailsWhenRecorded(message))
    with pytest.warns(RuntimeWarning, match="runs uncompiled: torch.jit.trace failed"):
        losses = run(jit)
    assert jit.fallback == f"torch.jit.trace failed (ValueError: {shown})"
    assert losses == run(Trace_ELBO())


def _model_using_len(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    n = len(x)  # a shape: harmless, though torch.jit warns about it
    pyro.sample("x", dist.Normal(mu, 1.0).expand([n]).to_event(1), obs=x)


def _tracer_warnings(jit):
    guide = MeanField(_model_using_len)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            jit.loss_and_grads(_model_using_len, guide, X)
    assert jit.compiled
    return [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def test_tracer_warnings_are_silenced_by_default_and_shown_on_request():
    assert _tracer_warnings(JitELBO(Trace_ELBO())) == []
    shown = _tracer_warnings(JitELBO(Trace_ELBO(), ignore_jit_warnings=False))
    mine = [w for w in shown if w.filename == __file__]
    assert [w.lineno for w in mine] == [_line_of("n = len(x)")]
    assert str(mine[0].message).startswith("Using len to get tensor shape")


def _model_with_numpy_branch(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    scale = 1.0 if mu.detach().numpy() > 0 else 3.0  # a recorded graph freezes this branch
    pyro.sample("x", dist.Normal(mu, scale).expand([x.shape[0]]).to_event(1), obs=x)


def test_a_model_branching_on_a_numpy_copy_of_a_draw_runs_uncompiled():
    jit = JitELBO(Trace_ELBO())
    guide = MeanField(_model_with_numpy_branch)
    with pytest.warns(RuntimeWarning, match=r"test_jit_check.py:\d+ turns a traced tensor"):
        for _ in range(3):
            jit.loss_and_grads(_model_with_numpy_branch, guide, X)
    assert jit.fallback.startswith(f"test_jit_check.py:{_line_of('scale = 1.0 if mu')} ")


def _model_with_its_own_warning(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    warnings.warn(
        "Converting a tensor to a Python float would lose precision here", UserWarning, stacklevel=1
    )
    pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0]]).to_event(1), obs=x)


def test_only_tracer_warnings_mark_a_model_as_unrecordable():
    jit = JitELBO(Trace_ELBO())
    guide = MeanField(_model_with_its_own_warning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(3):
            jit.loss_and_grads(_model_with_its_own_warning, guide, X)
    assert jit.compiled


# ------------------------------------------------------------------ CUDA random-number streams


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA as seen by the random-stream bookkeeping: two devices, the current one 0."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: f"state of {d}")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: calls.append((s, d)))
    return calls


def _on(device):
    return types.SimpleNamespace(device=torch.device(device))


def test_the_cuda_streams_of_the_arguments_devices_are_saved(fake_cuda):
    cuda1 = torch.device("cuda", 1)
    assert _cuda_rng_state([_on("cpu"), _on("cuda:1")]) == {cuda1: "state of cuda:1"}
    # CUDA in use but every argument on the CPU: the model may draw on the current device
    assert _cuda_rng_state([_on("cpu")]) == {torch.device("cuda", 0): "state of cuda:0"}
    cpu = torch.get_rng_state()
    torch.rand(3)
    _set_rng(cpu, {cuda1: "saved"})
    assert fake_cuda == [("saved", cuda1)]
    assert torch.equal(torch.get_rng_state(), cpu)


def test_no_cuda_stream_is_touched_when_cuda_is_not_in_use(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert _cuda_rng_state([_on("cpu")]) == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _cuda_rng_state([_on("cpu")]) == {}
