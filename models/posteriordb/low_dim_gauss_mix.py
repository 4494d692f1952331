r"""Two-component Gaussian mixture with ordered means (posteriordb
``low_dim_gauss_mix-low_dim_gauss_mix``).

1000 simulated, well-separated observations; the component labels are marginalised and the
means are ordered (which removes label switching):

.. math::

    p(\mu) &\propto \mathcal{N}(\mu_1 \mid 0, 2^2)\, \mathcal{N}(\mu_2 \mid 0, 2^2)\,
        [\mu_1 < \mu_2], \\
    \sigma_k &\sim \mathrm{HalfNormal}(2), \quad k = 1, 2, \qquad
    \theta \sim \mathrm{Beta}(5, 5), \\
    y_n \mid \mu, \sigma, \theta &\sim
        \theta\, \mathcal{N}(\mu_1, \sigma_1^2) + (1 - \theta)\, \mathcal{N}(\mu_2, \sigma_2^2)
        \text{ independently}, \quad n = 1, \dots, N,

so :math:`\theta` is the weight of the component with the smaller mean. The prior of
:math:`\mu` is the distribution of two sorted independent :math:`\mathcal{N}(0, 2^2)` draws
(:class:`SortedNormal`, density :math:`2!\prod_k \mathcal{N}(\mu_k \mid 0, 2^2)` on the ordered
region): proper and sampleable, with support ``constraints.ordered_vector``, so NUTS and
AutoGuides work in the unconstrained space of Pyro's ``OrderedTransform``.

Sites
-----
``"mu"``
    latent, shape ``(2,)``, ordered (one site, event shape ``(2,)``).
``"sigma"``
    latent, shape ``(2,)``, positive (one site, ``to_event(1)``), matched to ``mu``.
``"theta"``
    latent, scalar in :math:`(0, 1)`.
``"y"``
    observed, shape ``(N,)``, in the plate ``"data"`` (dim -1).

Data
----
``data.json`` fields ``N`` (1000; implied by the length of ``y``) and ``y``. The reference
arrays ``mu (n, 2)`` (with ``mu[:, 0] < mu[:, 1]``), ``sigma (n, 2)`` and ``theta (n,)`` are all
sampled; none is derived.

References
----------
Magnusson, M., Bürkner, P., Vehtari, A. posteriordb: a set of posteriors for Bayesian inference
and probabilistic programming, version 0.5 (2023), https://github.com/stan-dev/posteriordb
(posterior ``low_dim_gauss_mix-low_dim_gauss_mix``; simulated data from the Stan
``stat_comp_benchmarks`` suite).
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions.utils import broadcast_all

__all__ = [
    "POSTERIOR",
    "HAS_IMPROPER_PRIOR",
    "SortedNormal",
    "model",
    "data_from_json",
    "sampled_from_reference",
    "init_values",
]

POSTERIOR = "low_dim_gauss_mix-low_dim_gauss_mix"
HAS_IMPROPER_PRIOR = False


class SortedNormal(TorchDistribution):
    """``size`` independent ``Normal(loc, scale)`` draws, sorted in increasing order.

    The density on ``constraints.ordered_vector`` is ``size! * prod_k Normal(v_k | loc, scale)``.

    Parameters
    ----------
    loc, scale : torch.Tensor
        Location and scale, shared by the components; their broadcast shape is the batch shape.
    size : int
        Length of the vector (event shape ``(size,)``).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector
    has_rsample = True

    def __init__(self, loc, scale, size: int, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        self.size = int(size)
        super().__init__(self.loc.shape, torch.Size((self.size,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SortedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.size = self.size
        super(SortedNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        value = self.loc.unsqueeze(-1) + self.scale.unsqueeze(-1) * eps
        return value.sort(dim=-1).values

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        normal = dist.Normal(self.loc.unsqueeze(-1), self.scale.unsqueeze(-1))
        return normal.log_prob(value).sum(-1) + math.lgamma(self.size + 1)


def model(y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
    """Two-component Gaussian mixture with ordered means, labels marginalised.

    Parameters
    ----------
    y : torch.Tensor, optional
        Observations, shape ``(N,)``; sampled when ``None`` (then ``num_data`` is required).
    num_data : int, optional
        ``N`` when ``y`` is ``None``.

    Returns
    -------
    torch.Tensor
        The ordered means ``mu``.
    """
    if y is None and num_data is None:
        raise ValueError("pass y or num_data")
    ref = y if y is not None else torch.zeros(())
    n = y.shape[-1] if y is not None else int(num_data)
    mu = pyro.sample("mu", SortedNormal(ref.new_zeros(()), ref.new_tensor(2.0), 2))
    sigma = pyro.sample("sigma", dist.HalfNormal(ref.new_full((2,), 2.0)).to_event(1))
    theta = pyro.sample("theta", dist.Beta(ref.new_tensor(5.0), ref.new_tensor(5.0)))
    weights = torch.stack([theta, 1.0 - theta], dim=-1)
    mixture = dist.MixtureSameFamily(dist.Categorical(probs=weights), dist.Normal(mu, sigma))
    with pyro.plate("data", n, dim=-1):
        pyro.sample("y", mixture, obs=y)
    return mu


def data_from_json(raw: dict, dtype: torch.dtype | None = None) -> dict:
    """Model keyword arguments from the parsed ``data.json`` (``y``)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    y = torch.tensor(raw["y"], dtype=dtype)
    if len(y) != int(raw["N"]):
        raise ValueError(f"len(y) = {len(y)} but N = {raw['N']}")
    return {"y": y}


def sampled_from_reference(draws: dict) -> dict[str, np.ndarray]:
    """The reference draws as the latent sites ``mu``, ``sigma``, ``theta`` (all sampled)."""
    return {k: np.asarray(draws[k], dtype=np.float64) for k in ("mu", "sigma", "theta")}


def init_values(y: torch.Tensor | None = None, num_data: int | None = None) -> dict:
    """Initial values: ``mu`` at the 25% and 75% quantiles of ``y`` (or (-1, 1) without data),
    ``sigma`` = (1, 1), ``theta`` = 0.5."""
    if y is None:
        mu = torch.tensor([-1.0, 1.0])
        ref = mu
    else:
        mu = torch.quantile(y, y.new_tensor([0.25, 0.75]))
        ref = y
    return {"mu": mu, "sigma": ref.new_ones(2), "theta": ref.new_tensor(0.5)}
