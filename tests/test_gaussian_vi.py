"""Pathfinder, batch-and-match and fit(guide="auto"): exact identities and known posteriors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model

import ppl_vi
from ppl_vi.engine import Engine
from ppl_vi.gaussian_vi import bam_update
from ppl_vi.guides import FullRank
from ppl_vi.models import bayes_linear_regression as blr
from ppl_vi.pathfinder import single_path
from ppl_vi.potential import LogDensity


class GaussianTarget:
    """An exactly normalised Gaussian log density on flat vectors (a LogDensity stand-in)."""

    def __init__(self, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.cov = a @ a.T + 0.5 * torch.eye(dim, dtype=torch.float64)
        self.mean = torch.randn(dim, generator=g, dtype=torch.float64)
        self.dist = torch.distributions.MultivariateNormal(self.mean, self.cov)
        self.num_grads = self.num_evals = 0

    def __call__(self, u):
        self.num_evals += u.shape[0]
        return self.dist.log_prob(u)

    def value_and_grad(self, u):
        self.num_grads += u.shape[0]
        self.num_evals += u.shape[0]
        u = u.detach().requires_grad_(True)
        value = self.dist.log_prob(u)
        (grad,) = torch.autograd.grad(value.sum(), u)
        return value.detach(), grad


def _blr_data(n=60):
    data = blr.load_data(n)
    return {k: v.double() for k, v in data.items()}


# ---------------------------------------------------------------------------- Pathfinder
@pytest.mark.parametrize("dim", [2, 5, 8])
def test_pathfinder_gaussian_is_the_target_after_d_iterations(dim):
    """On a quadratic, L-BFGS with a full history and accurate line searches makes conjugate
    steps, so after D iterations the inverse-Hessian estimate (formula II.2, with the diagonal
    of Algorithm 3) is the target's covariance and the Newton step lands on its mean."""
    target = GaussianTarget(dim)
    history = []
    single_path(target, torch.zeros(dim, dtype=torch.float64), history_size=dim, max_iters=dim,
                wolfe_c2=0.1, history=history)  # fmt: skip
    assert len(history) == dim + 1  # the start and D iterates
    mu, cov = history[-1]
    torch.testing.assert_close(mu, target.mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, target.cov, rtol=1e-8, atol=1e-8)
    # one iterate earlier, one direction is still unexplored: not yet the target
    assert (history[-2][1] - target.cov).abs().max() > 1e-3


def test_pathfinder_elbo_of_the_exact_gaussian_is_log_z():
    """log p - log q is constant (= log Z = 0 here) under the exact Gaussian: the best iterate's
    ELBO estimate is exactly 0 and no other iterate can beat it in expectation."""
    target = GaussianTarget(4, seed=1)
    path = single_path(target, torch.zeros(4, dtype=torch.float64), history_size=4,
                       max_iters=4, wolfe_c2=0.1, num_elbo_draws=50)  # fmt: skip
    assert path.elbos[-1] == pytest.approx(0.0, abs=1e-9)
    torch.testing.assert_close(path.scale_tril @ path.scale_tril.T, target.cov)


def test_log_density_equals_pyros_potential_energy(float64):
    """LogDensity(u) = -potential_fn(u) of pyro.infer.mcmc (log p + log |J|), for constrained
    sites too (HalfCauchy tau)."""
    from ppl_vi.models import eight_schools

    data = {k: v.double() if torch.is_tensor(v) else v for k, v in
            eight_schools.load_data().items()}  # fmt: skip
    engine = Engine(eight_schools.model, FullRank, "elbo")
    state = engine.init(**data)
    _, potential_fn, _, _ = initialize_model(eight_schools.model, model_kwargs=data)
    u = torch.randn(5, 10, dtype=torch.float64)
    with engine.session(state):
        log_density = LogDensity(engine.model, engine.guide, engine.args, engine.kwargs,
                                 engine.info)  # fmt: skip
        values = log_density(u)
        expected = []
        for row in u:
            params = {site["name"]: v.reshape(site["value"].shape)
                      for site, v in engine.guide._unpack_latent(row)}  # fmt: skip
            expected.append(-potential_fn(params))
    torch.testing.assert_close(values, torch.stack(expected))
    assert log_density.num_evals == 5


def test_pathfinder_finds_the_exact_posterior_mean_and_its_elbo_matches_log_weights():
    data = _blr_data()
    exact = blr.exact_posterior(**data)["beta"]
    result = ppl_vi.fit(blr.model, **data, guide="pathfinder", progress=False,
                        guide_kwargs={"num_paths": 1, "num_elbo_draws": 400})  # fmt: skip
    info = result.method_info
    assert info["method"] == "pathfinder" and info["num_grads"] > 0
    assert result.resampled and result.dtype == torch.float64
    with result.param_scope():
        loc = result.guide.loc.detach()
    # the chosen iterate is at (or next to) the mode, and one Newton step from it with the
    # L-BFGS covariance lands on the mean to a small fraction of a posterior sd
    assert float(((loc - exact.mean) / exact.stddev).abs().max()) < 0.01
    # the path's ELBO estimate (400 draws) and VIResult.log_weights agree within MC error
    log_p, log_q = result.log_weights(4000, seed=3)
    lw = (log_p - log_q).double().numpy()
    elbo = info["paths"][0]["elbo"]
    se = lw.std() * math.sqrt(1 / 400 + 1 / 4000)
    assert abs(elbo - lw.mean()) < 4 * se + 1e-9
    # and both are below log p(x), by the KL of q from the posterior (>= 0)
    log_z = float(blr.log_evidence(**data))
    assert lw.mean() <= log_z + 4 * lw.std() / math.sqrt(4000)


def test_multi_path_result_is_a_mixture_that_survives_save_and_load(tmp_path):
    from ppl_vi.models import eight_schools

    result = ppl_vi.fit(eight_schools.model, **eight_schools.load_data(), guide="pathfinder",
                        progress=False, guide_kwargs={"num_paths": 3})  # fmt: skip
    assert type(result.guide).__name__ == "GaussianMixture"
    assert len(result.method_info["paths"]) == 3
    assert "pathfinder, 3 path(s)" in repr(result)
    khat = result.psis_khat(4000, seed=1)
    path = tmp_path / "pf.pt"
    result.save(path)
    again = ppl_vi.load(path, eight_schools.model)
    assert again.resampled and again.dtype == torch.float64
    assert again.method_info == result.method_info
    assert again.psis_khat(4000, seed=1) == khat
    draws = again.sample(200, seed=0)
    assert draws["theta"].shape == (200, 8)


def test_pathfinder_resampled_draws_are_a_subset_of_guide_draws():
    """A resampled result returns guide draws picked by PSIS weight: every value is one of
    the 4n proposals, with repeats."""
    data = _blr_data()
    result = ppl_vi.fit(blr.model, **data, guide="pathfinder", progress=False,
                        guide_kwargs={"num_paths": 1})  # fmt: skip
    picked = result.sample(500, seed=2)["beta"]
    proposals = result._draws(2000, 2)[0]["beta"]
    matches = (picked[:, None, :] == proposals[None]).all(-1).any(-1)
    assert bool(matches.all())
    assert len(torch.unique(picked, dim=0)) < 500


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.1}, "lr does not apply"),
        ({"jit": True}, "jit does not apply"),
        ({"guide_kwargs": {"num_paths": 0}}, "num_paths must be an integer >= 1"),
        ({"guide_kwargs": {"init_radius": -1}}, "init_radius must be a number >= 0"),
        ({"init": "pathfinder"}, "init= does not apply"),
    ],
)
def test_pathfinder_refuses_options_that_do_not_apply(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ppl_vi.fit(blr.model, **_blr_data(), guide="pathfinder", progress=False, **kwargs)


def test_init_must_be_pathfinder_or_a_pathfinder_result():
    with pytest.raises(ValueError, match="init must be 'pathfinder'"):
        ppl_vi.fit(blr.model, **_blr_data(), init="laplace", progress=False)
    plain = ppl_vi.fit(blr.model, **_blr_data(), num_steps=5, progress=False)
    with pytest.raises(ValueError, match="init= takes 'pathfinder'"):
        ppl_vi.fit(blr.model, **_blr_data(), init=plain, progress=False)


@pytest.mark.parametrize("guide", ["full_rank", "low_rank", "mean_field", "iaf"])
def test_init_pathfinder_starts_every_guide_at_pathfinders_gaussian(guide):
    """With a learning rate of ~0 the fitted guide is its initial state: Pathfinder's mean for
    every guide, and its covariance (full rank) or sds (mean field)."""
    data = _blr_data()
    pf = ppl_vi.fit(blr.model, **data, guide="pathfinder", progress=False,
                    guide_kwargs={"num_paths": 1})  # fmt: skip
    with pf.param_scope():
        loc = pf.guide.loc.detach().float()
        tril = (pf.guide.scale[:, None] * pf.guide.scale_tril).detach().float()
    result = ppl_vi.fit(blr.model, **blr.load_data(60), guide=guide, init=pf, lr=1e-30,
                        num_steps=1, polish=None, convergence=None, progress=False)  # fmt: skip
    mean = result.summary(20000, seed=0)["mean"].to_numpy()
    sd = tril.pow(2).sum(-1).sqrt().numpy()
    # the draws' means sit on the start's means within 4 Monte Carlo standard errors each
    assert np.all(np.abs(mean - loc.numpy()) < 4 * sd / math.sqrt(20000))
    if guide == "full_rank":
        with result.param_scope():
            got = (result.guide.scale[:, None] * result.guide.scale_tril).detach()
        torch.testing.assert_close(got, tril, rtol=1e-5, atol=1e-6)
    if guide == "mean_field":
        np.testing.assert_allclose(result.params["MeanField.scales.beta"].numpy(), sd, rtol=1e-5)


# ---------------------------------------------------------------------------- batch and match
def test_bam_update_has_the_target_as_its_fixed_point_for_any_batch(float64):
    """With exact scores g = -S^-1 (z - m), (m, S) solves S U S + S = V and the mean update
    returns m, whatever the batch and the step size."""
    target = GaussianTarget(6, seed=2)
    z = target.dist.sample((7,)) + 3.0  # a batch that is not even centred on the target
    g = -torch.linalg.solve(target.cov, (z - target.mean).T).T
    for lam in (0.1, 1.0, 50.0):
        mu, cov = bam_update(target.mean, target.cov, z, g, lam)
        torch.testing.assert_close(mu, target.mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(cov, target.cov, rtol=1e-10, atol=1e-10)
    # a wrong start moves: not a fixed point
    mu, cov = bam_update(target.mean + 1, target.cov, z, g, 1.0)
    assert (mu - target.mean - 1).abs().max() > 1e-2


def test_bam_converges_to_the_exact_gaussian_posterior():
    data = _blr_data()
    exact = blr.exact_posterior(**data)["beta"]
    result = ppl_vi.fit(blr.model, **data, guide="bam", num_steps=200, convergence=None,
                        progress=False, guide_kwargs={"batch_size": 32})  # fmt: skip
    with result.param_scope():
        loc = result.guide.loc.detach()
        tril = (result.guide.scale[:, None] * result.guide.scale_tril).detach()
    sd = exact.stddev
    assert float(((loc - exact.mean) / sd).abs().max()) < 0.05
    ratio = tril.pow(2).sum(-1).sqrt() / sd
    assert float((ratio - 1).abs().max()) < 0.05
    assert result.method_info["method"] == "bam"


def test_bam_checkpoint_resumes_to_the_same_fit(tmp_path):
    """BaM steps are engine steps: 10 + 10 checkpointed steps equal 20 in one go."""
    data = _blr_data()
    opts = dict(guide="bam", convergence=None, progress=False)
    ppl_vi.fit(blr.model, **data, num_steps=10, checkpoint=tmp_path / "c.ckpt", **opts)
    resumed = ppl_vi.fit(blr.model, **data, num_steps=20, checkpoint=tmp_path / "c.ckpt", **opts)
    direct = ppl_vi.fit(blr.model, **data, num_steps=20, **opts)
    np.testing.assert_array_equal(resumed.losses, direct.losses)
    for name, value in direct.params.items():
        torch.testing.assert_close(resumed.params[name], value, rtol=0, atol=0)


def test_bam_step_that_leaves_the_support_keeps_the_last_good_gaussian():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("wall", torch.where(x > 3.0, -torch.inf, 0.0))

    with pytest.raises(ppl_vi.NonFiniteLossError, match="left the model's support") as info:
        ppl_vi.fit(model, guide="bam", num_steps=50, progress=False, convergence=None,
                   guide_kwargs={"init_scale": 5.0})  # fmt: skip
    kept = info.value.result
    assert kept.num_steps == info.value.step - 1
    assert all(math.isfinite(v) for v in kept.losses)


# ---------------------------------------------------------------------------- auto
def test_auto_trusts_a_gaussian_posterior():
    result = ppl_vi.fit(blr.model, **_blr_data(), guide="auto", progress=False)
    verdict = result.verdict
    assert verdict.status == "trusted"
    assert verdict.method in ("pathfinder", "batch-and-match")
    chosen = next(s for s in verdict.stages if s["method"] == verdict.method)
    assert chosen["khat"] + 2 * chosen["khat_se"] < 0.5 and chosen["sd_stable"]
    assert f"verdict: trusted ({verdict.method})" in repr(result)
    assert result.resampled


def test_auto_refuses_a_funnel():
    """Neal's funnel: no Gaussian or flow stage reaches k-hat < 0.7; the verdict says to use
    NUTS and names every stage's k-hat."""

    def funnel():
        y = pyro.sample("y", dist.Normal(0.0, 3.0))
        with pyro.plate("d", 9):
            pyro.sample("x", dist.Normal(0.0, torch.exp(y / 2)))

    result = ppl_vi.fit(funnel, guide="auto", progress=False)
    verdict = result.verdict
    assert verdict.status == "use NUTS" and not verdict.trusted
    assert [s["method"] for s in verdict.stages] == [
        "pathfinder", "batch-and-match", "full-rank ADVI", "IAF"
    ]  # fmt: skip
    assert "run NUTS" in verdict.reason
    assert result.resampled


# ---------------------------------------------------------------------------- low rank
def test_patch_keeps_a_low_rank_plus_diagonal_covariance_fixed(float64):
    """Factor analysis EM started at the exact (L, psi) of a low-rank plus diagonal covariance
    stays there; started elsewhere it moves towards it."""
    from ppl_vi.gaussian_vi import patch

    g = torch.Generator().manual_seed(3)
    factor = torch.randn(7, 2, generator=g, dtype=torch.float64)
    diag = torch.rand(7, generator=g, dtype=torch.float64) + 0.5
    cov = factor @ factor.T + torch.diag(diag)
    f, d = patch(cov, factor, diag, num_iters=3)
    torch.testing.assert_close(f @ f.T + torch.diag(d), cov, rtol=1e-10, atol=1e-10)
    start = (
        torch.randn(7, 2, generator=g, dtype=torch.float64),
        torch.ones(7, dtype=torch.float64),
    )
    f1, d1 = patch(cov, *start, num_iters=1)
    f2, d2 = patch(cov, *start, num_iters=200)
    error = [float((a @ a.T + torch.diag(b) - cov).abs().max()) for a, b in ((f1, d1), (f2, d2))]
    assert error[1] < 1e-4 < error[0]


def test_low_rank_bam_fits_a_low_rank_plus_diagonal_gaussian():
    g = torch.Generator().manual_seed(4)
    factor = torch.randn(6, 2, generator=g)
    cov = factor @ factor.T + torch.diag(torch.rand(6, generator=g) + 0.2)
    mean = torch.randn(6, generator=g)

    def model():
        pyro.sample("z", dist.MultivariateNormal(mean, cov))

    result = ppl_vi.fit(model, guide="bam", num_steps=300, convergence=None, progress=False,
                        guide_kwargs={"rank": 2})  # fmt: skip
    assert type(result.guide).__name__ == "LowRank"
    with result.param_scope():
        guide = result.guide
        f = (guide.cov_factor * guide.scale[:, None]).detach().double()
        fitted = f @ f.T + torch.diag(guide.scale.detach().double() ** 2)
        loc = guide.loc.detach().double()
    sd = cov.double().diagonal().sqrt()
    assert float(((loc - mean.double()) / sd).abs().max()) < 0.05
    assert float(((fitted - cov.double()).abs() / torch.outer(sd, sd)).max()) < 0.05


def test_ctrl_c_during_pathfinder_keeps_the_finished_paths(monkeypatch):
    import ppl_vi.gaussian_vi as gvi

    real, calls = gvi.single_path, []

    def interrupted_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gvi, "single_path", interrupted_after_two)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        result = ppl_vi.fit(blr.model, **_blr_data(), guide="pathfinder", progress=False)
    assert result.interrupted and len(result.method_info["paths"]) == 2
    assert result.sample(100, seed=0)["beta"].shape == (100, 11)


def test_a_model_with_float32_networks_runs_in_its_own_dtype():
    """A PyroModule built in float32 cannot take float64 draws: the method says so and runs
    the model in torch's default dtype instead of failing."""
    from pyro.nn import PyroModule, PyroSample

    class Regression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](3, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 5.0).expand([1]).to_event(1))

        def forward(self, x, y=None):
            mean = self.linear(x).squeeze(-1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + torch.randn(50, generator=g)
    with pytest.warns(RuntimeWarning, match="does not run in float64"):
        result = ppl_vi.fit(Regression(), x, y, guide="pathfinder", progress=False,
                            guide_kwargs={"num_paths": 1})  # fmt: skip
    assert result.dtype is None
    weight = result.sample(2000, seed=0)["linear.weight"].mean(0).reshape(-1)
    assert float((weight - torch.tensor([1.0, -2.0, 0.5])).abs().max()) < 0.5
