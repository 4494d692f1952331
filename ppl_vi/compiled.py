"""The whole training step as one compiled graph: ``fit(..., jit=True)``.

A step of stochastic VI is the guide's reparameterized draw, the model's log density at it, the
gradient of the ELBO with respect to every parameter and the optimizer's update. For a small
model, running these through Pyro's tracing, messengers and per-site distribution objects costs
far more than the tensor arithmetic (NumPyro and Stan avoid the cost by compiling the step).
:class:`CompiledStep` records the step once and replays it as one TorchScript graph:

1. ``torch.fx``'s ``make_fx`` runs the ELBO's own eager code (Pyro's traces of the guide and
   the model, with the parameters supplied as graph inputs through ``poutine.replay``, as
   :func:`pyro.ops.jit.trace` does) together with ``torch.autograd.grad`` and an Adam update
   of all parameters as one flat vector, and records the ATen operations: forward, backward
   and update in one graph. Random draws are graph operations, so each replay draws fresh
   particles from the same generator, in the same order, as the eager step.
2. The graph is simplified (dead code, operations on constants, identities such as ``x * 1``
   or an ``expand`` to the same shape; a model written with Python scalars leaves many) and
   recorded with ``torch.jit.trace``, whose interpreter runs each operation for about a
   microsecond, against several for Python dispatch and autograd.
3. The first replay is checked against the eager step with the same random numbers (the loss,
   every gradient and the updated parameters, to float rounding); on any difference, or when
   the step cannot be recorded (Python control flow on a drawn value, ``.item()``), the fit
   goes on with the eager step and ``result.method_info["jit"]`` says why.

``torch.compile`` (Inductor) gives faster steps still (0.05 ms against 0.2 ms for eight
schools on one CPU thread), but compiling takes about 20 s on CPU with a C++ toolchain, longer
than most fits it would speed up; TorchScript records in well under a second and needs nothing
but torch.

The update is the one ``torch.optim.Adam`` makes (bias-corrected moments, ``eps`` outside the
square root); the per-parameter Adam states of Pyro's optimizer stay the place where moments
and step counts live (they become views of the graph's flat buffers), so checkpoints, resumed
fits and the eager path read and continue them unchanged. A step whose loss or gradient is not
finite changes nothing (the update is masked inside the graph) and is reported as in eager mode.
Mini-batch indices of subsampled plates are graph inputs, taken from per-epoch permutations
(:mod:`ppl_vi.minibatch`).

Examples
--------
>>> import torch
>>> import ppl_vi
>>> from ppl_vi.models import eight_schools
>>> data = eight_schools.load_data()
>>> fast = ppl_vi.fit(eight_schools.model, **data, num_steps=300, progress=False)
>>> fast.method_info["jit"]["main"]["path"]
'compiled step'
>>> eager = ppl_vi.fit(eight_schools.model, **data, num_steps=300, progress=False, jit=False)
>>> all(torch.equal(fast.params[k], eager.params[k]) for k in eager.params)
True
"""

from __future__ import annotations

import contextlib
import operator
import types
import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.optim.optim import PyroOptim

from ppl_vi.infer_util import plate_indices
from ppl_vi.jit import JitELBO, trace_elbo_terms, unsupported_reason
from ppl_vi.runtime import rng_state, set_rng_state

__all__ = ["CompiledStep", "unsupported_optim"]

#: Recordings per step before the data are taken to change at every step.
MAX_GRAPHS = 4

_ADAM_DEFAULTS = {"weight_decay": 0, "amsgrad": False, "maximize": False}


class NonFinite(Exception):
    """The compiled step's loss or a gradient is not finite; nothing was updated."""

    def __init__(self, loss: float, bad_params: list):
        self.loss = loss
        self.bad_params = bad_params


def unsupported_optim(optim) -> str | None:
    """Why the compiled step cannot apply ``optim``'s update (None when it can)."""
    if type(optim) is not PyroOptim or optim.pt_optim_constructor is not torch.optim.Adam:
        return f"the optimizer is {type(optim).__name__}, not pyro.optim.Adam"
    if any(clip is not None for clip in optim.grad_clip.values()):
        return "gradient clipping (clip_norm) is applied per parameter outside the graph"
    groups = [opt.param_groups[0] for opt in optim.optim_objs.values()]
    for group in groups:
        for key, default in _ADAM_DEFAULTS.items():
            if bool(group.get(key, default)) != bool(default):
                return f"Adam's {key}={group[key]!r} is not compiled"
        if group.get("differentiable") or group.get("fused") or group.get("capturable"):
            return "Adam's differentiable/fused/capturable modes are not compiled"
    keys = {(g["betas"], g["eps"], g["lr"]) for g in groups}
    if len(keys) > 1:
        return "the parameters have different Adam settings"
    return None


class CompiledStep:
    """One ELBO's training step (loss, gradients, Adam update) as one TorchScript graph.

    Built by :class:`~ppl_vi.engine.Engine` for ``jit=True``; see the module's text.

    Parameters
    ----------
    model, guide : callable
        The model and its (built) guide.
    elbo : pyro.infer.ELBO
        The fit's ELBO: :class:`~pyro.infer.Trace_ELBO`, one that defines
        ``loss_and_surrogate``, or a :class:`~ppl_vi.jit.JitELBO` wrapping one.
    batches : ppl_vi.minibatch.EpochBatches or None
        Mini-batch indices of the subsampled plates.
    device : torch.device, optional
        The fit's device (whose random generators recording must leave as they were).

    Attributes
    ----------
    reason : str or None
        Why the step runs eagerly (None while compiled or not yet recorded).
    """

    def __init__(self, model, guide, elbo, batches=None, device=None):
        self.model, self.guide, self.elbo = model, guide, elbo
        self.batches = batches
        self.device = device
        self.reason: str | None = None
        self.compile_seconds = 0.0
        self._graphs: dict = {}  # data key -> recorded graph
        self._bound = None  # (params, optimizer state views) the flat buffers serve
        self._plates = None  # [(name, size, batch)] of the subsampled plates
        self._last_data = None  # (arguments, tensors, key) of the last step

    @property
    def compiled(self) -> bool:
        """True once a graph has been recorded and checked."""
        return bool(self._graphs)

    # ------------------------------------------------------------------ the step
    def __call__(self, optim, params: list, step: int, args, kwargs) -> float | None:
        """Take one step of ``params`` (the unconstrained tensors the last eager step
        updated); None when it must run eagerly (then nothing changed). Raises
        :class:`NonFinite` when the loss or a gradient is not finite (nothing changed)."""
        if self.reason is not None:
            return None
        tensors, key = self._data_key(args, kwargs)
        buffers = self._bind(optim, params)
        if buffers is None:
            return None
        graph = self._graphs.get(key)
        if graph is None:
            self.reason = _unsupported(self.elbo)
            if self.reason is None and len(self._graphs) >= MAX_GRAPHS:
                self.reason = (
                    f"the model's non-tensor arguments or data shapes changed {MAX_GRAPHS} "
                    "times; each change needs a new recording"
                )
            if self.reason is not None:
                return None
            if self._plates is None:
                self._plates = find_plates(self, args, kwargs)
        indices = self._indices(step)
        if graph is None:
            graph = self._record(key, buffers, args, kwargs, tensors, indices)
            if graph is None:
                return None
        inputs = buffers.inputs(optim) + tensors + indices
        with torch.no_grad():
            status, flat_grad = graph.run(inputs)
        loss, ok = status.tolist()  # one copy to the host, also from a GPU
        if not ok:
            raise NonFinite(loss, buffers.nonfinite(flat_grad))
        return loss

    def _data_key(self, args, kwargs):
        """The graph's data inputs and the key of their graph (shapes, dtypes, devices and
        the non-tensor arguments); reused while the same argument objects come back."""
        objects = (args, kwargs, *args, *kwargs.values())
        last = self._last_data
        if last is not None and len(last[0]) == len(objects):
            if all(a is b for a, b in zip(last[0], objects, strict=True)):
                return last[1:]
        tensors, static = _split(args, kwargs)
        positional = tuple(None if isinstance(a, torch.Tensor) else a for a in args)
        shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        key = (_static_key(positional, static), tuple(kwargs), shapes)
        self._last_data = (objects, tensors, key)
        return tensors, key

    def _indices(self, step: int) -> list:
        if self.batches is None:
            return []
        return [self.batches.indices(name, size, batch, step) for name, size, batch in self.plates]

    # ------------------------------------------------------------------ parameters
    def _bind(self, optim, params: list):
        """The flat moment buffers; rebuilt when the parameters or their optimizer states
        were replaced (a loaded checkpoint) since the last step."""
        if self._bound is not None and self._bound.current(optim, params):
            return self._bound
        if any(p not in optim.optim_objs for p in params):
            return None  # the eager step creates the optimizers first
        reason = unsupported_optim(optim) or _uniform(params)
        if reason is not None:
            self.reason = reason
            return None
        self._bound = _FlatAdam(optim, params)
        return self._bound

    # ------------------------------------------------------------------ recording
    def _terms(self, args, kwargs):
        inner = self.elbo.elbo if isinstance(self.elbo, JitELBO) else self.elbo
        if type(inner) is Trace_ELBO:
            return trace_elbo_terms(inner, self.model, self.guide, args, kwargs)
        return inner.loss_and_surrogate(self.model, self.guide, *args, **kwargs)

    def _record(self, key, buffers, args, kwargs, tensors, indices):
        import time

        from torch.fx.experimental.proxy_tensor import make_fx

        start = time.perf_counter()
        fn = _step_function(self, buffers, args, kwargs, len(indices))
        live = buffers.inputs(buffers.optim)
        saved = [t.detach().clone() for t in live]
        rng = rng_state(self.device)
        try:
            with _quiet(), pyro.validation_enabled(False), _no_validation(), torch.no_grad():
                # recorded on the live parameters (see _step_function); recording runs the
                # step once, which is undone below
                with _no_fake_stacks():
                    gm = make_fx(fn)(*live, *tensors, *indices)
                used = fn.used
                simplify(gm)
                example = tuple(t.clone() for t in saved) + tuple(tensors) + tuple(indices)
                script = torch.jit.trace(gm, example, check_trace=False)
        except Exception as e:  # noqa: BLE001 - anything make_fx or the tracer cannot record
            self.reason = _why(e)
            return None
        finally:
            with torch.no_grad():
                for t, value in zip(live, saved, strict=True):
                    t.copy_(value)
            set_rng_state(rng)
        graph = _Graph(script, used)
        problem = self._check(graph, buffers, args, kwargs, tensors, indices, rng)
        set_rng_state(rng)
        if problem is not None:
            self.reason = problem
            return None
        self._graphs[key] = graph
        self.compile_seconds += time.perf_counter() - start
        return graph

    def _check(self, graph, buffers, args, kwargs, tensors, indices, rng) -> str | None:
        """Replay once on copies and compare with the eager step on the same random numbers."""
        snapshot = buffers.snapshot(buffers.optim)
        with torch.no_grad():
            status, flat_grad = graph.run(snapshot + tensors + indices)
        loss, ok = status.tolist()
        set_rng_state(rng)
        params = buffers.params
        with self._batch_context(indices):
            eager_loss, surrogate = (torch.as_tensor(t) for t in self._terms(args, kwargs))
        found = torch.autograd.grad(surrogate, params, allow_unused=True)
        eager = _flat_grads(params, found).detach()
        a, b = loss, float(eager_loss.detach())
        if not (a == b or abs(a - b) <= 1e-4 * max(1.0, abs(a), abs(b)) or (a != a and b != b)):
            return f"the compiled step's loss differs from the eager step's ({a:.8g} vs {b:.8g})"
        # a parameter the graph does not see (read as a constant) has a zero gradient there
        if ok and not torch.allclose(flat_grad, eager, rtol=1e-3, atol=1e-6):
            diff = float((flat_grad - eager).abs().max())
            return f"the compiled step's gradient differs from the eager step's (by {diff:.3g})"
        expected = buffers.reference_update(buffers.optim, eager, graph.used)
        got = snapshot[: len(params)]
        for e, g in zip(expected, got, strict=True):
            if ok and not torch.allclose(e, g, rtol=1e-6, atol=1e-9):
                return "the compiled step's Adam update differs from torch.optim.Adam's"
        return None

    def _batch_context(self, indices):
        if not indices:
            return contextlib.nullcontext()
        chosen = {name: idx for (name, _, _), idx in zip(self.plates, indices, strict=True)}

        def choose(name, size, subsample_size, subsample, device):
            if subsample is None and name in chosen:
                subsample = chosen[name]
            return subsample_size, subsample

        return plate_indices(choose)

    @property
    def plates(self) -> list:
        """``(name, size, batch)`` of the subsampled plates whose indices are graph inputs."""
        return self._plates or []


def find_plates(step: CompiledStep, args, kwargs) -> list:
    """The subsampled plates a step uses, ``[(name, size, batch)]``, from a blocked dry run."""
    found = {}
    batches = step.batches
    if batches is None:
        return []

    def choose(name, size, subsample_size, subsample, device):
        if batches.wants(name, size, subsample_size, subsample):
            found.setdefault(name, (name, size, subsample_size))
        return subsample_size, subsample

    with plate_indices(choose), poutine.block(), torch.no_grad():
        rng = rng_state(step.device)
        try:
            step._terms(args, kwargs)
        finally:
            set_rng_state(rng)
    return list(found.values())


# ---------------------------------------------------------------------- the recorded function
def _step_function(step: CompiledStep, buffers, args, kwargs, num_indices):
    """The function make_fx records: inputs (params, flat moments, steps, lr, data, indices),
    outputs ``([loss, ok]`` in float64, flat gradient); parameters and moments are updated in
    place.

    The parameters are recorded as the live tensors of the parameter store (make_fx maps
    input tensors to graph inputs by identity), so every way a model or guide reaches them
    (``pyro.param``, a ``PyroModule``'s ``PyroParam`` or plain ``nn.Parameter``) reads the
    input.
    """
    num = len(buffers.params)
    # positional arguments: a tensor is a graph input, anything else is fixed (part of the key)
    arg_count = sum(isinstance(a, torch.Tensor) for a in args)
    tensor_names = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    static = {k: v for k, v in kwargs.items() if k not in tensor_names}
    hyper = buffers.hyper

    def fn(*inputs):
        params = inputs[:num]
        exp_avg, exp_avg_sq, steps, lr = inputs[num : num + 4]
        data = inputs[num + 4 : len(inputs) - num_indices]
        indices = inputs[len(inputs) - num_indices :]
        given = iter(data[:arg_count])
        call_args = [next(given) if isinstance(a, torch.Tensor) else a for a in args]
        call_kwargs = dict(static, **dict(zip(tensor_names, data[arg_count:], strict=True)))
        with torch.enable_grad(), step._batch_context(list(indices)):
            loss, surrogate = (torch.as_tensor(t) for t in step._terms(call_args, call_kwargs))
            if not surrogate.requires_grad:
                raise RuntimeError("the ELBO's surrogate does not depend on the parameters")
            found = torch.autograd.grad(surrogate, params, allow_unused=True)
        fn.used = [g is not None for g in found]
        flat_grad = _flat_grads(params, found)
        loss = loss.detach()
        ok = torch.isfinite(loss) & torch.isfinite(flat_grad).all()
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        new = _adam(flat, flat_grad, exp_avg, exp_avg_sq, steps, lr, ok, buffers, fn.used, hyper)
        offset = 0
        for p in params:
            size = p.numel()
            p.copy_(new[offset : offset + size].view(p.shape))
            offset += size
        return torch.stack((loss.to(torch.float64), ok.to(torch.float64))), flat_grad

    fn.used = None
    return fn


def _adam(flat, grad, exp_avg, exp_avg_sq, steps, lr, ok, buffers, used, hyper):
    """torch.optim.Adam's update of the flat parameter vector, masked by ``ok`` (and by
    ``used``: parameters without a gradient keep their values and states, as in torch)."""
    beta1, beta2, eps = hyper
    owner = buffers.owner  # element -> parameter position
    take = ok & torch.tensor(used, dtype=torch.bool, device=flat.device)  # per parameter
    step_new = steps + 1
    elem_take = take[owner]
    # as torch.optim.Adam: bias corrections and step size in double precision (Python floats
    # there), rounded to the parameters' dtype where they meet the tensors
    count = step_new[owner].to(torch.float64)
    neg_step = (-(lr / (1 - torch.pow(beta1, count)))).to(flat.dtype)
    bias2_sqrt = torch.sqrt(1 - torch.pow(beta2, count)).to(flat.dtype)
    m = torch.lerp(exp_avg, grad, 1 - beta1)
    v = torch.addcmul(exp_avg_sq * beta2, grad, grad, value=1 - beta2)
    denom = v.sqrt() / bias2_sqrt + eps
    new = flat + neg_step * m / denom
    exp_avg.copy_(torch.where(elem_take, m, exp_avg))
    exp_avg_sq.copy_(torch.where(elem_take, v, exp_avg_sq))
    steps.copy_(torch.where(take, step_new, steps))
    return torch.where(elem_take, new, flat)


class _FlatAdam:
    """Flat moment and step buffers over a list of parameters; each parameter's Adam state
    in Pyro's optimizer holds views of them."""

    def __init__(self, optim, params: list):
        self.optim = optim
        self.params = list(params)
        first = params[0]
        group = optim.optim_objs[first].param_groups[0]
        self.hyper = (float(group["betas"][0]), float(group["betas"][1]), float(group["eps"]))
        sizes = [p.numel() for p in params]
        self.owner = torch.repeat_interleave(
            torch.arange(len(params), device=first.device),
            torch.tensor(sizes, device=first.device),
        )
        exp_avg, exp_avg_sq, steps = [], [], []
        for p in params:
            state = optim.optim_objs[p].state[p]
            exp_avg.append(state["exp_avg"].reshape(-1) if state else p.new_zeros(p.numel()))
            exp_avg_sq.append(state["exp_avg_sq"].reshape(-1) if state else p.new_zeros(p.numel()))
            steps.append(float(state["step"]) if state else 0.0)
        self.exp_avg = torch.cat(exp_avg).detach().clone()
        self.exp_avg_sq = torch.cat(exp_avg_sq).detach().clone()
        self.steps = torch.tensor(steps, dtype=first.dtype, device=first.device)
        self.lr = torch.zeros((), dtype=torch.float64, device=first.device)
        self._views = []
        offset = 0
        for i, (p, size) in enumerate(zip(params, sizes, strict=True)):
            state = optim.optim_objs[p].state[p]
            views = (
                self.exp_avg[offset : offset + size].view(p.shape),
                self.exp_avg_sq[offset : offset + size].view(p.shape),
            )
            state["exp_avg"], state["exp_avg_sq"] = views
            # a 0-d view of the flat counts, which torch.optim.Adam reads and increments in
            # place when a step runs eagerly
            state["step"] = self.steps[i]
            self._views.append((state, views))
            offset += size

    def current(self, optim, params: list) -> bool:
        if optim is not self.optim or len(params) != len(self.params):
            return False
        if any(a is not b for a, b in zip(params, self.params, strict=True)):
            return False
        return all(s.get("exp_avg") is v[0] and s.get("exp_avg_sq") is v[1] for s, v in self._views)

    def inputs(self, optim) -> list:
        group = optim.optim_objs[self.params[0]].param_groups[0]
        self.lr.fill_(group["lr"])
        return self.params + [self.exp_avg, self.exp_avg_sq, self.steps, self.lr]

    def nonfinite(self, flat_grad: torch.Tensor) -> list:
        """The parameters whose gradient has a non-finite entry."""
        bad = ~torch.isfinite(flat_grad)
        hit = torch.zeros(len(self.params), dtype=torch.bool, device=bad.device)
        hit.index_put_((self.owner,), bad, accumulate=True)
        return [p for p, h in zip(self.params, hit.tolist(), strict=True) if h]

    def snapshot(self, optim) -> list:
        return [t.detach().clone() for t in self.inputs(optim)]

    def reference_update(self, optim, flat_grad, used) -> list:
        """The parameters after ``torch.optim.adam.adam`` on copies of the current state."""
        from torch.optim.adam import adam

        group = optim.optim_objs[self.params[0]].param_groups[0]
        out, offset = [], 0
        for i, p in enumerate(self.params):
            size = p.numel()
            new = p.detach().clone()
            if used[i]:
                adam(
                    [new],
                    [flat_grad[offset : offset + size].view(p.shape).clone()],
                    [self.exp_avg[offset : offset + size].view(p.shape).clone()],
                    [self.exp_avg_sq[offset : offset + size].view(p.shape).clone()],
                    [],
                    [torch.tensor(float(self.steps[i]))],
                    foreach=False,
                    amsgrad=False,
                    beta1=self.hyper[0],
                    beta2=self.hyper[1],
                    lr=float(group["lr"]),
                    weight_decay=0.0,
                    eps=self.hyper[2],
                    maximize=False,
                )
            out.append(new)
            offset += size
        return out


class _Graph:
    def __init__(self, script, used):
        self.script = script
        self.used = list(used)

    def run(self, inputs):
        return self.script.forward(*inputs)  # without nn.Module.__call__: 0.06 ms less


# ---------------------------------------------------------------------- graph simplification
_IDENTITY_SCALARS = {
    torch.ops.aten.mul.Tensor: 1,
    torch.ops.aten.div.Tensor: 1,
    torch.ops.aten.add.Tensor: 0,
    torch.ops.aten.sub.Tensor: 0,
}


def simplify(gm) -> None:
    """Remove what a recorded step computes for nothing: identities (``x * 1``, ``x + 0``,
    ``expand`` or ``detach`` to the same tensor), operations on constants only (folded into new
    constants) and dead code. Operations with side effects (random draws, in-place updates)
    and tensors that are updated in place are left alone."""
    graph = gm.graph
    mutated = _mutated(graph)
    for node in list(graph.nodes):
        source = _identity_source(node)
        # a view of the same shape is the same tensor, also when it is written in place; a
        # computed copy (x * 1) stands for its source only if neither is ever written
        if source is not None and (_is_view(node) or not ({node, source} & mutated)):
            node.replace_all_uses_with(source)
    _fold_constants(gm, mutated)
    graph.eliminate_dead_code()
    _common_subexpressions(graph, _mutated(graph))
    graph.eliminate_dead_code()
    gm.recompile()


def _pure(node) -> bool:
    target = node.target
    return (
        node.op == "call_function"
        and isinstance(target, torch._ops.OpOverload)
        and not _is_mutating(node)
        and torch.Tag.nondeterministic_seeded not in target.tags
        and target not in _NOT_FOLDABLE
    )


def _common_subexpressions(graph, mutated: set) -> None:
    """Compute each pure operation on the same inputs once (the loss and the surrogate of an
    ELBO repeat most of their sums)."""
    seen = {}
    for node in list(graph.nodes):
        if node in mutated or not _pure(node):
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(node.kwargs))
            hash(key)
        except TypeError:
            continue
        first = seen.get(key)
        if first is None:
            seen[key] = node
        else:
            node.replace_all_uses_with(first)


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, torch.Tensor):
        raise TypeError("tensor literal")
    return value


def _is_mutating(node) -> bool:
    target = node.target
    schema = getattr(target, "_schema", None)
    return schema is not None and schema.is_mutable


def _is_view(node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return (
        node.op == "call_function"
        and schema is not None
        and not schema.is_mutable
        and bool(schema.returns)
        and schema.returns[0].alias_info is not None
    )


def _mutated(graph) -> set:
    """Nodes whose tensors some operation writes in place, and the tensors they view."""
    out = set()
    for node in graph.nodes:
        if node.op == "call_function" and _is_mutating(node) and node.args:
            arg = node.args[0]
            while isinstance(arg, torch.fx.Node) and arg not in out:
                out.add(arg)
                arg = arg.args[0] if _is_view(arg) and arg.args else None
    return out


def _meta(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _identity_source(node):
    if node.op != "call_function":
        return None
    target = node.target
    val = _meta(node)
    if target in _IDENTITY_SCALARS and len(node.args) == 2 and not node.kwargs:
        x, other = node.args
        if isinstance(other, (int, float)) and other == _IDENTITY_SCALARS[target]:
            src = _meta(x)
            if _same(src, val):
                return x
    if target is torch.ops.aten.pow.Tensor_Scalar and node.args[1] == 1:
        if _same(_meta(node.args[0]), val):
            return node.args[0]
    if target is torch.ops.aten.mul.Scalar and node.args[1] == 1:
        if _same(_meta(node.args[0]), val):
            return node.args[0]
    if target in (torch.ops.aten.expand.default, torch.ops.aten.detach.default):
        src = _meta(node.args[0])
        if _same(src, val):
            return node.args[0]
    return None


def _same(a, b) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.device == b.device
        and a.stride() == b.stride()
    )


_NOT_FOLDABLE = {
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.empty_strided.default,
}


_SHAPE_ONLY = {
    torch.ops.aten.zeros_like.default,
    torch.ops.aten.ones_like.default,
    torch.ops.aten.full_like.default,
    torch.ops.aten.new_zeros.default,
    torch.ops.aten.new_ones.default,
    torch.ops.aten.new_full.default,
}


def _like(node):
    val = _meta(node)
    return torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device=val.device)


def _fold_constants(gm, mutated: set) -> None:
    """Evaluate operations whose inputs are all constants once; their results become
    constants of the graph."""
    values = {}
    graph = gm.graph
    for node in graph.nodes:
        if node.op == "get_attr":
            values[node] = operator.attrgetter(node.target)(gm)
            continue
        if node.op != "call_function" or node in mutated or _is_mutating(node):
            continue
        target = node.target
        if not isinstance(target, torch._ops.OpOverload) or target in _NOT_FOLDABLE:
            continue
        if torch.Tag.nondeterministic_seeded in target.tags:
            continue
        inputs = []
        torch.fx.node.map_arg((node.args, node.kwargs), inputs.append)
        if target in _SHAPE_ONLY and all(isinstance(_meta(i), torch.Tensor) for i in inputs):
            # the result depends only on the input's shape, dtype and device
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), _like)
        elif all(i in values for i in inputs):
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
        else:
            continue
        values[node] = target(*args, **kwargs)
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node not in values:
            continue
        value = values[node]
        if not isinstance(value, torch.Tensor):
            continue
        if all(user in values for user in node.users):
            continue  # only feeds other folded nodes
        name = f"_folded_{count}"
        count += 1
        gm.register_buffer(name, value.detach().clone())
        with graph.inserting_before(node):
            attr = graph.get_attr(name)
        attr.meta["val"] = value
        node.replace_all_uses_with(attr)


# ---------------------------------------------------------------------- helpers
def _split(args, kwargs):
    """The tensors the graph takes as inputs (tensor positional arguments, then tensor keyword
    arguments by name) and the static keyword arguments."""
    names = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    static = {k: v for k, v in kwargs.items() if k not in names}
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return tensors + [kwargs[k] for k in names], static


def _static_key(positional: tuple, static: dict):
    """A key of the non-tensor arguments (by value where they hash, else by identity)."""
    return tuple(_key_part(v) for v in positional), pyro.ops.jit._hashable_args_kwargs((), static)


def _key_part(value):
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return (type(value).__name__, value)


def _unsupported(elbo) -> str | None:
    """Why ``elbo``'s step cannot be compiled (None when it can)."""
    if isinstance(elbo, JitELBO):
        if elbo.fallback is not None:
            return f"the ELBO runs uncompiled ({elbo.fallback})"
        return None
    return unsupported_reason(elbo)


def _flat_grads(params, found) -> torch.Tensor:
    """One flat gradient vector (zeros where a parameter has no gradient)."""
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]
    return torch.cat([g.reshape(-1) for g in grads])


def _uniform(params: list) -> str | None:
    if len({(p.device, p.dtype) for p in params}) > 1:
        return "the parameters live on several devices or dtypes"
    if any(not p.is_floating_point() or p.is_sparse for p in params):
        return "a parameter is not a dense floating tensor"
    return None


def _why(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if "data-dependent" in first or "_local_scalar_dense" in first or "value out of a" in first:
        return (
            "the step reads a tensor as a Python number (a Python `if` on a drawn value, "
            "`.item()`, `float()`, or a `pyro.plate` iterated as a sequential loop), which a "
            "recorded graph would freeze"
        )
    return f"the step could not be recorded ({type(e).__name__}: {first})"


@contextlib.contextmanager
def _no_validation():
    """Distribution checks off while recording (the eager steps check): they read tensors
    as Python booleans. Distributions built before (a ``PyroSample`` prior keeps its own
    ``validate_args``) skip their sample checks too."""
    cls = torch.distributions.Distribution
    old = cls._validate_args
    check = cls.__dict__["_validate_sample"]
    cls.set_default_validate_args(False)
    cls._validate_sample = lambda self, value: None
    try:
        yield
    finally:
        cls.set_default_validate_args(old)
        cls._validate_sample = check


@contextlib.contextmanager
def _no_fake_stacks():
    """No Python stack capture per recorded operation.

    Recording in "real" mode, make_fx describes each operation's result with a new
    ``FakeTensorMode``, which saves the Python stack when built (for its own debug messages):
    about 1 ms per operation, half of a small model's recording. The capture is replaced by an
    empty stack for the block.
    """
    import traceback

    import torch._subclasses.fake_tensor as fake_tensor

    saved = getattr(fake_tensor, "traceback", None)
    if saved is not traceback:  # torch changed: leave it alone
        yield
        return
    shim = types.SimpleNamespace(
        extract_stack=lambda *args, **kwargs: traceback.StackSummary(),
        format_list=traceback.format_list,
    )
    fake_tensor.traceback = shim
    try:
        yield
    finally:
        fake_tensor.traceback = saved


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
