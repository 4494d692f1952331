"""Guide families, importable as ``ppl_vi.guides``.

``GUIDES`` is the name table used by ``ppl_vi.fit(guide=...)``.
"""

from .amortized import Amortized, amortization_gap
from .diffusion import DiffusionChain, DiffusionELBO
from .full_rank import FullRank
from .gaussian_mixture import GaussianMixture
from .hvm import HVM
from .iaf import IAF
from .ladder import Ladder
from .low_rank import LowRank
from .mean_field import MeanField

GUIDES = {
    "mean_field": MeanField,
    "full_rank": FullRank,
    "low_rank": LowRank,
    "iaf": IAF,
    "hvm": HVM,
    "amortized": Amortized,
    "diffusion": DiffusionChain,
    "gaussian_mixture": GaussianMixture,
    "ladder": Ladder,
}

__all__ = [
    "GUIDES",
    "HVM",
    "IAF",
    "Ladder",
    "LowRank",
    "Amortized",
    "DiffusionChain",
    "DiffusionELBO",
    "FullRank",
    "GaussianMixture",
    "MeanField",
    "amortization_gap",
]
