"""ELBO classes, each a :class:`pyro.infer.ELBO` subclass usable with plain ``pyro.infer.SVI``.

``ELBOS`` is the name table used by ``ppl_vi.fit(elbo=...)``.
"""

from pyro.infer import Trace_ELBO

from ppl_vi.jit import JitELBO

from .iwae import IWAE
from .renyi import RenyiELBO
from .score_function import RBScoreFunctionELBO
from .stein import SteinOperatorELBO

ELBOS = {
    "elbo": Trace_ELBO,
    "rb_score": RBScoreFunctionELBO,
    "iwae": IWAE,
    "renyi": RenyiELBO,
    "stein": SteinOperatorELBO,
}

__all__ = ["ELBOS", "IWAE", "JitELBO", "RBScoreFunctionELBO", "RenyiELBO", "SteinOperatorELBO"]
