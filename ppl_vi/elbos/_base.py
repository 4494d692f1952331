"""The particle base shared by ppl-vi's ELBO classes.

Pyro's :class:`~pyro.infer.ELBO` already owns the particle loop: ``_get_traces`` yields one
vectorized ``(model_trace, guide_trace)`` pair over a ``num_particles_vectorized`` plate, or one
pair per particle. :class:`ParticleELBO` adds what every importance-weighted or score-function
bound needs on top of it, once: the per-particle log densities of the model and the guide,
stacked over particles and kept per datum where a plate encloses every site.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled, torch_item
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from pyro.util import check_if_enumerated, warn_if_nan


@dataclass
class Particles:
    """Log densities of ``K`` particles.

    Shapes
    ------
    log_p, log_q : ``(K, *datum_shape)``
        :math:`\\log p(x, z_k)` and :math:`\\log q(z_k)`, summed over every plate that does not
        enclose all sample sites. ``datum_shape`` is empty unless a plate encloses every site of
        the model and the guide (the VAE case), in which case there is one bound per datum.
    traces : list of ``(model_trace, guide_trace)``
        One vectorized pair, or one pair per particle.
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    traces: list

    @property
    def log_weights(self) -> torch.Tensor:
        return self.log_p - self.log_q

    @property
    def num_particles(self) -> int:
        return self.log_p.shape[0]


def _site_sum(trace: Trace, sum_dims, key: str = "log_prob") -> torch.Tensor:
    """Sum every sample site's ``key`` over ``sum_dims``, keeping those dims (size 1)."""
    total = torch.zeros(())
    for site in trace.nodes.values():
        if site["type"] == "sample":
            value = torch.as_tensor(site[key])
            dims = [d for d in sum_dims if -value.dim() <= d]
            total = total + (value.sum(dims, keepdim=True) if dims else value)
    return total


def _squeeze_after_first(value: torch.Tensor) -> torch.Tensor:
    """Drop the size-1 dims after the particle dim (summed plates and padding)."""
    keep = [value.shape[0]] + [s for s in value.shape[1:] if s != 1]
    return value.reshape(keep)


def _align(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast two ``(K, ...)`` tensors with the particle dims aligned (left), not the last.

    One particle's model and guide sums can keep different numbers of size-1 dims (a site
    summed over a plate keeps that dim, a site outside every plate has none); aligning them
    from the right would pair particle ``k`` of one with datum ``k`` of the other.
    """
    rank = max(a.dim(), b.dim())
    a = a.reshape(a.shape + (1,) * (rank - a.dim()))
    b = b.reshape(b.shape + (1,) * (rank - b.dim()))
    return torch.broadcast_tensors(a, b)


class SurrogateELBO(ELBO):
    """An ELBO defined by one hook, :meth:`loss_and_surrogate`: the loss estimate and a scalar
    whose gradient is the estimator.

    ``loss``, ``loss_and_grads`` and ``differentiable_loss`` (what ``pyro.infer.SVI`` and
    ``pyro.infer.ELBO`` users call) and the compiled path (:class:`ppl_vi.jit.JitELBO`) are all
    derived from it here, once.
    """

    retain_graph = None

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        """``(loss, surrogate)`` tensors: the loss (-ELBO estimate, or the objective of a
        non-ELBO bound) and a scalar whose gradient is the gradient estimator."""
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss estimate (no gradients)."""
        with torch.no_grad():
            loss, _ = self.loss_and_surrogate(model, guide, *args, **kwargs)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A tensor whose value is the loss and whose gradient is the estimator."""
        loss, surrogate = self.loss_and_surrogate(model, guide, *args, **kwargs)
        loss, surrogate = torch.as_tensor(loss), torch.as_tensor(surrogate)
        return loss.detach() + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss estimate; the estimator is accumulated into the parameters' ``.grad``."""
        loss, surrogate = self.loss_and_surrogate(model, guide, *args, **kwargs)
        if getattr(surrogate, "requires_grad", False):
            surrogate.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss


class ParticleELBO(SurrogateELBO):
    """Base of ppl-vi's ELBOs: Pyro's particle machinery plus stacked per-particle log weights.

    Subclasses implement :meth:`loss_and_surrogate` on top of :meth:`particles`; ``loss``,
    ``loss_and_grads`` and ``differentiable_loss`` come from :class:`SurrogateELBO`. They remain
    plain :class:`pyro.infer.ELBO` objects, usable with ``pyro.infer.SVI``.

    Parameters
    ----------
    num_particles : int
        Number of particles :math:`K` per estimate.
    max_plate_nesting : int, optional
        Bound on nested plates; guessed by tracing once when not given.
    vectorize_particles : bool, default True
        Evaluate all particles in one batched pass over a plate rather than a Python loop.
    """

    #: True when the number of particles changes the objective itself (IWAE, Renyi), so that
    #: ``fit`` must not raise it in its final phase.
    particles_define_objective = False

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        strict_enumeration_warning: bool = True,
    ):
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or (num_particles < 1)
        ):
            raise ValueError(f"num_particles must be an integer >= 1 (got {num_particles!r})")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    @property
    def is_vectorized(self) -> bool:
        return self.vectorize_particles and self.num_particles > 1

    def _get_trace(self, model, guide, args, kwargs):
        tracer = poutine.trace(guide)  # keeps the subsample sites that the importance trace drops
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, tracer, args, kwargs
        )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        subsample = Trace()
        for name, site in tracer.trace.nodes.items():
            if site["type"] == "sample" and site_is_subsample(site):
                subsample.add_node(name, **site)
        guide_trace.subsample_sites = subsample
        return model_trace, guide_trace

    def _get_traces(self, model, guide, args, kwargs):
        """Pyro's particle loop, except that sequential particles share one mini-batch.

        A bound that combines particles per datum (IWAE, Renyi) must see the same data points
        in every particle, so particles after the first replay its subsample indices.
        """
        if self.vectorize_particles:
            yield from super()._get_traces(model, guide, args, kwargs)
            return
        shared = None
        for _ in range(self.num_particles):
            fn = guide if shared is None else poutine.replay(guide, trace=shared)
            model_trace, guide_trace = self._get_trace(model, fn, args, kwargs)
            if shared is None:  # None also for subclasses with their own _get_trace
                shared = getattr(guide_trace, "subsample_sites", None)
            yield model_trace, guide_trace

    def particles(self, model, guide, args, kwargs) -> Particles:
        """Draw ``num_particles`` particles and return their stacked log densities."""
        traces = list(self._get_traces(model, guide, args, kwargs))
        lp = self.stack_sums(traces, [model_trace for model_trace, _ in traces])
        lq = self.stack_sums(traces, [guide_trace for _, guide_trace in traces])
        lp, lq = _align(_squeeze_after_first(lp), _squeeze_after_first(lq))
        return Particles(lp, lq, traces)

    def stack_sums(self, traces: list, summed: list) -> torch.Tensor:
        """Sum each trace of ``summed`` like the log densities of :meth:`particles` and stack.

        ``traces`` are the ``(model_trace, guide_trace)`` pairs that fix which plates enclose
        every site; ``summed`` holds one trace per pair (e.g. a replayed guide). Returns
        ``(K, ...)`` with the summed plates kept as size-1 dims.
        """
        values = []
        for (model_trace, guide_trace), trace in zip(traces, summed, strict=True):
            sum_dims = get_dependent_plate_dims(
                list(model_trace.nodes.values()) + list(guide_trace.nodes.values())
            )
            values.append(_site_sum(trace, sum_dims))
        if self.is_vectorized:  # one pair, its particles on a plate
            (value,) = values
            return self._particles_first(value)
        return torch.stack(torch.broadcast_tensors(*values))

    def stacked_like(self, particles: Particles, summed: list) -> torch.Tensor:
        """:meth:`stack_sums` for ``particles.traces``, shaped like ``particles.log_q``."""
        value = self.stack_sums(particles.traces, summed)
        return _align(_squeeze_after_first(value), particles.log_q)[0]

    def _particles_first(self, value: torch.Tensor) -> torch.Tensor:
        """Move the particle plate (at ``dim = -max_plate_nesting``) to the front."""
        dim = self.max_plate_nesting
        value = value.reshape((1,) * (dim - value.dim()) + value.shape)  # pad to full rank
        value = value.movedim(-dim, 0)
        return value.expand(self.num_particles, *value.shape[1:])
