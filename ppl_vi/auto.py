"""``fit(model, guide="auto")``: the cheapest Gaussian or flow fit that passes a trust check.

Stages, each started from Pathfinder's best Gaussian (batch-and-match runs whenever
Pathfinder is not trusted as it is; the SGD stages only when nothing has passed):

1. multi-path Pathfinder (seconds, no tuning);
2. batch-and-match (closed-form full-rank Gaussian updates);
3. full-rank ADVI (32 vectorized particles, Adam);
4. an inverse autoregressive flow (non-Gaussian shapes).

After each stage the trust check reads the result's importance set (PSIS k-hat with its Monte
Carlo error, Vehtari et al. 2024) and the stability of the sds under the importance correction:

- **trusted**: ``khat + 2 se < 0.5`` and every importance-weighted sd within 10% of q's sd.
- **trusted after importance correction**: ``khat + 2 se < 0.7``; read the PSIS-resampled
  draws and :meth:`~ppl_vi.VIResult.importance_means`, not q itself.

Either way the result's draws are PSIS-resampled (``result.resampled``), as Pathfinder's are.
- otherwise the next stage runs; after the last, the verdict is **use NUTS**, with the
  k-hats that ruled each stage out, and the result is the stage with the lowest k-hat.

The result is the first trusted stage, else the passing stage with the lowest k-hat.

The verdict is ``result.verdict`` (also in ``repr(result)``, the CLI's ``run.json`` and
:func:`ppl_vi.compare` reports).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ppl_vi.errors import FitError
from ppl_vi.result import VIResult
from ppl_vi.stats import KHAT_BAD, KHAT_GOOD

__all__ = ["STAGES", "Verdict", "fit_auto", "trust_check"]

#: Importance draws of each trust check: it starts with MIN_CHECK_DRAWS and doubles them, up
#: to CHECK_DRAWS, while k-hat's interval (khat +- 2 se) still straddles 0.5 or 0.7 (k-hat's
#: sd is about 0.13 at 2^11 draws and 0.07 at 2^14, shrinking as S^-1/4).
MIN_CHECK_DRAWS = 2**11
CHECK_DRAWS = 2**14
#: Importance-weighted sds must stay within this factor of q's sds for "trusted".
SD_STABILITY = 0.10
#: (label, fit options, also run after a "trusted after importance correction" stage) of the
#: refinement stages after Pathfinder, in order of cost: the cheap closed-form refinement is
#: tried whenever Pathfinder is not trusted as it is; the SGD stages only when nothing passed.
STAGES = (
    ("batch-and-match", {"guide": "bam", "num_steps": 50, "guide_kwargs": {"batch_size": 32}},
     True),
    ("full-rank ADVI", {"guide": "full_rank", "num_particles": 32, "lr": 0.05, "num_steps": 1000},
     False),
    ("IAF", {"guide": "iaf", "num_particles": 8, "lr": 0.01, "num_steps": 3000}, False),
)  # fmt: skip

TRUSTED = "trusted"
CORRECTED = "trusted after importance correction"
USE_NUTS = "use NUTS"


@dataclass
class Verdict:
    """What ``fit(guide="auto")`` concluded.

    Attributes
    ----------
    status : str
        ``"trusted"``, ``"trusted after importance correction"`` or ``"use NUTS"``.
    method : str
        The stage whose result was returned.
    reason : str
        Why, in words.
    stages : list of dict
        Per stage run: ``method``, ``khat``, ``khat_se``, ``sd_stable``, ``wall_s``,
        ``num_grads`` (log-density gradient evaluations, or particle-gradients for ADVI) and
        ``error`` when the stage failed.
    """

    status: str
    method: str
    reason: str
    stages: list = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return self.status != USE_NUTS

    def __str__(self) -> str:
        return f"{self.status} ({self.method}): {self.reason}"


def trust_check(result: VIResult, num_samples: int = CHECK_DRAWS) -> dict:
    """k-hat, its Monte Carlo error, sd stability and the status they give.

    Draws double from :data:`MIN_CHECK_DRAWS` up to ``num_samples`` until the status no longer
    depends on where in ``khat +- 2 se`` the k-hat lies (a sequential check: clear cases cost
    few model evaluations)."""
    num = min(MIN_CHECK_DRAWS, num_samples)
    while True:
        check = _check(result, num)
        se = check["khat_se"]
        low = check["khat"] - 2 * se if math.isfinite(se) else check["khat"]
        undecided = any(low < bound <= check["upper"] for bound in (KHAT_GOOD, KHAT_BAD))
        if not undecided or num >= num_samples:
            check["draws"] = num
            return check
        num = min(2 * num, num_samples)


def _check(result: VIResult, num: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = result.importance(num, seed=0)
    khat, se = float(imp.khat), float(imp.khat_se)
    stable = _sd_stable(imp)
    upper = khat + 2 * se if math.isfinite(se) else khat
    if math.isnan(khat) or khat == math.inf:
        status = USE_NUTS
    elif upper < KHAT_GOOD and stable is not False:
        status = TRUSTED
    elif upper < KHAT_BAD:
        status = CORRECTED
    else:
        status = USE_NUTS
    return {"khat": khat, "khat_se": se, "upper": upper, "sd_stable": stable, "status": status}


def _sd_stable(imp) -> bool | None:
    """Whether the importance-weighted sd of every component is within :data:`SD_STABILITY`
    of q's sd (None when the draws were too many to keep)."""
    if imp.samples is None:
        return None
    w = np.exp(imp.smoothed - imp.smoothed.max())
    w = w / w.sum()
    for value in imp.samples.values():
        x = value.double().reshape(len(w), -1).numpy()
        if not np.issubdtype(x.dtype, np.floating):
            continue
        sd_q = x.std(0)
        mean_w = w @ x
        sd_w = np.sqrt(np.maximum(w @ (x - mean_w) ** 2, 0.0))
        ok = np.abs(sd_w / np.where(sd_q > 0, sd_q, np.inf) - 1) <= SD_STABILITY
        if not np.all(ok | (sd_q == 0)):
            return False
    return True


def _grads(result: VIResult, options: dict) -> int:
    info = result.method_info
    if "num_grads" in info:
        return int(info["num_grads"])
    per_step = options.get("num_particles") or options.get("guide_kwargs", {}).get("batch_size", 1)
    return int(result.num_steps * per_step)


def fit_auto(
    fit,
    model,
    *model_args,
    seed: int | None = 0,
    device="auto",
    progress: bool | str = True,
    model_kwargs: dict | None = None,
    stages=STAGES,
    check_draws: int = CHECK_DRAWS,
    dtype="auto",
    **kwargs,
) -> VIResult:
    """Pathfinder, then the stages of :data:`STAGES` until one passes :func:`trust_check`.

    ``fit`` is :func:`ppl_vi.fit` (passed in: this module sits below it);
    ``fit(model, guide="auto")`` is the way to call this.

    Returns that stage's :class:`~ppl_vi.VIResult` with ``result.verdict`` (a
    :class:`Verdict`); when none passes, the stage with the lowest k-hat, verdict "use NUTS".
    A stage that fails (e.g. draws leave the model's support) is recorded and skipped.
    """

    from ppl_vi.gaussian_vi import fit_pathfinder, method_dtype

    # every stage in float64 where the model allows it: badly conditioned posteriors need it
    dtype = method_dtype(model, model_args, {**kwargs, **(model_kwargs or {})}, dtype, device)
    if model_kwargs:
        kwargs = {**kwargs, **model_kwargs}
    show = bool(progress)
    records, candidates = [], []
    start = time.perf_counter()
    t0 = time.perf_counter()
    pathfinder = fit_pathfinder(
        model, *model_args, seed=seed, device=device, progress="pathfinder" if show else False,
        dtype=dtype, **kwargs,
    )  # fmt: skip
    check = trust_check(pathfinder, check_draws)
    records.append({"method": "pathfinder", **check, "wall_s": time.perf_counter() - t0,
                    "num_grads": _grads(pathfinder, {})})  # fmt: skip
    candidates.append(("pathfinder", pathfinder, check))
    interrupted = False
    try:
        for label, options, after_corrected in stages:
            statuses = {c[2]["status"] for c in candidates}
            if TRUSTED in statuses or (CORRECTED in statuses and not after_corrected):
                break
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    result = fit(model, *model_args, init=pathfinder, seed=seed, device=device,
                                 dtype=dtype, progress=label if show else False, **options,
                                 **kwargs)  # fmt: skip
            except (FitError, ValueError, RuntimeError) as e:
                error = f"{type(e).__name__}: {str(e)[:200]}"
                wall = time.perf_counter() - t0
                records.append({"method": label, "error": error, "wall_s": wall,
                                "status": USE_NUTS})  # fmt: skip
                continue
            check = trust_check(result, check_draws)
            records.append({"method": label, **check, "wall_s": time.perf_counter() - t0,
                            "num_grads": _grads(result, options)})  # fmt: skip
            candidates.append((label, result, check))
    except KeyboardInterrupt:  # Ctrl-C: the stages judged so far are kept
        interrupted = True
    label, result, check = _choose(candidates)
    # PSIS-resampled draws in every case: with a trusted q they cost little (k-hat < 0.5) and
    # still remove what bias q has (measured: kidiq_interaction's worst mean error 0.11 sd from
    # q's draws, 0.03 resampled)
    result.resampled = True
    result.wall_time = time.perf_counter() - start
    reason = _reason(label, check, records)
    if interrupted:
        reason += " (interrupted by Ctrl-C before the later stages)"
        result.interrupted = True
    result.verdict = Verdict(check["status"], label, reason, records)
    result.method_info = {**result.method_info, "auto": [dict(r) for r in records]}
    return result


def _choose(candidates: list):
    """The first trusted stage; else the passing stage with the lowest k-hat; else the lowest
    k-hat of all."""
    for label, result, check in candidates:
        if check["status"] == TRUSTED:
            return label, result, check
    passing = [c for c in candidates if c[2]["status"] == CORRECTED]
    if passing:
        return min(passing, key=lambda c: c[2]["khat"])
    finite = [c for c in candidates if math.isfinite(c[2]["khat"])]
    return min(finite or candidates, key=lambda c: c[2]["khat"] if finite else 0.0)


def _reason(label: str, check: dict, records: list) -> str:
    others = [
        f"{r['method']} (k-hat {r['khat']:.2f} +- {r['khat_se']:.2f}, {r['status']})"
        if "khat" in r
        else f"{r['method']} (failed: {r['error']})"
        for r in records
        if r["method"] != label
    ]
    before = f"; also ran {', '.join(others)}" if others else ""
    k = f"k-hat {check['khat']:.2f} +- {check['khat_se']:.2f}"
    if check["status"] == TRUSTED:
        return f"{k} below 0.5 and sds stable under importance weighting{before}"
    if check["status"] == CORRECTED:
        why = "below 0.7" if check["sd_stable"] is not False else "below 0.7 but sds move"
        return f"{k} {why}: use the PSIS-resampled draws and importance_means(){before}"
    return (
        "no stage passed the trust check: "
        + ", ".join(
            f"{r['method']} k-hat {r['khat']:.2f} +- {r['khat_se']:.2f}"
            if "khat" in r
            else f"{r['method']} failed"
            for r in records
        )
        + "; the posterior has a shape these families miss (funnel, heavy tails, several "
        "modes): run NUTS (ppl_vi.run_nuts)"
    )
