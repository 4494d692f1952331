"""KL annealing: beta multiplies exactly the latent terms; beta = 1 is the ELBO bit for bit;
the fit records the annealed and the full objective, checkpoints and saves them."""

from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

import ppl_vi
from ppl_vi.anneal import KLAnnealing, LatentScale, annealed, check_elbo, linear_warmup
from ppl_vi.elbos import IWAE, RBScoreFunctionELBO
from ppl_vi.models import normal_normal

N, B = 12, 5
X = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)


def model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 2.0))
    with pyro.plate("data", N, subsample_size=B) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def guide(x):
    loc = pyro.param("loc", torch.tensor(0.3, dtype=x.dtype))
    scale = pyro.param("scale", torch.tensor(0.7, dtype=x.dtype))
    zloc = pyro.param("zloc", 0.1 * torch.arange(N, dtype=x.dtype))
    pyro.sample("mu", dist.Normal(loc, scale))
    with pyro.plate("data", N, subsample_size=B) as idx:
        pyro.sample("z", dist.Normal(zloc[idx], 0.4))


def by_hand(seed: int, beta: float):
    """``(annealed loss, full loss)`` of one draw: -(log p(x|z) + beta (log p(z) - log q))."""
    pyro.set_rng_seed(seed)
    g = poutine.trace(guide).get_trace(X)
    m = poutine.trace(poutine.replay(model, trace=g)).get_trace(X)
    g.compute_log_prob()
    m.compute_log_prob()
    obs = m.nodes["x"]["log_prob_sum"]
    latent = sum(m.nodes[s]["log_prob_sum"] - g.nodes[s]["log_prob_sum"] for s in ("mu", "z"))
    return -(obs + beta * latent), -(obs + latent)


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def annealed_loss(elbo, seed: int, beta: float):
    pyro.set_rng_seed(seed)
    record = [0.0]
    loss = elbo.loss(  # (the model's sign is the default, +1)
        annealed(model, lambda: beta, record=record), annealed(guide, lambda: beta, -1.0, record), X
    )
    return loss, float(record[0]) / elbo.num_particles  # (summed over the particles)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, 2.0, 2.5])
def test_beta_scales_exactly_the_latent_terms_on_the_same_draw(beta):
    # the subsampled plate's N / B scale stays on every site; only latent sites get beta
    expected, full = by_hand(7, beta)
    loss, latent = annealed_loss(Trace_ELBO(), 7, beta)
    assert loss == pytest.approx(expected.item(), abs=1e-10)
    # the recorded latent part gives the full objective on the same draw
    assert loss + (beta - 1.0) * latent == pytest.approx(full.item(), abs=1e-10)


def test_annealed_gradients_are_those_of_the_annealed_objective():
    beta = 0.25
    guide(X)  # create the parameters
    params = [pyro.param(n).unconstrained() for n in ("loc", "scale", "zloc")]
    pyro.set_rng_seed(3)
    Trace_ELBO().loss_and_grads(annealed(model, lambda: beta), annealed(guide, lambda: beta), X)
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    expected, _ = by_hand(3, beta)
    want = torch.autograd.grad(expected, params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_mean_field_elbo_anneals_its_analytic_kl():
    beta = 0.4
    pyro.set_rng_seed(11)
    g = poutine.trace(guide).get_trace(X)
    m = poutine.trace(poutine.replay(model, trace=g)).get_trace(X)
    m.compute_log_prob()
    kl = sum(
        (kl_divergence(g.nodes[s]["fn"], m.nodes[s]["fn"]) * g.nodes[s]["scale"]).sum()
        for s in ("mu", "z")
    )
    expected = -(m.nodes["x"]["log_prob_sum"] - beta * kl)
    loss, _ = annealed_loss(TraceMeanField_ELBO(), 11, beta)
    assert loss == pytest.approx(float(expected), abs=1e-10)


@pytest.mark.parametrize(
    "elbo",
    [
        *(
            cls(max_plate_nesting=1)  # (a guessed nesting would run the model once, drawing)
            for cls in (Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO, RBScoreFunctionELBO)
        ),
        Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
    ],
    ids=["trace", "graph", "meanfield", "rb", "trace-3-particles"],
)
def test_an_annealed_step_reports_the_elbo_of_its_own_draws(elbo):
    # the full loss equals the unannealed loss on the same seed, and the annealed loss is linear
    # in beta: loss(0.6) = 0.4 loss(0) + 0.6 loss(1), exactly, on one seed
    policy = KLAnnealing(lambda t: (0.6, 0.0)[t])
    policy.check(2)
    guide(X)
    pyro.set_rng_seed(5)
    full_loss = elbo.loss(model, guide, X)
    at = {}
    for step in (0, 1):
        pyro.set_rng_seed(5)
        at[step] = policy.loss_and_grads(elbo, model, guide, step, (X,), {})
        assert at[step][1] == pytest.approx(full_loss, abs=1e-10)
    assert at[0][0] == pytest.approx(0.4 * at[1][0] + 0.6 * full_loss, abs=1e-10)
    assert at[1][0] != pytest.approx(full_loss, abs=1e-3)


def test_plain_svi_with_annealed_model_and_guide_trains():
    beta = [0.5]
    svi = SVI(
        annealed(model, lambda: beta[0]),
        annealed(guide, lambda: beta[0]),
        pyro.optim.Adam({"lr": 0.01}),
        Trace_ELBO(),
    )
    before = pyro.param("loc").item() if "loc" in pyro.get_param_store() else None
    svi.step(X)
    assert before is None and pyro.param("loc").item() != 0.3


def test_latent_scale_leaves_observed_and_factor_sites_alone():
    def m():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))
        pyro.factor("f", torch.tensor(-1.0))

    record = [0.0]
    with LatentScale(lambda: 0.3, record=record):
        tr = poutine.trace(m).get_trace()
    assert tr.nodes["a"]["scale"] == 0.3
    assert tr.nodes["b"]["scale"] == 1.0 and tr.nodes["f"]["scale"] == 1.0
    # the record holds the unannealed latent log density, with a + sign by default
    expected = dist.Normal(0.0, 1.0).log_prob(tr.nodes["a"]["value"]).item()
    assert float(record[0]) == pytest.approx(expected, abs=1e-6)


def test_linear_warmup_and_schedule_checks():
    s = linear_warmup(4)
    assert [s(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [linear_warmup(1)(t) for t in range(2)] == [1.0, 1.0]  # the shortest warm-up
    policy = KLAnnealing(4)
    policy.check(10)
    assert policy.warmup_end() == 3
    with pytest.raises(ValueError, match=r"linear warm-up needs an integer number of steps >= 1"):
        linear_warmup(0)
    with pytest.raises(ValueError, match=r"linear warm-up needs an integer number of steps >= 1"):
        linear_warmup(True)
    # beyond the checked steps the schedule is asked directly; warm-up ends
    assert policy.beta(10) == 1.0 and KLAnnealing(lambda t: 0.5).beta(3) == 0.5
    never = KLAnnealing(lambda t: 0.5)
    never.check(4)
    assert never.warmup_end() == 4 and never.beta(4) == 0.5
    ones = KLAnnealing(lambda t: 1.0)
    ones.check(4)
    assert ones.warmup_end() == 0
    first = KLAnnealing(lambda t: 0.0 if t == 0 else 1.0)
    first.check(4)
    assert first.warmup_end() == 1
    with pytest.raises(TypeError, match=r"kl_anneal must be an integer .* or a callable"):
        KLAnnealing("linear")
    with pytest.raises(ValueError, match=r"kl_anneal\(2\) returned -1.0: .* finite and >= 0"):
        KLAnnealing(lambda t: 1.0 if t < 2 else -1.0).check(5)
    with pytest.raises(ValueError, match=r"kl_anneal\(0\) returned 'a', not a number"):
        KLAnnealing(lambda t: "a").check(1)


def test_bounds_without_a_kl_coefficient_are_refused():
    check_elbo(Trace_ELBO())
    with pytest.raises(ValueError, match=r"IWAE has no KL coefficient"):
        check_elbo(IWAE(num_particles=4))
    data = normal_normal.load_data()
    with pytest.raises(ValueError, match=r"IWAE has no KL coefficient"):
        ppl_vi.fit(normal_normal.model, **data, elbo="iwae", kl_anneal=10, progress=False)
    with pytest.raises(ValueError, match=r"kl_anneal\(0\) returned nan"):
        ppl_vi.fit(normal_normal.model, **data, kl_anneal=lambda t: float("nan"), progress=False)
    with pytest.raises(ValueError, match=r"kl_anneal do"):
        ppl_vi.fit(normal_normal.model, **data, guide="pathfinder", kl_anneal=10, progress=False)


OPTIONS = {"num_steps": 300, "progress": False, "seed": 2, "polish": None, "convergence": None}
DATA = normal_normal.load_data()


def test_beta_one_everywhere_is_the_unannealed_fit_bit_for_bit():
    plain = ppl_vi.fit(normal_normal.model, **DATA, **OPTIONS)
    ones = ppl_vi.fit(normal_normal.model, **DATA, **OPTIONS, kl_anneal=lambda t: 1.0)
    np.testing.assert_array_equal(plain.losses, ones.losses)
    np.testing.assert_array_equal(ones.full_losses, ones.losses)
    for name, value in plain.params.items():
        assert torch.equal(ones.params[name], value)


def test_fit_records_the_annealed_and_the_full_objective():
    r = ppl_vi.fit(normal_normal.model, **DATA, **OPTIONS, kl_anneal=100)
    info = r.method_info["kl_anneal"]
    assert info["schedule"] == {"linear_warmup": 100} and info["warmup_end"] == 99
    assert info["betas"][:2] == [0.01, 0.02] and info["betas"][99:] == [1.0] * 201
    assert len(r.full_losses) == len(r.losses) == 300
    warm = slice(0, 99)
    # the KL part is positive on average: the annealed loss is the lower one during warm-up
    assert np.all(r.full_losses[warm] != r.losses[warm])
    assert np.mean(r.full_losses[warm] - r.losses[warm]) > 0
    np.testing.assert_array_equal(r.full_losses[99:], r.losses[99:])
    idata = r.to_inference_data(num_samples=10)
    np.testing.assert_array_equal(idata.sample_stats["full_loss"].values, r.full_losses)


def test_convergence_waits_for_the_end_of_the_warm_up():
    rule = ppl_vi.Convergence(tol=1e9, window=10, lag=1, min_steps=10)
    options = {**OPTIONS, "convergence": rule}
    plain = ppl_vi.fit(normal_normal.model, **DATA, **options)
    assert plain.converged and plain.num_steps == 10
    warm = ppl_vi.fit(normal_normal.model, **DATA, **options, kl_anneal=50)
    assert warm.converged and warm.num_steps == 49 + 10


def test_checkpoint_resume_and_save_keep_both_histories(tmp_path):
    path = tmp_path / "fit.ckpt"
    options = {**OPTIONS, "checkpoint": path, "kl_anneal": 150}
    part = ppl_vi.fit(normal_normal.model, **DATA, **options, callbacks=[lambda s: s.step == 120])
    assert part.num_steps == 120
    resumed = ppl_vi.fit(normal_normal.model, **DATA, **options)
    whole = ppl_vi.fit(normal_normal.model, **DATA, **{**options, "checkpoint": None})
    np.testing.assert_array_equal(resumed.full_losses, whole.full_losses)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    with pytest.raises(ppl_vi.CheckpointError, match=r"kl_anneal"):
        ppl_vi.fit(normal_normal.model, **DATA, **{**options, "kl_anneal": 100})
    whole.save(tmp_path / "r.pt")
    back = ppl_vi.load(tmp_path / "r.pt", normal_normal.model)
    np.testing.assert_array_equal(back.full_losses, whole.full_losses)
    assert back.method_info["kl_anneal"]["warmup_end"] == 149


def test_annealing_wraps_a_local_reparameterized_bnn_fit():
    from ppl_vi.local_reparam import LocalReparam
    from ppl_vi.models import bnn

    data = bnn.load_data(task="classification", n=40)
    options = {**OPTIONS, "num_steps": 6, "guide": "mean_field"}
    r = ppl_vi.fit(bnn.model, **data, **options, elbo=LocalReparam(Trace_ELBO()), kl_anneal=4)
    assert r.method_info["kl_anneal"]["warmup_end"] == 3
    assert np.all(r.full_losses[:3] != r.losses[:3])
    np.testing.assert_array_equal(r.full_losses[3:], r.losses[3:])
    with pytest.raises(ValueError, match=r"IWAE has no KL coefficient"):
        check_elbo(_wrapped_iwae())


def _wrapped_iwae():
    class Wrapper(Trace_ELBO):
        pass

    w = Wrapper()
    w.elbo = IWAE(num_particles=2)
    return w


def test_masked_latent_sites_are_recorded_with_their_mask():
    keep = torch.tensor([True, False, True, True, False])

    def masked_model(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 2.0))
        with pyro.plate("data", N, subsample_size=B), poutine.mask(mask=keep):
            pyro.sample("z", dist.Normal(mu, 1.0))

    def masked_guide(x):
        pyro.sample("mu", dist.Normal(torch.tensor(0.3, dtype=x.dtype), 0.7))
        with pyro.plate("data", N, subsample_size=B), poutine.mask(mask=keep):
            pyro.sample("z", dist.Normal(torch.zeros(B, dtype=x.dtype), 0.4))

    for beta in (0.0, 0.5):
        record = [0.0]
        pyro.set_rng_seed(4)
        with LatentScale(lambda b=beta: b, record=record):
            tr = poutine.trace(masked_model).get_trace(X)
        site = tr.nodes["z"]
        lp = site["fn"].log_prob(site["value"])
        expected = (N / B) * lp[keep].sum() + tr.nodes["mu"]["fn"].log_prob(tr.nodes["mu"]["value"])
        assert float(record[0]) == pytest.approx(expected.item(), abs=1e-10)


def test_the_annealed_pair_is_built_once_per_model_and_guide():
    policy = KLAnnealing(3)
    a = policy._wrapped(model, guide)
    assert policy._wrapped(model, guide) == a  # the same functions: an ELBO's caches hold
    b = policy._wrapped(model, lambda x: guide(x))
    assert b[0] is not a[0] and policy._wrapped(model, guide)[0] is not a[0]


def test_a_site_masked_out_with_false_adds_nothing_and_record_zero_is_the_sum():
    def model_off(x):
        pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 2.0))
        with poutine.mask(mask=False):
            pyro.sample("off", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))

    for beta in (0.0, 0.5, 1.0):
        record = [0.0, 42.0]  # only record[0] is the sum
        pyro.set_rng_seed(5)
        with LatentScale(lambda b=beta: b, record=record):
            tr = poutine.trace(model_off).get_trace(X)
        expected = tr.nodes["mu"]["fn"].log_prob(tr.nodes["mu"]["value"])
        assert float(record[0]) == pytest.approx(expected.item(), abs=1e-12)
        assert record[1] == 42.0


def test_warm_up_end_and_coefficients_checked_once_for_the_longest_run():
    calls = []

    def schedule(step):
        calls.append(step)
        return min(1.0, 0.5 * (step + 1))

    policy = KLAnnealing(schedule)
    assert policy.warmup_end() == 0  # nothing checked yet: no warm-up known
    policy.start(None, SimpleNamespace(num_steps=4))
    assert calls == [0, 1, 2, 3] and policy.betas == [0.5, 1.0, 1.0, 1.0]
    assert policy.warmup_end() == 1
    policy.start(None, SimpleNamespace(num_steps=4))  # a resumed run: already checked
    policy.start(None, SimpleNamespace(num_steps=3))
    assert calls == [0, 1, 2, 3] and len(policy.betas) == 4
    policy.start(None, SimpleNamespace(num_steps=6))  # a longer run checks the new steps too
    assert len(policy.betas) == 6 and policy.warmup_end() == 1
