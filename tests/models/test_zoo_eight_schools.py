"""Eight schools: data, reference draws and the model's density against independent checks."""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from ppl_vi import models

eight_schools = models.get("eight_schools")

NUM_DRAWS = 2000


def _arviz_data():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

        return az.load_arviz_data("non_centered_eight")


def test_load_data_exact_numbers(float64):
    data = eight_schools.load_data()
    assert set(data) == {"J", "sigma", "y"}
    assert data["J"] == 8 and isinstance(data["J"], int)
    assert data["y"].dtype == torch.float64 and data["sigma"].dtype == torch.float64
    assert data["y"].tolist() == [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
    assert data["sigma"].tolist() == [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
    assert len(eight_schools.SCHOOLS) == 8


def test_load_data_follows_default_dtype():
    assert torch.get_default_dtype() == torch.float32
    data = eight_schools.load_data()
    assert data["y"].dtype == torch.float32 and data["sigma"].dtype == torch.float32


def test_data_and_school_names_match_arviz():
    idata = _arviz_data()
    assert tuple(str(s) for s in idata.posterior["school"].values) == eight_schools.SCHOOLS
    np.testing.assert_array_equal(idata.observed_data["obs"].values, eight_schools.Y)


def test_reference_draws_shapes_and_deterministic_identity():
    ref = eight_schools.reference_draws()
    assert set(ref) == {"mu", "tau", "theta_t", "theta"}
    assert ref["mu"].shape == (NUM_DRAWS,) and ref["tau"].shape == (NUM_DRAWS,)
    assert ref["theta_t"].shape == (NUM_DRAWS, 8) and ref["theta"].shape == (NUM_DRAWS, 8)
    assert all(v.dtype == np.float64 for v in ref.values())
    assert (ref["tau"] > 0).all()
    np.testing.assert_allclose(
        ref["theta"], ref["mu"][:, None] + ref["tau"][:, None] * ref["theta_t"], rtol=0, atol=1e-8
    )
    # Chain-major flattening: draw 500 is the first draw of the second chain.
    post = _arviz_data().posterior
    assert ref["mu"][500] == post["mu"].values[1, 0]
    np.testing.assert_array_equal(ref["theta_t"][1999], post["theta_t"].values[3, 499])
    # Sanity on the posterior itself (well-known values: E[mu] ~ 4.4, E[tau] ~ 3.6).
    assert 3.5 < ref["mu"].mean() < 5.5 and 2.5 < ref["tau"].mean() < 4.5


def _pyro_log_density_at(ref, data):
    """Per-draw log joint from the Pyro model, evaluated vectorized over the draws."""
    conditioned = poutine.condition(
        eight_schools.model,
        data={
            "mu": torch.as_tensor(ref["mu"]).unsqueeze(-1),
            "tau": torch.as_tensor(ref["tau"]).unsqueeze(-1),
            "theta_t": torch.as_tensor(ref["theta_t"]),
        },
    )

    def batched(**kw):
        with pyro.plate("draws", NUM_DRAWS, dim=-2):
            return conditioned(**kw)

    trace = poutine.trace(batched).get_trace(**data)
    trace.compute_log_prob()
    total = torch.zeros(NUM_DRAWS, dtype=torch.float64)
    for name in ("mu", "tau", "theta_t", "theta", "y"):
        log_prob = trace.nodes[name]["log_prob"]
        assert log_prob.shape == ((NUM_DRAWS, 1) if name in ("mu", "tau") else (NUM_DRAWS, 8))
        total = total + log_prob.sum(-1)
    return trace, total


def test_model_log_density_at_reference_draws_matches_hand_computation(float64):
    ref = eight_schools.reference_draws()
    data = eight_schools.load_data()
    trace, pyro_lp = _pyro_log_density_at(ref, data)
    # The deterministic site reproduces the stored theta.
    torch.testing.assert_close(
        trace.nodes["theta"]["value"], torch.as_tensor(ref["theta"]), atol=1e-8, rtol=0
    )

    D = torch.distributions
    mu, tau = torch.as_tensor(ref["mu"]), torch.as_tensor(ref["tau"])
    theta_t = torch.as_tensor(ref["theta_t"])
    y, sigma = data["y"], data["sigma"]
    theta = mu[:, None] + tau[:, None] * theta_t
    hand = (
        D.Normal(0.0, 5.0).log_prob(mu)
        + (math.log(2 / (math.pi * 5.0)) - torch.log1p((tau / 5.0) ** 2))  # HalfCauchy(5)
        + D.Normal(0.0, 1.0).log_prob(theta_t).sum(-1)
        + D.Normal(theta, sigma).log_prob(y).sum(-1)
    )
    torch.testing.assert_close(pyro_lp, hand, atol=1e-10, rtol=0)


def test_model_log_density_matches_pymc_lp_of_the_reference_run(float64):
    """ArviZ stores PyMC's lp: the log joint on the unconstrained space, i.e. our log density
    plus log(tau) (log-Jacobian of the log transform). Equality pins the priors exactly."""
    ref = eight_schools.reference_draws()
    _, pyro_lp = _pyro_log_density_at(ref, eight_schools.load_data())
    lp = torch.as_tensor(_arviz_data().sample_stats["lp"].values.reshape(-1))
    torch.testing.assert_close(
        pyro_lp + torch.log(torch.as_tensor(ref["tau"])), lp, atol=1e-6, rtol=0
    )


def test_model_structure():
    data = eight_schools.load_data()
    trace = poutine.trace(eight_schools.model).get_trace(**data)
    nodes = trace.nodes
    for name in ("mu", "tau", "theta_t"):
        assert not nodes[name]["is_observed"]
    assert nodes["y"]["is_observed"]
    torch.testing.assert_close(nodes["y"]["value"], data["y"])
    assert nodes["theta"]["infer"].get("_deterministic") is True
    assert nodes["tau"]["value"] > 0
    for name in ("theta_t", "y", "theta"):
        frames = nodes[name]["cond_indep_stack"]
        assert [(f.name, f.size, f.dim) for f in frames] == [("school", 8, -1)]
    assert nodes["mu"]["cond_indep_stack"] == ()
    # Prior predictive: y is sampled when not given.
    prior = poutine.trace(eight_schools.model).get_trace(J=8, sigma=data["sigma"])
    assert not prior.nodes["y"]["is_observed"] and prior.nodes["y"]["value"].shape == (8,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_follows_data_dtype(dtype):
    data = eight_schools.load_data()
    data = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in data.items()}
    trace = poutine.trace(eight_schools.model).get_trace(**data)
    for name in ("mu", "tau", "theta_t", "theta", "y"):
        assert trace.nodes[name]["value"].dtype == dtype
