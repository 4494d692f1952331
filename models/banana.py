r"""The "banana": a twisted 2-D Gaussian with a closed-form, normalised density.

The target of Haario, Saksman & Tamminen (1999), "Adaptive proposal distribution for random
walk Metropolis algorithm", *Computational Statistics* 14(3), 375-395, a standard test of
samplers and variational families for curved posteriors (Haario, Saksman & Tamminen, 2001,
*Bernoulli* 7(2), 223-242; it is the kind of non-elliptical target that the normalizing-flow
literature, e.g. Rezende & Mohamed, 2015, "Variational inference with normalizing flows",
*ICML*, uses to show what Gaussian guides miss). Let :math:`f` be the density of
:math:`\mathcal{N}(0, \operatorname{diag}(\sigma^2, 1))` and

.. math::

    \phi_b(z) = \big(z_1,\; z_2 + b\,(z_1^2 - \sigma^2)\big).

The banana density is :math:`p(z) = f(\phi_b(z))`, i.e.

.. math::

    \log p(z) = \log \mathcal{N}(z_1; 0, \sigma^2)
        + \log \mathcal{N}\big(z_2 + b\,(z_1^2 - \sigma^2); 0, 1\big),

with curvature :math:`b` (``b``, default 0.1) and scale :math:`\sigma` (``scale``, default
10). Haario et al. use :math:`\sigma^2 = 100` with :math:`b = 0.03` ("moderately twisted")
and :math:`b = 0.1` ("strongly twisted"); :math:`b = 0` is the Gaussian :math:`f`, and
:math:`b < 0` bends the banana the other way. The map :math:`\phi_b` is a bijection of
:math:`\mathbb{R}^2` with unit-triangular Jacobian, :math:`|\det \partial\phi_b/\partial z| =
1`, so :math:`p` is a normalised density (:math:`\log Z = 0` exactly) and :math:`z =
\phi_b^{-1}(x) = (x_1, x_2 - b\,(x_1^2 - \sigma^2))` with :math:`x \sim f` is an exact,
reparameterised draw from it (:class:`Banana`).

Sites
-----
``"z"``
    latent, one vector site of shape ``(2,)`` (event shape ``(2,)``: a :class:`Banana`).

There is no observed site and no plate: the model is the target itself, so its "posterior"
is :class:`Banana` (:func:`exact_posterior`) and its evidence is 1 (:func:`log_evidence` = 0).

Exact moments
-------------
With :math:`x_1 \sim \mathcal{N}(0, \sigma^2)` independent of :math:`x_2 \sim \mathcal{N}(0,
1)`, :math:`E[x_1^2] = \sigma^2`, :math:`E[x_1^3] = 0` and :math:`\operatorname{Var}(x_1^2) =
2\sigma^4`, so

.. math::

    E[z] = (0, 0), \qquad
    \operatorname{Cov}(z) = \begin{pmatrix} \sigma^2 & 0 \\ 0 & 1 + 2 b^2 \sigma^4
    \end{pmatrix}

(:func:`exact_moments`; :math:`\operatorname{Cov}(z_1, z_2) = -b\,E[x_1^3] = 0`). The
coordinates are uncorrelated but strongly dependent: at the defaults :math:`\operatorname{Var}
(z_2) = 201` while :math:`\operatorname{Var}(z_2 \mid z_1) = 1`. A Gaussian guide can match
these moments but not the shape.

Data
----
None. :func:`load_data` returns ``b`` and ``scale`` as scalar tensors of
``torch.get_default_dtype()``, so that the model follows their dtype and device like any data.

Examples
--------
>>> import pyro
>>> import torch
>>> from ppl_vi.models import banana
>>> data = banana.load_data()
>>> trace = pyro.poutine.trace(banana.model).get_trace(**data)
>>> trace.nodes["z"]["value"].shape
torch.Size([2])
>>> moments = banana.exact_moments(**data)
>>> moments["cov"].diagonal().tolist()
[100.0, 201.0...]
>>> target = banana.exact_posterior(**data)["z"]    # a Banana distribution
>>> target.sample((1000,)).shape
torch.Size([1000, 2])
>>> target.log_prob(torch.zeros(5, 3, 2)).shape
torch.Size([5, 3])
>>> float(banana.log_evidence(**data))
0.0
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

__all__ = [
    "Banana",
    "model",
    "load_data",
    "exact_posterior",
    "log_evidence",
    "exact_moments",
    "B",
    "SCALE",
]

#: Default curvature ("strongly twisted" in Haario et al.).
B = 0.1

#: Default standard deviation of ``z[0]`` (Haario et al.'s :math:`\sigma^2 = 100`).
SCALE = 10.0

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

_Param = torch.Tensor | float


class Banana(TorchDistribution):
    r"""Twisted Gaussian of Haario et al. (1999) on :math:`\mathbb{R}^2`.

    ``log_prob(z) = log N(z[..., 0]; 0, scale^2) + log N(z[..., 1] + b (z[..., 0]^2 - scale^2);
    0, 1)``, exactly normalised; ``rsample`` pushes a Normal draw through the inverse twist.

    Parameters
    ----------
    b : float or torch.Tensor
        Curvature (any real; 0 gives a Gaussian). Batched parameters broadcast.
    scale : float or torch.Tensor
        Standard deviation of the first coordinate, positive.
    validate_args : bool, optional
        As for every ``torch.distributions.Distribution``.
    """

    arg_constraints = {"b": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, b: _Param = B, scale: _Param = SCALE, validate_args: bool | None = None):
        self.b, self.scale = broadcast_all(b, scale)
        super().__init__(self.b.shape, torch.Size((2,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Banana, _instance)
        batch_shape = torch.Size(batch_shape)
        new.b = self.b.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        super(Banana, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.b.new_zeros(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        s2 = self.scale**2
        return torch.stack([s2, 1 + 2 * self.b**2 * s2**2], dim=-1)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.b.dtype, device=self.b.device)
        x1 = self.scale * eps[..., 0]
        z2 = eps[..., 1] - self.b * (x1**2 - self.scale**2)
        return torch.stack([x1, z2], dim=-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z1, z2 = value[..., 0], value[..., 1]
        u = z1 / self.scale
        x2 = z2 + self.b * (z1**2 - self.scale**2)
        return -0.5 * (u**2 + x2**2) - self.scale.log() - 2 * _HALF_LOG_2PI


def _banana(b: _Param, scale: _Param) -> Banana:
    if not torch.is_tensor(b) and not torch.is_tensor(scale):
        dtype = torch.get_default_dtype()
        b, scale = torch.tensor(float(b), dtype=dtype), torch.tensor(float(scale), dtype=dtype)
    return Banana(b, scale)


def model(b: _Param = B, scale: _Param = SCALE) -> torch.Tensor:
    """Sample ``z`` from the banana target.

    Parameters
    ----------
    b : float or torch.Tensor
        Curvature of the twist.
    scale : float or torch.Tensor
        Standard deviation of ``z[0]``, positive.

    Returns
    -------
    torch.Tensor
        The sampled (or conditioned) value of ``z``, shape ``(2,)``, in the dtype and on the
        device of the tensor arguments (the default dtype when both are Python numbers).
    """
    return pyro.sample("z", _banana(b, scale))


def load_data(b: float = B, scale: float = SCALE) -> dict[str, torch.Tensor]:
    """The target's parameters as model keyword arguments (there are no data).

    Returns
    -------
    dict
        ``{"b": scalar, "scale": scalar}`` in ``torch.get_default_dtype()``.

    Raises
    ------
    ValueError
        If ``scale`` is not positive.
    """
    if not float(scale) > 0:
        raise ValueError(f"scale must be positive (got scale={float(scale)})")
    dtype = torch.get_default_dtype()
    return {
        "b": torch.tensor(float(b), dtype=dtype),
        "scale": torch.tensor(float(scale), dtype=dtype),
    }


def exact_posterior(
    b: _Param = B, scale: _Param = SCALE
) -> dict[str, torch.distributions.Distribution]:
    """The target itself, which is the model's (normalised) "posterior".

    Returns
    -------
    dict
        ``{"z": Banana}`` in the dtype and on the device of the tensor arguments.
    """
    return {"z": _banana(b, scale)}


def log_evidence(b: _Param = B, scale: _Param = SCALE) -> torch.Tensor:
    """``log Z = 0``: the twist is volume preserving, so the density is normalised.

    Returns
    -------
    torch.Tensor
        Zero of the parameters' batch shape (a scalar for scalar parameters), in their dtype
        and on their device.
    """
    d = _banana(b, scale)
    return d.b.new_zeros(d.batch_shape)


def exact_moments(b: _Param = B, scale: _Param = SCALE) -> dict[str, torch.Tensor]:
    """Exact mean and covariance of the banana (see the module docstring).

    Returns
    -------
    dict
        ``{"mean": (2,), "cov": (2, 2)}`` (with leading batch dimensions for batched
        parameters), in the dtype and on the device of the parameters.
    """
    d = _banana(b, scale)
    return {"mean": d.mean, "cov": torch.diag_embed(d.variance)}
