"""posteriordb translations: arK, ARMA(1,1), GARCH(1,1), the two GP models and the ordered
Gaussian mixture, checked against the reference draws."""

import pyro
import pytest
import torch
from _posteriordb import assert_stein_identity, load_or_skip
from pyro.infer.autoguide.initialization import InitMessenger, init_to_value

NAMES = ["ark", "arma11", "garch11", "gp_pois_regr", "gp_regr", "low_dim_gauss_mix"]


def _trace(post):
    with InitMessenger(init_to_value(values=post.init_values())):
        return pyro.poutine.trace(post.model).get_trace(**post.data)


@pytest.mark.parametrize("name", NAMES)
def test_sites_match_reference(name):
    post = load_or_skip(name)
    trace = _trace(post)
    for key, draws in post.reference.items():
        assert key in trace.nodes, f"no site {key!r} in the model of {name}"
        assert tuple(trace.nodes[key]["value"].shape) == draws.shape[1:], key
    sampled = post.module.sampled_from_reference(post.reference)
    for key, draws in sampled.items():
        site = trace.nodes[key]
        assert site["type"] == "sample" and not site["is_observed"], key
        assert tuple(site["value"].shape) == draws.shape[1:], key
        assert site["fn"].support.check(torch.as_tensor(draws, dtype=torch.float64)).all(), key
    assert isinstance(post.module.HAS_IMPROPER_PRIOR, bool)


@pytest.mark.parametrize("name", NAMES)
def test_stein_identity(name):
    post = load_or_skip(name)
    assert_stein_identity(post)
