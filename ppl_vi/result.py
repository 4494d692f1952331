"""``VIResult``: what a fit returns: draws, InferenceData, summaries, evidence, save and load."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ppl_vi import data, io
from ppl_vi.infer_util import (
    ModelInfo,
    device_context,
    draws,
    full_plates,
    model_info,
    user_stacklevel,
)
from ppl_vi.predictive import (
    add_posterior_predictive,
    inference_dims,
    log_likelihood_group,
    observed_data,
    pointwise_log_likelihood,
)
from ppl_vi.resolve import resolve_guide
from ppl_vi.runtime import LOCK, default_dtype, seeded
from ppl_vi.stats import arviz as _arviz
from ppl_vi.stats import khat_se, khat_verdict, psis, resample_indices

CHUNK = 1000  # particles per vectorized pass when drawing many samples
#: Draws in the shared importance set (psis_khat, importance_means, compare, reports): with
#: 2**18 the k-hat's spread across seeds was 0.036 on eight schools (0.112 with 2000 draws).
IMPORTANCE_DRAWS = 2**18
IMPORTANCE_SEED = 0
#: Draws are kept for the weighted means when they hold at most this many numbers (else the
#: means take a second pass over the same seeded draws).
KEEP_FLOATS = 2**25


@dataclass
class Importance:
    """Importance sampling with the guide as proposal (:meth:`VIResult.importance`).

    Attributes
    ----------
    log_weights : numpy.ndarray, (S,)
        ``log p(x, z_s) - log q(z_s)``.
    smoothed : numpy.ndarray, (S,)
        Pareto-smoothed, normalised log weights.
    khat, khat_se : float
        Pareto k-hat and its Monte Carlo standard error (:func:`ppl_vi.stats.khat_se`).
    seed : int
    samples : dict or None
        The draws (site -> ``(S, *shape)``) when they were small enough to keep.
    """

    log_weights: np.ndarray
    smoothed: np.ndarray
    khat: float
    khat_se: float
    seed: int
    full: bool
    samples: dict | None
    warnings: list = field(default_factory=list)

    @property
    def ess(self) -> float:
        """Effective sample size of the smoothed weights."""
        return float(1.0 / np.exp(2 * self.smoothed).sum())

    def verdict(self) -> str:
        """:func:`ppl_vi.diagnostics.khat_verdict` with the k-hat's interval."""
        return khat_verdict(self.khat, self.khat_se)


class VIResult:
    """The outcome of :func:`ppl_vi.fit`.

    Attributes
    ----------
    losses : numpy.ndarray
        One loss (= -ELBO estimate) per step; with ``kl_anneal``, the annealed loss that the
        step minimised.
    full_losses : numpy.ndarray
        The negative ELBO of each step on the same draws (the same as ``losses`` unless the fit
        annealed the KL term).
    num_steps : int
        Steps taken.
    converged : bool
        Whether the stopping rule fired.
    interrupted : bool
        Whether the fit was stopped by Ctrl-C.
    wall_time : float
        Seconds spent in the training loop.
    device : torch.device
        Where the parameters live.

    Every method that draws from the guide runs in the fit's own parameter store, so results of
    different fits never mix, and accepts ``seed`` for reproducible draws.
    """

    def __init__(
        self,
        *,
        model: Callable,
        guide: Callable,
        model_args: tuple,
        model_kwargs: dict,
        param_state: dict,
        info: ModelInfo,
        losses,
        converged: bool = False,
        interrupted: bool = False,
        device: torch.device | str = "cpu",
        guide_spec: dict | None = None,
        elbo_spec: dict | None = None,
        wall_time: float = float("nan"),
        seed: int | None = None,
        live: dict | None = None,
        dtype: torch.dtype | None = None,
        full_losses=None,
    ):
        self.model = model
        self.guide = guide
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs)
        # the result owns copies: a later fit that reuses the guide cannot change them
        self._params = {k: v.detach().clone() for k, v in param_state["params"].items()}
        self._constraints = dict(param_state["constraints"])
        self._live = dict(live) if live is not None else {}
        self.info = info
        self.losses = np.asarray(losses, dtype=np.float64)
        self.num_steps = len(self.losses)
        self.full_losses = (
            self.losses if full_losses is None else np.asarray(full_losses, dtype=np.float64)
        )
        self.converged = bool(converged)
        self.interrupted = bool(interrupted)
        self.device = torch.device(device)
        self.guide_spec = guide_spec or {"name": None, "class": None, "config": None}
        self.elbo_spec = elbo_spec or {"name": None, "class": None}
        self.wall_time = wall_time
        self.seed = seed
        self._full_data = True
        self._importance: dict = {}
        #: Whether ``sample`` and ``to_inference_data`` resample guide draws with PSIS weights
        #: (Pathfinder's results, as in the paper); ``_guide_draws`` always gives raw draws.
        self.resampled = False
        #: Method-specific diagnostics (e.g. Pathfinder's paths and evaluation counts).
        self.method_info: dict = {}
        #: ``fit(guide="auto")``'s conclusion (:class:`ppl_vi.auto.Verdict`), else None.
        self.verdict = None
        #: Floating dtype the model and guide run in (None: torch's default at the time).
        self.dtype = dtype

    @classmethod
    def from_state(cls, state, engine, wall_time: float = float("nan")) -> VIResult:
        """The result of a :class:`~ppl_vi.engine.Engine` run at ``state`` (parameters copied,
        with the final phase's averages where it averaged)."""
        result = cls(
            model=engine.model,
            guide=engine.guide,
            model_args=engine.args,
            model_kwargs=engine.kwargs,
            param_state={
                "params": state.final_params(),
                "constraints": state.param_state["constraints"],
            },
            live=state.params,
            info=engine.info,
            losses=state.losses,
            converged=state.converged,
            interrupted=state.interrupted,
            device=engine.device,
            guide_spec=engine.guide_spec,
            elbo_spec=engine.elbo_spec,
            wall_time=wall_time,
            seed=engine.seed,
            dtype=engine.dtype,
            full_losses=state.full_losses if getattr(engine, "annealing", None) else None,
        )
        annealing = getattr(engine, "annealing", None)
        if annealing is not None:
            result.method_info["kl_anneal"] = {
                "schedule": annealing.settings()["kl_anneal"],
                "warmup_end": annealing.warmup_end(),
                "betas": [annealing.beta(t) for t in range(result.num_steps)],
            }
        if engine.jit:
            result.method_info["jit"] = engine.jit_report()
        parallel = getattr(engine, "parallel", None)
        if parallel is not None:  # a data-parallel fit: how many processes made it
            result.method_info["data_parallel"] = {
                "world_size": parallel.world,
                "backend": parallel.backend,
                "global_batch": {name: size for name, size in sorted(parallel.batches.items())},
            }
        return result

    def __repr__(self) -> str:
        name = self.guide_spec.get("name") or self.guide_spec.get("class")
        state = (
            "stopped early: the loss was flat"
            if self.converged
            else "the early-stop rule did not fire"
        )
        if self.interrupted:
            state = "interrupted"
        last = self.losses[-100:].mean() if self.num_steps else float("nan")
        if self.method_info.get("method") == "pathfinder":
            paths = self.method_info["paths"]
            text = (
                f"pathfinder, {len(paths)} path(s), best ELBO "
                f"{max(p['elbo'] for p in paths):.6g}, {self.method_info['num_grads']} gradient "
                "evaluations"
            )
        else:
            text = f"ran {self.num_steps} steps ({state}), final mean loss={last:.6g}"
        verdict = f", verdict: {self.verdict}" if self.verdict is not None else ""
        return f"VIResult(model={self.info.name}, guide={name}, {text}{verdict})"

    # ------------------------------------------------------------------ parameters
    @contextlib.contextmanager
    def param_scope(self):
        """Make this fit's parameters the active Pyro parameter store inside the block.

        The guide reads its parameters through the tensors it was trained with (a ``PyroModule``
        or ``pyro.module`` guide keeps references to them); the fitted values are copied into
        those tensors for the block, changes made in the block are kept by this result, and the
        tensors' previous values are put back afterwards (so a later fit that reuses the guide
        and this result never share values).
        """
        with LOCK:
            scope, saved = {}, {}
            with torch.no_grad():
                for name, value in self._params.items():
                    live = self._live.get(name)
                    if _same_layout(live, value):
                        saved[name] = live.detach().clone()
                        live.copy_(value)
                        scope[name] = live
                    else:
                        scope[name] = value.clone().requires_grad_(value.requires_grad)
            state = {"params": scope, "constraints": dict(self._constraints)}
            try:
                with pyro.get_param_store().scope(state=state), device_context(self.device):
                    with default_dtype(self.dtype):
                        yield
            finally:
                with torch.no_grad():
                    for name, value in state["params"].items():
                        new = value.detach().clone()
                        old = self._params.get(name)
                        if old is None or not torch.equal(old, new):
                            self._importance.clear()  # the fit was changed: draw anew
                        self._params[name] = new
                    self._constraints.update(state["constraints"])
                    for name, value in saved.items():
                        self._live[name].copy_(value)

    @property
    def params(self) -> dict:
        """Fitted parameters: name -> constrained value (detached copies)."""
        with self.param_scope():
            store = pyro.get_param_store()
            return {name: store[name].detach().clone() for name in store.keys()}

    # ------------------------------------------------------------------ draws
    def _chunks(self, num: int):
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"the number of draws must be an integer >= 1 (got {num!r})")
        while num > 0:
            n = min(CHUNK, num)
            yield n
            num -= n

    def _draws(self, num_samples: int, seed: int | None):
        """Draws from the guide, with their model and guide log densities.

        Returns ``(samples, log_p, log_q)``: site name -> ``(num_samples, *shape)`` for every
        latent and deterministic site, and ``(num_samples,)`` log densities. Plates that
        subsample during the fit are drawn at full size (log densities of the full data); a
        model that can only run on the mini-batch it was given (explicit ``subsample=``
        indices) is drawn at that mini-batch, with a warning. Draws are evaluated as one batch
        per chunk when the model broadcasts over a batch dim (the fit's batching probe), else
        one at a time.
        """
        if self._full_data:
            try:
                return self._draw_chunks(num_samples, seed, full=True)
            except Exception as e:
                if not self.info.subsample_plates:
                    raise
                self._full_data = False
                warnings.warn(
                    f"the model cannot be run with its subsampled plates "
                    f"{sorted(self.info.subsample_plates)} at full size ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160]}); draws and log densities use the "
                    "mini-batch the model was given",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
        return self._draw_chunks(num_samples, seed, full=False)

    def _draw_chunks(self, num_samples: int, seed: int | None, full: bool):
        parts, log_p, log_q = [], [], []
        for values, lp, lq in self._iter_chunks(num_samples, seed, full):
            parts.append(values)
            log_p.append(lp)
            log_q.append(lq)
        names = parts[0].keys()
        samples = {k: torch.cat([p[k] for p in parts]) for k in names}
        return samples, torch.cat(log_p), torch.cat(log_q)

    def _iter_chunks(self, num_samples: int, seed: int | None, full: bool):
        """``(values, log_p, log_q)`` per chunk of at most :data:`CHUNK` draws."""
        info = self.info
        names = {**info.latent, **info.deterministic} if full else dict(info.traced)
        plates = full_plates(info) if full else contextlib.nullcontext()
        with self.param_scope(), seeded(seed), plates, torch.no_grad():
            for n in self._chunks(num_samples):
                yield draws(
                    self.model, self.guide, self.model_args, self.model_kwargs, n, info, names
                )

    def sample(self, num_samples: int = 1000, seed: int | None = None) -> dict:
        """Draw from the fitted guide.

        Returns
        -------
        dict
            Site name -> tensor of shape ``(num_samples, *site_shape)`` for every latent site
            and every ``pyro.deterministic`` site of the model. Plates that subsample during the
            fit are drawn at full size. A resampled result (``resampled``, e.g. Pathfinder's)
            returns guide draws resampled with their Pareto-smoothed importance weights.
        """
        return self._posterior_draws(num_samples, seed)[0]

    def _posterior_draws(self, num_samples: int, seed: int | None):
        """``_draws``, or for a resampled result (``self.resampled``) ``num_samples`` of
        ``4 * num_samples`` guide draws picked with replacement with their Pareto-smoothed
        importance weights (Zhang et al. 2022, Algorithm 2; Yao et al. 2018, sec. 3)."""
        if not self.resampled:
            return self._draws(num_samples, seed)
        samples, log_p, log_q = self._draws(4 * num_samples, seed)
        smoothed, _ = psis((log_p - log_q).detach().double().cpu().numpy())
        idx = torch.as_tensor(resample_indices(smoothed, num_samples, seed)).to(log_p.device)
        return {k: v[idx.to(v.device)] for k, v in samples.items()}, log_p[idx], log_q[idx]

    def log_weights(self, num_samples: int = 1000, seed: int | None = None):
        """Log densities of draws from the guide: ``(log_p, log_q)``, each ``(num_samples,)``.

        ``log_p`` is the model's joint log density :math:`\\log p(x, z)` (full data) and
        ``log_q`` the guide's :math:`\\log q(z)`; ``log_p - log_q`` are importance log weights.
        Latent sites that the guide does not sample (the model draws them from its prior) are
        part of the proposal and left out of ``log_p``.
        """
        _, log_p, log_q = self._draws(num_samples, seed)
        return log_p, log_q

    # ------------------------------------------------------------------ diagnostics
    def to_inference_data(
        self,
        num_samples: int = 1000,
        seed: int | None = None,
        posterior_predictive: bool = False,
        log_likelihood: bool = False,
        coords: dict | None = None,
        dims: dict | None = None,
    ):
        """An :class:`arviz.InferenceData` of draws from the fitted guide.

        Groups: ``posterior`` (one chain; latent and deterministic sites), ``sample_stats``
        (``log_p``, ``log_q`` per draw and the ``loss`` history over a ``step`` dimension) and
        ``observed_data`` (the full data); with ``posterior_predictive=True`` also replicated
        observations at the same draws (``pyro.infer.Predictive``), and with
        ``log_likelihood=True`` pointwise log-likelihoods. Dims are named from the model's
        plates (``theta`` in ``pyro.plate("school", 8)`` has dim ``school``), event dims
        ``<site>_dim_<k>``; ``coords`` and ``dims`` add to or override them, as in
        ``az.from_pyro``.

        ``az.loo`` on the ``log_likelihood`` group would treat draws from q as posterior draws;
        :func:`ppl_vi.diagnostics.loo` corrects them for q.
        """
        az = _arviz()
        samples, log_p, log_q = self._posterior_draws(num_samples, seed)
        latent = {k: v for k, v in samples.items() if k in self.info.latent}
        all_dims, all_coords = inference_dims(self, latent, dims, coords)
        posterior = {k: v.detach().cpu().numpy()[None] for k, v in samples.items()}
        observed = observed_data(self.model, latent, self.model_args, self.model_kwargs, self.info)
        with LOCK:
            idata = az.from_dict(
                posterior=posterior,
                sample_stats={
                    "log_p": log_p.detach().cpu().numpy()[None],
                    "log_q": log_q.detach().cpu().numpy()[None],
                },
                observed_data=observed or None,
                dims={k: v for k, v in all_dims.items() if k in posterior or k in observed},
                coords=all_coords,
                attrs={"inference_library": "ppl_vi", "guide": str(self.guide_spec.get("class"))},
            )
        idata.sample_stats["loss"] = ("step", self.losses)
        if self.full_losses is not self.losses:
            idata.sample_stats["full_loss"] = ("step", self.full_losses)
        if (posterior_predictive or log_likelihood) and observed:
            if posterior_predictive:
                add_posterior_predictive(
                    idata, self, seed=seed, dims=dims, coords=coords, log_likelihood=log_likelihood
                )
            else:
                loglik = pointwise_log_likelihood(
                    self.model, latent, self.model_args, self.model_kwargs, self.info
                )
                idata.extend(log_likelihood_group(loglik, 1, num_samples, all_dims, all_coords))
        return idata

    def summary(self, num_samples: int = 4000, seed: int | None = None):
        """Posterior mean, sd and 5/25/50/75/95% quantiles of each scalar component.

        Returns a :class:`pandas.DataFrame` indexed like :func:`arviz.summary`.
        """
        az = _arviz()
        idata = self.to_inference_data(num_samples, seed)
        quantiles = {f"q{int(q * 100):02d}": q for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
        funcs = {k: (lambda x, q=q: np.quantile(x, q)) for k, q in quantiles.items()}
        return az.summary(
            idata, kind="stats", stat_funcs=funcs, extend=True, hdi_prob=0.9, round_to="none"
        )

    def importance(self, num_samples: int | None = None, seed: int | None = None) -> Importance:
        """Importance sampling with the guide as proposal, on one cached, seeded set of draws.

        ``psis_khat``, ``importance_means``, :func:`ppl_vi.compare` and the reports all read
        the same set (by default :data:`IMPORTANCE_DRAWS` draws with seed
        :data:`IMPORTANCE_SEED`), so they agree on the k-hat and on its verdict. With the
        default number of draws the k-hat's spread across seeds is about 0.04 on eight schools
        (measured); ``Importance.khat_se`` estimates it for any fit.
        """
        num = IMPORTANCE_DRAWS if num_samples is None else num_samples
        seed = IMPORTANCE_SEED if seed is None else seed
        key = (num, seed)
        if key not in self._importance:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._importance[key] = self._compute_importance(num, seed)
            self._importance[key].warnings = [w.message for w in caught]
        imp = self._importance[key]
        for message in imp.warnings:  # said on every use, not only the first
            warnings.warn(message, stacklevel=user_stacklevel())
        return imp

    def _compute_importance(self, num: int, seed: int) -> Importance:
        keep = sum(math.prod(s) for s in {**self.info.latent, **self.info.deterministic}.values())
        keep = num * max(keep, 1) <= KEEP_FLOATS  # samples kept for the weighted means
        parts, log_p, log_q = [], [], []
        if self._full_data:
            self._draws(1, seed)  # decides, with a warning, whether the full data can be used
        full = self._full_data
        for values, lp, lq in self._iter_chunks(num, seed, full):
            if keep:
                parts.append({k: v.cpu() for k, v in values.items()})
            log_p.append(lp.cpu())
            log_q.append(lq.cpu())
        lw = (torch.cat(log_p) - torch.cat(log_q)).double().numpy()
        samples = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if keep else None
        smoothed, khat = psis(lw)
        if samples is not None and self._point_mass(samples, num):
            khat = math.nan
        return Importance(lw, smoothed, khat, khat_se(lw), seed, full, samples)

    def _point_mass(self, samples: dict, num: int) -> bool:
        continuous = [samples[k] for k in self.info.latent if samples[k].is_floating_point()]
        if num > 1 and continuous and all(bool((v == v[:1]).all()) for v in continuous):
            warnings.warn(
                "every draw from the guide is the same point (a point-mass guide such as "
                "AutoDelta: MAP or maximum likelihood), so importance weights and k-hat do not "
                "apply; k-hat is NaN",
                UserWarning,
                stacklevel=user_stacklevel(),  # importance() records it and says it again
            )
            return True
        return False

    def psis_khat(self, num_samples: int | None = None, seed: int | None = None) -> float:
        """Pareto k-hat of the importance weights p(x, z)/q(z) (Yao et al. 2018).

        Below 0.5 the guide is close enough for importance sampling to be reliable; 0.5-0.7 is
        usable with care; above 0.7 the approximation should not be trusted. Computed on the
        shared importance set (:meth:`importance`; its ``khat_se`` is the estimate's Monte
        Carlo error, and ``verdict()`` reads both). NaN, with a warning, when it cannot be
        estimated: fewer than :data:`~ppl_vi.stats.MIN_PSIS_DRAWS` draws, or a point-mass
        guide (``AutoDelta``: MAP or maximum likelihood), whose draws are not a distribution
        to weight.

        References
        ----------
        Yao, Y., Vehtari, A., Simpson, D. & Gelman, A. (2018). Yes, but did it work?:
        Evaluating variational inference. ICML.
        """
        return self.importance(num_samples, seed).khat

    def importance_means(
        self, num_samples: int | None = None, seed: int | None = None
    ) -> tuple[dict, float]:
        """Posterior means corrected by Pareto-smoothed importance sampling, and the k-hat.

        The guide serves as the proposal: with draws :math:`z_s \\sim q` and smoothed
        normalised weights :math:`\\tilde w_s \\propto p(x, z_s) / q(z_s)` (Vehtari et al.
        2024), :math:`\\hat E[f] = \\sum_s \\tilde w_s f(z_s)`. This removes most of the bias
        of the guide's own means when k-hat is below 0.7 (above it the estimate is not
        reliable; the returned k-hat says which case applies). Uses the shared importance set
        (:meth:`importance`).

        Returns
        -------
        (dict, float)
            Site name -> tensor of shape ``site_shape`` for every latent and deterministic site,
            and the Pareto k-hat of the weights.

        References
        ----------
        Vehtari, A., Simpson, D., Gelman, A., Yao, Y. & Gabry, J. (2024). Pareto smoothed
        importance sampling. JMLR 25(72).
        """
        imp = self.importance(num_samples, seed)
        weights = torch.as_tensor(np.exp(imp.smoothed))  # normalised: logsumexp 0
        sums, start = {}, 0
        chunks = (
            [imp.samples]
            if imp.samples is not None
            else (v for v, _, _ in self._iter_chunks(len(imp.log_weights), imp.seed, imp.full))
        )
        for values in chunks:  # a second pass over the same draws when they were not kept
            n = len(next(iter(values.values())))
            w = weights[start : start + n]
            for name, value in values.items():
                flat = value.detach().cpu().double().reshape(n, -1)
                sums[name] = sums.get(name, 0.0) + w @ flat
            start += n
        # draws at the mini-batch the model was given (``imp.full`` False) have the traced shapes
        info = self.info
        shapes = {**info.latent, **info.deterministic} if imp.full else dict(info.traced)
        means = {k: v.reshape(shapes.get(k, v.shape)).float() for k, v in sums.items()}
        return means, imp.khat

    def log_marginal_likelihood(self, num_particles: int = 1000, seed: int | None = None) -> float:
        r"""Importance-sampled estimate of :math:`\log p(x)` with the guide as proposal.

        .. math:: \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k)}, \quad z_k \sim q

        with :math:`K` = ``num_particles``: the IWAE bound, a lower bound in expectation that
        tightens as :math:`K` grows (Burda et al. 2016).
        """
        log_p, log_q = self.log_weights(num_particles, seed)
        lw = (log_p - log_q).double()
        return float(torch.logsumexp(lw, 0) - math.log(lw.numel()))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted parameters, loss history and model data to ``path``.

        The write is atomic and read back (checksum included) before returning. The model's
        data are stored when they are plain (tensors, numbers, strings and containers of them);
        otherwise :func:`ppl_vi.load` needs them again.
        """
        data_saved = io.plain_data(self.model_args) and io.plain_data(self.model_kwargs)
        payload = {
            **io.header("result"),
            "model": self.info.fingerprint(),
            "batched": self.info.batched,
            "guide": self.guide_spec,
            "elbo": self.elbo_spec,
            "params": {k: v.detach().cpu() for k, v in self._params.items()},
            "losses": torch.as_tensor(self.losses, dtype=torch.float64),
            "full_losses": None
            if self.full_losses is self.losses
            else torch.as_tensor(self.full_losses, dtype=torch.float64),
            "converged": self.converged,
            "interrupted": self.interrupted,
            "wall_time": float(self.wall_time),
            "seed": self.seed,
            "resampled": self.resampled,
            "dtype": None if self.dtype is None else str(self.dtype).removeprefix("torch."),
            "method_info": self.method_info,
            "args": io.to_cpu(list(self.model_args)) if data_saved else None,
            "kwargs": io.to_cpu(self.model_kwargs) if data_saved else None,
        }
        io.atomic_save(payload, path)


def _same_layout(live, value: torch.Tensor) -> bool:
    return (
        isinstance(live, torch.Tensor)
        and live.shape == value.shape
        and live.dtype == value.dtype
        and live.device == value.device
    )


def load(
    path: str | os.PathLike, model: Callable, *model_args, guide=None, device="auto", **model_kwargs
) -> VIResult:
    """Load a result saved with :meth:`VIResult.save` for ``model``.

    The model's data are restored from the file when they were saved; otherwise pass them as
    ``*model_args, **model_kwargs``. Guides built by name are rebuilt automatically; for any
    other guide pass a fresh instance as ``guide=``. A file saved for another model (different
    latent sites) raises :class:`~ppl_vi.io.CheckpointError`.
    """
    payload = io.read(path, "result")
    dev = data.resolve_device(device)
    model_args, model_kwargs = io.saved_data(payload, path, model_args, model_kwargs, "ppl_vi.load")
    name = payload.get("dtype")
    dtype = getattr(torch, name) if isinstance(name, str) and name.startswith("float") else None
    with LOCK, default_dtype(dtype):
        args, kwargs = data.prepare(tuple(model_args), dict(model_kwargs), dev, model, dtype)
    with LOCK, device_context(dev), default_dtype(dtype):
        info = model_info(model, args, kwargs)
    info.batched = bool(payload.get("batched", True))
    io.check_model(payload, path, info, "fitted to")
    if payload["model"]["name"] != info.name:
        warnings.warn(
            f"'{path}' was saved for {payload['model']['name']}; loading it into {info.name}, "
            "which has the same sample sites",
            stacklevel=2,
        )
    spec = payload["guide"]
    if guide is None:
        if spec.get("name") is None:
            raise ValueError(
                f"'{path}' was fitted with a custom guide ({spec.get('class')}); pass a fresh "
                "instance of it: ppl_vi.load(path, model, guide=...)"
            )
        guide = spec["name"]
        guide_kwargs = spec.get("config") or {}
    else:
        guide_kwargs = None
    store = pyro.get_param_store()
    with LOCK, store.scope() as param_state, device_context(dev), default_dtype(dtype):
        guide_obj, guide_spec = resolve_guide(guide, model, guide_kwargs)
        with poutine.block(), torch.no_grad():
            guide_obj(*args, **kwargs)
        io.restore_params(payload["params"], dev, f"'{path}'")
    result = VIResult(
        model=model,
        guide=guide_obj,
        model_args=args,
        model_kwargs=kwargs,
        param_state=param_state,
        live=param_state["params"],
        info=info,
        losses=payload["losses"].numpy(),
        converged=payload["converged"],
        interrupted=payload["interrupted"],
        device=dev,
        guide_spec=guide_spec,
        elbo_spec=payload["elbo"],
        wall_time=payload["wall_time"],
        seed=payload["seed"],
        dtype=dtype,
        full_losses=None if payload.get("full_losses") is None else payload["full_losses"].numpy(),
    )
    result.resampled = bool(payload.get("resampled", False))
    result.method_info = dict(payload.get("method_info") or {})
    return result
