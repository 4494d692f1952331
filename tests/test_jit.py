"""Compiled loss steps (``fit(jit=True)``, ``JitELBO``) and automatic particle vectorization."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import ppl_vi
from ppl_vi import Polish
from ppl_vi.elbos import IWAE, RBScoreFunctionELBO, RenyiELBO, SteinOperatorELBO
from ppl_vi.guides import MeanField
from ppl_vi.jit import JitELBO
from ppl_vi.models import eight_schools, logistic_regression, normal_normal

# float32 rounding: the compiled graph may reassociate sums (measured differences ~1e-7)
RTOL = 1e-6


def _params(result) -> dict:
    with result.param_scope():
        store = pyro.get_param_store()
        return {k: store[k].detach().clone() for k in store.keys()}


def _assert_same_fit(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=RTOL, atol=RTOL, msg=name)
    la, lb = torch.tensor(a.losses), torch.tensor(b.losses)
    torch.testing.assert_close(la, lb, rtol=RTOL, atol=RTOL * la.abs().max().item())


@pytest.mark.parametrize("module", [eight_schools, logistic_regression])
def test_jit_fit_equals_uncompiled_fit_with_the_same_seed(module):
    data = module.load_data()
    kw = dict(num_steps=300, progress=False, seed=3, polish=Polish(num_particles=4))
    eager = ppl_vi.fit(module.model, **data, jit=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        compiled = ppl_vi.fit(module.model, **data, jit=True, **kw)
    assert compiled.elbo_spec["jit"] and not eager.elbo_spec["jit"]
    _assert_same_fit(eager, compiled)


ELBOS = {
    "trace_elbo": lambda: Trace_ELBO(max_plate_nesting=1),
    "trace_elbo_k4": lambda: Trace_ELBO(
        num_particles=4, vectorize_particles=True, max_plate_nesting=1
    ),
    "iwae": lambda: IWAE(num_particles=8, max_plate_nesting=1),
    "iwae_dreg": lambda: IWAE(num_particles=8, gradient="dreg", max_plate_nesting=1),
    "iwae_stl_sequential": lambda: IWAE(
        num_particles=3, gradient="stl", vectorize_particles=False, max_plate_nesting=1
    ),
    "renyi": lambda: RenyiELBO(alpha=0.5, num_particles=8, max_plate_nesting=1),
    "rb_score_no_cv": lambda: RBScoreFunctionELBO(
        num_particles=8, control_variates=False, max_plate_nesting=1
    ),
}


def _svi_run(elbo, steps=25):
    data = eight_schools.load_data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = MeanField(eight_schools.model)
    svi = SVI(eight_schools.model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    losses = torch.tensor([svi.step(**data) for _ in range(steps)])
    store = pyro.get_param_store()
    return losses, {k: store[k].detach().clone() for k in store.keys()}


@pytest.mark.parametrize("name", sorted(ELBOS))
def test_jit_elbo_in_plain_svi_matches_uncompiled(name):
    eager_losses, eager_params = _svi_run(ELBOS[name]())
    jit = JitELBO(ELBOS[name]())
    losses, params = _svi_run(jit)
    assert jit.compiled, jit.fallback
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-5 * losses.abs().max())
    for k in params:
        torch.testing.assert_close(params[k], eager_params[k], rtol=1e-5, atol=1e-6)


def _model_with_param(x):
    """normal_normal with a learnable prior location: the model has parameters too."""
    loc = pyro.param("prior_loc", torch.tensor(0.5))
    mu = pyro.sample("mu", dist.Normal(loc, 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


@pytest.mark.parametrize("gradient", ["dreg", "stl"])
def test_iwae_path_surrogate_gives_the_split_gradients_exactly(gradient):
    """One surrogate for guide and model parameters (what JitELBO records) has the same
    gradients as loss_and_grads, which differentiates the two parameter sets separately."""
    x = torch.randn(20) + 1.0
    guide = MeanField(_model_with_param)
    elbo = IWAE(num_particles=16, gradient=gradient, max_plate_nesting=1)
    guide(x)
    pyro.param("prior_loc", torch.tensor(0.5))
    params = {k: v.unconstrained() for k, v in pyro.get_param_store().items()}
    assert "prior_loc" in params and len(params) == 3

    pyro.set_rng_seed(7)
    loss_a = elbo.loss_and_grads(_model_with_param, guide, x)
    grads_a = {k: p.grad.clone() for k, p in params.items()}
    for p in params.values():
        p.grad = None
    pyro.set_rng_seed(7)
    loss_b, surrogate = elbo.loss_and_surrogate(_model_with_param, guide, x)
    surrogate.backward()
    assert loss_b.item() == pytest.approx(loss_a, rel=1e-6)
    for k, p in params.items():
        torch.testing.assert_close(p.grad, grads_a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_elbos_that_cannot_be_recorded_fall_back_with_a_warning_and_same_results():
    with pytest.warns(RuntimeWarning, match="control variates"):
        jit = JitELBO(RBScoreFunctionELBO(num_particles=4, max_plate_nesting=1))
    assert not jit.compiled
    with pytest.warns(RuntimeWarning, match="SteinOperatorELBO runs uncompiled"):
        losses, _ = _svi_run(JitELBO(SteinOperatorELBO(num_particles=4)), steps=3)
    eager, _ = _svi_run(SteinOperatorELBO(num_particles=4), steps=3)
    torch.testing.assert_close(losses, eager)


def _value_dependent_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    if z.item() > 0:  # structure depends on a drawn value: a recording freezes one branch
        pyro.sample("obs", dist.Normal(z, 1.0), obs=torch.tensor(2.0))
    else:
        pyro.sample("obs", dist.Normal(-z, 3.0), obs=torch.tensor(2.0))


def test_value_dependent_model_is_detected_and_runs_uncompiled():
    guide = MeanField(_value_dependent_model)
    elbo = JitELBO(Trace_ELBO(max_plate_nesting=0))
    svi = SVI(_value_dependent_model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    with pytest.warns(RuntimeWarning, match=r"test_jit.py:\d+ turns a traced tensor"):
        losses = [svi.step() for _ in range(3)]
    assert not elbo.compiled and all(torch.isfinite(torch.tensor(losses)))


def test_jit_with_subsampling_matches_uncompiled():
    data = logistic_regression.load_data()
    kw = dict(num_steps=120, progress=False, seed=1, subsample_size=64, polish=None)
    eager = ppl_vi.fit(logistic_regression.model, **data, jit=False, **kw)
    compiled = ppl_vi.fit(logistic_regression.model, **data, jit=True, **kw)
    _assert_same_fit(eager, compiled)


def test_jit_nan_in_a_compiled_step_stops_with_step_and_site_and_keeps_params():
    """A NaN reaching the recorded graph (here through the data, a graph input) is caught like
    an eager one: the step and the site are named and the last finite parameters are kept."""
    x = normal_normal.load_data()["x"].clone()

    def poison(state):
        if state.step == 20:  # steps 2-20 ran compiled; step 21 sees a NaN datum
            x[0] = float("nan")

    kw = dict(num_steps=100, progress=False, polish=None, convergence=None, jit=True)
    with pytest.raises(ppl_vi.NonFiniteLossError) as err, warnings.catch_warnings():
        warnings.filterwarnings("error", message="jit:")  # the steps really ran compiled
        ppl_vi.fit(normal_normal.model, x, callbacks=[poison], **kw)
    assert err.value.step == 21 and "'x'" in err.value.site
    assert err.value.result.num_steps == 20
    clean = ppl_vi.fit(
        normal_normal.model,
        normal_normal.load_data()["x"],
        callbacks=[lambda s: s.step == 20],
        **kw,
    )
    for name, value in clean.params.items():
        torch.testing.assert_close(err.value.result.params[name], value, rtol=0, atol=0)


# --------------------------------------------------------------- automatic vectorization


def _undeclared_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(3), 1.0))  # batch dim with no plate
    pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def test_fit_vectorizes_particles_when_the_model_declares_its_plates():
    from ppl_vi.fit import resolve_elbo
    from ppl_vi.infer_util import model_info

    data = normal_normal.load_data()
    info = model_info(normal_normal.model, (), data)
    assert info.max_plate_nesting == 1 and info.undeclared == []
    for name in ("elbo", "iwae", "renyi", "rb_score"):
        elbo, _, factory = resolve_elbo(name, 8, info.max_plate_nesting, None)
        assert elbo.vectorize_particles and elbo.num_particles == 8, name
        assert factory(16).vectorize_particles, name  # the final phase's ELBO too
    # Pyro's own ELBO with one particle: no particle plate at all (same as plain Pyro)
    assert not resolve_elbo("elbo", None, 1, None)[0].vectorize_particles
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = ppl_vi.fit(
            normal_normal.model, **data, elbo="iwae", num_particles=8, num_steps=5, progress=False
        )
    assert result.elbo_spec["class"].endswith("IWAE")


def test_fit_falls_back_to_sequential_particles_with_a_warning():
    from ppl_vi.fit import resolve_elbo

    y = torch.tensor([0.5, -1.0, 2.0])
    with pytest.warns(RuntimeWarning, match=r"'mu' have batch dims that no pyro.plate declares"):
        elbo, _, factory = resolve_elbo("iwae", 4, 0, None, undeclared=["mu"])
    assert not elbo.vectorize_particles and not factory(16).vectorize_particles
    with pytest.warns(RuntimeWarning, match=r"'mu' have batch dims that no pyro.plate declares"):
        result = ppl_vi.fit(
            _undeclared_model, y, elbo="iwae", num_particles=4, num_steps=20, progress=False
        )
    assert all(torch.isfinite(torch.tensor(result.losses)))
    with pytest.raises(ValueError, match="vectorize_particles=True cannot be used"):
        ppl_vi.fit(
            _undeclared_model,
            y,
            elbo="iwae",
            elbo_kwargs={"vectorize_particles": True},
            num_steps=5,
            progress=False,
        )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_subsampled_jit_fit_on_cuda_stays_on_the_device():
    """device="auto" on a GPU: the compiled step runs on CUDA, mini-batch indices are drawn
    there (no host-to-device copies per step), and the result matches an uncompiled CUDA fit."""
    data = logistic_regression.load_data()
    kw = dict(num_steps=60, progress=False, seed=1, subsample_size=64, polish=None)
    eager = ppl_vi.fit(logistic_regression.model, **data, device="cuda", jit=False, **kw)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        compiled = ppl_vi.fit(logistic_regression.model, **data, device="cuda", jit=True, **kw)
    assert compiled.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in _params(compiled).values())
    copies = [e for e in prof.events() if "Memcpy HtoD" in e.name]
    # the data are moved once; a copy per step would show up as about num_steps copies
    assert len(copies) < kw["num_steps"] // 2
    _assert_same_fit(eager, compiled)


class _AlteredGraph:
    """A recorded graph whose output is changed by ``alter`` (a deliberately wrong compiled
    step), keeping what JitELBO reads from the real one."""

    def __init__(self, graph, alter):
        self.graph, self.alter = graph, alter

    def __call__(self, *args, **kwargs):
        return self.alter(*self.graph(*args, **kwargs))

    @property
    def _param_names(self):
        return self.graph._param_names


@pytest.mark.parametrize(
    "alter, rejected",
    [
        (lambda loss, surrogate: (loss, surrogate), None),  # the seam itself changes nothing
        (lambda loss, surrogate: (loss + 0.01 * loss.abs(), surrogate), "loss"),
        (lambda loss, surrogate: (loss, 1.01 * surrogate), "gradient"),
    ],
    ids=["unchanged", "loss 1% off", "gradients 1% off"],
)
def test_the_compiled_step_check_rejects_a_wrong_graph(monkeypatch, alter, rejected):
    real = pyro.ops.jit.trace
    monkeypatch.setattr(
        pyro.ops.jit, "trace", lambda fn, **kw: _AlteredGraph(real(fn, **kw), alter)
    )
    pyro.clear_param_store()
    data = normal_normal.load_data()
    elbo = JitELBO(Trace_ELBO())
    svi = SVI(normal_normal.model, MeanField(normal_normal.model), pyro.optim.Adam({"lr": 0.01}),
              elbo)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            svi.step(**data)
    fell_back = [w for w in caught if "runs uncompiled" in str(w.message)]
    if rejected is None:
        assert elbo.compiled and not fell_back
    else:
        assert not elbo.compiled and len(fell_back) == 1
        assert f"compiled step's {rejected}" in elbo.fallback
