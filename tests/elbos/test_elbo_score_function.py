"""RBScoreFunctionELBO: errors, exact equivalences, unbiasedness, variance reduction, training."""

import doctest
import math
import statistics
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, TraceGraph_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.poutine.messenger import Messenger

import ppl_vi
import ppl_vi.elbos.score_function as score_function
from ppl_vi.elbos.score_function import RBScoreFunctionELBO
from ppl_vi.guides import MeanField
from ppl_vi.models import beta_bernoulli, eight_schools, normal_normal

Z = 4.0  # tolerance in Monte Carlo standard errors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op worker threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- programs


def local_model(x):
    """z_i ~ N(0, 1), x_i ~ N(z_i, 1): one local latent per datum."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_elbo(loc, scale, x):
    """Closed-form ELBO of ``local_model`` under q(z_i) = N(loc_i, scale_i^2)."""
    log2pi = math.log(2 * math.pi)
    e_prior = -0.5 * log2pi - 0.5 * (loc**2 + scale**2)
    e_lik = -0.5 * log2pi - 0.5 * ((x - loc) ** 2 + scale**2)
    entropy = 0.5 * (log2pi + 1) + torch.log(scale)
    return (e_prior + e_lik + entropy).sum()


def chain_model(x):
    """a -> b -> x with a model parameter ``w`` (pathwise gradient)."""
    w = pyro.param("w", torch.tensor(0.8))
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(w * a, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(b, 1.0), obs=x)


def chain_guide(x):
    """Structured guide: q(b | a) depends on a, so terms of b are downstream of a."""
    loc_a = pyro.param("loc_a", torch.tensor(0.1))
    scale_a = pyro.param("scale_a", torch.tensor(0.7), constraint=dist.constraints.positive)
    c = pyro.param("c", torch.tensor(0.5))
    scale_b = pyro.param("scale_b", torch.tensor(0.6), constraint=dist.constraints.positive)
    a = pyro.sample("a", dist.Normal(loc_a, scale_a))
    pyro.sample("b", dist.Normal(c * a, scale_b))


def bernoulli_model(x):
    """z_i ~ Bernoulli(0.3), x_i ~ N(2 z_i, 1)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def bernoulli_guide(x):
    logits = pyro.param("logits", torch.zeros(x.shape[0]))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=logits))


def bernoulli_data(n=20):
    gen = torch.Generator().manual_seed(5)
    z = (torch.rand(n, generator=gen) < 0.3).to(torch.get_default_dtype())
    return 2.0 * z + torch.randn(n, generator=gen)


def bernoulli_posterior(x):
    """Exact p(z_i = 1 | x_i): the posterior factorises over data."""
    log1 = math.log(0.3) + dist.Normal(2.0, 1.0).log_prob(x)
    log0 = math.log(0.7) + dist.Normal(0.0, 1.0).log_prob(x)
    return torch.sigmoid(log1 - log0)


class NonReparam(Messenger):
    """Make every random guide site draw with ``sample()`` (Pyro then uses score functions)."""

    def _pyro_sample(self, msg):
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if not msg["is_observed"] and not isinstance(base, dist.Delta):
            msg["fn"].has_rsample_(False)


def non_reparam(guide):
    def wrapped(*args, **kwargs):
        with NonReparam():
            return guide(*args, **kwargs)

    return wrapped


def leaves():
    """Unconstrained parameter tensors by name (what the optimizer updates)."""
    store = pyro.get_param_store()
    return {name: pyro.param(name).unconstrained() for name in sorted(store.keys())}


def gradients(elbo, model, guide, *args, seed=0):
    """Loss and parameter gradients of one ``loss_and_grads`` call from a fixed seed."""
    if seed is not None:
        with poutine.block():  # create the parameters of both programs
            trace = poutine.trace(guide).get_trace(*args)
            poutine.replay(model, trace=trace)(*args)
    params = leaves()
    for p in params.values():
        p.grad = None
    if seed is not None:
        pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide, *args)
    grads = {
        k: torch.zeros_like(p) if p.grad is None else p.grad.clone() for k, p in params.items()
    }
    return loss, grads


def gauss_hermite(n=100):
    """Nodes and weights for E[f(m + s e)], e ~ N(0, 1)."""
    x, w = np.polynomial.hermite.hermgauss(n)
    dtype = torch.get_default_dtype()
    return torch.tensor(x, dtype=dtype) * math.sqrt(2), torch.tensor(w, dtype=dtype) / math.sqrt(
        math.pi
    )


def bonferroni_z(num_tests, alpha=1e-3):
    """Two-sided z threshold with family-wise false-alarm rate ``alpha``."""
    return statistics.NormalDist().inv_cdf(1 - alpha / (2 * num_tests))


def eight_schools_case():
    data = eight_schools.load_data()
    guide = MeanField(eight_schools.model, init_scale=0.5)
    return eight_schools.model, guide, (data["J"], data["sigma"], data["y"])


def chain_case():
    x = torch.tensor([0.3, 1.9, 1.1, 0.4])
    return chain_model, chain_guide, (x,)


def bernoulli_case():
    return bernoulli_model, bernoulli_guide, (bernoulli_data(8),)


CASES = {"eight_schools": eight_schools_case, "chain": chain_case, "bernoulli": bernoulli_case}


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["vectorize_particles", "rao_blackwellize", "control_variates"])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_flags_must_be_bool(name, value):
    with pytest.raises(TypeError, match=f"{name} must be True or False \\(got {name}="):
        RBScoreFunctionELBO(**{name: value})


def test_control_variates_need_three_particles():
    with pytest.raises(
        ValueError,
        match=r"needs num_particles >= 3.*num_particles=2.*"
        r"control_variates=False",
    ):
        RBScoreFunctionELBO(num_particles=2)
    assert RBScoreFunctionELBO(num_particles=2, control_variates=False).num_particles == 2


@pytest.mark.parametrize("num_particles", [0, 2.5, True])
def test_num_particles_must_be_a_positive_integer(num_particles):
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        RBScoreFunctionELBO(num_particles=num_particles)


def test_point_mass_guide_site_is_rejected():
    data = normal_normal.load_data()
    guide = AutoDelta(normal_normal.model)
    with pytest.raises(ValueError, match="guide site 'mu' is a Delta .* depends on parameters"):
        RBScoreFunctionELBO().loss_and_grads(normal_normal.model, guide, data["x"])


# ----------------------------------------------------------------------------- exact


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_tracegraph_elbo_on_the_same_draws(float64, case):
    """Without control variates the estimator is TraceGraph_ELBO's on a non-reparam guide.

    Both draw the same particles from the same seed; TraceGraph finds the downstream costs by
    provenance tracking at every step, we from the structure found once.
    """
    model, guide, args = CASES[case]()
    ours = RBScoreFunctionELBO(3, vectorize_particles=False, control_variates=False)
    loss, grads = gradients(ours, model, guide, *args)
    ref_loss, ref = gradients(TraceGraph_ELBO(3), model, non_reparam(guide), *args)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-10, atol=1e-10)
    # Rao-Blackwellization is not a no-op here: the full signal gives another gradient
    full = RBScoreFunctionELBO(
        3, vectorize_particles=False, rao_blackwellize=False, control_variates=False
    )
    _, full_grads = gradients(full, model, guide, *args)
    assert any(not torch.allclose(full_grads[n], ref[n]) for n in ref)


@pytest.mark.parametrize("case", ["eight_schools", "chain"])
def test_control_variates_equal_leave_one_out_by_hand(float64, case):
    """f_k from TraceGraph_ELBO one particle at a time, h_k = grad log q(z_k), then
    mean_k (f_k - a_{-k} h_k) with a_{-k} = Cov/Var over the other particles."""
    model, guide, args = CASES[case]()
    k = 4
    loss, grads = gradients(RBScoreFunctionELBO(k, vectorize_particles=False), model, guide, *args)
    params = leaves()
    names = list(params)
    pyro.set_rng_seed(0)
    f = []
    for _ in range(k):
        _, g = gradients(TraceGraph_ELBO(1), model, non_reparam(guide), *args, seed=None)
        f.append(torch.cat([g[n].reshape(-1) for n in names]))
    pyro.set_rng_seed(0)
    h = []
    for _ in range(k):
        trace = poutine.trace(non_reparam(guide)).get_trace(*args)
        log_q = trace.log_prob_sum()
        parts = torch.autograd.grad(log_q, [params[n] for n in names], allow_unused=True)
        h.append(
            torch.cat(
                [
                    torch.zeros(params[n].numel()) if g is None else g.reshape(-1)
                    for n, g in zip(names, parts, strict=True)
                ]
            )
        )
    f = -torch.stack(f).numpy()  # TraceGraph returns gradients of the loss
    h = torch.stack(h).numpy()
    expected = np.zeros(f.shape[1])
    for j in range(f.shape[1]):
        for i in range(k):
            others = [m for m in range(k) if m != i]
            var = np.var(h[others, j], ddof=1)
            a = np.cov(f[others, j], h[others, j])[0, 1] / var if var > 0 else 0.0
            expected[j] += (f[i, j] - a * h[i, j]) / k
    ours = torch.cat([grads[n].reshape(-1) for n in names])
    np.testing.assert_allclose(-ours.numpy(), expected, rtol=1e-8, atol=1e-10)
    assert not np.allclose(expected, f.mean(0))  # the control variates did something


def test_exact_posterior_guide_gives_log_evidence_and_zero_cv_gradient(float64):
    """With q = p(z | x), every particle's log weight is log p(x): the loss is -log p(x) to
    rounding, and the optimal control variate cancels the score term exactly."""
    data = normal_normal.load_data()
    post = normal_normal.exact_posterior(**data)["mu"]
    guide = MeanField(
        normal_normal.model, init_loc_fn={"mu": post.mean}, init_scale=float(post.stddev)
    )
    log_z = float(normal_normal.log_evidence(**data))
    with_cv, grads = gradients(RBScoreFunctionELBO(8), normal_normal.model, guide, data["x"])
    assert with_cv == pytest.approx(-log_z, abs=1e-10)
    for g in grads.values():
        assert g.abs().max() < 1e-10
    _, no_cv = gradients(
        RBScoreFunctionELBO(8, control_variates=False), normal_normal.model, guide, data["x"]
    )
    assert max(g.abs().max() for g in no_cv.values()) > 1.0  # log p(x) * score: pure noise
    assert RBScoreFunctionELBO(8).loss(normal_normal.model, guide, data["x"]) == pytest.approx(
        -log_z, abs=1e-10
    )


@pytest.mark.parametrize("control_variates", [True, False])
def test_differentiable_loss_value_is_the_loss_and_gradient_the_estimator(
    float64, control_variates
):
    model, guide, args = eight_schools_case()
    elbo = RBScoreFunctionELBO(4, control_variates=control_variates)
    elbo.loss(model, guide, *args)  # guesses max_plate_nesting (a run that draws numbers)
    loss, grads = gradients(elbo, model, guide, *args, seed=3)
    pyro.set_rng_seed(3)
    assert elbo.loss(model, guide, *args) == pytest.approx(loss, rel=1e-12)
    params = leaves()
    pyro.set_rng_seed(3)
    surrogate = elbo.differentiable_loss(model, guide, *args)
    assert surrogate.item() == pytest.approx(loss, rel=1e-12)
    parts = torch.autograd.grad(surrogate, list(params.values()))
    for name, g in zip(params, parts, strict=True):
        torch.testing.assert_close(g, grads[name], rtol=1e-12, atol=1e-12)


def test_unknown_structure_falls_back_to_the_full_signal_with_a_warning(float64, monkeypatch):
    model, guide, args = eight_schools_case()
    kwargs = {"num_particles": 3, "vectorize_particles": False, "control_variates": False}
    _, rb = gradients(RBScoreFunctionELBO(**kwargs), model, guide, *args)
    _, full = gradients(RBScoreFunctionELBO(rao_blackwellize=False, **kwargs), model, guide, *args)

    def broken(*args, **kwargs):
        raise RuntimeError("cannot inspect this model")

    monkeypatch.setattr(score_function, "get_dependencies", broken)
    with pytest.warns(
        UserWarning,
        match=r"could not determine the dependency structure .*"
        r"cannot inspect this model.*full learning signal",
    ):
        _, fallback = gradients(RBScoreFunctionELBO(**kwargs), model, guide, *args)
    for name in full:
        torch.testing.assert_close(fallback[name], full[name], rtol=1e-12, atol=1e-12)
    assert any(not torch.allclose(rb[n], full[n]) for n in full)


@pytest.mark.filterwarnings("ignore:Found vars in model but not guide")
def test_latent_missing_from_the_guide_falls_back_with_a_warning(float64):
    def guide_without_b(x):
        loc_a = pyro.param("loc_a", torch.tensor(0.1))
        pyro.sample("a", dist.Normal(loc_a, 1.0))

    x = torch.tensor([0.3, 1.9])
    elbo = RBScoreFunctionELBO(3, vectorize_particles=False)
    with pytest.warns(UserWarning, match="latent 'b' of model site '.*' is not in the guide"):
        elbo.loss_and_grads(chain_model, guide_without_b, x)


def without_batching_rules(monkeypatch):
    """torch.autograd.grad as on an op without vmap rules: batched gradients raise."""
    grad = torch.autograd.grad

    def no_batching(*args, is_grads_batched=False, **kwargs):
        if is_grads_batched:
            raise RuntimeError("Batching rule not implemented")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)


def test_without_batching_rules_one_backward_per_particle_gives_the_same_gradient(
    float64, monkeypatch
):
    model, guide, args = eight_schools_case()
    elbo = RBScoreFunctionELBO(4)
    elbo.loss(model, guide, *args)  # guesses max_plate_nesting
    _, batched = gradients(elbo, model, guide, *args, seed=1)
    without_batching_rules(monkeypatch)
    _, looped = gradients(elbo, model, guide, *args, seed=1)
    for name in batched:
        torch.testing.assert_close(looped[name], batched[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("vectorize", [True, False])
def test_vectorized_particles_run_the_guide_once_per_step(vectorize):
    model, guide, args = eight_schools_case()
    calls = []

    def counting_guide(*args, **kwargs):
        calls.append(1)
        return guide(*args, **kwargs)

    elbo = RBScoreFunctionELBO(5, vectorize_particles=vectorize)
    elbo.loss_and_grads(model, counting_guide, *args)  # first call also inspects the structure
    calls.clear()
    elbo.loss_and_grads(model, counting_guide, *args)
    assert len(calls) == (1 if vectorize else 5)


# ----------------------------------------------------------------------------- unbiasedness


def beta_bernoulli_elbo(loc, scale, y, entropy=True):
    """ELBO of beta_bernoulli (Beta(2, 2) prior) under MeanField: u ~ N(loc, scale^2), p =
    sigmoid(u). With the Jacobian, log p(y, p) - log q = (2 + k) log p + (2 + n - k) log(1 - p)
    - log B(2, 2) - log N(u; loc, scale); the expectation is taken by Gauss-Hermite quadrature."""
    nodes, weights = gauss_hermite()
    u = loc + scale * nodes
    k, n = y.sum(), y.numel()
    log_p = -(2 + k) * torch.nn.functional.softplus(-u) - (2 + n - k) * (
        torch.nn.functional.softplus(u)
    )
    value = (weights * log_p).sum() + math.log(6.0)  # -log B(2, 2) = log 6
    if entropy:
        value = value + 0.5 * math.log(2 * math.pi * math.e) + torch.log(scale)
    return value


@pytest.mark.parametrize("rao_blackwellize", [True, False])
@pytest.mark.parametrize("control_variates", [True, False])
def test_gradient_is_unbiased_on_beta_bernoulli(float64, rao_blackwellize, control_variates):
    """Mean of independent gradient estimates vs the gradient of the closed-form ELBO.

    With one latent site the Rao-Blackwellized signal is the full one; the 50-latent model below
    checks unbiasedness where it is not.

    Six flips keep log p(y) near -4, so that even plain REINFORCE (whose noise scales with
    |log p - log q|) has the power to see the bias of a signal without -log q.
    """
    y = beta_bernoulli.load_data()["y"][:6]
    guide = MeanField(beta_bernoulli.model, init_loc_fn={"p": torch.tensor(0.3)}, init_scale=0.3)
    guide(y)
    loc, scale = pyro.param("MeanField.locs.p"), pyro.param("MeanField.scales.p")
    params = [loc.unconstrained(), scale.unconstrained()]
    truth = torch.autograd.grad(-beta_bernoulli_elbo(loc, scale, y), params, retain_graph=True)
    biased = torch.autograd.grad(-beta_bernoulli_elbo(loc, scale, y, False), params)
    truth, biased = torch.stack(truth), torch.stack(biased)

    elbo = RBScoreFunctionELBO(
        8, rao_blackwellize=rao_blackwellize, control_variates=control_variates
    )
    num = 300
    estimates, losses = [], []
    for _ in range(num):
        for p in params:
            p.grad = None
        losses.append(elbo.loss_and_grads(beta_bernoulli.model, guide, y))
        estimates.append(torch.stack([p.grad for p in params]))
    estimates = torch.stack(estimates)
    se = estimates.std(0) / math.sqrt(num)
    assert ((estimates.mean(0) - truth).abs() < Z * se).all(), (estimates.mean(0), truth, se)
    # power: dropping -log q from the signal shifts the scale gradient by many standard errors
    assert (biased - truth).abs()[1] > 10 * se[1]
    losses = torch.tensor(losses)
    minus_elbo = -beta_bernoulli_elbo(loc, scale, y).item()
    assert abs(losses.mean().item() - minus_elbo) < Z * losses.std().item() / math.sqrt(num)


# ----------------------------------------------------------------------------- variance


VARIANCE_CONFIGS = {
    "reinforce": (False, False),
    "cv": (False, True),
    "rb": (True, False),
    "rb_cv": (True, True),
}


@pytest.fixture(scope="module")
def local_gradients():
    """300 independent K = 8 gradient estimates per configuration on the 50-latent model,
    with the closed-form gradient (float64)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = 1.5 * torch.randn(50, generator=torch.Generator().manual_seed(3))
        out = {}
        for name, (rb, cv) in VARIANCE_CONFIGS.items():
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            guide = MeanField(local_model, init_scale=0.5)
            guide(x)
            loc, scale = pyro.param("MeanField.locs.z"), pyro.param("MeanField.scales.z")
            params = [loc.unconstrained(), scale.unconstrained()]
            truth = torch.cat(torch.autograd.grad(-local_elbo(loc, scale, x), params))
            elbo = RBScoreFunctionELBO(8, rao_blackwellize=rb, control_variates=cv)
            estimates = []
            for _ in range(300):
                for p in params:
                    p.grad = None
                elbo.loss_and_grads(local_model, guide, x)
                estimates.append(torch.cat([p.grad for p in params]))
            out[name] = (torch.stack(estimates), truth)
        pyro.clear_param_store()
        return out
    finally:
        torch.set_default_dtype(dtype)


def total_variance_log_ratio(a, b, num_boot=1000):
    """log(sum_j Var a_j / sum_j Var b_j) and its bootstrap standard error (rows resampled)."""
    gen = torch.Generator().manual_seed(0)

    def boot_total_variance(x):
        n = len(x)
        rows = torch.randint(n, (num_boot, n), generator=gen)
        counts = torch.zeros(num_boot, n, dtype=x.dtype).scatter_add_(
            1, rows, torch.ones(num_boot, n, dtype=x.dtype)
        )  # (B, n): how often each row is drawn
        s1, s2 = counts @ x, counts @ x**2  # (B, d)
        return ((s2 - s1**2 / n) / (n - 1)).sum(-1)

    log_ratio = (a.var(0).sum() / b.var(0).sum()).log().item()
    boots = (boot_total_variance(a) / boot_total_variance(b)).log()
    return log_ratio, boots.std().item()


@pytest.mark.parametrize("name", list(VARIANCE_CONFIGS))
def test_local_latents_gradient_is_unbiased(local_gradients, name):
    estimates, truth = local_gradients[name]
    z = (estimates.mean(0) - truth) / (estimates.std(0) / math.sqrt(len(estimates)))
    assert z.abs().max() < bonferroni_z(z.numel()), z.abs().max()


@pytest.mark.parametrize(
    "noisy, quiet, factor",
    [
        ("reinforce", "rb", 10.0),  # Rao-Blackwellization: at least 10x
        ("rb", "rb_cv", 1.0),  # control variates on top of it
        ("reinforce", "cv", 1.0),  # control variates alone
    ],
)
def test_variance_reduction(local_gradients, noisy, quiet, factor):
    """Total gradient variance (summed over the 100 parameters) falls by more than ``factor``,
    by more than 4 bootstrap standard errors of the log ratio."""
    log_ratio, se = total_variance_log_ratio(local_gradients[noisy][0], local_gradients[quiet][0])
    assert log_ratio - Z * se > math.log(factor), (math.exp(log_ratio), se)


# ----------------------------------------------------------------------------- training


def test_discrete_latents_train_to_the_exact_posterior():
    """pyro.infer.SVI with Adam (lr 0.1, 500 steps, iterates averaged over the last 200).

    Adam's iterates jitter around the optimum by about lr in logit space; over three seeds the
    averaged probabilities were within 0.021 of the exact ones. The tolerance 0.05 allows for
    that and is small against the distance from the start (0.5) to the exact probabilities.
    """
    x = bernoulli_data()
    exact = bernoulli_posterior(x)
    svi = SVI(
        bernoulli_model, bernoulli_guide, pyro.optim.Adam({"lr": 0.1}), loss=RBScoreFunctionELBO(8)
    )
    total = torch.zeros_like(x)
    for step in range(500):
        svi.step(x)
        if step >= 300:
            total += torch.sigmoid(pyro.param("logits").detach())
    probs = total / 200
    assert (probs - exact).abs().max() < 0.05
    assert (0.5 - exact).abs().max() > 0.3  # the fit had to move


def test_fit_recovers_the_beta_bernoulli_posterior_mean():
    """fit() with an ELBO instance. 100 steps at lr 0.05 already got within 0.035 posterior sd
    over three seeds (50 steps did not: up to 0.19 sd); 200 steps leave a margin."""
    data = beta_bernoulli.load_data()
    post = beta_bernoulli.exact_posterior(**data)["p"]
    result = ppl_vi.fit(
        beta_bernoulli.model,
        **data,
        elbo=RBScoreFunctionELBO(num_particles=8),
        num_steps=200,
        lr=0.05,
        progress=False,
        convergence=None,
    )
    params = result.params
    nodes, weights = gauss_hermite()
    u = params["MeanField.locs.p"] + params["MeanField.scales.p"] * nodes
    guide_mean = (weights * torch.sigmoid(u)).sum()  # E_q[p], exact up to quadrature error
    assert abs(guide_mean - post.mean) < 0.1 * post.stddev


def test_docstring_example():
    result = doctest.testmod(score_function, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# ----------------------------------------------------------------------------- defaults


def test_defaults_are_the_documented_ones():
    elbo = RBScoreFunctionELBO()
    assert elbo.num_particles == 8
    assert elbo.vectorize_particles is True
    assert elbo.rao_blackwellize is True and elbo.control_variates is True


# ----------------------------------------------------------------------------- structure


def global_model(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def global_guide(x):
    m = pyro.param("m", torch.tensor(0.2))
    pyro.sample("loc", dist.Normal(m, 1.0))


def count_structure_inspections(monkeypatch):
    """Count the model inspections (one per structure found)."""
    calls = []
    inspect = score_function.get_dependencies

    def counting(*args, **kwargs):
        calls.append(1)
        return inspect(*args, **kwargs)

    monkeypatch.setattr(score_function, "get_dependencies", counting)
    return calls


def test_the_structures_of_the_last_32_programs_are_kept(monkeypatch):
    """Each (model, guide) pair is inspected once; the cache holds 32 structures and is
    emptied when a 33rd arrives."""
    calls = count_structure_inspections(monkeypatch)
    x = torch.tensor([0.3, 1.0])
    guides = [lambda x: global_guide(x) for _ in range(33)]  # 33 distinct programs
    elbo = RBScoreFunctionELBO(1, control_variates=False, max_plate_nesting=1)
    for guide in guides[:32]:
        elbo.loss(global_model, guide, x)
    assert len(calls) == 32
    elbo.loss(global_model, guides[0], x)  # 32 structures fit
    assert len(calls) == 32
    elbo.loss(global_model, guides[32], x)  # the 33rd empties the cache
    assert len(calls) == 33
    elbo.loss(global_model, guides[0], x)
    assert len(calls) == 34


@pytest.mark.filterwarnings("ignore:Found non-auxiliary vars in guide but not model")
def test_a_deterministic_guide_site_of_a_parameter_is_recorded_not_rejected(float64):
    """pyro.deterministic records a value (an observed point mass): it is neither a Delta to
    reject nor a random site, and it leaves the estimator unchanged."""

    def recording_guide(x):
        global_guide(x)
        pyro.deterministic("twice_m", 2 * pyro.param("m"))

    x = torch.tensor([0.3, 1.0, -0.5])
    elbo = RBScoreFunctionELBO(4, max_plate_nesting=1)
    loss, grads = gradients(elbo, global_model, recording_guide, x)
    ref_loss, ref = gradients(elbo, global_model, global_guide, x)
    assert loss == ref_loss
    torch.testing.assert_close(grads, ref, rtol=0, atol=0)
    assert grads["m"].abs() > 0


def subsampled_model(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=2) as ind:
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[ind])


def subsampled_guide(x):
    m = pyro.param("m", torch.tensor(0.2))
    z_loc = pyro.param("z_loc", torch.zeros(x.shape[0]))
    loc = pyro.sample("loc", dist.Normal(m, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=2) as ind:
        pyro.sample("z", dist.Normal(z_loc[ind] + loc, 1.0))


def test_subsampled_plate_equals_tracegraph_elbo_on_the_same_draws(float64, recwarn):
    """The subsample indices are no random site: the structure is that of the mini-batch."""
    x = torch.tensor([0.3, 1.9, 1.1, -0.4])
    elbo = RBScoreFunctionELBO(1, vectorize_particles=False, control_variates=False)
    loss, grads = gradients(elbo, subsampled_model, subsampled_guide, x)
    ref_loss, ref = gradients(
        TraceGraph_ELBO(1), subsampled_model, non_reparam(subsampled_guide), x
    )
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-10, atol=1e-10)
    assert (grads["z_loc"] == 0).sum() == 2, "two data points outside the mini-batch"
    assert not [w for w in recwarn if "dependency structure" in str(w.message)]


def weighted_model(x, weights):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=weights):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def weighted_guide(x, weights):
    m = pyro.param("m", torch.tensor(0.2))
    z_loc = pyro.param("z_loc", torch.zeros(x.shape[0]))
    loc = pyro.sample("loc", dist.Normal(m, 1.0))
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=weights):
        pyro.sample("z", dist.Normal(z_loc + loc, 1.0))


def test_structure_is_found_with_validation_off_as_the_user_set_it(float64):
    """Per-datum weights with a zero (a dropped datum) are refused by Pyro's validation only:
    with validation off, finding the structure does not turn it back on."""
    x, weights = torch.tensor([0.3, 1.9, 1.1]), torch.tensor([1.0, 0.0, 2.0])
    elbo = RBScoreFunctionELBO(3, vectorize_particles=False, control_variates=False)
    with pyro.validation_enabled(False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to the full signal
            loss, grads = gradients(elbo, weighted_model, weighted_guide, x, weights)
        ref_loss, ref = gradients(
            TraceGraph_ELBO(3), weighted_model, non_reparam(weighted_guide), x, weights
        )
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-10, atol=1e-10)


def masked_model(x):
    """A held-out observation, masked out entirely: its log density is 0."""
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
    with poutine.mask(mask=False):
        pyro.sample("held_out", dist.Normal(loc, 1.0), obs=torch.tensor(5.0))


def test_a_fully_masked_observation_keeps_rao_blackwellization(float64):
    x = torch.tensor([0.3, 1.9, 1.1])
    elbo = RBScoreFunctionELBO(3, vectorize_particles=False, control_variates=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the full signal
        loss, grads = gradients(elbo, masked_model, global_guide, x)
    ref_loss, ref = gradients(TraceGraph_ELBO(3), masked_model, non_reparam(global_guide), x)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("control_variates", [True, False])
def test_model_and_guide_are_checked_under_validation(control_variates):
    def guide_with_extra_site(x):
        global_guide(x)
        pyro.sample("extra", dist.Normal(0.0, 1.0))

    x = torch.tensor([0.3, 1.0, -0.5])
    elbo = RBScoreFunctionELBO(3, control_variates=control_variates)
    with pytest.warns(UserWarning, match="Found non-auxiliary vars in guide but not model"):
        elbo.loss(global_model, guide_with_extra_site, x)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo.loss(global_model, guide_with_extra_site, x)


def test_site_shapes_are_checked_under_validation():
    def unplated_model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)  # a batch of 3 outside any plate

    x = torch.tensor([0.3, 1.0, -0.5])
    elbo = RBScoreFunctionELBO(3, vectorize_particles=False)
    with pytest.raises(ValueError, match='at site "x", invalid log_prob shape'):
        elbo.loss(unplated_model, global_guide, x)


def test_the_fallback_warning_points_at_the_callers_line(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot inspect this model")

    monkeypatch.setattr(score_function, "get_dependencies", broken)
    x = torch.tensor([0.3, 1.0])
    for call in ("loss", "loss_and_grads", "differentiable_loss"):
        elbo = RBScoreFunctionELBO(3, max_plate_nesting=1)
        with pytest.warns(UserWarning, match="could not determine the dependency") as record:
            getattr(elbo, call)(global_model, global_guide, x)
        assert record[0].filename == __file__, call


# ----------------------------------------------------------------------------- backward


def guide_with_unused_parameter(x):
    """A guide parameter that no random site uses (read for a report only)."""
    global_guide(x)
    pyro.param("unused", torch.ones(3))


def test_unused_guide_parameter_gets_zero_and_one_batched_backward_per_step(float64, monkeypatch):
    """The per-particle gradients of all 2K surrogates come from one batched backward pass."""
    x = torch.tensor([0.3, 1.0, -0.5])
    elbo = RBScoreFunctionELBO(4, max_plate_nesting=1)
    elbo.loss(global_model, guide_with_unused_parameter, x)  # finds the structure
    grad, calls = torch.autograd.grad, []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    _, grads = gradients(elbo, global_model, guide_with_unused_parameter, x)
    assert calls == [True]
    assert (grads["unused"] == 0).all() and grads["m"].abs() > 0
    monkeypatch.undo()
    _, ref = gradients(elbo, global_model, global_guide, x)
    torch.testing.assert_close(grads["m"], ref["m"], rtol=0, atol=0)


def test_unused_guide_parameter_without_batching_rules(float64, monkeypatch):
    x = torch.tensor([0.3, 1.0, -0.5])
    elbo = RBScoreFunctionELBO(4, max_plate_nesting=1)
    _, batched = gradients(elbo, global_model, guide_with_unused_parameter, x)
    without_batching_rules(monkeypatch)
    _, looped = gradients(elbo, global_model, guide_with_unused_parameter, x)
    for name in batched:
        torch.testing.assert_close(looped[name], batched[name], rtol=1e-12, atol=1e-12)
    assert (looped["unused"] == 0).all()


def loo_by_hand(f, h):
    """mean_k (f_k - a_{-k} h_k), a_{-k} = Cov/Var over the other particles (0 if Var = 0)."""
    f, h = np.asarray(f, dtype=np.float64), np.asarray(h, dtype=np.float64)
    k, n = f.shape
    out = np.zeros(n)
    for j in range(n):
        for i in range(k):
            others = [m for m in range(k) if m != i]
            var = np.var(h[others, j], ddof=1)
            a = np.cov(f[others, j], h[others, j])[0, 1] / var if var > 0 else 0.0
            out[j] += (f[i, j] - a * h[i, j]) / k
    return out


def test_leave_one_out_coefficients_are_accurate_when_the_score_has_a_large_offset():
    """Covariances are shift invariant; centring first keeps float32 accurate when the score h
    carries a common offset 10^4 times its spread (the one-pass sums would cancel)."""
    gen = torch.Generator().manual_seed(0)
    f, h = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    f = f + 0.8 * h  # correlated, as a signal-weighted score and the score are
    h = h + 1e4  # float32, as stored
    ours = score_function._loo_control_variate_mean(f, h).numpy()
    expected = loo_by_hand(f.numpy(), h.numpy())
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=0)
    assert np.abs(expected - f.numpy().mean(0)).min() > 100, "the correction is large"


def test_a_score_equal_in_every_particle_gets_no_control_variate(float64):
    """Var(h) = 0 over the other particles: no coefficient to estimate, the plain mean."""
    f = torch.tensor([[1.0, 0.5], [2.0, -1.0], [4.0, 0.3], [-3.0, 2.0]])
    h = torch.tensor([[0.7, 0.2], [0.7, -0.4], [0.7, 0.9], [0.7, 0.1]])
    ours = score_function._loo_control_variate_mean(f, h)
    assert ours[0].item() == pytest.approx(f[:, 0].mean().item(), abs=1e-15)
    np.testing.assert_allclose(ours.numpy(), loo_by_hand(f, h), rtol=1e-12, atol=1e-12)


def factor_guide(x):
    """A guide with a factor on its draw (an observed site): a cost, not a random site."""
    m = pyro.param("m", torch.tensor(0.5))
    z = pyro.sample("loc", dist.Normal(m, 1.0))
    pyro.factor("tilt", 0.7 * m * z, has_rsample=False)


def test_a_guide_factor_is_a_cost_term_without_a_score_of_its_own(float64):
    """f_k from TraceGraph_ELBO one particle at a time (the factor is in the signal of the
    draw it depends on), h_k = d log q(z_k) / dm = z_k - m of the random site only, then
    mean_k (f_k - a_{-k} h_k)."""
    x = torch.tensor([0.3, 1.0, -0.5])
    k = 4
    elbo = RBScoreFunctionELBO(k, vectorize_particles=False)
    _, grads = gradients(elbo, global_model, factor_guide, x)
    m = pyro.param("m").detach()
    pyro.set_rng_seed(0)
    f = []
    for _ in range(k):
        _, g = gradients(TraceGraph_ELBO(1), global_model, non_reparam(factor_guide), x, seed=None)
        f.append(-g["m"].reshape(1))  # TraceGraph returns gradients of the loss
    pyro.set_rng_seed(0)
    h = []
    for _ in range(k):
        trace = poutine.trace(non_reparam(factor_guide)).get_trace(x)
        h.append((trace.nodes["loc"]["value"] - m).detach().reshape(1))
    expected = loo_by_hand(torch.stack(f).numpy(), torch.stack(h).numpy())
    np.testing.assert_allclose(-grads["m"].numpy().reshape(1), expected, rtol=1e-10, atol=1e-12)
