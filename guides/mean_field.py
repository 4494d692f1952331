"""Mean-field Gaussian guide in unconstrained space."""

from __future__ import annotations

from pyro.infer.autoguide import AutoNormal

from ._base import check_init_scale, continuous_only, init_kwargs, resolve_init_loc_fn


class MeanField(AutoNormal):
    r"""A diagonal Normal per latent site, on the unconstrained space of each site.

    .. math::

        q_\phi(z) = \prod_{s} \mathcal{N}\big(T_s^{-1}(z_s);\ \mu_s, \operatorname{diag}
        \sigma_s^2\big)\,\big|\det J_{T_s^{-1}}(z_s)\big|

    where :math:`T_s` is ``biject_to(support of site s)``, :math:`\mu_s` are the ``locs``
    and :math:`\sigma_s` the ``scales`` parameters (``init_scale`` sets their initial value).

    Sites inside plates get one parameter per plate entry; with a subsampled plate the guide
    holds parameters for the full plate and uses the entries of the current mini-batch.
    Discrete latent sites are rejected with a ``ValueError``.

    Parameters
    ----------
    model : callable
        The Pyro model.
    init_loc_fn : str, dict or callable, default "feasible"
        Initial location of each site: ``"feasible"``, ``"median"``, ``"mean"``, ``"sample"``,
        ``"uniform"``, a dict ``{site: value}`` or a Pyro init strategy.
    init_scale : float, default 0.1
        Initial standard deviation in unconstrained space.
    create_plates : callable, optional
        As for :class:`pyro.infer.autoguide.AutoNormal`.

    References
    ----------
    Kucukelbir, A., Tran, D., Ranganath, R., Gelman, A. & Blei, D. M. (2017). Automatic
    differentiation variational inference. JMLR 18(14).

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.models import normal_normal
    >>> result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(),
    ...                     guide="mean_field", num_steps=300, progress=False)
    >>> sorted(result.sample(10))
    ['mu']
    """

    def __init__(self, model, *, init_loc_fn="feasible", init_scale=0.1, create_plates=None):
        self._init_loc_spec = init_loc_fn if isinstance(init_loc_fn, str) else None
        super().__init__(
            model,
            init_loc_fn=continuous_only(resolve_init_loc_fn(init_loc_fn), type(self).__name__),
            init_scale=check_init_scale(init_scale),
            create_plates=create_plates,
        )

    def get_config(self) -> dict:
        """Constructor arguments that determine the guide's structure (used by ``load``)."""
        return init_kwargs(self)
