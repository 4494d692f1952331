"""Every ELBO in the name table fits through ``ppl_vi.fit(elbo=name)`` to the exact posterior."""

import pytest
import torch

import ppl_vi
from ppl_vi.elbos import ELBOS
from ppl_vi.models import bayes_linear_regression, normal_normal


def max_mean_error(module, result) -> float:
    """Largest |fitted mean - exact mean| in exact posterior sd, from 20000 guide draws
    (Monte Carlo error 0.007 sd)."""
    data = module.load_data()
    (site, exact), = module.exact_posterior(**data).items()
    draws = result.sample(20_000, seed=0)[site].double()
    sd = exact.variance.double().sqrt()
    return float(((draws.mean(0) - exact.mean.double()).abs() / sd).max())


@pytest.mark.parametrize("name", list(ELBOS))
def test_each_elbo_recovers_normal_normal_mean(name):
    data = normal_normal.load_data()
    # fit's defaults: 5000 steps at lr 0.01 with the final polish phase
    result = ppl_vi.fit(normal_normal.model, **data, elbo=name, progress=False)
    assert result.elbo_spec["name"] == name
    assert max_mean_error(normal_normal, result) < 0.1


# Budgets for bayes_linear_regression (442 data, 11 correlated coefficients): fit's defaults,
# except that the score-function estimator needs 64 particles (with 8 it stalls 0.2-0.3 sd away:
# measured 0.24 after 5000 steps and 0.30 after 10000 at lr 0.02). The kernel Stein discrepancy
# with mean field does not reach the means here: measured 1.5-1.7 sd for RBF and IMQ kernels,
# 16 or 32 particles, 5000-10000 steps at lr 0.01-0.05; the test records that shortfall.
LINEAR_REGRESSION = [
    pytest.param("elbo", {}),
    pytest.param("rb_score", {"num_particles": 64}),
    pytest.param("iwae", {}),
    pytest.param("renyi", {}),
    pytest.param(
        "stein",
        {},
        marks=pytest.mark.xfail(
            strict=True, reason="KSD with mean field stalls 1.5 sd from the means (measured)"
        ),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), LINEAR_REGRESSION)
def test_each_elbo_recovers_linear_regression_means(name, options):
    data = bayes_linear_regression.load_data()
    torch.manual_seed(0)
    result = ppl_vi.fit(
        bayes_linear_regression.model, **data, elbo=name, progress=False, **options
    )
    assert max_mean_error(bayes_linear_regression, result) < 0.1
