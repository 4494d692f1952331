"""Low-rank plus diagonal Gaussian guide in the joint unconstrained space."""

from __future__ import annotations

from pyro.infer.autoguide import AutoLowRankMultivariateNormal

from ._base import init_config, init_kwargs


class LowRank(AutoLowRankMultivariateNormal):
    r"""One multivariate Normal over all latent sites with a low-rank plus diagonal covariance.

    .. math::

        q_\phi(z) = \mathcal{N}\big(T^{-1}(z);\ \mu,\ D (F F^\top + I) D\big)\,
        \big|\det J_{T^{-1}}(z)\big|

    with :math:`D = \operatorname{diag}(s)` the ``scale`` parameter, :math:`F` the ``rank``
    columns of ``cov_factor`` (Pyro's parameterisation) and :math:`T` the product of the sites'
    ``biject_to(support)``. :math:`O(D r)` parameters and cost per draw instead of
    :math:`O(D^2)`: correlations along ``rank`` directions for models with many latents.
    ``fit(guide="bam", guide_kwargs={"rank": r})`` fits it by batch and match.

    Parameters
    ----------
    model : callable
        The Pyro model.
    rank : int, optional
        Number of columns of the covariance factor (default: about the square root of the
        number of latent dimensions, Pyro's default).
    init_loc_fn : str, dict or callable, default "feasible"
        Initial location of each site, as for :class:`MeanField`.
    init_scale : float, default 0.1
        Initial standard deviation scale in unconstrained space.

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.models import normal_normal
    >>> result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(),
    ...                     guide="low_rank", num_steps=100, progress=False)
    >>> sorted(result.sample(10))
    ['mu']
    """

    def __init__(self, model, *, rank: int | None = None, init_loc_fn="feasible", init_scale=0.1):
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be an integer >= 1 or None (got rank={rank!r})")
        super().__init__(
            model,
            init_loc_fn=init_config(self, init_loc_fn, init_scale),
            init_scale=float(init_scale),
            rank=rank,
        )

    def get_config(self) -> dict:
        """Constructor arguments that determine the guide's structure (used by ``load``)."""
        return {"rank": self.rank, **init_kwargs(self)}
