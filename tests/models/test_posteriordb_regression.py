"""posteriordb translations (eight schools, regressions): sites, data and the log density.

The reference draws are read from the posteriordb reference folder (skipped when absent). The
Stein-identity check evaluates the Pyro potential energy and its gradient at the reference draws,
so a wrong prior, likelihood term, scale or transform shows up as a non-zero mean gradient.
"""

import json

import numpy as np
import pytest
import torch
from _posteriordb import assert_stein_identity, load_or_skip
from pyro import poutine
from pyro.infer.autoguide import init_to_value
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample

from ppl_vi.models import posteriordb

NAMES = [
    "eight_schools_noncentered",
    "eight_schools_centered",
    "kidiq_interaction",
    "kilpisjarvi",
    "nes",
    "sblrc_blr",
]


def _trace(post, values=None):
    """Trace the model with latent sites set by ``init_to_value`` (flat priors cannot sample)."""
    values = post.init_values() if values is None else values
    with InitMessenger(init_to_value(values=values)):
        return poutine.trace(post.model).get_trace(**post.data)


def _is_deterministic(site):
    return site["infer"].get("_deterministic", False)


@pytest.mark.parametrize("name", NAMES)
def test_sites_match_reference_arrays(name):
    post = load_or_skip(name)
    trace = _trace(post)
    for key, draws in post.reference.items():
        assert key in trace.nodes, f"no site {key!r} in the model"
        assert tuple(trace.nodes[key]["value"].shape) == draws.shape[1:], key
    latent = {
        k
        for k, s in trace.nodes.items()
        if s["type"] == "sample"
        and not s["is_observed"]
        and not _is_deterministic(s)
        and not site_is_subsample(s)
    }
    sampled = post.module.sampled_from_reference(post.reference)
    assert latent == set(sampled)
    n = len(next(iter(post.reference.values())))
    for key, arr in sampled.items():
        assert arr.shape == (n, *trace.nodes[key]["value"].shape), key
        assert np.all(np.isfinite(arr)), key
    improper = any(
        type(s["fn"]).__name__ == "ImproperUniform" for k, s in trace.nodes.items() if k in latent
    )
    assert improper == post.module.HAS_IMPROPER_PRIOR


@pytest.mark.parametrize("name", NAMES)
def test_model_follows_data_dtype(name):
    post = load_or_skip(name, dtype=torch.float32)
    trace = _trace(post)
    for key, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            assert site["value"].dtype == torch.float32, key
            assert site["fn"].log_prob(site["value"]).dtype == torch.float32, key


@pytest.mark.parametrize("name", NAMES)
def test_sampled_sites_reproduce_reference(name):
    """Setting the latent sites to ``sampled_from_reference`` gives back every reference array."""
    post = load_or_skip(name)
    sampled = post.module.sampled_from_reference(post.reference)
    for i in (0, 7, 1234):
        values = {k: torch.as_tensor(v[i]) for k, v in sampled.items()}
        trace = _trace(post, values)
        for key, draws in post.reference.items():
            np.testing.assert_allclose(
                trace.nodes[key]["value"].detach().numpy(), draws[i], rtol=1e-10, atol=1e-10
            )


@pytest.mark.parametrize("name", NAMES)
def test_log_density_stein_identity(name):
    assert_stein_identity(load_or_skip(name))


def test_centred_and_noncentred_log_densities_differ_by_jacobian():
    """log p_centred(mu, tau, theta) = log p_noncentred(mu, tau, theta_tilde) - J log tau."""
    cen = load_or_skip("eight_schools_centered")
    non = load_or_skip("eight_schools_noncentered")
    s_cen = cen.module.sampled_from_reference(cen.reference)
    s_non = non.module.sampled_from_reference(non.reference)
    J = non.data["J"]
    for i in range(0, 2000, 97):
        lp_c = _trace(cen, {k: torch.as_tensor(v[i]) for k, v in s_cen.items()}).log_prob_sum()
        lp_n = _trace(non, {k: torch.as_tensor(v[i]) for k, v in s_non.items()}).log_prob_sum()
        expected = lp_n - J * np.log(s_non["tau"][i])
        assert abs(lp_c.item() - expected.item()) < 1e-9


def _norm_lpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _kidiq_lp(raw, d):
    hs, iq = np.array(raw["mom_hs"], float), np.array(raw["mom_iq"], float)
    b, s = d["beta"], d["sigma"]
    mean = b[0] + b[1] * hs + b[2] * iq + b[3] * hs * iq
    prior = np.log(2 / (np.pi * 2.5 * (1 + (s / 2.5) ** 2)))
    return prior + _norm_lpdf(np.array(raw["kid_score"], float), mean, s).sum()


def _kilpisjarvi_lp(raw, d):
    a, b, s = d["alpha"], d["beta"], d["sigma"]
    prior = _norm_lpdf(a, raw["pmualpha"], raw["psalpha"]) + _norm_lpdf(
        b, raw["pmubeta"], raw["psbeta"]
    )
    return prior + _norm_lpdf(np.array(raw["y"], float), a + b * np.array(raw["x"], float), s).sum()


def _nes_lp(raw, d):
    b, s = d["beta"], d["sigma"]
    age = np.array(raw["age_discrete"])
    mean = b[0] + b[1] * np.array(raw["real_ideo"], float) + b[2] * np.array(raw["race_adj"], float)
    mean = mean + b[3] * (age == 2) + b[4] * (age == 3) + b[5] * (age == 4)
    for j, key in ((6, "educ1"), (7, "gender"), (8, "income")):
        mean = mean + b[j] * np.array(raw[key], float)
    return _norm_lpdf(np.array(raw["partyid7"], float), mean, s).sum()


def _sblrc_lp(raw, d):
    b, s = d["beta"], d["sigma"]
    prior = _norm_lpdf(b, 0.0, 10.0).sum() + np.log(2) + _norm_lpdf(s, 0.0, 10.0)
    mean = np.array(raw["X"], float) @ b
    return prior + _norm_lpdf(np.array(raw["y"], float), mean, s).sum()


@pytest.mark.parametrize(
    "name, log_density",
    [
        ("kidiq_interaction", _kidiq_lp),
        ("kilpisjarvi", _kilpisjarvi_lp),
        ("nes", _nes_lp),
        ("sblrc_blr", _sblrc_lp),
    ],
)
def test_regression_log_density_matches_numpy(name, log_density):
    """The Pyro log joint equals a direct numpy transcription of model.md on the raw data.json."""
    post = load_or_skip(name)
    raw = json.loads((post.folder / "data.json").read_text())
    sampled = post.module.sampled_from_reference(post.reference)
    for i in range(0, 2000, 101):
        draw = {k: v[i] for k, v in sampled.items()}
        lp = _trace(post, {k: torch.as_tensor(v) for k, v in draw.items()}).log_prob_sum()
        expected = log_density(raw, draw)
        assert abs(lp.item() - expected) < 1e-8 * max(1.0, abs(expected)), (i, lp, expected)


def test_load_unknown_name_lists_available():
    with pytest.raises(ValueError, match="available") as err:
        posteriordb.load("nope")
    for name in NAMES:
        assert name in str(err.value)


def test_load_missing_reference_dir_says_how_to_fix():
    with pytest.raises(FileNotFoundError) as err:
        posteriordb.load("sblrc_blr", reference_dir="/nonexistent")
    message = str(err.value)
    assert "/nonexistent" in message
    assert "reference_dir" in message and posteriordb.ENV_VAR in message
