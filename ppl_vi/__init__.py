"""ppl-vi: variational inference on Pyro in one call, with honest diagnostics.

>>> import ppl_vi
>>> from ppl_vi.models import eight_schools
>>> result = ppl_vi.fit(eight_schools.model, **eight_schools.load_data(), num_steps=200,
...                     progress=False)
>>> result.sample(100)["tau"].shape
torch.Size([100])
"""

from ppl_vi import elbos, guides, models
from ppl_vi.fit import Convergence, FitState, NonFiniteLossError, Polish, fit
from ppl_vi.io import CheckpointError
from ppl_vi.result import VIResult, load

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Convergence",
    "FitState",
    "NonFiniteLossError",
    "Polish",
    "VIResult",
    "elbos",
    "fit",
    "guides",
    "load",
    "models",
]
