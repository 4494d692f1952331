r"""The variational Rényi bound (Li & Turner 2016) and the bound function it shares with IWAE.

:func:`renyi_bound` turns stacked log importance weights into per-datum bounds;
:class:`RenyiELBO` owns the particle-to-loss plumbing that :class:`~ppl_vi.elbos.iwae.IWAE`
(the bound at :math:`\alpha = 0`) inherits, overriding only the gradient of ``loss_and_grads``.
"""

from __future__ import annotations

import math
import numbers

import torch
from pyro.poutine import Trace

from ._base import ParticleELBO, Particles

__all__ = ["RenyiELBO", "renyi_bound"]


def renyi_bound(log_weights: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    r"""Monte Carlo Rényi bound of order ``alpha`` from ``K`` log importance weights.

    .. math::

        \hat{\mathcal L}_\alpha = \frac{1}{1 - \alpha}
            \log \frac{1}{K} \sum_{k=1}^{K} w_k^{1 - \alpha}, \qquad
        \hat{\mathcal L}_{-\infty} = \max_k \log w_k,

    where :math:`\log w_k` is ``log_weights[k]`` and :math:`\alpha` is ``alpha``;
    :math:`\alpha = 0` is the IWAE bound. Computed in log space (``logsumexp``).

    Shapes
    ------
    log_weights : ``(K, *datum_shape)``
    returns : ``datum_shape``, one bound per datum.
    """
    num_particles = log_weights.shape[0]
    if alpha == -math.inf:
        return log_weights.max(dim=0).values
    scaled = (1.0 - alpha) * log_weights
    return (torch.logsumexp(scaled, dim=0) - math.log(num_particles)) / (1.0 - alpha)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number (got {type(alpha).__name__} {alpha!r})")
    alpha = float(alpha)
    if math.isnan(alpha):
        raise ValueError("alpha must be a number != 1 or -inf (got alpha=nan)")
    if alpha == 1:
        raise ValueError(
            "alpha=1 is the standard ELBO, where this bound is 0/0; use pyro.infer.Trace_ELBO "
            "(elbo='elbo' in ppl_vi.fit) for alpha = 1"
        )
    if alpha == math.inf:
        raise ValueError(
            "alpha=inf is not supported; use a finite alpha, or alpha=-inf for the VR-max bound"
        )
    return alpha


def _non_reparameterized(trace: Trace) -> Trace:
    """The sample sites of ``trace`` drawn without ``rsample`` (they need a score-function term)."""
    out = Trace()
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample:
            out.nodes[name] = site
    return out


class RenyiELBO(ParticleELBO):
    r"""Variational Rényi bound, one bound per datum, with reparameterized gradients.

    .. math::

        \mathcal L_\alpha(\phi) = \mathbb E_{z_{1:K} \sim q_\phi}\Big[\frac{1}{1 - \alpha}
            \log \frac{1}{K} \sum_{k=1}^{K} \Big(\frac{p(x, z_k)}{q_\phi(z_k)}\Big)^{1 - \alpha}
            \Big], \qquad
        \mathcal L_{-\infty}(\phi) = \mathbb E\big[\max_k \log p(x, z_k) - \log q_\phi(z_k)\big],

    where :math:`\alpha` is ``alpha``, :math:`K` is ``num_particles``, :math:`p` the model and
    :math:`q_\phi` the guide. ``loss`` returns :math:`-\hat{\mathcal L}_\alpha`.

    For :math:`\alpha \ge 0` the estimate is a stochastic lower bound on :math:`\log p(x)`: the
    power mean of order :math:`1 - \alpha \le 1` is at most the arithmetic mean, whose log is the
    IWAE bound (:math:`\alpha = 0`). For :math:`\alpha < 0`, including the VR-max variant
    ``alpha=-inf``, it can exceed :math:`\log p(x)`; Li & Turner (2016, sec. 4) use it as a
    mass-covering objective, not as a bound. As :math:`\alpha \to 1` it tends to the standard
    ELBO, which :class:`pyro.infer.Trace_ELBO` computes with lower variance.

    When a plate encloses every sample site of the model and the guide (a VAE's data plate)
    the bound is taken per datum and summed over data, as in Pyro's ``RenyiELBO``.

    Gradients are those of the Monte Carlo bound itself through reparameterized draws. Guide
    sites without ``rsample`` add the score-function term
    :math:`\hat{\mathcal L}_\alpha \nabla_\phi \sum_k \log q_\phi(z_k)` (no baseline), which keeps
    the gradient of the :math:`K`-particle bound unbiased. (Pyro's ``RenyiELBO`` uses
    :math:`\frac{\alpha}{1-\alpha} \sum_k \tilde v_k \nabla_\phi \log q_\phi(z_k)` with
    :math:`\tilde v_k \propto w_k^{1-\alpha}` for such sites, a self-normalised estimate of the
    gradient of the :math:`K \to \infty` objective, which is zero at :math:`\alpha = 0`.)

    Parameters
    ----------
    alpha : float, default 0.0
        Order of the divergence; any real number except 1, or ``-inf`` (VR-max).
    num_particles : int, default 8
        Number of particles :math:`K` per estimate.
    max_plate_nesting : int, optional
        Bound on nested plates; guessed by tracing once when not given.
    vectorize_particles : bool, default True
        Draw the particles in one batched pass over a plate.
    strict_enumeration_warning : bool, default True
        As for :class:`pyro.infer.ELBO`.

    Shapes
    ------
    log weights : ``(K, *datum_shape)``, from :meth:`particles`; ``datum_shape`` is empty unless
    a plate encloses every site. The bound is computed per datum (``datum_shape``) and summed.

    References
    ----------
    Li, Y. & Turner, R. E. (2016). Rényi divergence variational inference. NeurIPS 29.

    Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. ICLR.

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.elbos.renyi import RenyiELBO
    >>> from ppl_vi.models import normal_normal
    >>> result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(),
    ...                     elbo=RenyiELBO(alpha=0.5, num_particles=8), num_steps=300,
    ...                     progress=False)
    >>> result.losses.shape
    (300,)
    """

    particles_define_objective = True

    def __init__(
        self,
        alpha: float = 0.0,
        num_particles: int = 8,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        strict_enumeration_warning: bool = True,
    ):
        self.alpha = _check_alpha(alpha)
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    def bound(self, log_weights: torch.Tensor) -> torch.Tensor:
        """Per-datum bound from log weights ``(K, *datum_shape)``; returns ``datum_shape``."""
        return renyi_bound(log_weights, self.alpha)

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        """:math:`-\\hat{\\mathcal L}_\\alpha` and a surrogate with the estimator above as its
        gradient (with non-reparameterized guide sites the score-function term adds to the
        gradient but not to the value)."""
        particles = self.particles(model, guide, args, kwargs)
        loss = -self._surrogate_bound(particles).sum()
        return loss.detach(), loss

    # ------------------------------------------------------------------ shared with IWAE
    def _surrogate_bound(self, particles: Particles) -> torch.Tensor:
        """Per-datum bound whose gradient is unbiased, also with non-reparameterized sites."""
        bound = self.bound(particles.log_weights)  # datum_shape
        traces = [_non_reparameterized(guide_trace) for _, guide_trace in particles.traces]
        if not any(trace.nodes for trace in traces):
            return bound
        # score-function term: grad E[f(z_1:K)] = E[grad f + f grad sum_k log q(z_k)]
        score = self.stacked_like(particles, traces).sum(0)  # datum_shape
        return bound + bound.detach() * (score - score.detach())
