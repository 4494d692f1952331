r"""The importance-weighted bound (IWAE) with reparameterized, DReG and STL gradients."""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites

from ._base import Particles
from .renyi import RenyiELBO

__all__ = ["IWAE"]

GRADIENTS = ("reparam", "dreg", "stl")


class IWAE(RenyiELBO):
    r"""Importance-weighted bound of Burda et al. (2016), one bound per datum.

    .. math::

        \mathcal L_K(\phi) = \mathbb E_{z_{1:K} \sim q_\phi}\Big[
            \log \frac{1}{K} \sum_{k=1}^{K} w_k\Big], \qquad
        w_k = \frac{p(x, z_k)}{q_\phi(z_k)}, \qquad
        \tilde w_k = \frac{w_k}{\sum_j w_j},

    where :math:`K` is ``num_particles``, :math:`p` the model, :math:`q_\phi` the guide and
    ``gradient`` picks the estimator of :math:`\nabla \mathcal L_K`. ``loss`` returns
    :math:`-\hat{\mathcal L}_K`; :math:`\mathcal L_1` is the standard ELBO and
    :math:`\mathcal L_K \uparrow \log p(x)` as :math:`K \to \infty`.

    This is :class:`~ppl_vi.elbos.renyi.RenyiELBO` at :math:`\alpha = 0`, plus two gradient
    estimators for the guide parameters :math:`\phi`; the model parameters :math:`\theta` always
    get :math:`\sum_k \tilde w_k \nabla_\theta \log w_k`. With
    :math:`\partial_{\rm path}` the derivative through :math:`z_k = z(\epsilon_k, \phi)` only,

    * ``"reparam"``: the gradient of :math:`\hat{\mathcal L}_K`,
      :math:`\sum_k \tilde w_k \nabla_\phi \log w_k` (score-function term added for guide sites
      without ``rsample``, as in :class:`RenyiELBO`);
    * ``"dreg"``: :math:`\sum_k \tilde w_k^2\, \partial_{\rm path} \log w_k` (Tucker et al. 2019,
      sec. 3), unbiased for :math:`\nabla_\phi \mathcal L_K` with a signal-to-noise ratio that
      does not vanish as :math:`K` grows;
    * ``"stl"``: :math:`\sum_k \tilde w_k\, \partial_{\rm path} \log w_k` ("sticking the
      landing", Roeder et al. 2017, applied to IWAE as in Tucker et al. 2019, sec. 3); biased
      for :math:`K > 1`, but zero whenever :math:`q_\phi` is the exact posterior.

    Both drop the score term :math:`\partial_\phi \log q_\phi(z)` at fixed :math:`z`. They need
    every guide site to have ``rsample`` and each parameter to belong to either the model or the
    guide, not both.

    Parameters
    ----------
    num_particles : int, default 8
        Number of particles :math:`K` per estimate.
    max_plate_nesting : int, optional
        Bound on nested plates; guessed by tracing once when not given.
    vectorize_particles : bool, default True
        Draw the particles in one batched pass over a plate.
    gradient : {"reparam", "dreg", "stl"}, default "reparam"
        Gradient estimator for the guide parameters used by :meth:`loss_and_grads`.
    strict_enumeration_warning : bool, default True
        As for :class:`pyro.infer.ELBO`.

    Shapes
    ------
    log weights : ``(K, *datum_shape)``, from :meth:`particles`; ``datum_shape`` is empty unless
    a plate encloses every site (then one bound per datum, summed over data).

    Notes
    -----
    ``loss_and_grads`` and :meth:`differentiable_loss` both carry the ``gradient`` estimator:
    one surrogate gives the guide parameters the DReG/STL path gradient and the model
    parameters the IWAE one (:meth:`loss_and_surrogate`).

    DReG and STL evaluate :math:`\log q_\phi(\bar z_k)` at the drawn values held fixed by
    replaying the guide once more (so :math:`\partial_\phi \log q` at fixed :math:`z` can be
    cancelled); this works for parameters read through ``pyro.param``, ``PyroModule`` or
    ``pyro.module`` alike (``poutine.substitute`` of detached values would miss the parameters
    of a plain ``nn.Module`` registered with ``pyro.module``). A guide whose draws are not all
    sample sites (for example a plate that subsamples at random) cannot be replayed; with Pyro's
    validation on (the default) the replay is checked against the first pass and such a guide
    raises a ``ValueError``.

    References
    ----------
    Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. ICLR.

    Tucker, G., Lawson, D., Gu, S. & Maddison, C. J. (2019). Doubly reparameterized gradient
    estimators for Monte Carlo objectives. ICLR.

    Roeder, G., Wu, Y. & Duvenaud, D. (2017). Sticking the landing: simple, lower-variance
    gradient estimators for variational inference. NeurIPS 30.

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.elbos.iwae import IWAE
    >>> from ppl_vi.models import normal_normal
    >>> result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(),
    ...                     elbo=IWAE(num_particles=8, gradient="dreg"), num_steps=300,
    ...                     progress=False)
    >>> result.losses.shape
    (300,)
    """

    def __init__(
        self,
        num_particles: int = 8,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        gradient: str = "reparam",
        strict_enumeration_warning: bool = True,
    ):
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of 'reparam', 'dreg', 'stl' (got {gradient!r})")
        self.gradient = gradient
        super().__init__(
            alpha=0.0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    def _check_reparameterized(self, particles: Particles) -> None:
        for _, guide_trace in particles.traces:
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample" and not site["is_observed"]:
                    if not site["fn"].has_rsample:
                        raise ValueError(
                            f"gradient={self.gradient!r} needs reparameterized guide sites, but "
                            f"guide site {name!r} ({type(site['fn']).__name__}) has no rsample; "
                            "use gradient='reparam' (which adds a score-function term) or "
                            "elbo='rb_score'"
                        )

    def _split_params(self, particles: Particles) -> tuple[list, list]:
        """Unconstrained leaf tensors of the guide's and the model's parameters."""
        guide_params, model_params = {}, {}
        for model_trace, guide_trace in particles.traces:
            for params, trace in ((guide_params, guide_trace), (model_params, model_trace)):
                for name, site in trace.nodes.items():
                    if site["type"] == "param":
                        leaf = site["value"].unconstrained()
                        if leaf.requires_grad:
                            params[name] = leaf
        shared = sorted(guide_params.keys() & model_params.keys())
        if shared:
            raise ValueError(
                f"gradient={self.gradient!r} treats guide and model parameters differently, but "
                f"parameters {shared} appear in both the model and the guide; use "
                "gradient='reparam'"
            )
        return list(guide_params.values()), list(model_params.values())

    def _log_density_at_fixed_z(self, fn, particles: Particles, args, kwargs) -> torch.Tensor:
        """Log density of ``fn`` (the guide or the model) replayed at the detached draws.

        Parameters stay live, so the result carries gradients for ``fn``'s parameters only.
        Returns ``(K, *datum_shape)``.
        """
        traces = []
        for _, guide_trace in particles.traces:
            fixed = Trace()
            for name, site in getattr(guide_trace, "subsample_sites", Trace()).nodes.items():
                fixed.add_node(name, **site)  # the same mini-batch
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    fixed.nodes[name] = {**site, "value": site["value"].detach()}
            replayed = poutine.replay(fn, trace=fixed)
            if self.is_vectorized:
                replayed = self._vectorized_num_particles(replayed)
            trace = prune_subsample_sites(poutine.trace(replayed).get_trace(*args, **kwargs))
            trace.compute_log_prob()
            traces.append(trace)
        return self.stacked_like(particles, traces)

    def _log_q_at_fixed_z(self, guide, particles: Particles, args, kwargs) -> torch.Tensor:
        """:math:`\\log q_\\phi(z_k)` with the draws detached, parameters live: ``(K, *datum)``."""
        log_q = self._log_density_at_fixed_z(guide, particles, args, kwargs)
        if is_validation_enabled() and not torch.allclose(
            log_q.detach(), particles.log_q.detach(), rtol=1e-5, atol=1e-5
        ):
            raise ValueError(
                f"gradient={self.gradient!r} replays the guide at its drawn values, but the replay "
                "gave a different log q(z): the guide draws randomness outside its sample sites "
                "(for example a plate with a random subsample_size). Pass fixed subsample indices, "
                "or use gradient='reparam'"
            )
        return log_q

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        """``(loss, surrogate)`` with one surrogate for both parameter sets, from which
        ``loss_and_grads``, ``differentiable_loss`` and the compiled step all take the
        ``gradient`` estimator:

        .. math::

            S = -\\sum_k c_k \\big(\\log w_k + \\log q_\\phi(\\bar z_k)\\big)
                - \\sum_k \\overline{(\\tilde w_k - c_k)}\\, \\log p_\\theta(x, \\bar z_k)

        with :math:`c_k` the (detached) DReG or STL coefficients and :math:`\\bar z` the
        detached draws: the first term's :math:`\\phi`-gradient is the path estimator, and the
        second makes the :math:`\\theta`-gradient
        :math:`-\\sum_k \\tilde w_k \\nabla_\\theta \\log p`, the IWAE one.
        """
        if self.gradient == "reparam":
            return super().loss_and_surrogate(model, guide, *args, **kwargs)
        particles = self.particles(model, guide, args, kwargs)
        self._check_reparameterized(particles)
        guide_params, model_params = self._split_params(particles)
        log_weights = particles.log_weights
        bound = self.bound(log_weights)
        loss = -bound.sum()
        if not guide_params:
            return loss.detach(), loss
        normalized = torch.softmax(log_weights.detach(), dim=0)
        coef = normalized.square() if self.gradient == "dreg" else normalized
        log_q_fixed_z = self._log_q_at_fixed_z(guide, particles, args, kwargs)
        surrogate = -(coef * (log_weights + log_q_fixed_z)).sum()
        if model_params:
            log_p_fixed_z = self._log_density_at_fixed_z(model, particles, args, kwargs)
            surrogate = surrogate - ((normalized - coef) * log_p_fixed_z).sum()
        return loss.detach(), surrogate
