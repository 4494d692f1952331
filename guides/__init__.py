"""Guide families, importable as ``ppl_vi.guides``.

``GUIDES`` is the name table used by ``ppl_vi.fit(guide=...)``.
"""

from .mean_field import MeanField

GUIDES = {
    "mean_field": MeanField,
}

__all__ = ["GUIDES", "MeanField"]
