"""Black-box variational inference: the score-function ELBO gradient with Rao-Blackwellization
and leave-one-out control variates (Ranganath, Gerrish & Blei 2014)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.inspect import get_dependencies
from pyro.infer.util import is_validation_enabled
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import (
    check_if_enumerated,
    check_model_guide_match,
    check_site_shape,
)

from ppl_vi.infer_util import user_stacklevel

from ._base import ParticleELBO

__all__ = ["RBScoreFunctionELBO"]

_MAX_CACHED_PLANS = 32


def _is_delta(fn) -> bool:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def _is_random(site) -> bool:
    """A guide sample site that draws a fresh random value (not a point mass, not observed)."""
    return not site["is_observed"] and not _is_delta(site["fn"])


def _sample_sites(trace):
    return [site for site in trace.nodes.values() if site["type"] == "sample"]


def _plate_frames(site) -> tuple:
    return tuple((f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized)


class _DetachGuideSamples(Messenger):
    """Cut the path gradient of every guide sample, so that only score terms carry gradients.

    It must sit *outside* ``poutine.trace``: the outermost messenger post-processes first, so the
    trace records the detached value the guide continues with.
    """

    def _pyro_post_sample(self, msg):
        value = msg["value"]
        if msg["is_observed"] or site_is_subsample(msg) or not value.requires_grad:
            return
        if _is_delta(msg["fn"]):
            raise ValueError(
                f"guide site '{msg['name']}' is a Delta (point mass) whose value depends on "
                "parameters; the score-function estimator gives such a site no gradient. Sample "
                "it from a distribution with a density (a Delta of other sampled values is fine, "
                "as in MeanField/AutoNormal), or use a pathwise ELBO such as pyro.infer.Trace_ELBO "
                "for point estimates."
            )
        msg["value"] = value.detach()


class _TrackGuideProvenance(Messenger):
    """Label each random guide value with the random guide sites that determine it.

    A random site ``s`` gets ``{s}`` plus every site its distribution depends on (read off the
    provenance of its log density), so labels are transitively closed along the guide: a value
    drawn from ``q(z_2 | z_1)`` is determined by ``z_1`` as well. Deterministic (Delta) values
    keep the provenance of the tensors they were computed from.
    """

    def _pyro_post_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg) or _is_delta(msg["fn"]):
            return
        value = detach_provenance(msg["value"])
        parents = get_provenance(msg["fn"].log_prob(value))
        labels = frozenset({msg["name"]}) | parents | get_provenance(msg["value"])
        msg["value"] = ProvenanceTensor(value, labels)


def _guide_provenance(guide, args, kwargs) -> tuple[dict, dict]:
    """Random guide sites determining each guide site's value, and its log density."""
    with torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False):
        with poutine.block(), _TrackGuideProvenance():
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
    value_prov, log_q_prov = {}, {}
    for site in _sample_sites(prune_subsample_sites(trace)):
        value_prov[site["name"]] = get_provenance(site["value"])
        log_q_prov[site["name"]] = get_provenance(site["fn"].log_prob(site["value"]))
    return value_prov, log_q_prov


@dataclass(frozen=True)
class _Plan:
    """What the per-step computation needs from the model's and the guide's structure.

    ``signals[i]`` lists the cost terms of ``score_sites[i]``'s learning signal as
    ``(trace, site, sum_dims)``: the log density of ``site`` in the model (added) or the guide
    (subtracted), summed over the plates it does not share with the score site. ``signals`` is
    None for the full signal :math:`\\log p - \\log q` at every site.
    """

    score_sites: tuple
    signals: tuple | None


class RBScoreFunctionELBO(ParticleELBO):
    r"""Score-function (black-box) ELBO gradient with Rao-Blackwellization and control variates.

    Every guide sample site is sampled without a path gradient, so the guide may be discrete or
    non-reparameterizable. With :math:`K` particles :math:`z^{(k)} \sim q_\lambda`, the gradient
    of the ELBO :math:`\mathcal{L} = \mathbb{E}_q[\log p_\theta(x, z) - \log q_\lambda(z)]` is
    estimated per guide parameter component :math:`\lambda_j` and for the model parameters
    :math:`\theta` as

    .. math::

        \widehat{\nabla_{\lambda_j} \mathcal{L}} &= \frac{1}{K} \sum_{k=1}^{K}
            \big(f_j^{(k)} - \hat a_j^{(-k)} h_j^{(k)}\big), \qquad
        h_j^{(k)} = \partial_{\lambda_j} \log q_\lambda(z^{(k)}), \\
        f_j^{(k)} &= \sum_{s} \partial_{\lambda_j} \log q_\lambda(z_s^{(k)})\,
            \Big(\sum_{c \in \mathrm{mb}(s)} \log p_c(z^{(k)})
            - \sum_{g \in \mathrm{ds}(s)} \log q_g(z^{(k)})\Big), \\
        \hat a_j^{(-k)} &= \widehat{\mathrm{Cov}}_{-k}(f_j, h_j) /
            \widehat{\mathrm{Var}}_{-k}(h_j), \qquad
        \widehat{\nabla_\theta \mathcal{L}} = \frac{1}{K} \sum_{k=1}^K
            \nabla_\theta \log p_\theta(x, z^{(k)}),

    where :math:`s` runs over the random guide sites (elementwise within plates), the Markov
    blanket :math:`\mathrm{mb}(s)` holds the model sites whose density depends on a latent
    determined by :math:`z_s` (the latent itself and its children; Ranganath et al. eq. 5),
    :math:`\mathrm{ds}(s)` the guide sites whose density depends on :math:`z_s` (:math:`s` itself
    and the sites downstream of it in the guide), and the control-variate coefficient
    :math:`\hat a_j^{(-k)}` (eq. 8-9) is estimated from the other :math:`K - 1`
    particles, so the estimate stays unbiased. Here :math:`K` is ``num_particles``;
    ``rao_blackwellize=False`` replaces every site's signal by the full
    :math:`\log p(x, z^{(k)}) - \log q(z^{(k)})` (REINFORCE) and ``control_variates=False`` sets
    :math:`\hat a = 0`.

    The dependency structure is found once per model, guide and set of sample sites (the last 32
    structures are kept; a 33rd empties the cache): the model's with
    :func:`pyro.infer.inspect.get_dependencies`, the guide's (which random site determines which
    value, e.g. MeanField's ``"mu_unconstrained"`` -> ``"mu"``) by provenance tracking.
    Within a plate, a site's signal keeps only the terms of its own plate slice (as
    :class:`pyro.infer.TraceGraph_ELBO` does); this trusts the plates' independence statements.
    Dependencies hidden from provenance tracking (Python control flow on sampled values,
    ``.item()``) are invisible, as in ``TraceGraph_ELBO``; use ``rao_blackwellize=False`` for such
    programs. When the structure cannot be determined, the full signal is used with a warning.

    Parameters
    ----------
    num_particles : int, default 8
        Number of particles :math:`K` per estimate; at least 3 with ``control_variates=True``.
    max_plate_nesting : int, optional
        Bound on nested plates; guessed by tracing once when not given.
    vectorize_particles : bool, default True
        Draw all particles in one batched pass over a plate rather than a Python loop.
    rao_blackwellize : bool, default True
        Restrict each site's learning signal to the terms that depend on it.
    control_variates : bool, default True
        Subtract the score times the leave-one-out optimal coefficient.

    Shapes
    ------
    Per step the estimator forms, for the :math:`n` guide parameter components,
    :math:`f, h` of shape ``(K, n)`` from one batched backward pass over the ``2K`` per-particle
    surrogates; each learning signal has the batch shape of its guide site (particle dim first).

    Notes
    -----
    Two departures from the paper. Its coefficient (eq. 9) pools the components of each
    variational parameter and reuses the particles it is applied to; here it is per component and
    leave-one-out, which keeps the estimator exactly unbiased for any :math:`K \ge 3`. The term
    :math:`-\mathbb{E}_q[\nabla_\lambda \log q_\lambda(z)] = 0` is dropped, as in the paper and in
    ``TraceGraph_ELBO``. Delta (point-mass) guide sites are not sampled: they must be functions of
    the random guide sites (as MeanField's constrained values are); a Delta whose value depends on
    a parameter gets no gradient from a score function and is rejected with a ``ValueError``.

    ``differentiable_loss`` returns a surrogate whose value is the -ELBO estimate and whose
    gradient is the estimator above (the "value plus zero-valued gradient carrier" form of the
    magic box). With control variates the carrier is linear in the parameters with detached
    coefficients, since :math:`\hat a^{(-k)} h^{(k)}` is a per-component product and no scalar
    function has it as its gradient; second derivatives of the surrogate are therefore not those
    of the ELBO.

    References
    ----------
    Ranganath, R., Gerrish, S. & Blei, D. M. (2014). Black box variational inference. AISTATS.

    Williams, R. J. (1992). Simple statistical gradient-following algorithms for connectionist
    reinforcement learning. Machine Learning 8, 229-256.

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.elbos.score_function import RBScoreFunctionELBO
    >>> from ppl_vi.models import beta_bernoulli
    >>> result = ppl_vi.fit(beta_bernoulli.model, **beta_bernoulli.load_data(),
    ...                     elbo=RBScoreFunctionELBO(num_particles=8), num_steps=200,
    ...                     lr=0.05, progress=False)
    >>> sorted(result.sample(10))
    ['p']
    """

    def __init__(
        self,
        num_particles: int = 8,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        rao_blackwellize: bool = True,
        control_variates: bool = True,
    ):
        for name, value in (
            ("vectorize_particles", vectorize_particles),
            ("rao_blackwellize", rao_blackwellize),
            ("control_variates", control_variates),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False (got {name}={value!r})")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        if control_variates and num_particles < 3:
            raise ValueError(
                "control_variates=True needs num_particles >= 3: each particle's coefficient "
                f"is estimated from the other K - 1 particles (got num_particles={num_particles})."
                " Pass num_particles >= 3, or control_variates=False."
            )
        self.rao_blackwellize = rao_blackwellize
        self.control_variates = control_variates
        self._plans: dict = {}

    # ----------------------------------------------------------------------------- tracing

    def _get_trace(self, model, guide, args, kwargs):
        with _DetachGuideSamples():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()  # also keeps "unscaled_log_prob" for the score terms
        if is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in _sample_sites(trace):
                    check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace

    # --------------------------------------------------------------------------- structure

    def _plan(self, model, guide, args, kwargs, model_trace, guide_trace) -> _Plan:
        key = (
            id(model),
            id(guide),
            tuple((s["name"], _plate_frames(s)) for s in _sample_sites(model_trace)),
            tuple((s["name"], _plate_frames(s)) for s in _sample_sites(guide_trace)),
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_CACHED_PLANS:
                self._plans.clear()
            plan = self._plans[key] = self._build_plan(
                model, guide, args, kwargs, model_trace, guide_trace
            )
        return plan

    def _build_plan(self, model, guide, args, kwargs, model_trace, guide_trace) -> _Plan:
        score_sites = tuple(s["name"] for s in _sample_sites(guide_trace) if _is_random(s))
        if not self.rao_blackwellize:
            return _Plan(score_sites, None)
        try:
            owners = self._cost_owners(model, guide, args, kwargs, model_trace, guide_trace)
        except Exception as e:  # noqa: BLE001 - any failure means: structure unknown
            warnings.warn(
                "RBScoreFunctionELBO could not determine the dependency structure of the model "
                f"and guide ({type(e).__name__}: {e}); using the full learning signal "
                "log p - log q at every site (unbiased, higher variance). Pass "
                "rao_blackwellize=False to silence this warning.",
                stacklevel=user_stacklevel(),
            )
            return _Plan(score_sites, None)
        signals = []
        for s in score_sites:
            own = set(_plate_frames(guide_trace.nodes[s]))
            terms = []
            for (trace_name, name), sites in owners.items():
                if s in sites:
                    trace = model_trace if trace_name == "model" else guide_trace
                    frames = _plate_frames(trace.nodes[name])
                    dims = tuple(dim for frame_name, dim in frames if (frame_name, dim) not in own)
                    terms.append((trace_name, name, dims))
            signals.append(tuple(terms))
        return _Plan(score_sites, tuple(signals))

    def _cost_owners(self, model, guide, args, kwargs, model_trace, guide_trace) -> dict:
        """Map each cost term ``(trace, site)`` to the random guide sites it depends on."""
        with poutine.block():
            deps = get_dependencies(model, args, kwargs)["prior_dependencies"]
        value_prov, log_q_prov = _guide_provenance(guide, args, kwargs)
        latents = {s["name"] for s in _sample_sites(model_trace) if not s["is_observed"]}
        owners = {}
        for site in _sample_sites(model_trace):
            name = site["name"]
            if name not in deps:
                if site["is_observed"] and (
                    site["infer"].get("_deterministic") or site["mask"] is False
                ):
                    continue  # pyro.deterministic or fully masked: log density 0
                raise RuntimeError(f"model site '{name}' is missing from get_dependencies")
            sites = set()
            for u in deps[name]:
                if u == name and site["is_observed"]:
                    continue
                if u not in latents or u not in value_prov:
                    raise RuntimeError(f"latent '{u}' of model site '{name}' is not in the guide")
                sites |= value_prov[u]
            owners[("model", name)] = frozenset(sites)
        for site in _sample_sites(guide_trace):
            if site["name"] not in log_q_prov:
                raise RuntimeError(f"guide site '{site['name']}' changed between runs")
            owners[("guide", site["name"])] = log_q_prov[site["name"]]
        return owners

    # ---------------------------------------------------------------------------- estimate

    def _per_particle(self, value) -> torch.Tensor:
        """Sum a log density over everything but the particle dim: ``(K,)`` (``(1,)`` unbatched)."""
        value = torch.as_tensor(value)
        if not self.is_vectorized:
            return value.sum().reshape(1)
        value = self._particles_first(value)  # (particles, *plates)
        return value.reshape(value.shape[0], -1).sum(-1).expand(self.num_particles)

    def _particle_terms(self, model_trace, guide_trace, plan: _Plan):
        """Per-particle ``(elbo, log_p, score, log_q)``: ELBO (no grad), model log density
        (pathwise), score surrogate :math:`\\sum_s \\log q_s \\cdot \\mathrm{signal}_s` and
        :math:`\\log q` (both carrying the guide-parameter gradients)."""
        pp = self._per_particle
        log_p = sum(pp(s["log_prob"]) for s in _sample_sites(model_trace))
        # detach() rather than no_grad(): a recorded graph (ppl_vi.jit) keeps detach, not no_grad
        log_q_all = sum(pp(s["log_prob"].detach()) for s in _sample_sites(guide_trace))
        elbo = log_p.detach() - log_q_all
        score_lq = [guide_trace.nodes[s]["unscaled_log_prob"] for s in plan.score_sites]
        if not score_lq:
            zero = elbo.new_zeros(elbo.shape)
            return elbo, log_p, zero, zero
        log_q = sum(pp(lq) for lq in score_lq)
        if plan.signals is None:  # REINFORCE: every site gets log p - log q
            return elbo, log_p, log_q * elbo, log_q
        traces = {"model": model_trace, "guide": guide_trace}
        reduced = {}
        signals = []
        for terms in plan.signals:
            signal = 0.0
            for key in terms:  # (trace, site, dims to sum over)
                term = reduced.get(key)
                if term is None:
                    trace_name, name, dims = key
                    term = traces[trace_name].nodes[name]["log_prob"].detach()
                    if dims:
                        term = term.sum(dims, keepdim=True)
                    reduced[key] = term
                signal = signal + term if key[0] == "model" else signal - term
            signals.append(signal)
        score = sum(pp(lq * signal) for lq, signal in zip(score_lq, signals, strict=True))
        return elbo, log_p, score, log_q

    def _estimate(self, model, guide, args, kwargs):
        parts, leaves = [], {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            plan = self._plan(model, guide, args, kwargs, model_trace, guide_trace)
            parts.append(self._particle_terms(model_trace, guide_trace, plan))
            for site in guide_trace.nodes.values():
                if site["type"] == "param":
                    value = site["value"]
                    leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
                    if leaf.requires_grad:
                        leaves[id(leaf)] = leaf
        elbo, log_p, score, log_q = (torch.cat(list(x)) for x in zip(*parts, strict=True))
        return elbo, log_p, score, log_q, list(leaves.values())

    def _control_variate_grads(self, score, log_q, leaves) -> list:
        """Leave-one-out control-variate estimate of the ELBO gradient for each guide leaf."""
        k = len(score)
        outputs = torch.cat([score, log_q])  # (2K,)
        eye = torch.eye(2 * k, dtype=outputs.dtype, device=outputs.device)
        try:
            grads = torch.autograd.grad(
                outputs, leaves, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except RuntimeError:  # an op without a batching rule: one backward pass per row
            rows = [
                torch.autograd.grad(outputs, leaves, row, retain_graph=True, materialize_grads=True)
                for row in eye
            ]
            grads = [torch.stack([r[i] for r in rows]) for i in range(len(leaves))]
        flat = torch.cat(
            [
                outputs.new_zeros(2 * k, leaf.numel()) if g is None else g.reshape(2 * k, -1)
                for g, leaf in zip(grads, leaves, strict=True)
            ],
            dim=1,
        )  # (2K, n)
        estimate = _loo_control_variate_mean(flat[:k], flat[k:])  # (n,)
        return [
            part.reshape(leaf.shape)
            for part, leaf in zip(estimate.split([x.numel() for x in leaves]), leaves, strict=True)
        ]

    # ----------------------------------------------------------------------------- public

    def jit_unsupported(self) -> str | None:
        """Why ``ppl_vi.jit.JitELBO`` cannot record this estimator (None when it can)."""
        if self.control_variates:
            return (
                "its control variates take per-particle gradients inside the step "
                "(torch.autograd.grad), which a recorded graph cannot hold; control_variates=False "
                "compiles"
            )
        return None

    def _surrogate(self, model, guide, args, kwargs):
        """ELBO per particle, a surrogate carrying the autograd part of the estimator, and the
        control-variate gradients of the guide parameters as ``(leaf, gradient)`` pairs."""
        elbo, log_p, score, log_q, leaves = self._estimate(model, guide, args, kwargs)
        if self.control_variates and leaves and score.requires_grad:
            grads = self._control_variate_grads(score, log_q, leaves)
            return elbo, log_p.mean(), list(zip(leaves, grads, strict=True))
        return elbo, log_p.mean() + score.mean(), []

    def loss_and_surrogate(self, model, guide, *args, **kwargs):
        """-ELBO estimate and a surrogate whose gradient is the estimator (control-variate
        gradients enter through linear carriers ``(grad * leaf).sum()``)."""
        elbo, surrogate, direct = self._surrogate(model, guide, args, kwargs)
        for leaf, grad in direct:  # linear carrier: its gradient is exactly ``grad``
            surrogate = surrogate + (grad.detach() * leaf).sum()
        return -elbo.mean().detach(), -surrogate


def _loo_control_variate_mean(f: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """:math:`\\frac1K \\sum_k (f_k - a_{-k} h_k)` with :math:`a_{-k}` = Cov/Var of the others.

    ``f`` and ``h`` are ``(K, n)``. Covariances are shift invariant, so both are centred by the
    mean over all ``K`` particles first (a constant for every leave-one-out set), which avoids
    cancellation in the one-pass sums.
    """
    k = f.shape[0]
    fc, hc = f - f.mean(0), h - h.mean(0)
    fh, hh = fc * hc, hc * hc
    # sums over the K - 1 other particles, for each left-out particle
    sf, sh = fc.sum(0) - fc, hc.sum(0) - hc
    sfh, shh = fh.sum(0) - fh, hh.sum(0) - hh
    cov = sfh - sf * sh / (k - 1)  # (K - 2) * Cov_{-k}(f, h)
    var = shh - sh * sh / (k - 1)  # (K - 2) * Var_{-k}(h)
    a = torch.where(var > 0, cov / var.clamp_min(torch.finfo(var.dtype).tiny), 0.0)
    return (f - a * h).mean(0)
