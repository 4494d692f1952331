"""The whole training step as one recorded graph (``fit(jit=True)``, ``ppl_vi.compiled``) and
mini-batches from per-epoch permutations (``ppl_vi.minibatch``)."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import ppl_vi
from ppl_vi import Polish, compiled
from ppl_vi.elbos import IWAE, RenyiELBO
from ppl_vi.minibatch import EpochBatches
from ppl_vi.models import eight_schools, logistic_regression

KW = dict(progress=False, convergence=None)


def _path(result, phase="main"):
    return result.method_info["jit"][phase]["path"]


def _exactly_equal(a, b):
    assert a.params.keys() == b.params.keys()
    for name, value in a.params.items():
        assert torch.equal(value, b.params[name]), name


@pytest.mark.parametrize(
    "guide, elbo",
    [
        ("mean_field", "elbo"),
        ("mean_field", IWAE(num_particles=8)),
        ("mean_field", RenyiELBO(alpha=0.5, num_particles=4)),
        ("full_rank", "elbo"),  # nn.Parameter loc: read through the module, not pyro.param
        ("low_rank", "elbo"),
        ("iaf", "elbo"),  # autoregressive networks' weights
    ],
    ids=["mean_field", "iwae", "renyi", "full_rank", "low_rank", "iaf"],
)
def test_compiled_step_gives_the_eager_parameters_bit_for_bit(guide, elbo):
    """Same seed, same draws, same Adam arithmetic: the parameters after 120 steps (with the
    final phase's averaging) are identical, and the steps really ran as one graph."""
    data = eight_schools.load_data()
    kw = dict(KW, num_steps=120, seed=4, guide=guide, elbo=elbo)
    kw["polish"] = Polish(num_particles=4, fraction=0.2)
    eager = ppl_vi.fit(eight_schools.model, **data, jit=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback of any kind
        fast = ppl_vi.fit(eight_schools.model, **data, jit=True, **kw)
    paths = {phase: info["path"] for phase, info in fast.method_info["jit"].items()}
    assert set(paths.values()) == {"compiled step"} and "main" in paths
    _exactly_equal(eager, fast)
    np.testing.assert_allclose(fast.losses, eager.losses, rtol=1e-5)


def test_adam_update_in_the_graph_is_torch_adam_exactly():
    """Parameters updated by the graph equal torch.optim.Adam's single-tensor update of the
    same gradients bit for bit: the check run at recording time, made strict."""
    torch.manual_seed(0)
    params = [torch.randn(5), torch.randn(2, 3)]
    grads = [torch.randn(5), torch.randn(2, 3)]
    reference = [p.clone() for p in params]
    opt = torch.optim.Adam(reference, lr=0.05, betas=(0.8, 0.99), eps=1e-6, foreach=False)
    flat = torch.cat([p.reshape(-1) for p in params])
    flat_grad = torch.cat([g.reshape(-1) for g in grads])
    m, v, steps = torch.zeros(11), torch.zeros(11), torch.zeros(2)

    class Buffers:
        owner = torch.tensor([0] * 5 + [1] * 6)

    for _ in range(7):
        for p, g in zip(reference, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        lr = torch.tensor(0.05, dtype=torch.float64)
        ok = torch.tensor(True)
        flat = compiled._adam(
            flat, flat_grad, m, v, steps, lr, ok, Buffers, [True, True], (0.8, 0.99, 1e-6)
        )
    assert torch.equal(flat, torch.cat([p.reshape(-1) for p in reference]))
    # a step that is not ok changes nothing; an unused parameter keeps value and moments
    before = (flat.clone(), m.clone(), v.clone(), steps.clone())
    out = compiled._adam(
        flat, flat_grad, m, v, steps, lr, torch.tensor(False), Buffers, [True, True],
        (0.8, 0.99, 1e-6),
    )  # fmt: skip
    assert torch.equal(out, before[0]) and torch.equal(m, before[1]) and torch.equal(v, before[2])
    assert torch.equal(steps, before[3])
    out = compiled._adam(flat, flat_grad, m, v, steps, lr, ok, Buffers, [False, True],
                         (0.8, 0.99, 1e-6))  # fmt: skip
    assert torch.equal(out[:5], before[0][:5]) and torch.equal(m[:5], before[1][:5])
    assert not torch.equal(out[5:], before[0][5:])
    assert steps.tolist() == [before[3][0].item(), before[3][1].item() + 1]


def test_simplify_keeps_values_with_in_place_updates_identities_and_constants():
    def fn(x, y):
        a = x * 1 + 0.0  # identities
        c = torch.ones_like(x) * torch.tensor(3.0).log()  # constants only: folded
        b = (a + c).clone()
        b.masked_fill_(b > 1, -1.0)  # an in-place update of an intermediate
        d = torch.exp(a) + torch.exp(a)  # a common subexpression
        return b + d + y.expand(3), (x * 1).sum()

    x, y = torch.randn(3), torch.randn(1)
    gm = make_fx(fn)(x, y)
    before = len(gm.graph.nodes)
    compiled.simplify(gm)
    assert len(gm.graph.nodes) < before
    for _ in range(3):
        x, y = torch.randn(3), torch.randn(1)
        for got, want in zip(gm(x, y), fn(x, y), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_wrong_simplification_is_caught_by_the_check(monkeypatch):
    """If the graph computed something else (here: ``x * 2`` taken for an identity), the
    first compiled step's comparison with the eager step rejects it and the fit runs the
    eager way with the same results."""
    monkeypatch.setitem(compiled._IDENTITY_SCALARS, torch.ops.aten.mul.Tensor, 2)
    data = eight_schools.load_data()
    kw = dict(KW, num_steps=40, seed=1, polish=None)
    eager = ppl_vi.fit(eight_schools.model, **data, jit=False, **kw)
    fast = ppl_vi.fit(eight_schools.model, **data, jit=True, **kw)
    report = fast.method_info["jit"]["main"]
    assert report["path"] == "compiled ELBO" and "differs from the eager step" in report["reason"]
    _exactly_equal(eager, fast)


def test_a_wrong_adam_update_is_caught_by_the_check(monkeypatch):
    real = compiled._adam

    def off_by_one(flat, grad, m, v, steps, *rest):
        return real(flat, grad, m, v, steps + 1, *rest)  # a bias correction one step late

    monkeypatch.setattr(compiled, "_adam", off_by_one)
    fast = ppl_vi.fit(
        eight_schools.model, **eight_schools.load_data(), jit=True, num_steps=10, polish=None,
        **KW,
    )  # fmt: skip
    assert "Adam update differs" in fast.method_info["jit"]["main"]["reason"]


@pytest.mark.parametrize("where", ["graph", "recording"])
def test_a_failing_compiled_step_runs_eagerly_and_keeps_the_work(monkeypatch, where):
    """An error inside the compiled step (here injected: the replayed graph at step 30, or the
    recording's check) is not the user's failure: that step runs eagerly on the same draws
    and the fit goes on, ending where the eager fit ends."""
    calls = {"n": 0}
    if where == "graph":
        real = compiled._Graph.run

        def run(self, inputs):
            calls["n"] += 1
            if calls["n"] == 30:
                raise RuntimeError("CUDA out of memory (injected)")
            return real(self, inputs)

        monkeypatch.setattr(compiled._Graph, "run", run)
    else:

        def check(self, *args):
            raise RuntimeError("a model bug seen while recording (injected)")

        monkeypatch.setattr(compiled.CompiledStep, "_check", check)
    data = eight_schools.load_data()
    kw = dict(KW, num_steps=250, seed=2, polish=None)
    eager = ppl_vi.fit(eight_schools.model, **data, jit=False, **kw)
    # jit="auto" falls back to the eager step (jit=True would try Pyro's JIT of the loss next)
    fast = ppl_vi.fit(eight_schools.model, **data, jit="auto", **kw)
    assert fast.num_steps == 250
    assert "the compiled step failed (RuntimeError" in fast.method_info["jit"]["main"]["reason"]
    _exactly_equal(eager, fast)


def test_value_dependent_model_runs_eagerly_and_says_why():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = 1.0 if mu > 0 else 2.0  # Python control flow on a drawn value
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, scale), obs=y)

    y = torch.randn(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = ppl_vi.fit(model, y, jit=True, num_steps=30, polish=None, **KW)
    eager = ppl_vi.fit(model, y, jit=False, num_steps=30, polish=None, **KW)
    assert _path(fast) != "compiled step"
    _exactly_equal(eager, fast)


def test_amortized_vae_with_mini_batches_compiles_and_matches():
    """An encoder network (plain nn.Parameters of a PyroModule), a decoder network in the
    model, mini-batches from the plate: bit for bit the eager fit."""
    from ppl_vi.models import vae_digits

    data = dict(vae_digits.load_data(n=300), subsample_size=50)
    kw = dict(KW, num_steps=30, seed=3, polish=None, guide="amortized")
    eager = ppl_vi.fit(vae_digits.model, **data, jit=False, **kw)
    fast = ppl_vi.fit(vae_digits.model, **data, jit=True, **kw)
    assert _path(fast) == "compiled step"
    _exactly_equal(eager, fast)
    np.testing.assert_array_equal(fast.losses, eager.losses)


def test_resumed_compiled_fit_equals_an_uninterrupted_one(tmp_path):
    """A checkpoint replaces parameters and Adam states; the compiled step rebinds to them."""
    data = logistic_regression.load_data()
    kw = dict(KW, seed=5, polish=None, jit=True, subsample_size=100, checkpoint_every=10)
    path = tmp_path / "fit.ckpt"
    stop_at_25 = [lambda state: state.step == 25]
    ppl_vi.fit(logistic_regression.model, **data, num_steps=60, checkpoint=path,
               callbacks=stop_at_25, **kw)  # fmt: skip
    resumed = ppl_vi.fit(logistic_regression.model, **data, num_steps=60, checkpoint=path, **kw)
    whole = ppl_vi.fit(logistic_regression.model, **data, num_steps=60, **dict(kw, jit=False))
    assert _path(resumed) == "compiled step" and resumed.num_steps == 60
    _exactly_equal(whole, resumed)


def test_lr_schedule_reaches_the_compiled_step():
    data = eight_schools.load_data()
    kw = dict(KW, num_steps=60, seed=0, polish=None, lr_schedule=lambda s: 0.5 ** (s // 20))
    eager = ppl_vi.fit(eight_schools.model, **data, jit=False, **kw)
    fast = ppl_vi.fit(eight_schools.model, **data, jit=True, **kw)
    assert _path(fast) == "compiled step"
    _exactly_equal(eager, fast)
    flat = ppl_vi.fit(eight_schools.model, **data, jit=True, **dict(kw, lr_schedule=None))
    assert not torch.equal(flat.params["MeanField.locs.mu"], fast.params["MeanField.locs.mu"])


def test_default_fit_compiles_long_fits_silently_and_matches_eager():
    """jit="auto" (the default): a fit with 200+ steps to go runs compiled with the eager
    parameters bit for bit; a short one, and a model that cannot be recorded, run eagerly
    without a warning, and method_info says why."""
    data = eight_schools.load_data()
    kw = dict(KW, num_steps=300, seed=7, polish=Polish(num_particles=4, fraction=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = ppl_vi.fit(eight_schools.model, **data, **kw)
        short = ppl_vi.fit(eight_schools.model, **data, **dict(kw, num_steps=150))
    eager = ppl_vi.fit(eight_schools.model, **data, jit=False, **kw)
    assert _path(auto) == "compiled step"
    assert (
        _path(auto, "polish") == "eager"
        and "steps to go" in auto.method_info["jit"]["polish"]["reason"]
    )
    _exactly_equal(eager, auto)
    assert _path(short) == "eager" and "steps to go" in short.method_info["jit"]["main"]["reason"]
    assert "jit" not in eager.method_info

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if mu.item() > 5:  # a drawn value as a Python number
            mu = mu * 2
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="the model does not broadcast")
        odd = ppl_vi.fit(model, torch.randn(10), num_steps=250, polish=None, **KW)
    assert _path(odd) == "eager" and "Python number" in odd.method_info["jit"]["main"]["reason"]


def test_jit_argument_is_checked():
    with pytest.raises(ValueError, match="jit must be True, False or 'auto'"):
        ppl_vi.fit(eight_schools.model, **eight_schools.load_data(), jit="yes", num_steps=5)


# ---------------------------------------------------------------------- mini-batches
def test_epoch_batches_use_every_point_once_per_epoch():
    batches = EpochBatches(seed=3, plates=["data"])
    size, batch = 10, 3
    per_epoch = size // batch
    for epoch in range(3):
        seen = torch.cat(
            [batches.indices("data", size, batch, epoch * per_epoch + k) for k in range(3)]
        )
        assert len(set(seen.tolist())) == per_epoch * batch  # no repeats within an epoch
    first = batches.indices("data", size, batch, 0)
    again = EpochBatches(seed=3, plates=["data"]).indices("data", size, batch, 0)
    other = EpochBatches(seed=4, plates=["data"]).indices("data", size, batch, 0)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(
        batches.indices("data", size, batch, 0), batches.indices("data", size, batch, 3)
    )


def test_a_plate_whose_size_changes_gets_a_permutation_of_the_new_size():
    batches = EpochBatches(seed=1, plates=["data"])
    small = batches.indices("data", 10, 5, 0)
    large = batches.indices("data", 1000, 5, 0)  # same epoch, other data
    assert int(small.max()) < 10 and torch.equal(
        large, EpochBatches(seed=1, plates=["data"]).indices("data", 1000, 5, 0)
    )
    assert int(batches.indices("data", 10, 5, 0).max()) < 10  # and back
    assert batches.wants("data", 10, 5, None) and not batches.wants("data", 10, 10, None)
    assert not batches.wants("data", 10, 5, torch.arange(5))  # explicit indices: Pyro's
    assert not batches.wants("other", 10, 5, None)


def test_minibatch_fit_draws_no_permutation_of_n_per_step(monkeypatch):
    """Pyro's plate draws randperm(N) at every step; a fit's plates draw one permutation per
    epoch."""
    calls = []
    real = torch.randperm

    def counting(n, *args, **kwargs):
        calls.append(int(n))
        return real(n, *args, **kwargs)

    monkeypatch.setattr(torch, "randperm", counting)
    data = logistic_regression.load_data()  # N = 569, batch 50: 11 steps per epoch
    ppl_vi.fit(logistic_regression.model, **data, subsample_size=50, num_steps=220, seed=0,
               polish=None, **KW)  # fmt: skip
    permutations = [n for n in calls if n == 569]
    # 20 epochs, plus the few that set-up's checks draw (Pyro's way: one per step, 220)
    assert 20 <= len(permutations) <= 20 + 5
