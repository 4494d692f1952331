r"""Pyro translations of posteriordb reference posteriors, with loaders for their data and draws.

posteriordb (Magnusson, Bürkner & Vehtari) pairs Stan models and data sets with gold-standard
reference draws (Stan's NUTS, 10 chains x 1000 draws, checked for R-hat, ESS and divergences).
This package holds Pyro versions of twelve of those models, written from each posterior's
``model.md``; the data and the draws are *not* bundled: they are read at run time from a
reference folder laid out as ``<reference_dir>/<posterior name>/{data.json, model.md,
reference_draws.npz, reference_summary.json}``.

The folder is found, in this order, from the ``reference_dir`` argument, the environment
variable ``PPL_VI_POSTERIORDB``, and ``../shared/posteriordb`` relative to the working
directory.

Each module (one per posterior) defines

``POSTERIOR``
    The posteriordb name, e.g. ``"eight_schools-eight_schools_noncentered"``.
``data_from_json(raw: dict, dtype=None) -> dict``
    The keyword arguments of ``model`` from the parsed ``data.json`` (tensors of ``dtype``,
    default ``torch.get_default_dtype()``; integer counts stay Python ints).
``model(**data)``
    The Pyro program. Every array of ``reference_draws.npz`` is a sample or
    ``pyro.deterministic`` site of the same name and shape.
``sampled_from_reference(draws: dict) -> dict``
    The reference draws expressed as the model's latent sample sites (e.g. the standardised
    ``theta_tilde = (theta - mu) / tau``), arrays with the draws on the first axis.
``init_values(**data) -> dict``
    Initial values of the latent sites for ``init_to_value`` (needed where a prior is an
    improper ``ImproperUniform``, which cannot be sampled).
``HAS_IMPROPER_PRIOR``
    ``True`` when some prior is flat and improper.

Examples
--------
>>> from ppl_vi.models import posteriordb
>>> "eight_schools_noncentered" in posteriordb.available()
True
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ["POSTERIORS", "Posterior", "available", "get", "load", "find_reference_dir"]

#: Module name -> posteriordb posterior name.
POSTERIORS: dict[str, str] = {
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "eight_schools_centered": "eight_schools-eight_schools_centered",
    "kidiq_interaction": "kidiq-kidscore_interaction",
    "kilpisjarvi": "kilpisjarvi_mod-kilpisjarvi",
    "nes": "nes2000-nes",
    "sblrc_blr": "sblrc-blr",
    "ark": "arK-arK",
    "arma11": "arma-arma11",
    "garch11": "garch-garch11",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
    "gp_regr": "gp_pois_regr-gp_regr",
    "low_dim_gauss_mix": "low_dim_gauss_mix-low_dim_gauss_mix",
}

ENV_VAR = "PPL_VI_POSTERIORDB"


def available() -> list[str]:
    """Module names of the posteriors whose Pyro translation is installed, sorted."""
    here = Path(__file__).parent
    return sorted(name for name in POSTERIORS if (here / f"{name}.py").exists())


def get(name: str) -> ModuleType:
    """The module of a posterior, by module name or posteriordb name."""
    by_posterior = {v: k for k, v in POSTERIORS.items()}
    key = by_posterior.get(name, name)
    if key not in available():
        raise ValueError(f"unknown posterior {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{key}")


def find_reference_dir(path: str | os.PathLike | None = None) -> Path:
    """Resolve the reference folder (argument, ``$PPL_VI_POSTERIORDB``, ``../shared/posteriordb``).

    Raises
    ------
    FileNotFoundError
        If the folder does not exist; the message says how to point to it.
    """
    env = os.environ.get(ENV_VAR) or None
    candidates = [(path, True), (env, True), (Path("..") / "shared" / "posteriordb", False)]
    for given, explicit in candidates:
        if given is None or given == "":
            continue
        folder = Path(given).expanduser()
        if folder.is_dir():
            return folder.resolve()
        if explicit:
            raise FileNotFoundError(
                f"posteriordb reference folder {str(folder)!r} does not exist; pass "
                f"reference_dir= (or --reference-dir) or set {ENV_VAR} to the folder that holds "
                "the <posterior>/data.json folders"
            )
    raise FileNotFoundError(
        "no posteriordb reference folder found; pass reference_dir= (or --reference-dir) or set "
        f"{ENV_VAR} to the folder that holds the <posterior>/data.json folders"
    )


@dataclass
class Posterior:
    """A posteriordb posterior loaded from the reference folder.

    Attributes
    ----------
    name : str
        Module name (e.g. ``"eight_schools_noncentered"``).
    posterior_name : str
        posteriordb name.
    module : module
        The Pyro translation (``module.model(**data)``).
    data : dict
        Model keyword arguments.
    reference : dict
        Reference draws by site name, arrays ``(n, *shape)`` (constrained scale).
    summary : dict
        ``reference_summary.json``.
    folder : Path
    """

    name: str
    posterior_name: str
    module: ModuleType
    data: dict
    reference: dict
    summary: dict
    folder: Path

    @property
    def model(self):
        return self.module.model

    def init_values(self) -> dict:
        """Initial values for ``init_to_value`` (see the module's ``init_values``)."""
        return self.module.init_values(**self.data)


def load(name: str, reference_dir: str | os.PathLike | None = None, dtype=None) -> Posterior:
    """Load one posterior's data and reference draws from the reference folder.

    Parameters
    ----------
    name : str
        Module name or posteriordb name.
    reference_dir : path, optional
        The reference folder (see :func:`find_reference_dir`).
    dtype : torch.dtype, optional
        Data dtype; default ``torch.get_default_dtype()``.
    """
    module = get(name)
    folder = find_reference_dir(reference_dir) / module.POSTERIOR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist; the reference folder must hold one folder per posterior "
            f"named as in posteriordb (here {module.POSTERIOR!r})"
        )
    raw = json.loads((folder / "data.json").read_text())
    with np.load(folder / "reference_draws.npz") as npz:
        reference = {key: np.asarray(npz[key], dtype=np.float64) for key in npz.files}
    summary = json.loads((folder / "reference_summary.json").read_text())
    key = {v: k for k, v in POSTERIORS.items()}[module.POSTERIOR]
    return Posterior(
        name=key,
        posterior_name=module.POSTERIOR,
        module=module,
        data=module.data_from_json(raw, dtype=dtype),
        reference=reference,
        summary=summary,
        folder=folder,
    )
