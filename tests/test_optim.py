"""The engine's multi-tensor Adam step: taken for every plain Adam, equal to torch.optim.Adam
(amsgrad, weight decay, Pyro's per-parameter gradient clipping), and left for other optimizers."""

import pyro
import pytest
import torch
from pyro.optim.optim import PyroOptim
from torch.optim import adam as adam_module

from ppl_vi import optim as optim_lib

SHAPES = [(3,), (2, 2), ()]


def run(optim, grads_per_step):
    """Step fresh parameters with ``apply_update``; their values after each step."""
    store = pyro.get_param_store()
    with store.scope():
        params = [
            pyro.param(f"p{i}", torch.full(s, 0.5, dtype=torch.float64)).unconstrained()
            for i, s in enumerate(SHAPES)
        ]
        out = []
        for grads in grads_per_step:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optim_lib.prepare(optim, params)
            optim_lib.apply_update(optim, params)
            out.append([p.detach().clone() for p in params])
    return out


def reference(adam_args, grads_per_step, clip_norm=None):
    """torch.optim.Adam per parameter (Pyro's own way), clipping each gradient first."""
    params = [torch.full(s, 0.5, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    opts = [torch.optim.Adam([p], **adam_args) for p in params]
    out = []
    for grads in grads_per_step:
        for p, g, opt in zip(params, grads, opts, strict=True):
            p.grad = g.clone()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(p, clip_norm)
            opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def grads(steps=3):
    gen = torch.Generator().manual_seed(0)
    return [[3.0 * torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
            for _ in range(steps)]  # fmt: skip


@pytest.mark.parametrize(
    ("adam_args", "clip_norm"),
    [
        ({"lr": 0.05}, None),
        ({"lr": 0.05, "amsgrad": True, "betas": (0.8, 0.9)}, None),
        ({"lr": 0.05, "weight_decay": 0.1, "eps": 1e-3}, None),
        ({"lr": 0.05}, 0.5),
    ],
    ids=["default", "amsgrad", "weight-decay", "clip"],
)
def test_multi_tensor_adam_is_taken_and_equals_torch_adam(adam_args, clip_norm, monkeypatch):
    def per_parameter(*args, **kwargs):
        raise AssertionError("the per-parameter fallback ran")

    monkeypatch.setattr(PyroOptim, "__call__", per_parameter)
    clip = {} if clip_norm is None else {"clip_norm": clip_norm}
    g = grads()
    got = run(pyro.optim.Adam(dict(adam_args), clip_args=clip), g)
    want = reference(adam_args, g, clip_norm)
    for step_got, step_want in zip(got, want, strict=True):
        for a, b in zip(step_got, step_want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_other_optimizers_step_the_pyro_way():
    g = grads(2)
    got = run(pyro.optim.SGD({"lr": 0.1}), g)
    for step, expected in enumerate([0.5 - 0.1 * g[0][i] for i in range(len(SHAPES))]):
        torch.testing.assert_close(got[0][step], expected)


def test_parameters_without_a_gradient_are_skipped_and_the_rest_updated(monkeypatch):
    store = pyro.get_param_store()
    with store.scope():
        params = [pyro.param(f"q{i}", torch.zeros(2, dtype=torch.float64)).unconstrained()
                  for i in range(3)]  # fmt: skip
        optim = pyro.optim.Adam({"lr": 0.1})
        assert optim_lib.prepare(optim, params) is True
        params[1].grad = torch.ones(2, dtype=torch.float64)
        params[2].grad = -torch.ones(2, dtype=torch.float64)
        calls = []
        kernel = adam_module._multi_tensor_adam
        monkeypatch.setattr(adam_module, "_multi_tensor_adam",
                            lambda *a, **k: calls.append(len(a[0])) or kernel(*a, **k))  # fmt: skip
        assert optim_lib._fused_adam_step(optim, params) is True
        assert calls == [2]  # one multi-tensor kernel for both parameters with a gradient
        # Adam's first step moves each parameter by lr against the sign of its gradient
        torch.testing.assert_close(params[0].detach(), torch.zeros(2, dtype=torch.float64))
        torch.testing.assert_close(params[1].detach(), torch.full((2,), -0.1, dtype=torch.float64))
        torch.testing.assert_close(params[2].detach(), torch.full((2,), 0.1, dtype=torch.float64))
        assert not optim.optim_objs[params[0]].state  # no moments for a parameter never stepped


def test_prepare_creates_each_optimizer_once_and_says_when_it_did():
    store = pyro.get_param_store()
    with store.scope():
        a = pyro.param("a", torch.zeros(2)).unconstrained()
        b = pyro.param("b", torch.zeros(3)).unconstrained()
        optim = pyro.optim.Adam({"lr": 0.1})
        assert optim_lib.prepare(optim, [a]) is True
        first = optim.optim_objs[a]
        assert optim_lib.prepare(optim, [a]) is False  # nothing new
        assert optim_lib.prepare(optim, [a, b]) is True  # a known, then a new one
        assert optim.optim_objs[a] is first and set(optim.optim_objs) == {a, b}
        assert set(optim.grad_clip) == {a, b}


@pytest.mark.parametrize(
    "setting",
    [{"differentiable": True}, {"fused": True}, {"capturable": True},
     {"decoupled_weight_decay": True, "weight_decay": 0.1}, "complex", "sparse"],
    ids=["differentiable", "fused", "capturable", "decoupled", "complex", "sparse"],
)  # fmt: skip
def test_the_multi_tensor_step_declines_what_it_does_not_reproduce(setting):
    store = pyro.get_param_store()
    with store.scope():
        dtype = torch.complex128 if setting == "complex" else torch.float64
        p = pyro.param("p", torch.ones(3, dtype=dtype)).unconstrained()
        args = {"lr": 0.1, **(setting if isinstance(setting, dict) else {})}
        optim = pyro.optim.Adam(args)
        optim_lib.prepare(optim, [p])
        grad = torch.ones(3, dtype=dtype)
        p.grad = grad.to_sparse() if setting == "sparse" else grad
        before = p.detach().clone()
        assert optim_lib._fused_adam_step(optim, [p]) is False
        torch.testing.assert_close(p.detach(), before)  # declined: nothing changed
        if isinstance(setting, dict) and "decoupled_weight_decay" in setting:
            optim_lib.apply_update(optim, [p])  # Pyro's way: torch's AdamW update
            expected = 1.0 - 0.1 * 0.1 * 1.0 - 0.1  # decay lr * wd * p, then the Adam step
            torch.testing.assert_close(p.detach(), torch.full((3,), expected, dtype=dtype))


def test_optimizer_settings_for_fingerprints():
    plain = optim_lib.optim_settings(pyro.optim.Adam({"lr": 0.05, "betas": (0.9, 0.99)}))
    assert plain == {"class": "torch.optim.adam.Adam",
                     "args": {"betas": (0.9, 0.99), "lr": 0.05}, "clip": {}}  # fmt: skip
    clipped = optim_lib.optim_settings(pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 5.0}))
    assert clipped["clip"] == {"clip_norm": 5.0}
    assert optim_lib.optim_settings(pyro.optim.SGD({"lr": 0.1}))["class"] == "torch.optim.sgd.SGD"


def test_the_default_optimizer_and_its_argument_checks():
    default = optim_lib.build_optim(None, None, None)
    assert default.pt_optim_args == {"lr": optim_lib.DEFAULT_LR} and optim_lib.DEFAULT_LR == 0.01
    assert default.pt_clip_args == {}
    assert optim_lib.build_optim(None, 0.5, 2).pt_clip_args == {"clip_norm": 2.0}
    for bad in ("1", float("inf"), 0.0, None.__class__):
        with pytest.raises(ValueError, match=r"clip_norm must be > 0 \(got clip_norm="):
            optim_lib.build_optim(None, None, bad)
    with pytest.raises(ValueError, match=r"the optimizer's lr must be a finite number >= 0 "):
        optim_lib.build_optim(pyro.optim.Adam({"lr": -0.5}), None, None)
    given = pyro.optim.Adam({"lr": 0.0})  # lr 0 is allowed: a frozen fit
    assert optim_lib.build_optim(given, None, None) is given
