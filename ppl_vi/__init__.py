"""ppl-vi: variational inference on Pyro in one call, with honest diagnostics.

>>> import ppl_vi
>>> from ppl_vi.models import eight_schools
>>> result = ppl_vi.fit(eight_schools.model, **eight_schools.load_data(), num_steps=200,
...                     progress=False)
>>> result.sample(100)["tau"].shape
torch.Size([100])

The public names load on first use (PEP 562), so ``import ppl_vi`` and ``ppl-vi --help`` do
not pay for torch, Pyro, ArviZ and SciPy until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

#: public name -> module that defines it
_NAMES = {
    "CheckpointError": "ppl_vi.errors",
    "DataError": "ppl_vi.errors",
    "FitError": "ppl_vi.errors",
    "NonFiniteLossError": "ppl_vi.errors",
    "Convergence": "ppl_vi.policies",
    "FitState": "ppl_vi.policies",
    "Polish": "ppl_vi.policies",
    "Engine": "ppl_vi.engine",
    "TrainState": "ppl_vi.engine",
    "fit": "ppl_vi.fit",
    "VIResult": "ppl_vi.result",
    "load": "ppl_vi.result",
    "NUTSResult": "ppl_vi.nuts",
    "load_nuts": "ppl_vi.nuts",
    "run_nuts": "ppl_vi.nuts",
    "Report": "ppl_vi.compare",
    "compare": "ppl_vi.compare",
    "recommend": "ppl_vi.compare",
}
_SUBMODULES = ("diagnostics", "elbos", "guides", "models", "policies")

__all__ = sorted([*_NAMES, *_SUBMODULES])


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``ppl_vi.fit`` and ``ppl_vi.compare`` the functions.

    They share their names with the submodules that define them. Importing a submodule makes
    Python set it as an attribute of the package, which would turn ``ppl_vi.fit(...)`` into a
    call of a module after ``from ppl_vi.fit import ...``; the functions are kept instead (as an
    eager ``from ppl_vi.fit import fit`` in this file would have left them).
    """

    def __setattr__(self, name, value):
        if (
            isinstance(value, types.ModuleType)
            and name in _NAMES
            and _NAMES[name] == f"{self.__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
