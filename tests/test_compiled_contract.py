"""What only the compiled training step guarantees (``ppl_vi.compiled``), beyond equal fits.

The compiled step checks its first replay against the eager step and falls back to the eager
step on any difference, so a broken simplification or graph cache still gives correct fits.
These tests pin down the parts the fallback hides: the graph really is used on an ordinary
model; ``simplify`` removes identities, folds constants and merges common subexpressions, but
leaves in-place updates, tensors written through views and random draws alone; the graph cache
(one recording per data key, at most ``MAX_GRAPHS`` = 4) and its key (tensor arguments are
inputs, other arguments are part of the key by value); the flat Adam buffers are kept while the
optimizer and parameters stay the same objects and rebuilt when they change; which Adam
settings compile; the tolerances of the recording's check; and the small helpers that classify
recording errors and silence the fake-tensor stack capture.
"""

import copy

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.fx.experimental.proxy_tensor import make_fx

from ppl_vi import compiled
from ppl_vi.minibatch import EpochBatches
from ppl_vi.optim import prepare


def model(y, scale=1.0):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, scale), obs=y)


def prior_only():
    pyro.sample("mu", dist.Normal(0.0, 1.0))


def _prepared(*args, optim=None, fn=model, guide=None, init_scale=0.1, **kwargs):
    """A compiled step of ``fn`` with ``guide`` (an AutoNormal guide by default), after one
    eager step (which creates the parameters and their Adam states), and the unconstrained
    parameters."""
    guide = guide or AutoNormal(fn, init_scale=init_scale)
    optim = optim or pyro.optim.Adam({"lr": 0.05})
    SVI(fn, guide, optim, Trace_ELBO()).step(*args, **kwargs)
    params = _params()
    return compiled.CompiledStep(fn, guide, Trace_ELBO()), optim, params


def _params():
    store = pyro.get_param_store()
    return [store.get_param(name).unconstrained() for name in store.keys()]


def _ops(gm) -> list:
    return [node.target for node in gm.graph.nodes if node.op == "call_function"]


def _simplified(fn, *args):
    gm = make_fx(fn)(*args)
    compiled.simplify(gm)
    return gm


aten = torch.ops.aten


# ---------------------------------------------------------------------- the step is compiled
def test_ordinary_model_takes_its_steps_as_the_recorded_graph():
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    assert step.compile_seconds == 0.0 and not step.compiled
    before = [p.detach().clone() for p in params]
    loss = step(optim, params, 1, (y,), {})
    assert isinstance(loss, float) and step.reason is None and step.compiled
    seconds = step.compile_seconds
    assert 0.0 < seconds < 60.0
    step(optim, params, 2, (y,), {})
    assert step.compile_seconds == seconds  # a replay records nothing
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    states = [optim.optim_objs[p].state[p] for p in params]
    assert [float(s["step"]) for s in states] == [3.0, 3.0]  # one eager step, two compiled


# ---------------------------------------------------------------------- the graph cache
def test_four_data_shapes_are_recorded_and_a_fifth_falls_back_with_a_reason():
    step, optim, params = _prepared(torch.randn(5))
    for i in range(4):
        assert step(optim, params, i, (torch.randn(5 + i),), {}) is not None, i
        assert step.reason is None and len(step._graphs) == i + 1
    assert step(optim, params, 4, (torch.randn(9),), {}) is None
    assert step.reason == (
        "the model's non-tensor arguments or data shapes changed 4 times; each change needs a "
        "new recording"
    )
    assert len(step._graphs) == 4
    assert step(optim, params, 5, (torch.randn(5),), {}) is None  # recorded, but eager now


def test_new_tensors_of_the_same_shape_reuse_the_graph_and_reach_it():
    step, optim, params = _prepared(torch.zeros(5))
    for i in range(6):
        loss = step(optim, params, i, (torch.zeros(5),), {})
        assert loss is not None and loss < 1e3, i
    far = step(optim, params, 6, (torch.full((5,), 1e3),), {})  # new values, same shape
    assert far is not None and far > 1e5
    assert len(step._graphs) == 1 and step.reason is None


def test_the_same_argument_objects_reuse_the_data_key():
    step = compiled.CompiledStep(model, None, Trace_ELBO())
    args, kwargs = (torch.zeros(3), 2.0), {"w": torch.ones(2), "flag": True}
    tensors, key = step._data_key(args, kwargs)
    again = step._data_key(args, kwargs)
    assert again[0] is tensors and again[1] is key
    assert tensors[0] is args[0] and tensors[1] is kwargs["w"]
    other = step._data_key((torch.zeros(3), 2.0), kwargs)  # new tensor, same shape: same key
    assert other[0] is not tensors and other[0][0] is not args[0] and other[1] == key
    assert step._data_key((torch.zeros(3), 3.0), kwargs)[1] != key
    assert step._data_key(args, dict(kwargs, flag=False))[1] != key
    # keyword tensors are inputs in the order of their names; unhashable values key by identity
    table = [1, 2]
    t1, t2 = torch.zeros(1), torch.zeros(2)
    tensors, key = step._data_key((table,), {"b": t1, "a": t2})
    assert tensors[0] is t2 and tensors[1] is t1
    assert step._data_key((table,), {"b": t1, "a": t2})[1] == key
    assert step._data_key(([1, 2],), {"b": t1, "a": t2})[1] != key


def test_non_tensor_arguments_are_part_of_the_key_by_value():
    y = torch.full((5,), 20.0)
    step, optim, params = _prepared(y, 1.0)
    near = step(optim, params, 1, (y, 1.0), {})
    wide = step(optim, params, 2, (y, 30.0), {})
    assert len(step._graphs) == 2
    assert near > 500 and wide < 100  # the scale reaches the graph
    step(optim, params, 3, (y, float("1.0")), {})
    step(optim, params, 4, (y,), {"scale": 30.0})
    step(optim, params, 5, (y,), {"scale": 30.0})
    assert len(step._graphs) == 3 and step.reason is None


def regression(x, y):
    with pyro.plate("features", x.shape[1]):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y), subsample_size=20) as idx:
        pyro.sample("y", dist.Normal((x[idx] * w).sum(-1), 1.0), obs=y[idx])


def test_mini_batches_of_one_plate_beside_a_plate_without_them_compile():
    x, y = torch.randn(100, 3), torch.randn(100)
    guide = AutoNormal(regression)
    optim = pyro.optim.Adam({"lr": 0.05})
    SVI(regression, guide, optim, Trace_ELBO()).step(x, y)
    params = _params()
    batches = EpochBatches(seed=0, plates=["data"])
    step = compiled.CompiledStep(regression, guide, Trace_ELBO(), batches=batches)
    for i in range(3):
        assert step(optim, params, i, (x, y), {}) is not None and step.reason is None
    assert step.plates == [("data", 100, 20)]


# ---------------------------------------------------------------------- flat Adam buffers
def test_flat_buffers_are_kept_while_optimizer_and_parameters_stay_the_same():
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    step(optim, params, 1, (y,), {})
    bound = step._bound
    for i in range(2, 5):
        step(optim, params, i, (y,), {})
        assert step._bound is bound
    for p in params:
        state = optim.optim_objs[p].state[p]
        assert state["exp_avg"]._base is bound.exp_avg
        assert float(state["step"]) == 5.0


def test_flat_buffers_are_rebuilt_for_a_new_optimizer_or_new_parameters():
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    step(optim, params, 1, (y,), {})
    first = step._bound

    other = pyro.optim.Adam({"lr": 0.05})
    guide = step.guide
    SVI(model, guide, other, Trace_ELBO()).step(y)
    step(other, params, 2, (y,), {})
    assert step._bound is not first and step._bound.optim is other
    assert float(other.optim_objs[params[0]].state[params[0]]["step"]) == 2.0

    # new parameter tensors (as after loading a checkpoint), same optimizer object
    store = pyro.get_param_store()
    store.set_state(copy.deepcopy(store.get_state()))
    SVI(model, guide, other, Trace_ELBO()).step(y)
    fresh = _params()
    assert all(a is not b for a, b in zip(fresh, params, strict=True))
    before = [p.detach().clone() for p in fresh]
    step(other, fresh, 3, (y,), {})
    assert all(a is b for a, b in zip(step._bound.params, fresh, strict=True))
    assert all(not torch.equal(b, p) for b, p in zip(before, fresh, strict=True))


def one_param_guide(y, scale=1.0):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.5)), 1.0))


def spare_param_guide(y, scale=1.0):
    pyro.param("spare", torch.tensor(2.0))  # read, but no part of the loss
    one_param_guide(y, scale)


def test_a_guide_with_one_parameter_compiles():
    y = torch.randn(5)
    step, optim, params = _prepared(y, guide=one_param_guide)
    assert len(params) == 1
    assert step(optim, params, 1, (y,), {}) is not None and step.reason is None


def test_a_parameter_without_a_gradient_keeps_its_value_and_empty_adam_state():
    y = torch.randn(5)
    step, optim, params = _prepared(y, guide=spare_param_guide)
    spare = pyro.param("spare").unconstrained()
    assert len(params) == 2 and not optim.optim_objs[spare].state[spare]
    for i in range(1, 3):
        assert step(optim, params, i, (y,), {}) is not None and step.reason is None
    loc = pyro.param("loc").unconstrained()
    assert float(optim.optim_objs[loc].state[loc]["step"]) == 3.0
    assert float(optim.optim_objs[spare].state[spare]["step"]) == 0.0
    assert optim.optim_objs[spare].state[spare]["exp_avg"].item() == 0.0
    assert spare.item() == 2.0


def test_replaced_optimizer_states_are_rebound():
    """A loaded checkpoint replaces a state's moments: the flat buffers are rebuilt from
    them (each moment on its own)."""
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    for key in ["exp_avg", "exp_avg_sq"]:
        step(optim, params, 1, (y,), {})
        first = step._bound
        state = optim.optim_objs[params[0]].state[params[0]]
        state[key] = torch.full_like(state[key], 0.25)
        step(optim, params, 2, (y,), {})
        assert step._bound is not first
        assert state[key]._base is getattr(step._bound, key)


def test_the_parameters_with_a_non_finite_gradient_are_named():
    flat = compiled._FlatAdam.__new__(compiled._FlatAdam)
    flat.params = ["a", "b", "c"]
    flat.owner = torch.tensor([0, 0, 0, 1, 2, 2])
    nan, inf = float("nan"), float("inf")
    assert flat.nonfinite(torch.tensor([nan, 1.0, 1.0, 1.0, 1.0, -inf])) == ["a", "c"]
    assert flat.nonfinite(torch.tensor([1.0, 1.0, 1.0, inf, 1.0, 1.0])) == ["b"]


# ---------------------------------------------------------------------- Adam settings
@pytest.mark.parametrize(
    "settings, reason",
    [
        ({}, None),
        ({"weight_decay": 0.0, "amsgrad": False, "maximize": False}, None),
        ({"weight_decay": 0.1}, "Adam's weight_decay=0.1 is not compiled"),
        ({"amsgrad": True}, "Adam's amsgrad=True is not compiled"),
        ({"maximize": True}, "Adam's maximize=True is not compiled"),
    ],
)
def test_only_plain_adam_settings_compile(settings, reason):
    optim = pyro.optim.Adam(dict(lr=0.05, **settings))
    y = torch.randn(5)
    step, optim, params = _prepared(y, optim=optim)
    assert compiled.unsupported_optim(optim) == reason
    loss = step(optim, params, 1, (y,), {})
    assert (loss is None) == (reason is not None) and step.reason == reason


@pytest.mark.parametrize(
    "optim, reason",
    [
        (pyro.optim.SGD({"lr": 0.01}), "the optimizer is PyroOptim, not pyro.optim.Adam"),
        (pyro.optim.ClippedAdam({"lr": 0.01}), "the optimizer is PyroOptim, not pyro.optim.Adam"),
        (
            pyro.optim.Adam({"lr": 0.01}, clip_args={"clip_norm": 1.0}),
            "gradient clipping (clip_norm) is applied per parameter outside the graph",
        ),
        (
            pyro.optim.Adam({"lr": 0.01, "differentiable": True}),
            "Adam's differentiable/fused/capturable modes are not compiled",
        ),
        (
            pyro.optim.Adam({"lr": 0.01, "fused": True}),
            "Adam's differentiable/fused/capturable modes are not compiled",
        ),
    ],
    ids=["sgd", "clipped", "clip_norm", "differentiable", "fused"],
)
def test_other_optimizers_and_adam_modes_are_not_compiled(optim, reason):
    y = torch.randn(5)
    guide = AutoNormal(model)
    guide(y)
    params = _params()
    prepare(optim, params)  # the per-parameter optimizers, without a step
    step = compiled.CompiledStep(model, guide, Trace_ELBO())
    assert step(optim, params, 0, (y,), {}) is None and step.reason == reason


def test_parameters_with_different_adam_settings_are_not_compiled():
    optim = pyro.optim.Adam(lambda name, param: {"lr": 0.01 if "loc" in name else 0.02})
    y = torch.randn(5)
    step, optim, params = _prepared(y, optim=optim)
    assert step(optim, params, 1, (y,), {}) is None
    assert step.reason == "the parameters have different Adam settings"


# ---------------------------------------------------------------------- the recording's check
def _perturbed(monkeypatch, loss=1.0, grad=1.0, loss_shift=0.0, grad_shift=0.0):
    """The graph's loss and returned gradient scaled and shifted (its update stays right)."""
    real = compiled._Graph.run

    def run(self, inputs):
        status, flat_grad = real(self, inputs)
        status = status * torch.tensor([loss, 1.0], dtype=status.dtype)
        return status + torch.tensor([loss_shift, 0.0], dtype=status.dtype), (
            flat_grad * grad + grad_shift
        )

    monkeypatch.setattr(compiled._Graph, "run", run)


@pytest.mark.parametrize(
    ("what", "factor", "differs"),
    [
        # a returned gradient off by a relative 1e-5 passes, 3e-3 or 10% does not (rtol 1e-3)
        ("gradient", 1 + 1e-5, False),
        ("gradient", 1 + 3e-3, True),
        ("gradient", 1.1, True),
        # a loss off by a relative 5e-5 passes, 1e-3 or NaN does not (relative 1e-4)
        ("loss", 1 + 5e-5, False),
        ("loss", 1 + 1e-3, True),
        ("loss", float("nan"), True),
    ],
)
def test_the_check_compares_loss_and_gradient_to_the_eager_step(monkeypatch, what, factor, differs):
    """A graph whose update is right but whose returned loss or gradient is off."""
    _perturbed(monkeypatch, **{"grad" if what == "gradient" else "loss": factor})
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    loss = step(optim, params, 1, (y,), {})
    if differs:
        assert loss is None and f"{what} differs from the eager step's" in step.reason
    else:
        assert loss is not None and step.reason is None


@pytest.mark.parametrize("shift, differs", [(1e-5, False), (0.5, True)])
def test_the_check_allows_no_absolute_gradient_difference_beyond_rounding(
    monkeypatch, shift, differs
):
    _perturbed(monkeypatch, grad_shift=shift)
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    loss = step(optim, params, 1, (y,), {})
    assert (loss is None) == differs
    if differs:
        assert step.reason.endswith("gradient differs from the eager step's (by 0.5)")


@pytest.mark.parametrize("shift, differs", [(0.7e-4, False), (1.5e-4, True)])
def test_the_check_compares_a_loss_below_one_to_an_absolute_1e_4(monkeypatch, shift, differs):
    """Prior and guide agree up to one step: a loss near 0, compared to 1e-4, not 1e-4 |loss|."""
    _perturbed(monkeypatch, loss_shift=shift)
    step, optim, params = _prepared(fn=prior_only, init_scale=1.0)
    loss = step(optim, params, 1, (), {})
    assert (loss is None) == differs
    if not differs:
        assert abs(loss) < 0.5 and step.reason is None
    else:
        assert "loss differs from the eager step's" in step.reason


def prior_guide():
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


@pytest.mark.parametrize("above", [False, True])
def test_the_loss_tolerance_is_1e_4_inclusive_below_one(monkeypatch, above):
    """The guide is the prior exactly (no step taken), so the eager loss is exactly 0 and
    the graph's loss is exactly the shift."""
    prior_guide()
    params = _params()
    optim = pyro.optim.Adam({"lr": 0.05})
    prepare(optim, params)
    shift = 1e-4 if not above else float(np.nextafter(1e-4, 1.0))
    _perturbed(monkeypatch, loss_shift=shift)
    step = compiled.CompiledStep(prior_only, prior_guide, Trace_ELBO())
    loss = step(optim, params, 0, (), {})
    if above:
        assert loss is None
        assert step.reason == "the compiled step's loss differs from the eager step's (0.0001 vs 0)"
    else:
        assert loss == shift and step.reason is None


def test_a_non_finite_first_step_is_recorded_and_reported_as_non_finite():
    """A NaN loss and gradients at the recorded step: the check passes (NaN matches NaN, the
    gradients are not compared), the graph is kept and the step raises NonFinite."""
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    before = [p.detach().clone() for p in params]
    inf = float("inf")
    with pytest.warns(UserWarning, match="NaN"), pytest.raises(compiled.NonFinite) as info:
        step(optim, params, 1, (torch.full((5,), inf), inf), {})  # (inf - mu) / inf
    assert info.value.loss != info.value.loss and step.reason is None and step.compiled
    assert [id(p) for p in info.value.bad_params] == [id(p) for p in params]
    assert all(torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_an_infinite_first_loss_is_reported_as_non_finite_too():
    y = torch.randn(5)
    step, optim, params = _prepared(y)
    with pytest.raises(compiled.NonFinite):
        step(optim, params, 1, (torch.full((5,), 1e30),), {})  # (y - mu)**2 overflows


# ---------------------------------------------------------------------- simplify
def test_identities_are_removed():
    x = torch.randn(3)
    for fn in [
        lambda x: (x * 1 + 0.0 - 0) / 1,
        lambda x: x**1,
        lambda x: aten.mul.Scalar(x, 1),
        lambda x: x.expand(3).detach(),
    ]:
        gm = _simplified(fn, x)
        assert _ops(gm) == []
        assert torch.equal(gm(x), x)


def test_identities_that_change_the_dtype_are_kept():
    k = torch.arange(3)
    for fn, op in [(lambda k: k**1.0, aten.pow.Tensor_Scalar), (lambda k: k * 1.5, None)]:
        gm = _simplified(fn, k)
        assert gm(k).dtype == torch.float32 and torch.equal(gm(k), fn(k))
        if op is not None:
            assert op in _ops(gm)
    gm = _simplified(lambda k: aten.mul.Scalar(k, 1.0), k)
    assert _ops(gm) == [aten.mul.Scalar] and gm(k).dtype == torch.float32
    gm = _simplified(lambda x: x.expand(2, 3), torch.randn(3))  # another shape: kept
    assert _ops(gm) == [aten.expand.default]
    # the same strides but another shape (a stride-0 dimension of size 1 expanded): kept
    gm = _simplified(lambda x: x.expand(1, 3).expand(4, 3), torch.randn(3))
    assert gm(torch.ones(3)).shape == (4, 3)


def test_operations_on_constants_only_are_folded_into_one_constant():
    def fn(x):
        return x + torch.ones_like(x) * torch.tensor(3.0).log()

    x = torch.randn(3)
    gm = _simplified(fn, x)
    assert _ops(gm) == [aten.add.Tensor]
    buffers = {k: v for k, v in gm.named_buffers() if k.startswith("_folded")}
    assert list(buffers) == ["_folded_0"]
    torch.testing.assert_close(buffers["_folded_0"], torch.full((3,), 3.0).log())
    assert torch.equal(gm(x), fn(x))


def test_folding_goes_on_past_what_it_cannot_fold():
    """A non-constant operation, a tuple-valued one (``max`` and its ``getitem``), a constant
    whose value is a tuple and a random draw come first; the two constants after them are
    still folded, each into its own buffer."""

    def fn(x):
        top = torch.max(x, 0)[0] + torch.max(torch.tensor([1.0, 2.0]), 0)[0]
        noise = torch.randn(3)
        return top + noise + torch.tensor(2.0).exp(), x * torch.tensor(3.0).log()

    x = torch.randn(3)
    gm = _simplified(fn, x)
    assert aten.exp.default not in _ops(gm) and aten.log.default not in _ops(gm)
    buffers = {k: v for k, v in gm.named_buffers() if k.startswith("_folded")}
    assert sorted(buffers) == ["_folded_0", "_folded_1"]
    torch.manual_seed(1)
    got = gm(x)
    torch.manual_seed(1)
    for a, b in zip(got, fn(x), strict=True):
        assert torch.equal(a, b)


def test_non_identity_scalars_are_kept():
    def fn(x):
        return (x * 2 + 1 - 3) / 2, x.pow(2), aten.mul.Scalar(x, 2), x + 0.5

    x = torch.randn(3)
    gm = _simplified(fn, x)
    for got, want in zip(gm(x), fn(x), strict=True):
        assert torch.equal(got, want)


def test_common_subexpressions_are_found_past_an_unhashable_operation():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    literal = graph.call_function(aten.add.Tensor, (x, torch.ones(1)))  # a tensor literal
    first = graph.call_function(aten.exp.default, (x,))
    second = graph.call_function(aten.exp.default, (x,))
    graph.output((literal, first, second))
    compiled._common_subexpressions(graph, set())
    assert not second.users and len(first.users) == 1


def test_random_draws_are_neither_folded_nor_merged():
    def fn(x):
        return x + torch.randn(3), x + torch.randn(3)

    gm = _simplified(fn, torch.zeros(3))
    assert _ops(gm).count(aten.randn.default) == 2 and not list(gm.named_buffers())
    a, b = gm(torch.zeros(3))
    c, _ = gm(torch.zeros(3))
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_common_subexpressions_are_computed_once():
    def fn(x, y):
        return x.exp() + x.exp(), torch.cat([x, y]) - torch.cat([x, y])

    x, y = torch.randn(3), torch.randn(2)
    gm = _simplified(fn, x, y)
    assert _ops(gm).count(aten.exp.default) == 1 and _ops(gm).count(aten.cat.default) == 1
    for got, want in zip(gm(x, y), fn(x, y), strict=True):
        assert torch.equal(got, want)


def test_tensors_written_in_place_are_not_merged_or_folded():
    def fn(x):
        a, b = x.clone(), x.clone()
        a.add_(1.0)
        b.mul_(2.0)
        c = torch.zeros(3)  # a constant, then written
        c.add_(x)
        return a, b, c

    x = torch.randn(3)
    gm = _simplified(fn, x)
    assert _ops(gm).count(aten.clone.default) == 2 and aten.zeros.default in _ops(gm)
    for _ in range(2):
        x = torch.randn(3)
        for got, want in zip(gm(x), fn(x), strict=True):
            assert torch.equal(got, want)


def test_a_tensor_written_through_a_view_is_not_merged():
    def fn(x):
        first, second = x.exp(), x.exp()
        first[:2].add_(1.0)  # written through a slice
        return first, second

    x = torch.randn(3)
    gm = _simplified(fn, x)
    mutated = {node.name for node in compiled._mutated(gm.graph)}
    exps = [node.name for node in gm.graph.nodes if node.target is aten.exp.default]
    assert exps[0] in mutated and exps[1] not in mutated and len(exps) == 2
    for got, want in zip(gm(x), fn(x), strict=True):
        assert torch.equal(got, want)


def test_mutated_nodes_are_the_written_tensor_and_the_tensors_it_views():
    def fn(x):
        base = x.clone()
        view = base[1:]
        view.add_(1.0)
        copy = x.exp()
        copy.mul_(2.0)
        return base, copy

    gm = make_fx(fn)(torch.randn(3))
    names = {node.name for node in compiled._mutated(gm.graph)}
    assert names == {"clone", "slice_1", "exp"}


def test_a_copy_written_in_place_is_not_taken_for_its_source():
    def fn(x):
        a = x * 1
        a.add_(1.0)
        return a, x * 2

    x = torch.randn(3)
    gm = _simplified(fn, x)
    given = x.clone()
    for got, want in zip(gm(given), fn(x), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(given, x)


def test_a_same_shape_view_written_in_place_is_replaced_by_its_source():
    def fn(x):
        b = x.clone()
        b.expand(3).add_(1.0)
        return b

    x = torch.randn(3)
    gm = _simplified(fn, x)
    assert aten.expand.default not in _ops(gm)
    assert torch.equal(gm(x), x + 1.0)


# ---------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    "message",
    [
        "Could not guard on data-dependent expression u0 > 0",
        "aten._local_scalar_dense.default is not supported",
        "Tried to use a value out of a tensor as a Python number",
    ],
)
def test_reading_a_drawn_value_is_explained_as_such(message):
    reason = compiled._why(RuntimeError(message + "\nsecond line"))
    assert reason.startswith("the step reads a tensor as a Python number")


def test_other_recording_errors_are_quoted():
    reason = compiled._why(TypeError("unsupported operand\nmore detail"))
    assert reason == "the step could not be recorded (TypeError: unsupported operand)"
    assert compiled._why(ValueError()) == (
        "the step could not be recorded (ValueError: ValueError)"
    )


def test_a_long_error_message_is_cut_at_300_characters():
    reason = compiled._why(RuntimeError("x" * 400))
    assert reason == f"the step could not be recorded (RuntimeError: {'x' * 300})"


def test_parameters_of_several_dtypes_or_integer_parameters_are_refused():
    assert compiled._uniform([torch.zeros(2), torch.ones(3)]) is None
    assert compiled._uniform([torch.zeros(2), torch.zeros(2, dtype=torch.float64)]) == (
        "the parameters live on several devices or dtypes"
    )
    assert compiled._uniform([torch.zeros(2, dtype=torch.int64)]) == (
        "a parameter is not a dense floating tensor"
    )


def test_distribution_checks_are_off_only_while_recording():
    cls = torch.distributions.Distribution
    default, check = cls._validate_args, cls.__dict__["_validate_sample"]
    with compiled._no_validation():
        dist.Normal(0.0, -1.0).log_prob(torch.tensor(0.0))
        dist.Normal(0.0, 1.0, validate_args=True).log_prob(torch.tensor(float("nan")))
    assert cls._validate_args == default and cls.__dict__["_validate_sample"] is check
    with pytest.raises(ValueError, match="scale"):
        dist.Normal(0.0, -1.0, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        dist.Normal(0.0, 1.0, validate_args=True).log_prob(torch.tensor(float("nan")))


def test_fake_tensor_stack_capture_is_replaced_only_while_recording(monkeypatch):
    import traceback

    import torch._subclasses.fake_tensor as fake_tensor

    assert fake_tensor.traceback is traceback
    with compiled._no_fake_stacks():
        assert fake_tensor.traceback is not traceback
        assert len(fake_tensor.traceback.extract_stack()) == 0
    assert fake_tensor.traceback is traceback

    other = object()  # a torch whose module no longer uses traceback: left alone
    monkeypatch.setattr(fake_tensor, "traceback", other)
    with compiled._no_fake_stacks():
        assert fake_tensor.traceback is other
    assert fake_tensor.traceback is other
