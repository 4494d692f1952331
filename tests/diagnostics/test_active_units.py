"""Active units (Burda et al. 2016): exact encoder means, the corrected Monte Carlo estimate, one
entry per latent layer, provably dead units, and argument checks.

The main model is probabilistic PCA with loadings whose last two columns are zero: the data
do not depend on z_3, z_4, whose exact posterior is the prior N(0, 1) for every datum
(Cov_x E[z_j | x] = 0: dead), while z_1, z_2 have posterior means linear in x (active). A
linear encoder contains the exact posterior, so a converged fit must find both.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

import ppl_vi
from ppl_vi.diagnostics import ActiveUnits, active_units
from ppl_vi.guides.amortized import Amortized
from ppl_vi.models import correlated_gaussian, normal_normal, ppca
from ppl_vi.models import vae_digits as vd

Z = 4.0  # standard errors allowed for Monte Carlo error


def _dead_ppca_data(n=200, split="train"):
    data = ppca.load_data(n=n, split=split)
    data["W"] = torch.cat([data["W"], torch.zeros(5, 2, dtype=data["W"].dtype)], 1)  # (5, 4)
    return data


@pytest.fixture(scope="module")
def dead_fit():
    """PPCA with two dead latent dims, linear encoder, 1500 full-batch steps (float64)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    try:
        data = _dead_ppca_data()
        result = ppl_vi.fit(
            ppca.model,
            **data,
            guide=Amortized,
            guide_kwargs={"hidden_dims": ()},
            num_steps=1500,
            lr=0.02,
            progress=False,
            convergence=None,
            seed=0,
        )
        yield result, data
    finally:
        torch.set_default_dtype(dtype)


def test_exact_path_is_the_variance_of_the_encoder_means(dead_fit):
    result, data = dead_fit
    test = _dead_ppca_data(n=150, split="test")
    for args in ({}, test):  # the fit's own data, and held-out data
        au = active_units(result, **args)
        with result.param_scope(), torch.no_grad():
            loc, _ = result.guide.local_params(**(args or data))["z"]  # (N, 4)
        expected = loc.double().var(0).numpy()  # divisor N - 1
        assert isinstance(au, ActiveUnits)
        assert au.method == "exact" and au.num_samples is None
        assert au.num_data == loc.shape[0]
        np.testing.assert_allclose(au.variances["z"], expected, rtol=0, atol=1e-12)
        assert au.active == {"z": int((expected > 0.01).sum())} and au.total == au.active["z"]
        assert au.num_units == 4 and au.threshold == 0.01
    # a higher threshold leaves fewer units active
    assert active_units(result, threshold=0.9).active["z"] == 1
    assert "2 of 4 units active" in str(active_units(result))


def test_dead_units_collapse_and_live_ones_match_the_exact_posterior(dead_fit):
    """Convergence check: the dead units' encoder means no longer depend on x; the live ones'
    between-data variance matches the exact posterior means' (1500 Adam steps: 2% allowed)."""
    result, data = dead_fit
    au = active_units(result)
    exact = ppca.exact_posterior(**data)["z"].mean.double().var(0).numpy()  # (4,)
    assert exact[2] == exact[3] == 0.0 and exact[:2].min() > 0.5
    assert au.variances["z"][2:].max() < 1e-3  # a tenth of the threshold
    np.testing.assert_allclose(au.variances["z"][:2], exact[:2], rtol=0.02)
    assert au.active == {"z": 2} and au.total == 2


def test_monte_carlo_path_agrees_with_the_exact_one(dead_fit):
    """R independent Monte Carlo estimates with S = 4 draws per datum: their mean matches the
    exact A_u within Z standard errors. Without the correction each estimate would be high by
    mean_n Var_q(u | x_n) / S (0.25 for a dead unit), many standard errors."""
    result, data = dead_fit
    exact = active_units(result).variances["z"]
    num, reps = 4, 20
    runs = np.array(
        [
            active_units(result, method="monte carlo", num_samples=num, seed=s).variances["z"]
            for s in range(reps)
        ]
    )
    mean, se = runs.mean(0), runs.std(0, ddof=1) / math.sqrt(reps)
    np.testing.assert_array_less(np.abs(mean - exact), Z * se)
    with result.param_scope(), torch.no_grad():
        _, scale = result.guide.local_params(**data)["z"]
    inflation = (scale.double() ** 2).mean(0).numpy() / num  # what the correction removes
    assert (inflation[2:] > 5 * Z * se[2:]).all()  # power: dropping it fails by 20+ s.e.
    au = active_units(result, method="monte carlo")  # the default S = 100 finds the dead units
    assert au.method == "monte carlo" and au.num_samples == 100 and au.active == {"z": 2}


def _two_layer_model(x):
    a = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0]], dtype=x.dtype)
    with pyro.plate("data", x.shape[0], dim=-1):
        z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        z1 = pyro.sample("z1", dist.Normal(z2 @ a.T, 1.0).to_event(1))
        log_rate = pyro.sample("log_rate", dist.Normal(x.new_zeros(()), 1.0))  # one unit
        pyro.sample("x", dist.Normal(z1.sum(-1, keepdim=True) + log_rate.unsqueeze(-1), 0.5)
                    .to_event(1), obs=x)  # fmt: skip
    pyro.sample("shift", dist.Normal(0.0, 1.0))  # a global latent: not a unit


def _two_layer_guide(x):
    """Upper layer q(z2 | x_n) = N(a2_n, s2); lower q(z1 | x_n, z2) = N(a1_n + z2 B^T, s1):
    E[z1 | x_n] = a1_n + a2_n B^T (the lower layer's mean depends on the upper's draw)."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(5)
    a2_init = torch.randn(n, 2, generator=gen, dtype=x.dtype) * torch.tensor([1.0, 0.0])
    a2 = pyro.param("a2", a2_init)  # unit 2 of z2 is the same for every datum: dead
    a1 = pyro.param("a1", torch.randn(n, 3, generator=gen, dtype=x.dtype))
    b = pyro.param("b", torch.randn(3, 2, generator=gen, dtype=x.dtype))
    s = pyro.param("s", torch.full((3,), 0.8, dtype=x.dtype), constraint=constraints.positive)
    r = pyro.param("r", torch.randn(n, generator=gen, dtype=x.dtype))
    with pyro.plate("data", n, dim=-1):
        z2 = pyro.sample("z2", dist.Normal(a2, s[0]).to_event(1))
        pyro.sample("z1", dist.Normal(a1 + z2 @ b.T, s[1]).to_event(1))
        pyro.sample("log_rate", dist.Normal(r, s[2]))
    pyro.sample("shift", dist.Normal(0.0, 1.0))


def test_one_entry_per_layer_with_a_guide_without_exact_means(float64):
    x = torch.randn(150, 1)
    result = ppl_vi.fit(_two_layer_model, x, guide=_two_layer_guide, num_steps=1, lr=1e-9,
                        progress=False, convergence=None, seed=0)  # fmt: skip
    params = result.params
    expected = {
        "z2": params["a2"].var(0).numpy(),
        "z1": (params["a1"] + params["a2"] @ params["b"].T).var(0).numpy(),
        "log_rate": params["r"].var(0).numpy().reshape(()),
    }
    assert expected["z2"][1] < 1e-15  # (one Adam step of 1e-9)
    with pytest.raises(ValueError, match="method='exact' needs an Amortized guide"):
        active_units(result, method="exact")
    reps = 12
    runs = [active_units(result, num_samples=10, seed=s) for s in range(reps)]
    assert {r.method for r in runs} == {"monte carlo"}
    assert list(runs[0].variances) == ["z2", "z1", "log_rate"]  # model order; no "shift"
    for name, value in expected.items():
        est = np.array([r.variances[name] for r in runs])
        assert est.shape[1:] == value.shape
        mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(reps)
        np.testing.assert_array_less(np.abs(mean - value), Z * se + 1e-12)
    au = active_units(result, num_samples=200)
    assert au.active == {"z2": 1, "z1": 3, "log_rate": 1} and au.total == 5
    assert au.num_units == 6 and au.num_data == 150


def test_ladder_results_are_measured_per_layer_from_guide_draws():
    # the ladder guide's lower layers depend on draws of the upper ones: Monte Carlo, one entry
    # per layer (site), in model order
    from ppl_vi.guides.ladder import Ladder
    from ppl_vi.models import ladder_vae

    data = ladder_vae.load_data(n=60)
    result = ppl_vi.fit(
        ladder_vae.model, **data, latent_dims=(4, 2), hidden_dim=16, guide=Ladder,
        guide_kwargs={"hidden_dims": 16}, num_steps=30, progress=False, polish=None,
        convergence=None,
    )  # fmt: skip
    au = active_units(result, **data, latent_dims=(4, 2), hidden_dim=16, num_samples=50, seed=3)
    assert au.method == "monte carlo" and list(au.variances) == ["z2", "z1"]
    assert au.variances["z2"].shape == (2,) and au.variances["z1"].shape == (4,)
    with pytest.raises(ValueError, match=r"method='exact' needs an Amortized guide"):
        active_units(result, **data, latent_dims=(4, 2), hidden_dim=16, method="exact")


def test_constrained_sites_are_measured_unconstrained(float64):
    """A positive local latent: units are log values (the guide's Normal is on the log scale)."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            rate = pyro.sample("rate", dist.LogNormal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)

    x = torch.poisson(torch.rand(80, 2) * 10 + 5)
    result = ppl_vi.fit(model, x, guide=Amortized, num_steps=300, lr=0.05, progress=False, seed=0)
    with result.param_scope(), torch.no_grad():
        loc, _ = result.guide.local_params(x)["rate"]
    # log rates near 2: the rates vary 20x more than their logs, which the check would notice
    assert loc.mean() > 1.5 and (loc.exp().var(0) > 20 * loc.var(0)).all()
    au = active_units(result)
    np.testing.assert_allclose(au.variances["rate"], loc.var(0).numpy(), rtol=0, atol=1e-12)
    assert au.variances["rate"].shape == (2,)
    runs = [active_units(result, method="monte carlo", num_samples=5, seed=s) for s in range(12)]
    est = np.array([r.variances["rate"] for r in runs])
    se = est.std(0, ddof=1) / math.sqrt(12)
    np.testing.assert_array_less(np.abs(est.mean(0) - loc.var(0).numpy()), Z * se)


def test_vamp_vae_result_uses_the_exact_path():
    data = vd.load_data(n=60)
    result = ppl_vi.fit(vd.model, **data, prior="vamp", num_pseudo=5, latent_dim=3,
                        subsample_size=20, guide=Amortized,
                        guide_kwargs={"encoder": vd.shared_encoder(3)}, num_steps=3,
                        progress=False, seed=0)  # fmt: skip
    au = active_units(result)  # the fit's kwargs: the plate runs at full size
    with result.param_scope(), torch.no_grad():
        loc, _ = result.guide.local_params(**data, prior="vamp", num_pseudo=5, latent_dim=3)["z"]
    assert au.num_data == 60
    np.testing.assert_allclose(au.variances["z"], loc.double().var(0).numpy(), rtol=0, atol=1e-12)


def test_argument_errors(dead_fit):
    result, _ = dead_fit
    with pytest.raises(TypeError, match=r"active_units needs a fit .* \(got Amortized\)"):
        active_units(result.guide)
    for bad in (-0.1, float("nan"), float("inf"), "0.01", True):
        with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
            active_units(result, threshold=bad)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match=r"num_samples must be an integer >= 2 .*got num"):
            active_units(result, num_samples=bad)
    with pytest.raises(ValueError, match="method must be one of 'auto', 'exact', 'monte carlo'"):
        active_units(result, method="mc")
    with pytest.raises(ValueError, match=r"data_plate=.batch. is not a plate .*\[.data.\]"):
        active_units(result, data_plate="batch")


def test_models_without_local_latents_or_data_plate_are_refused():
    fit = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(), num_steps=2,
                     progress=False, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="latent sites \\['mu'\\] all lie outside it"):
        active_units(fit)
    fit = ppl_vi.fit(correlated_gaussian.model, **correlated_gaussian.load_data(), num_steps=2,
                     progress=False, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="observed sites lie in no plate; pass data_plate="):
        active_units(fit)


def test_exact_needs_an_amortized_guide_without_refinement(float64):
    data = ppca.load_data(n=30)
    fit = ppl_vi.fit(ppca.model, **data, guide=Amortized, guide_kwargs={"refine_steps": 1},
                     num_steps=2, progress=False, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="its refinement steps are random"):
        active_units(fit, method="exact")
    assert active_units(fit, num_samples=3).method == "monte carlo"  # auto: Monte Carlo


def test_a_guide_that_skips_a_local_site_is_refused(float64):
    def guide(x):  # samples z2 and z1 only: log_rate and shift come from the model's prior
        with pyro.plate("data", x.shape[0], dim=-1):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("z1", dist.Normal(z2.sum(-1, keepdim=True).expand(-1, 3), 1.0)
                        .to_event(1))  # fmt: skip

    result = ppl_vi.fit(_two_layer_model, torch.randn(10, 1), guide=_two_layer_guide,
                        num_steps=1, progress=False, seed=0)  # fmt: skip
    result.guide = guide
    with pytest.raises(ValueError, match="the guide does not sample the local latent site"):
        active_units(result, num_samples=2)
