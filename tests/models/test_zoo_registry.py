"""The model registry and the module contract of ``ppl_vi.models``."""

import ast
import inspect
import re
from pathlib import Path

import pytest

from ppl_vi import models

MODELS_DIR = Path(models.__file__).parent
CONJUGATE = {"normal_normal", "beta_bernoulli", "bayes_linear_regression"}
# Models with exact_posterior / log_evidence: the conjugate ones and the normalised 2-D targets.
EXACT = CONJUGATE | {"correlated_gaussian", "banana", "ppca"}
# Names of the fitting function that data keys / load_data options must not shadow.
RESERVED = {
    "guide",
    "elbo",
    "num_steps",
    "lr",
    "optim",
    "num_particles",
    "seed",
    "device",
    "progress",
    "convergence",
    "checkpoint",
    "callbacks",
}
TOP_LEVEL_IMPORTS = {
    "__future__",
    "importlib",
    "math",
    "types",
    "warnings",
    "numpy",
    "pyro",
    "torch",
}


def test_available_lists_every_module_file():
    files = sorted(p.stem for p in MODELS_DIR.glob("*.py") if p.stem != "__init__")
    assert models.available() == files


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_get_resolves_all_spellings(name):
    module = models.get(name)
    assert module.__name__ == f"ppl_vi.models.{name}"
    assert models.get(f"models.{name}") is module
    assert models.get(f"ppl_vi.models.{name}") is module


@pytest.mark.parametrize("bad", ["foo", "models.foo", "ppl_vi.models.foo", "eight-schools", ""])
def test_get_unknown_name_raises_and_lists_models(bad):
    expected = f"unknown model {bad!r}; available models: {', '.join(models.available())}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        models.get(bad)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_module_contract(name):
    module = models.get(name)
    assert callable(module.model) and callable(module.load_data)
    doc = module.__doc__
    assert doc is not None and "Examples" in doc and ">>>" in doc
    assert ("exact_posterior" in dir(module)) == (name in EXACT)
    assert ("log_evidence" in dir(module)) == (name in EXACT)
    public = [module.model, module.load_data]
    if name in EXACT:
        public += [module.exact_posterior, module.log_evidence]
    for fn in public:
        assert fn.__doc__, fn.__name__
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, fn.__name__
        for param in sig.parameters.values():
            assert param.annotation is not inspect.Parameter.empty, (fn.__name__, param.name)
            assert param.name not in RESERVED, (fn.__name__, param.name)
    # model(**load_data()) must accept every key.
    model_params = inspect.signature(module.model).parameters
    assert set(module.load_data()) <= set(model_params)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_module_imports_only_allowed_packages(name):
    """Top level: torch, pyro, numpy (+ stdlib); sklearn/arviz only inside functions; no ppl_vi."""
    tree = ast.parse((MODELS_DIR / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert roots <= TOP_LEVEL_IMPORTS, roots
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]} if node.level == 0 else {"<relative>"}
        else:
            continue
        assert not roots & {"ppl_vi", "models", "<relative>"}, roots
