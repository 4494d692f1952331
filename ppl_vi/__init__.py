"""ppl-vi: variational inference on Pyro in one call, with honest diagnostics.

>>> import ppl_vi
>>> from ppl_vi.models import eight_schools
>>> result = ppl_vi.fit(eight_schools.model, **eight_schools.load_data(), num_steps=200,
...                     progress=False)
>>> result.sample(100)["tau"].shape
torch.Size([100])
"""

from ppl_vi import diagnostics, elbos, guides, models
from ppl_vi.compare import Report, compare, recommend
from ppl_vi.engine import Engine, TrainState
from ppl_vi.errors import CheckpointError, DataError, FitError, NonFiniteLossError
from ppl_vi.fit import fit
from ppl_vi.nuts import NUTSResult, load_nuts, run_nuts
from ppl_vi.policies import Convergence, FitState, Polish
from ppl_vi.result import VIResult, load

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Convergence",
    "DataError",
    "Engine",
    "FitError",
    "FitState",
    "NUTSResult",
    "NonFiniteLossError",
    "Polish",
    "Report",
    "TrainState",
    "VIResult",
    "compare",
    "diagnostics",
    "elbos",
    "fit",
    "guides",
    "load",
    "load_nuts",
    "models",
    "recommend",
    "run_nuts",
]
