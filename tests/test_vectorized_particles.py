"""Every guide works with every ELBO it supports when particles are vectorized over a plate."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from ppl_vi.elbos import IWAE, RBScoreFunctionELBO, RenyiELBO, SteinOperatorELBO
from ppl_vi.guides import HVM, IAF, Amortized, DiffusionChain, DiffusionELBO, FullRank, MeanField
from ppl_vi.infer_util import undeclared_batch_sites
from ppl_vi.models import diffusion_chain as dc
from ppl_vi.models import eight_schools, logistic_regression, ppca

K = 4  # particles per estimate
R = 100  # repeated estimates per mode in the equivalence tests
DIFF_KW = {"num_diffusion_steps": 5, "beta_max": 0.3}

ELBOS = {
    "elbo": lambda n, v: Trace_ELBO(num_particles=K, vectorize_particles=v, max_plate_nesting=n),
    "iwae": lambda n, v: IWAE(num_particles=K, max_plate_nesting=n, vectorize_particles=v),
    "iwae_dreg": lambda n, v: IWAE(
        num_particles=K, max_plate_nesting=n, vectorize_particles=v, gradient="dreg"
    ),
    "renyi": lambda n, v: RenyiELBO(
        alpha=0.5, num_particles=K, max_plate_nesting=n, vectorize_particles=v
    ),
    "rb_score": lambda n, v: RBScoreFunctionELBO(
        num_particles=K, max_plate_nesting=n, vectorize_particles=v
    ),
    "stein": lambda n, v: SteinOperatorELBO(
        num_particles=K, max_plate_nesting=n, vectorize_particles=v
    ),
    "diffusion": lambda n, v: DiffusionELBO(
        num_particles=K, max_plate_nesting=n, vectorize_particles=v
    ),
}


def _case(name):
    """``(guide factory, model, data, max_plate_nesting)`` for a guide on a model it serves."""
    if name in ("mean_field", "full_rank", "iaf", "hvm"):
        guide = {"mean_field": MeanField, "full_rank": FullRank, "iaf": IAF, "hvm": HVM}[name]
        return guide, eight_schools.model, eight_schools.load_data(), 1
    if name == "amortized":  # mini-batches of the data plate
        data = {**ppca.load_data(n=64), "subsample_size": 16}
        return (lambda m: Amortized(m, hidden_dims=(8,))), ppca.model, data, 1
    if name == "amortized_full":  # all data, with a refinement step
        data = ppca.load_data(n=16)
        return (lambda m: Amortized(m, hidden_dims=(8,), refine_steps=1)), ppca.model, data, 1
    if name == "diffusion":
        data = {**dc.load_data("ring", num_data=64), **DIFF_KW, "subsample_size": 16}
        return (lambda m: DiffusionChain(m, **DIFF_KW)), dc.model, data, 1
    if name == "diffusion_full":
        data = {**dc.load_data("ring", num_data=16), **DIFF_KW}
        return (lambda m: DiffusionChain(m, **DIFF_KW)), dc.model, data, 1
    raise AssertionError(name)


# The ELBOs each guide supports (HVM: see its docstring; DReG and the Stein bound need the
# draws to be sample sites of a guide whose replay reproduces them, which a subsampled
# Amortized guide and the diffusion chain do not claim).
PAIRS = [
    *[(g, e) for g in ("mean_field", "full_rank", "iaf") for e in ELBOS if e != "diffusion"],
    *[("hvm", e) for e in ("elbo", "iwae", "renyi")],
    *[("amortized", e) for e in ("elbo", "iwae", "renyi", "rb_score")],
    *[("diffusion", e) for e in ("elbo", "iwae", "renyi", "diffusion")],
]


@pytest.mark.parametrize("guide_name, elbo_name", PAIRS)
def test_vectorized_particles_train(guide_name, elbo_name):
    make_guide, model, data, nesting = _case(guide_name)
    guide = make_guide(model)
    elbo = ELBOS[elbo_name](nesting, True)
    with torch.no_grad():
        loss = elbo.loss(model, guide, **data)
    assert torch.isfinite(torch.tensor(loss))
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    losses = [svi.step(**data) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = dict(pyro.get_param_store().items())
    assert after.keys() >= before.keys() and after  # fixed-schedule diffusion: model params
    changed = [k for k in before if not torch.equal(before[k], after[k].detach())]
    assert changed, "no parameter moved in two SVI steps"
    assert all(torch.isfinite(v).all() for v in after.values())


def _estimates(guide_name, elbo_name, vectorize: bool) -> torch.Tensor:
    """``R`` loss estimates with the parameters fixed at their initial values."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    make_guide, model, data, nesting = _case(guide_name)
    guide = make_guide(model)
    elbo = ELBOS[elbo_name](nesting, vectorize)
    with torch.no_grad():
        guide(**data)  # build the parameters before the draws start
        pyro.set_rng_seed(1 + vectorize)  # independent draws for the two modes
        return torch.tensor([elbo.loss(model, guide, **data) for _ in range(R)], dtype=float)


def _z(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.mean() - b.mean()) / (a.var() / len(a) + b.var() / len(b)).sqrt()).item()


@pytest.mark.parametrize(
    "guide_name, elbo_name",
    [
        ("mean_field", "elbo"),
        ("mean_field", "iwae"),
        ("iaf", "elbo"),
        ("full_rank", "iwae"),
        ("hvm", "iwae"),
        ("amortized", "iwae"),
        ("amortized_full", "iwae"),
        ("diffusion_full", "diffusion"),
    ],
)
def test_vectorized_matches_sequential(guide_name, elbo_name):
    # Same K, same parameters: the vectorized and the looped estimator have the same mean.
    # IWAE's mean depends on the K particles being independent, so it also catches particles
    # that share a draw; with a subsampled plate ("amortized") it catches looped particles that
    # draw different mini-batches (their per-datum logsumexp would mix data points: the looped
    # loss was 565.7 against 954.7 before they shared the first particle's indices).
    seq = _estimates(guide_name, elbo_name, False)
    vec = _estimates(guide_name, elbo_name, True)
    assert abs(_z(seq, vec)) < 4, (seq.mean(), vec.mean())


def test_equivalence_test_has_power():
    # Particles that share one draw turn the K-particle IWAE loss into the ELBO loss; on this
    # model that gap is many standard errors of the comparison above.
    iwae = _estimates("amortized_full", "iwae", True)
    elbo = _estimates("amortized_full", "elbo", True)
    assert _z(elbo, iwae) > 8


def test_diffusion_elbo_vectorized_draws_independent_particles():
    make_guide, model, data, nesting = _case("diffusion_full")
    guide = make_guide(model)
    elbo = DiffusionELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=nesting)
    ((model_trace, guide_trace),) = list(elbo._get_traces(model, guide, (), data))
    z = guide_trace.nodes["z_3"]["value"]
    assert z.shape == (K, 16, 2)
    assert (z[1:] != z[:1]).all()  # every particle has its own draw
    assert model_trace.nodes["x"]["fn"].batch_shape == (K, 16)


def test_diffusion_elbo_vectorize_flag_type():
    with pytest.raises(TypeError, match="vectorize_particles must be True or False"):
        DiffusionELBO(vectorize_particles=1)


# ---------------------------------------------------------------- undeclared_batch_sites


def _trace(model, **data):
    return poutine.trace(model).get_trace(**data)


def test_undeclared_batch_sites_finds_sites():
    def model(y):
        pyro.sample("a", dist.Normal(torch.zeros(3), 1.0))  # batch (3,), no plate
        pyro.sample("b", dist.Normal(torch.zeros(3), 1.0).to_event(1))  # event dim: fine
        with pyro.plate("rows", 2, dim=-1):
            pyro.sample("c", dist.Normal(torch.zeros(4, 2), 1.0))  # dim -2 undeclared
            pyro.sample("d", dist.Normal(torch.zeros(2), 1.0))
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)  # the observed value carries dim -1

    assert undeclared_batch_sites(_trace(model, y=torch.zeros(5))) == ["a", "c", "y"]


def test_undeclared_batch_sites_empty_for_plated_models():
    def nested(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 3, dim=-2):
            g = pyro.sample("g", dist.Normal(mu, 1.0))
            with pyro.plate("data", 4, subsample_size=2, dim=-1) as idx:
                pyro.sample("y", dist.Normal(g, 1.0), obs=y[:, idx])

    assert undeclared_batch_sites(_trace(nested, y=torch.zeros(3, 4))) == []
    assert undeclared_batch_sites(_trace(eight_schools.model, **eight_schools.load_data())) == []
    lr_data = logistic_regression.load_data()
    assert undeclared_batch_sites(_trace(logistic_regression.model, **lr_data)) == []
