"""The engine's multi-tensor Adam step: taken for every plain Adam, equal to torch.optim.Adam
(amsgrad, weight decay, Pyro's per-parameter gradient clipping), and left for other optimizers."""

import pyro
import pytest
import torch
from pyro.optim.optim import PyroOptim

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
