"""Equally weighted mixture of full-rank Gaussians in the joint unconstrained space."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroParam

from ._base import init_config, init_kwargs


class GaussianMixture(AutoContinuous):
    r"""An equally weighted mixture of ``num_components`` multivariate Normals over all latent
    sites, on their joint unconstrained space (the result of multi-path Pathfinder).

    .. math::

        q_\phi(z) = \frac{1}{K} \sum_{k=1}^{K} \mathcal{N}\big(T^{-1}(z);\ \mu_k,
        L_k L_k^\top\big)\,\big|\det J_{T^{-1}}(z)\big|

    with :math:`K` = ``num_components``, :math:`\mu_k` the rows of ``locs`` and :math:`L_k`
    the lower Cholesky factors ``scale_trils``. Draws are not reparameterized (the component
    is discrete), so with a reparameterization ELBO Pyro falls back to score-function
    gradients for the choice of component; the guide is meant to be set, not trained:
    :func:`ppl_vi.fit` with ``guide="pathfinder"`` sets it from the paths' Gaussians.

    Parameters
    ----------
    model : callable
        The Pyro model.
    num_components : int, default 2
        Number of Gaussians.
    init_loc_fn : str, dict or callable, default "feasible"
        Initial location of every component, as for :class:`~ppl_vi.guides.MeanField`.
    init_scale : float, default 0.1
        Initial standard deviation (times the identity) of every component.

    References
    ----------
    Zhang, L., Carpenter, B., Gelman, A. & Vehtari, A. (2022). Pathfinder: parallel
    quasi-Newton variational inference. JMLR 23(306).

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.models import normal_normal
    >>> result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(),
    ...                     guide="pathfinder", progress=False)
    >>> type(result.guide).__name__
    'GaussianMixture'
    """

    def __init__(self, model, *, num_components: int = 2, init_loc_fn="feasible", init_scale=0.1):
        if (
            isinstance(num_components, bool)
            or not isinstance(num_components, int)
            or num_components < 1
        ):
            raise ValueError(
                f"num_components must be an integer >= 1 (got num_components={num_components!r})"
            )
        self.num_components = num_components
        super().__init__(model, init_loc_fn=init_config(self, init_loc_fn, init_scale))

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        k, d = self.num_components, self.latent_dim
        loc = self._init_loc()  # (D,)
        self.locs = torch.nn.Parameter(loc.expand(k, d).clone())
        eye = torch.eye(d, dtype=loc.dtype, device=loc.device)
        self.scale_trils = PyroParam(
            (self._init_scale * eye).expand(k, d, d).clone(), constraints.lower_cholesky
        )

    def get_posterior(self, *args, **kwargs):
        components = dist.MultivariateNormal(self.locs, scale_tril=self.scale_trils)
        logits = self.locs.new_zeros(self.num_components)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)

    def get_config(self) -> dict:
        """Constructor arguments that determine the guide's structure (used by ``load``)."""
        return {"num_components": self.num_components, **init_kwargs(self)}
