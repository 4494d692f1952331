"""The model's log density on the joint unconstrained space of its latent sites.

Pathfinder and the score-matching Gaussian fits work with one flat vector ``u`` of all the
unconstrained latent values (the layout of Pyro's ``AutoContinuous`` guides) and need
``log p(x, T(u)) + log |det J_T(u)|`` with its gradient. Pyro's own potential function
(``pyro.infer.mcmc.util.initialize_model``) takes one point at a time and a dict of sites;
this one takes a batch of flat vectors, evaluates them as one batch over a particle plate when
the model broadcasts (the fit's batching probe), and counts the evaluations.

The density is computed through the guide's own machinery: the guide's latent draw is
replaced by a point mass at ``u``, so that Pyro's traces give ``log p - log q = log p(x, T(u))
+ log |det J_T(u)|`` with the same transforms, plates and subsampling scales as an ELBO step.
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.distributions as dist
import torch

from ppl_vi.infer_util import (
    particle_traces,
    single_traces,
    trace_log_density,
)

__all__ = ["LogDensity"]


class LogDensity:
    """``log p(x, T(u)) + log |det J_T(u)|`` for flat unconstrained vectors ``u``.

    Parameters
    ----------
    model : callable
        The Pyro model.
    guide : pyro.infer.autoguide.AutoContinuous
        A joint-space guide whose prototype has been built (it fixes the layout of ``u``).
    args, kwargs
        The model's data.
    info : ppl_vi.infer_util.ModelInfo
        The model's structure; ``info.batched`` says whether a batch is one model run.

    Attributes
    ----------
    num_evals, num_grads : int
        Log densities evaluated, and how many of them with a gradient.

    Shapes
    ------
    ``u`` is ``(B, D)`` with ``D = guide.latent_dim``; values are ``(B,)``.
    """

    def __init__(self, model, guide, args: tuple, kwargs: dict, info):
        self.model, self.guide, self.args, self.kwargs, self.info = model, guide, args, kwargs, info
        self.dim = int(guide.latent_dim)
        self.num_evals = 0
        self.num_grads = 0

    # ------------------------------------------------------------------ evaluation
    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Log densities ``(B,)`` of ``u`` ``(B, D)``, without gradients."""
        with torch.no_grad():
            return self._evaluate(u)

    def value_and_grad(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log densities ``(B,)`` and their gradients ``(B, D)`` at ``u`` ``(B, D)``.

        Non-finite values come back as ``-inf`` with a zero gradient (a point outside the
        model's support, or where its linear algebra fails), so that a line search backs off.
        """
        u = u.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self._evaluate(u)
            finite = torch.isfinite(value)
            if value.requires_grad:
                (grad,) = torch.autograd.grad(torch.where(finite, value, 0.0).sum(), u)
            else:  # every point failed: constant -inf values
                grad = torch.zeros_like(u)
        self.num_grads += u.shape[0]
        grad = torch.where(finite[:, None] & torch.isfinite(grad), grad, 0.0)
        value = torch.where(finite, value, -torch.inf)
        return value.detach(), grad.detach()

    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 2 or u.shape[-1] != self.dim:
            raise ValueError(f"expected points of shape (B, {self.dim}), got {tuple(u.shape)}")
        self.num_evals += u.shape[0]
        # the model as it is called (a subsampling plate at its mini-batch, as when the guide's
        # layout was built): the density a fit's ELBO step sees
        with pyro.poutine.block(hide_types=["param"]):
            try:
                if self.info.batched:
                    return self._batched(u)
                return torch.stack([self._single(row) for row in u])
            except (ValueError, RuntimeError, torch.linalg.LinAlgError) as e:
                if not _numerical(e):
                    raise
        # one point broke the model (e.g. a Cholesky of a non-positive-definite matrix): the
        # others are evaluated one at a time, the broken ones are -inf
        with pyro.poutine.block(hide_types=["param"]):
            return torch.stack([self._single_or_inf(row) for row in u])

    def _batched(self, u: torch.Tensor) -> torch.Tensor:
        mpn = self.info.max_plate_nesting
        num = u.shape[0]
        point = u.reshape((num,) + (1,) * mpn + (self.dim,))
        with _point_mass(self.guide, point):
            model_trace, guide_trace = particle_traces(
                self.model, self.guide, self.args, self.kwargs, num, mpn
            )
        return trace_log_density(model_trace, num, mpn) - trace_log_density(guide_trace, num, mpn)

    def _single(self, row: torch.Tensor) -> torch.Tensor:
        mpn = self.info.max_plate_nesting
        with _point_mass(self.guide, row):
            model_trace, guide_trace = single_traces(self.model, self.guide, self.args, self.kwargs)
        log_p = trace_log_density(model_trace, 1, mpn)
        return (log_p - trace_log_density(guide_trace, 1, mpn))[0]

    def _single_or_inf(self, row: torch.Tensor) -> torch.Tensor:
        try:
            return self._single(row)
        except (ValueError, RuntimeError, torch.linalg.LinAlgError) as e:
            if not _numerical(e):
                raise
            return torch.full((), -torch.inf, dtype=row.dtype, device=row.device)

    # ------------------------------------------------------------------ sites
    def unpack(self, u: torch.Tensor) -> dict:
        """Constrained site values ``{name: (B, *shape)}`` of flat vectors ``u`` ``(B, D)``."""
        out = {}
        for site, value in self.guide._unpack_latent(u):
            transform = torch.distributions.biject_to(site["fn"].support)
            out[site["name"]] = transform(value).reshape(u.shape[:1] + site["value"].shape)
        return out


def _numerical(e: BaseException) -> bool:
    """Errors that mean "this point is outside the model's support", not a bug in the model."""
    if isinstance(e, torch.linalg.LinAlgError):
        return True
    text = str(e)
    return any(
        s in text
        for s in (
            "invalid values",
            "Expected value argument",
            "positive-definite",
            "singular",
            "cholesky",
        )
    )


@contextlib.contextmanager
def _point_mass(guide, point: torch.Tensor):
    """The guide's latent draw replaced by a point mass at ``point`` (``(..., D)``)."""
    name = f"_{guide._pyro_name}_latent"

    def sample_latent(*args, **kwargs):
        return pyro.sample(name, dist.Delta(point, event_dim=1), infer={"is_auxiliary": True})

    guide.__dict__["sample_latent"] = sample_latent
    try:
        yield
    finally:
        guide.__dict__.pop("sample_latent", None)
