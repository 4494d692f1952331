r"""A correlated 2-D Gaussian target: what mean-field VI misses.

The "model" is the target density itself, a bivariate Normal with no observed site:

.. math::

    z \sim \mathcal{N}(\mu, \Sigma), \qquad
    \Sigma = \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 \end{pmatrix},

with location :math:`\mu` (``loc``, default ``(0, 0)``), scales :math:`s_1, s_2` (``scales``,
default ``(1, 1)``) and correlation :math:`\rho \in (-1, 1)` (``rho``, default 0.9). Because
the density is normalised, the "posterior" is the target itself and the "evidence" is
:math:`Z = 1`, :math:`\log Z = 0`: every ELBO is :math:`-\mathrm{KL}(q \,\|\, p) \le 0`, so
the ELBO of a fitted guide reads directly as minus its KL divergence from the target.

Sites
-----
``"z"``
    latent, one vector site of shape ``(2,)`` (event shape ``(2,)``: a ``MultivariateNormal``).

There is no observed site and no plate.

Exact posterior, evidence and the mean-field gap
------------------------------------------------
:func:`exact_posterior` returns the target :math:`\mathcal{N}(\mu, \Sigma)`;
:func:`log_evidence` returns 0.

Write :math:`\Lambda = \Sigma^{-1}` for the precision matrix. Among fully factorised Gaussians
:math:`q(z) = \mathcal{N}(z_1; m_1, v_1)\,\mathcal{N}(z_2; m_2, v_2)`, the one that minimises
:math:`\mathrm{KL}(q \,\|\, p)` has :math:`m = \mu` and :math:`v_i = 1 / \Lambda_{ii}` (Bishop,
2006, *Pattern Recognition and Machine Learning*, sec. 10.1.2 and
Fig. 10.2). Indeed, up to a constant,

.. math::

    \mathrm{KL}(q \,\|\, p) = \tfrac12 \Big[\sum_i \big(\Lambda_{ii} v_i - \log v_i\big)
        + (m - \mu)^\top \Lambda (m - \mu)\Big],

which is strictly convex in :math:`(m, \log v)` with zero gradient exactly there.
With :math:`S = \operatorname{diag}(1/\Lambda_{11}, 1/\Lambda_{22})`,

.. math::

    \mathrm{KL}(q^* \,\|\, p)
    = \tfrac12\big[\operatorname{tr}(\Lambda S) - 2 + \log\det\Sigma - \log\det S\big]
    = \tfrac12\big[\log\det\Sigma + \log\Lambda_{11} + \log\Lambda_{22}\big],

since :math:`\operatorname{tr}(\Lambda S) = 2`. For the 2-D case :math:`\det\Sigma = s_1^2
s_2^2 (1 - \rho^2)` and :math:`\Lambda_{ii} = 1 / (s_i^2 (1 - \rho^2))`, so

.. math::

    \mathrm{KL}(q^* \,\|\, p) = -\tfrac12 \log(1 - \rho^2),

whatever the location and scales: 0.830 nats at :math:`\rho = 0.9`, 1.98 nats at
:math:`\rho = 0.99`. This is the best ELBO any mean-field guide can reach on this target
(:func:`mean_field_gap`). The optimal marginal variances :math:`s_i^2 (1 - \rho^2)` are
:math:`1 - \rho^2` (0.19 at :math:`\rho = 0.9`) times the true ones, the classic
under-dispersion of mean-field VI (Bishop, 2006, sec. 10.1.2; Turner & Sahani, 2011, "Two
problems with variational expectation maximisation for time-series models", in *Bayesian
Time Series Models*, Barber, Cemgil & Chiappa (eds.), Cambridge University Press, ch. 5).
By coincidence of the bivariate Gaussian, the same number is the mutual information of
:math:`z_1` and :math:`z_2`, i.e. :math:`\mathrm{KL}(p \,\|\, p_1 p_2)` for the exact
marginals.

Data
----
None. :func:`load_data` returns the target's parameters as tensors of
``torch.get_default_dtype()`` (``{"rho", "scales", "loc"}``), so that the model follows their
dtype and device like any data.

Examples
--------
>>> import pyro
>>> from ppl_vi.models import correlated_gaussian as cg
>>> data = cg.load_data(rho=0.9)
>>> trace = pyro.poutine.trace(cg.model).get_trace(**data)
>>> trace.nodes["z"]["value"].shape
torch.Size([2])
>>> target = cg.exact_posterior(**data)["z"]     # MultivariateNormal
>>> float(cg.log_evidence(**data))
0.0
>>> round(cg.mean_field_gap(0.9), 3)
0.83
>>> cg.mean_field_gap(1.0)
Traceback (most recent call last):
    ...
ValueError: rho must be in (-1, 1) (got rho=1.0)
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

__all__ = ["model", "load_data", "exact_posterior", "log_evidence", "mean_field_gap", "RHO"]

#: Default correlation.
RHO = 0.9

_SCALES = (1.0, 1.0)
_LOC = (0.0, 0.0)

_Param = torch.Tensor | float
_Pair = torch.Tensor | tuple[float, float]


def _check_rho(rho: _Param) -> float:
    r = float(rho)
    if not -1.0 < r < 1.0:
        raise ValueError(f"rho must be in (-1, 1) (got rho={r})")
    return r


def _target(rho: _Param, scales: _Pair, loc: _Pair) -> dist.MultivariateNormal:
    """The target N(loc, Sigma), in the dtype / device of the first tensor argument."""
    _check_rho(rho)
    ref = next((t for t in (loc, scales, rho) if torch.is_tensor(t)), None)
    if ref is None:
        ref = torch.zeros((), dtype=torch.get_default_dtype())
    rho_t = rho.to(ref) if torch.is_tensor(rho) else ref.new_tensor(rho)
    scales_t = scales.to(ref) if torch.is_tensor(scales) else ref.new_tensor(scales)
    loc_t = loc.to(ref) if torch.is_tensor(loc) else ref.new_tensor(loc)
    if rho_t.shape != ():
        raise ValueError(f"rho must be a scalar (got shape {tuple(rho_t.shape)})")
    if scales_t.shape != (2,) or not bool((scales_t > 0).all()):
        raise ValueError(f"scales must be two positive numbers (got scales={scales_t.tolist()})")
    if loc_t.shape != (2,):
        raise ValueError(f"loc must have shape (2,) (got shape {tuple(loc_t.shape)})")
    s1, s2 = scales_t.unbind(-1)
    zero = torch.zeros_like(s1)
    # Cholesky factor of Sigma: [[s1, 0], [rho s2, s2 sqrt(1 - rho^2)]].
    scale_tril = torch.stack(
        [torch.stack([s1, zero]), torch.stack([rho_t * s2, s2 * (1 - rho_t**2).sqrt()])]
    )
    return dist.MultivariateNormal(loc_t, scale_tril=scale_tril)


def model(
    rho: _Param = RHO,
    scales: _Pair = _SCALES,
    loc: _Pair = _LOC,
) -> torch.Tensor:
    """Sample ``z`` from the correlated bivariate Normal target.

    Parameters
    ----------
    rho : float or torch.Tensor
        Correlation, in (-1, 1).
    scales : tuple of two floats or torch.Tensor of shape (2,)
        Marginal standard deviations ``(s1, s2)``, positive.
    loc : tuple of two floats or torch.Tensor of shape (2,)
        Mean ``(mu1, mu2)``.

    Returns
    -------
    torch.Tensor
        The sampled (or conditioned) value of ``z``, shape ``(2,)``, in the dtype and on the
        device of the tensor arguments (the default dtype when all are Python numbers).

    Raises
    ------
    ValueError
        If ``|rho| >= 1``, a scale is not positive, or a shape is wrong.
    """
    return pyro.sample("z", _target(rho, scales, loc))


def load_data(
    rho: float = RHO,
    scales: tuple[float, float] = _SCALES,
    loc: tuple[float, float] = _LOC,
) -> dict[str, torch.Tensor]:
    """The target's parameters as model keyword arguments (there are no data).

    Returns
    -------
    dict
        ``{"rho": scalar, "scales": (2,), "loc": (2,)}`` in ``torch.get_default_dtype()``.

    Raises
    ------
    ValueError
        If ``|rho| >= 1``.
    """
    _check_rho(rho)
    dtype = torch.get_default_dtype()
    out = {
        "rho": torch.tensor(float(rho), dtype=dtype),
        "scales": torch.tensor([float(s) for s in scales], dtype=dtype),
        "loc": torch.tensor([float(m) for m in loc], dtype=dtype),
    }
    _target(**out)  # validate scales and loc
    return out


def exact_posterior(
    rho: _Param = RHO,
    scales: _Pair = _SCALES,
    loc: _Pair = _LOC,
) -> dict[str, torch.distributions.Distribution]:
    """The target itself, which is the model's (normalised) "posterior".

    Returns
    -------
    dict
        ``{"z": pyro.distributions.MultivariateNormal}`` in the dtype and on the device of the
        tensor arguments.
    """
    return {"z": _target(rho, scales, loc)}


def log_evidence(
    rho: _Param = RHO,
    scales: _Pair = _SCALES,
    loc: _Pair = _LOC,
) -> torch.Tensor:
    """``log Z = 0``: the target density is normalised.

    Returns
    -------
    torch.Tensor
        Scalar zero, in the dtype and on the device of the tensor arguments.
    """
    return _target(rho, scales, loc).loc.new_zeros(())


def mean_field_gap(rho: _Param) -> float:
    r"""KL divergence (nats) of the best fully factorised Gaussian from the target.

    Equals :math:`-\tfrac12 \log(1 - \rho^2)`, independently of ``loc`` and ``scales``; see the
    module docstring for the derivation. It is minus the best ELBO a mean-field guide can
    reach on this model.

    Raises
    ------
    ValueError
        If ``|rho| >= 1``.
    """
    r = _check_rho(rho)
    return -0.5 * math.log1p(-(r**2))
