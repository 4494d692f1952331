"""ELBO classes, each a :class:`pyro.infer.ELBO` subclass usable with plain ``pyro.infer.SVI``.

``ELBOS`` is the name table used by ``ppl_vi.fit(elbo=...)``.
"""

from pyro.infer import Trace_ELBO

ELBOS = {
    "elbo": Trace_ELBO,
}

__all__ = ["ELBOS"]
