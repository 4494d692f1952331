"""The examples in docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "ppl_vi",
    "ppl_vi.jit",
    "ppl_vi.compiled",
    "ppl_vi.minibatch",
    "ppl_vi.anneal",
    "ppl_vi.stats",
    "ppl_vi.vamp",
    "ppl_vi.diagnostics",
    "ppl_vi.infer_util",
    "ppl_vi.guides.mean_field",
    "ppl_vi.guides.full_rank",
    "ppl_vi.guides.low_rank",
    "ppl_vi.guides.gaussian_mixture",
    "ppl_vi.guides.iaf",
    "ppl_vi.guides.hvm",
    "ppl_vi.guides.amortized",
    "ppl_vi.guides.diffusion",
    "ppl_vi.guides.ladder",
    "ppl_vi.elbos.score_function",
    "ppl_vi.elbos.iwae",
    "ppl_vi.elbos.renyi",
    "ppl_vi.elbos.stein",
    "ppl_vi.models.normal_normal",
    "ppl_vi.models.beta_bernoulli",
    "ppl_vi.models.bayes_linear_regression",
    "ppl_vi.models.eight_schools",
    "ppl_vi.models.logistic_regression",
    "ppl_vi.models.correlated_gaussian",
    "ppl_vi.models.banana",
    "ppl_vi.models.sigmoid_belief_net",
    "ppl_vi.models.ppca",
    "ppl_vi.models.vae_digits",
    "ppl_vi.models.diffusion_chain",
    "ppl_vi.models.ladder_vae",
    "ppl_vi.models.bnn",
    "ppl_vi.local_reparam",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
