"""Full-rank Gaussian guide in the joint unconstrained space."""

from __future__ import annotations

from pyro.infer.autoguide import AutoMultivariateNormal

from ._base import init_config, init_kwargs


class FullRank(AutoMultivariateNormal):
    r"""One multivariate Normal over all latent sites, on their joint unconstrained space.

    .. math::

        q_\phi(z) = \mathcal{N}\big(T^{-1}(z);\ \mu, L L^\top\big)\,
        \big|\det J_{T^{-1}}(z)\big|

    with :math:`T` the product of ``biject_to(support)`` over the sites and :math:`L` a lower
    triangular Cholesky factor (``scale * scale_tril``, Pyro's parameterisation). This is Stan's
    full-rank ADVI family: it captures posterior correlations that :class:`MeanField` cannot (its
    means are then unbiased for a Gaussian posterior), at :math:`O(D^2)` parameters and an
    :math:`O(D^2)` cost per draw, which suits up to a few hundred latent dimensions.

    Parameters
    ----------
    model : callable
        The Pyro model.
    init_loc_fn : str, dict or callable, default "feasible"
        Initial location of each site, as for :class:`MeanField`.
    init_scale : float, default 0.1
        Initial standard deviation (times the identity) in unconstrained space.

    References
    ----------
    Kucukelbir, A., Tran, D., Ranganath, R., Gelman, A. & Blei, D. M. (2017). Automatic
    differentiation variational inference. JMLR 18(14).

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.models import normal_normal
    >>> result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(),
    ...                     guide="full_rank", num_steps=300, progress=False)
    >>> sorted(result.sample(10))
    ['mu']
    """

    def __init__(self, model, *, init_loc_fn="feasible", init_scale=0.1):
        super().__init__(
            model, init_loc_fn=init_config(self, init_loc_fn, init_scale), init_scale=init_scale
        )

    def get_config(self) -> dict:
        """Constructor arguments that determine the guide's structure (used by ``load``)."""
        return init_kwargs(self)
