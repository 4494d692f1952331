r"""KL annealing (a "warm-up" of the KL coefficient) for ELBOs that are sums of site terms.

With observed sites :math:`x` and latent sites :math:`z` (those of the model and all of the
guide's), the annealed objective at coefficient :math:`\beta_t` is

.. math::

    \mathcal{L}_{\beta}(\phi) = \mathbb{E}_{q_\phi(z)}\Big[\log p(x \mid z)
        + \beta\,\big(\log p(z) - \log q_\phi(z)\big)\Big],

which is the ELBO at :math:`\beta = 1`. Warming :math:`\beta` up from near 0 lets the decoder
learn to use the latents before the KL term pulls the posterior onto the prior, the remedy for
inactive ("dead") latent units of Bowman et al. (2016) and Sønderby et al. (2016).

The coefficient enters as a factor on each latent site's ``scale`` (Pyro's ``poutine.scale``
mechanism, applied site by site), so every ELBO that weighs sites by their scale anneals
exactly the latent terms: :class:`~pyro.infer.Trace_ELBO`,
:class:`~pyro.infer.TraceMeanField_ELBO` (its analytic KL is scaled too),
:class:`~pyro.infer.TraceGraph_ELBO` and :class:`~ppl_vi.elbos.RBScoreFunctionELBO`. Bounds that
are not sums of site terms (IWAE, Rényi, the Stein operator objective) have no KL coefficient
and are refused. ``pyro.factor`` terms count as observed (they keep weight 1).

Use it through ``ppl_vi.fit(..., kl_anneal=1000)`` (linear warm-up over 1000 steps) or
``kl_anneal=callable`` (``step -> beta``), or in plain Pyro with :func:`annealed`:

>>> import pyro, torch
>>> from pyro.infer import SVI, Trace_ELBO
>>> from pyro.infer.autoguide import AutoNormal
>>> from ppl_vi.anneal import annealed
>>> def model(x):
...     z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
...     pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=x)
>>> guide = AutoNormal(model)
>>> beta = [0.5]
>>> svi = SVI(annealed(model, lambda: beta[0]), annealed(guide, lambda: beta[0]),
...           pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
>>> loss = svi.step(torch.tensor(0.3))
>>> pyro.clear_param_store()

References
----------
Bowman, S. R., Vilnis, L., Vinyals, O., Dai, A. M., Jozefowicz, R. & Bengio, S. (2016).
Generating sentences from a continuous space. CoNLL.

Sønderby, C. K., Raiko, T., Maaløe, L., Sønderby, S. K. & Winther, O. (2016). Ladder
variational autoencoders. NeurIPS.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppl_vi.fingerprint import code_digest
from ppl_vi.policies import Policy
from ppl_vi.runtime import rng_state, set_rng_state

__all__ = ["KLAnnealing", "LatentScale", "annealed", "check_elbo", "linear_warmup"]


def linear_warmup(num_steps: int) -> Callable[[int], float]:
    r"""The schedule :math:`\beta_t = \min(1, (t + 1) / n)` for steps :math:`t = 0, 1, \dots`:
    it rises linearly from :math:`1/n` and reaches 1 at step :math:`n - 1` (``num_steps`` =
    :math:`n`), as in Sønderby et al. (2016)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(
            f"kl_anneal: a linear warm-up needs an integer number of steps >= 1 (got {num_steps!r})"
        )
    n = int(num_steps)

    def schedule(step: int) -> float:
        return min(1.0, (step + 1) / n)

    schedule.num_steps = n
    return schedule


class LatentScale(Messenger):
    """Multiply the log density of every latent sample site by ``beta()``.

    Observed sites (``obs=``, ``pyro.factor``) and plate subsample sites are left alone. A
    coefficient of exactly 0 masks the sites out (a zero scale is what it means; Pyro's
    ``poutine.scale`` refuses 0). With ``record``, the unannealed latent log densities
    ``sign * log p`` of the sites (scaled by their plates, masked by their masks) are added,
    detached, to ``record[0]``: the part of the objective that the coefficient multiplies.
    """

    def __init__(self, beta: Callable[[], float], sign: float = 1.0, record: list | None = None):
        super().__init__()
        self.beta, self.sign, self.record = beta, sign, record
        self._pending: dict = {}

    @staticmethod
    def _latent(msg) -> bool:
        return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)

    def _process_message(self, msg):
        if not self._latent(msg):
            return
        beta = float(self.beta())
        # (keyed by the message itself: poutine.replay swaps a model site's infer dict for the
        # guide's, so nothing of ours can live there)
        self._pending[id(msg)] = (beta, msg["mask"])
        if beta == 0.0:
            msg["mask"] = False
        else:
            msg["scale"] = beta * msg["scale"]

    def _postprocess_message(self, msg):
        pending = self._pending.pop(id(msg), None)
        if self.record is None or pending is None:
            return
        beta, mask = pending
        scale = msg["scale"] if beta == 0.0 else msg["scale"] / beta
        with torch.no_grad():
            log_prob = msg["fn"].log_prob(msg["value"])
            if mask is not None and mask is not True:
                log_prob = torch.where(torch.as_tensor(mask), log_prob, 0.0)
            # (a tensor sum: one host copy per step, where the caller reads it, not one per site)
            self.record[0] = self.record[0] + self.sign * (scale * log_prob).sum()


def annealed(fn: Callable, beta: Callable[[], float], sign: float = 1.0, record=None):
    """``fn`` (a model or a guide) with its latent sites' log densities scaled by ``beta()``.

    Wrap both the model and the guide with the same ``beta`` to anneal an ELBO in plain Pyro
    (see the module's example). ``record`` and ``sign`` are as in :class:`LatentScale`.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with LatentScale(beta, sign, record):
            return fn(*args, **kwargs)

    return wrapped


def check_elbo(elbo: ELBO) -> None:
    """Raise ``ValueError`` unless ``elbo`` weighs sites by their scale as a sum of site terms
    (the ELBOs where a KL coefficient is defined)."""
    from ppl_vi.elbos import RBScoreFunctionELBO

    inner = elbo
    while isinstance(getattr(inner, "elbo", None), ELBO):  # JitELBO, LocalReparam: the bound
        inner = inner.elbo
    if isinstance(inner, TraceEnum_ELBO) or not isinstance(
        inner, (Trace_ELBO, TraceGraph_ELBO, RBScoreFunctionELBO)
    ):
        raise ValueError(
            f"kl_anneal scales the latent terms of an ELBO that is a sum of site terms "
            f"(Trace_ELBO, TraceMeanField_ELBO, TraceGraph_ELBO, 'rb_score'); "
            f"{type(inner).__name__} has no KL coefficient (a bound such as IWAE or Rényi is a "
            "log-mean-exp of weights, and enumerated discrete sites are summed out): use "
            "elbo='elbo' for the warm-up, or drop kl_anneal"
        )


class KLAnnealing(Policy):
    """The ``kl_anneal`` option of :func:`ppl_vi.fit`: a schedule ``step -> beta``.

    The coefficients of all steps are computed and checked (finite, >= 0) before training. A
    step whose coefficient is 1 runs the ELBO unchanged (and may be compiled); the others run
    eagerly with the latent terms scaled. The stopping rule does not fire before the last step
    whose coefficient differs from 1 (``warmup_end``), since the annealed loss changes with
    ``beta`` and not only with the fit.

    Parameters
    ----------
    schedule : int or callable
        An integer :math:`n`: :func:`linear_warmup` over :math:`n` steps; or any callable
        ``schedule(step) -> beta``.
    """

    def __init__(self, schedule):
        if isinstance(schedule, numbers.Integral) and not isinstance(schedule, bool):
            schedule = linear_warmup(schedule)
        elif not callable(schedule):
            raise TypeError(
                "kl_anneal must be an integer (linear warm-up over that many steps) or a "
                f"callable step -> beta (got {schedule!r})"
            )
        self.schedule = schedule
        self.betas: list[float] = []
        # (the coefficient and the record are set at the start of each annealed step)
        self._beta, self._record, self._pair = None, [None], None

    def coefficient(self, step: int) -> float:
        """``schedule(step)``, checked: a finite number >= 0."""
        value = self.schedule(step)
        try:
            beta = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"kl_anneal({step}) returned {value!r}, not a number") from None
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(
                f"kl_anneal({step}) returned {beta}: KL coefficients must be finite and >= 0"
            )
        return beta

    def check(self, num_steps: int) -> None:
        """Compute and check the coefficients of steps ``0 .. num_steps - 1``."""
        self.betas = [self.coefficient(step) for step in range(num_steps)]

    def beta(self, step: int) -> float:
        return self.betas[step] if step < len(self.betas) else self.coefficient(step)

    def warmup_end(self) -> int:
        """The first step from which every checked coefficient is 1."""
        for step in range(len(self.betas) - 1, -1, -1):
            if self.betas[step] != 1.0:
                return step + 1
        return 0

    def setup(self, engine) -> None:
        for elbo in engine.elbos.values():
            check_elbo(elbo)
        if engine.parallel is not None:
            raise ValueError(
                "kl_anneal is not available with distributed=True (each rank would need the "
                "full objective's latent part too); anneal in a single-process fit"
            )

    def start(self, engine, state) -> None:
        if len(self.betas) < state.num_steps:
            self.check(state.num_steps)

    def settings(self) -> dict:
        if hasattr(self.schedule, "num_steps"):
            return {"kl_anneal": {"linear_warmup": self.schedule.num_steps}}
        return {"kl_anneal": code_digest(self.schedule)}

    def _wrapped(self, model, guide) -> tuple:
        """The annealed model and guide, built once per pair (an ELBO may cache per function,
        e.g. ``rb_score``'s dependency plan), reading ``self._beta`` and adding the latent part
        to ``self._record``."""
        if self._pair is None or self._pair[:2] != (model, guide):
            beta = lambda: self._beta  # noqa: E731
            self._pair = (
                model,
                guide,
                annealed(model, beta, 1.0, self._record),
                annealed(guide, beta, -1.0, self._record),
            )
        return self._pair[2:]

    def loss_and_grads(
        self, elbo, model, guide, step: int, args, kwargs, device=None
    ) -> tuple[float, float]:
        """``(annealed loss, full loss)`` of one step; gradients of the annealed loss are set.

        The full loss is the negative ELBO (``beta = 1``) on the same draws. For Pyro's
        ``Trace_ELBO`` and ``TraceGraph_ELBO``, which run the model and the guide once per
        particle, it comes from the same evaluation: ``loss = -(obs + beta * latent)`` and
        ``full = -(obs + latent)``, with the latent part added up while the sites are drawn.
        Other ELBOs (which may run the model again, e.g. to find dependencies, or compute a KL
        analytically) evaluate the unannealed loss once more, without gradients, on the same
        random numbers.
        """
        from ppl_vi.jit import JitELBO

        beta = self.beta(step)
        if beta == 1.0:
            loss = float(elbo.loss_and_grads(model, guide, *args, **kwargs))
            return loss, loss
        if isinstance(elbo, JitELBO):  # a recorded loss would hold this step's beta fixed
            elbo = elbo.elbo
        self._beta, self._record[0] = beta, 0.0
        wrapped_model, wrapped_guide = self._wrapped(model, guide)
        before = rng_state(device)
        loss = float(elbo.loss_and_grads(wrapped_model, wrapped_guide, *args, **kwargs))
        if type(elbo) in (Trace_ELBO, TraceGraph_ELBO):
            return loss, loss + (beta - 1.0) * float(self._record[0]) / elbo.num_particles
        after = rng_state(device)
        set_rng_state(before)
        try:
            with torch.no_grad():
                full = float(elbo.loss(model, guide, *args, **kwargs))
        finally:
            set_rng_state(after)
        return loss, full
