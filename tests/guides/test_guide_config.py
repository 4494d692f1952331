"""get_config() of the joint-space guides: the constructor arguments that rebuild the guide.

``load`` rebuilds a saved guide from its JSON config, so a named init strategy and the init
scale must survive the round trip, a callable strategy (not JSON) must be left out rather
than stored as something else, and the options are keyword-only (a positional strategy would
silently bind to the wrong parameter in a later signature).
"""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide.initialization import init_to_mean

from ppl_vi.guides import HVM, IAF, FullRank, GaussianMixture, LowRank, MeanField

GUIDES = [MeanField, FullRank, LowRank, GaussianMixture, IAF, HVM]


def model():
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    pyro.sample("x", dist.Normal(0.0, scale), obs=torch.tensor(0.5))


@pytest.mark.parametrize("cls", GUIDES, ids=lambda c: c.__name__)
def test_a_named_strategy_and_scale_round_trip_through_json(cls):
    pyro.clear_param_store()
    guide = cls(model, init_loc_fn="mean", init_scale=0.3)
    guide()
    config = guide.get_config()
    assert config["init_loc_fn"] == "mean"
    assert config["init_scale"] == 0.3
    again = cls(model, **json.loads(json.dumps(config)))
    assert again.get_config() == config


@pytest.mark.parametrize("cls", GUIDES, ids=lambda c: c.__name__)
def test_a_callable_strategy_is_left_out_of_the_config(cls):
    pyro.clear_param_store()
    config = cls(model, init_loc_fn=init_to_mean, init_scale=0.2).get_config()
    assert "init_loc_fn" not in config
    assert config["init_scale"] == 0.2


@pytest.mark.parametrize("cls", GUIDES, ids=lambda c: c.__name__)
def test_options_are_keyword_only(cls):
    with pytest.raises(TypeError, match="positional argument"):  # not a check of the option
        cls(model, "mean")


def test_the_named_strategy_sets_the_start():
    # LogNormal(0, 1): its mean exp(1/2) is 0.5 in unconstrained space, its median 0.
    pyro.clear_param_store()
    guide = MeanField(**{"model": model, **MeanField(model, init_loc_fn="mean").get_config()})
    guide()
    assert guide.locs.scale.item() == pytest.approx(0.5, abs=1e-6)
    assert math.isclose(guide.median()["scale"].item(), math.exp(0.5), rel_tol=1e-6)


DEFAULTS = {
    MeanField: {},
    FullRank: {},
    LowRank: {"rank": None},
    GaussianMixture: {"num_components": 2},
    IAF: {"num_flows": 2, "hidden_dims": None, "permute": True},
    HVM: {"hidden_dim": None, "prior_flows": 0},
}


@pytest.mark.parametrize("cls", GUIDES, ids=lambda c: c.__name__)
def test_the_documented_defaults(cls):
    config = cls(model).get_config()
    assert config == {**DEFAULTS[cls], "init_loc_fn": "feasible", "init_scale": 0.1}


@pytest.mark.parametrize(("cls", "arg"), [(LowRank, "rank"), (GaussianMixture, "num_components")])
@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, True, "2"])
def test_counts_must_be_positive_integers(cls, arg, value):
    with pytest.raises(ValueError, match=f"{arg} must be an integer >= 1"):
        cls(model, **{arg: value})


@pytest.mark.parametrize(("cls", "arg"), [(LowRank, "rank"), (GaussianMixture, "num_components")])
def test_a_count_of_one_is_accepted(cls, arg):
    pyro.clear_param_store()
    guide = cls(model, **{arg: 1})
    assert guide.get_config()[arg] == 1
    assert set(guide()) == {"scale"}


@pytest.mark.parametrize(("cls", "sd"), [(IAF, 0.3), (HVM, 0.3 * math.sqrt(2))], ids=["IAF", "HVM"])
def test_median_and_quantiles_summarise_the_untrained_guide(float64, cls, sd):
    """Untrained, IAF is exactly N(m0, s0^2) in unconstrained space and HVM's marginal
    N(m0, 2 s0^2) (prior and likelihood both at s0): the Gaussian summary behind median() and
    quantiles(), from 1000 draws, is within 4 Monte Carlo standard errors of it."""

    def vector_model():
        pyro.sample("v", dist.Normal(torch.tensor([1.0, -2.0, 0.5]), 1.0).to_event(1))

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = cls(vector_model, init_loc_fn="mean", init_scale=0.3)
    guide()
    median = guide.median()["v"]
    assert median.shape == (3,)
    expected = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(median, expected, atol=4 * sd / 1000**0.5, rtol=0)
    lo, hi = guide.quantiles([0.1, 0.9])["v"]
    width = (hi - lo) / (2 * 1.2815515655446004)  # the sd, from the 10% and 90% quantiles
    torch.testing.assert_close(
        width, torch.full((3,), sd, dtype=torch.float64), atol=4 * sd / 2000**0.5, rtol=0
    )
