"""Can this model evaluate a batch of particles at once? Ask the model, not its plates.

Vectorized particles put every latent site under an extra plate left of the model's own
plates, so each latent value carries an extra leading dim. Models written for one draw at a
time often do not broadcast over it, and not always loudly:

* ``X @ w`` with ``w`` of shape ``(K, 1, D)`` fails, or (for ``D = 1``) silently mixes
  particles;
* ``alpha[group]`` indexes the particle dim instead of the group dim;
* ``if mu > 0:`` raises "Boolean value of Tensor with more than one value is ambiguous".

:func:`probe_batching` runs the model and the guide once with a batch of particles, then the model
once per particle with the same values (replayed), and compares the per-particle log densities
of the model.
Anything that raises or disagrees means: evaluate particles one at a time. The random draws
happen on a copy of the generators, so probing never changes a fit's random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import prune_subsample_sites

from ppl_vi.infer_util import (
    PARTICLE_PLATE,
    ModelInfo,
    caller_line,
    sum_to_particles,
    user_line,
)
from ppl_vi.runtime import rng_state, using_rng

__all__ = ["BatchingReport", "probe_batching", "unbatched_advice"]

#: Particles in the probe: two are enough to see mixing between particles.
PROBE_PARTICLES = 2
#: Relative tolerance of the batched vs one-at-a-time log densities (float32 sums).
RTOL = 1e-4


@dataclass
class BatchingReport:
    """What the probe found: ``batched`` and, when not, why and where."""

    batched: bool
    reason: str | None = None
    where: str | None = None

    def message(self, what: str) -> str:
        """A warning naming the model line and the fix; ``what`` is what runs one at a time."""
        where = f" at {self.where}" if self.where else ""
        return (
            f"the model does not broadcast over a batch of particles ({self.reason}{where}), so "
            f"{what} run one at a time (slower, same estimates). To batch them, write the model "
            f"so that latent values may carry extra dims on the left: {unbatched_advice(self)}"
        )


_HINT_IF = "replace Python `if`/`while` on tensors with torch.where(cond, a, b)"
_HINT_MATMUL = (
    "write matrix-vector products as w @ X.mT (one matrix product; (X * w).sum(-1) also "
    "broadcasts but builds an N x D temporary), which broadcasts over batches"
)
_HINT_REDUCE = "reduce over the dims of one draw only: w.sum(-1), not w.sum()"
_HINT_INDEX = (
    "declare per-group parameters in a plate (with pyro.plate('groups', G): alpha = "
    "pyro.sample(...)) and index the last dim, alpha[..., group]"
)


def unbatched_advice(report: BatchingReport) -> str:
    """The idioms that make the failing construction broadcast (all three when unsure)."""
    text = f"{report.reason or ''} {report.where or ''}"
    hints = []
    if "ambiguous" in text or "Boolean value" in text:
        hints.append(_HINT_IF)
    if any(s in text for s in ("mat1", "batch2", "matmul", " @ ", "einsum")):
        hints.append(_HINT_MATMUL)
    if "index" in text or ("[" in text and "]" in text):
        hints.append(_HINT_INDEX)
    if "different log density" in text and (".sum()" in text or ".mean()" in text or not hints):
        hints.insert(0, _HINT_REDUCE)
    return "; ".join(hints or [_HINT_INDEX, _HINT_MATMUL, _HINT_IF]) + "."


class _SiteLines(Messenger):
    """Records the user-code line of every ``pyro.sample`` call."""

    def __init__(self):
        super().__init__()
        self.lines = {}

    def _pyro_sample(self, msg):
        if msg["name"] not in self.lines:
            self.lines[msg["name"]] = caller_line()


def _particle_dim(site, mpn: int, k: int) -> int | None:
    """Index of the particle dim in a batched site value, or None if it does not vary."""
    value = site["value"]
    if not torch.is_tensor(value):
        return None
    event_dim = getattr(site["fn"], "event_dim", 0)
    batch = value.dim() - event_dim
    pos = batch - (mpn + 1)
    if pos < 0 or value.shape[pos] != k:
        return None
    return pos


def _own_rank(site, mpn: int) -> int:
    dims = [
        -f.dim
        for f in site["cond_indep_stack"]
        if f.vectorized and f.dim is not None and f.name != PARTICLE_PLATE
    ]
    return max(dims, default=0)


def _select(site, k: int, mpn: int, num: int) -> torch.Tensor:
    """The value of particle ``k``, with the particle dim and the padding left of it removed."""
    value = site["value"]
    pos = _particle_dim(site, mpn, num)
    if pos is not None:
        value = value.select(pos, k)
    event_dim = getattr(site["fn"], "event_dim", 0)
    rank = _own_rank(site, mpn) + event_dim
    while value.dim() > rank and value.shape[0] == 1:
        value = value.squeeze(0)
    return value


def _replay_trace(trace, k: int, mpn: int, num: int):
    fixed = poutine.Trace()
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        value = site["value"] if isinstance(site["fn"], _Subsample) else _select(site, k, mpn, num)
        fixed.add_node(name, **{**site, "value": value})
    return fixed


def _site_sums(trace, num: int, mpn: int) -> dict:
    return {
        name: sum_to_particles(site["log_prob"], num, mpn)
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }


def _first_difference(batched: dict, single: list[dict], sites) -> str | None:
    for name in sites:
        for k, sums in enumerate(single):
            if name not in sums or name not in batched:
                return name
            a, b = float(batched[name][k]), float(sums[name])
            if not abs(a - b) <= RTOL * max(1.0, abs(a), abs(b)):
                return name
    return None


def probe_batching(model, guide, args, kwargs, info: ModelInfo, device=None) -> BatchingReport:
    """Evaluate ``model`` and ``guide`` with a batch of particles and one particle at a time.

    Runs without gradients, with Pyro's validation on, on a copy of the random generators.
    """
    mpn = info.max_plate_nesting
    num = PROBE_PARTICLES
    plate = pyro.plate(PARTICLE_PLATE, num, dim=-(mpn + 1))
    state = rng_state(device)
    with using_rng(state, device), torch.no_grad(), pyro.validation_enabled(True):
        try:
            guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(
                *args, **kwargs
            )
            pruned_model = prune_subsample_sites(model_trace)
            pruned_guide = prune_subsample_sites(guide_trace)
            pruned_model.compute_log_prob()
            pruned_guide.compute_log_prob()  # a guide whose densities cannot batch fails here
            batched_p = _site_sums(pruned_model, num, mpn)
        except Exception as e:  # noqa: BLE001 - any failure of the batched run decides it
            return BatchingReport(False, _describe(e), user_line(e))
        single_p, lines = [], _SiteLines()
        for k in range(num):
            fixed = _replay_trace(model_trace, k, mpn, num)
            try:
                with lines:
                    trace = poutine.trace(poutine.replay(model, trace=fixed)).get_trace(
                        *args, **kwargs
                    )
                trace = prune_subsample_sites(trace)
                trace.compute_log_prob()
            except Exception as e:  # noqa: BLE001 - the batched values do not fit one draw
                return BatchingReport(False, _describe(e), user_line(e))
            single_p.append(_site_sums(trace, 1, mpn))
    # Only the model's densities are compared: a guide may draw randomness of its own (a
    # semi-amortized guide refines with random draws), which replaying cannot repeat; a guide
    # that cannot be batched at all has already failed the batched run above.
    name = _first_difference(batched_p, single_p, list(batched_p))
    if name is not None:
        return BatchingReport(
            False,
            f"site {name!r} gets a different log density when particles are batched",
            lines.lines.get(name),
        )
    return BatchingReport(True)


def _describe(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"
