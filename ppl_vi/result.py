"""``VIResult``: what a fit returns: draws, InferenceData, summaries, evidence, save and load."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ppl_vi import io
from ppl_vi.infer_util import (
    ModelInfo,
    device_context,
    full_plates,
    model_info,
    particle_traces,
    site_values,
    trace_log_density,
)

CHUNK = 1000  # particles per vectorized pass when drawing many samples


@contextlib.contextmanager
def seeded(seed: int | None):
    """Seed Pyro's generators inside the block and restore the previous state afterwards."""
    if seed is None:
        yield
        return
    state = pyro.util.get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)


def _arviz():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz

    return arviz


class VIResult:
    """The outcome of :func:`ppl_vi.fit`.

    Attributes
    ----------
    losses : numpy.ndarray
        One loss (= -ELBO estimate) per step.
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
    ):
        self.model = model
        self.guide = guide
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs)
        self._param_state = param_state
        self.info = info
        self.losses = np.asarray(losses, dtype=np.float64)
        self.num_steps = len(self.losses)
        self.converged = bool(converged)
        self.interrupted = bool(interrupted)
        self.device = torch.device(device)
        self.guide_spec = guide_spec or {"name": None, "class": None, "config": None}
        self.elbo_spec = elbo_spec or {"name": None, "class": None}
        self.wall_time = wall_time
        self.seed = seed

    def __repr__(self) -> str:
        name = self.guide_spec.get("name") or self.guide_spec.get("class")
        state = "converged" if self.converged else "not converged"
        if self.interrupted:
            state = "interrupted"
        last = self.losses[-100:].mean() if self.num_steps else float("nan")
        return (
            f"VIResult(model={self.info.name}, guide={name}, steps={self.num_steps}, {state}, "
            f"final mean loss={last:.6g})"
        )

    # ------------------------------------------------------------------ parameters
    @contextlib.contextmanager
    def param_scope(self):
        """Make this fit's parameters the active Pyro parameter store inside the block."""
        with pyro.get_param_store().scope(state=self._param_state), device_context(self.device):
            yield

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

    def _traces(self, n: int):
        with full_plates(self.info), torch.no_grad():
            return particle_traces(
                self.model,
                self.guide,
                self.model_args,
                self.model_kwargs,
                n,
                self.info.max_plate_nesting,
            )

    def sample(self, num_samples: int = 1000, seed: int | None = None) -> dict:
        """Draw from the fitted guide.

        Returns
        -------
        dict
            Site name -> tensor of shape ``(num_samples, *site_shape)`` for every latent site
            and every ``pyro.deterministic`` site of the model. Plates that subsample during the
            fit are drawn at full size.
        """
        names = {**self.info.latent, **self.info.deterministic}
        parts = []
        with self.param_scope(), seeded(seed):
            for n in self._chunks(num_samples):
                model_trace, _ = self._traces(n)
                parts.append(site_values(model_trace, names, n))
        return {k: torch.cat([p[k] for p in parts]) for k in names}

    def log_weights(self, num_samples: int = 1000, seed: int | None = None):
        """Log densities of draws from the guide: ``(log_p, log_q)``, each ``(num_samples,)``.

        ``log_p`` is the model's joint log density :math:`\\log p(x, z)` (full data) and
        ``log_q`` the guide's :math:`\\log q(z)`; ``log_p - log_q`` are importance log weights.
        """
        log_p, log_q = [], []
        with self.param_scope(), seeded(seed):
            for n in self._chunks(num_samples):
                model_trace, guide_trace = self._traces(n)
                mpn = self.info.max_plate_nesting
                log_p.append(trace_log_density(model_trace, n, mpn))
                log_q.append(trace_log_density(guide_trace, n, mpn))
        return torch.cat(log_p), torch.cat(log_q)

    def _draws(self, num_samples: int, seed: int | None):
        """Samples and their log weights from the same guide draws."""
        names = {**self.info.latent, **self.info.deterministic}
        samples, log_p, log_q = [], [], []
        mpn = self.info.max_plate_nesting
        with self.param_scope(), seeded(seed):
            for n in self._chunks(num_samples):
                model_trace, guide_trace = self._traces(n)
                samples.append(site_values(model_trace, names, n))
                log_p.append(trace_log_density(model_trace, n, mpn))
                log_q.append(trace_log_density(guide_trace, n, mpn))
        samples = {k: torch.cat([p[k] for p in samples]) for k in names}
        return samples, torch.cat(log_p), torch.cat(log_q)

    # ------------------------------------------------------------------ diagnostics
    def to_inference_data(
        self, num_samples: int = 1000, seed: int | None = None, posterior_predictive: bool = False
    ):
        """An :class:`arviz.InferenceData` with groups ``posterior`` (one chain),
        ``sample_stats`` (``log_p``, ``log_q`` per draw and the ``loss`` history over a ``step``
        dimension) and ``observed_data``; with ``posterior_predictive=True`` also replicated
        observations and pointwise log-likelihoods at the same draws
        (:func:`ppl_vi.diagnostics.add_posterior_predictive`)."""
        az = _arviz()
        samples, log_p, log_q = self._draws(num_samples, seed)
        posterior = {k: v.detach().cpu().numpy()[None] for k, v in samples.items()}
        stats = {
            "log_p": log_p.detach().cpu().numpy()[None],
            "log_q": log_q.detach().cpu().numpy()[None],
        }
        observed = {k: v.detach().cpu().numpy() for k, v in self.info.observed.items()}
        idata = az.from_dict(
            posterior=posterior,
            sample_stats=stats,
            observed_data=observed or None,
            attrs={"inference_library": "ppl_vi", "guide": str(self.guide_spec.get("class"))},
        )
        idata.sample_stats["loss"] = ("step", self.losses)
        if posterior_predictive and observed:
            from ppl_vi.diagnostics import add_posterior_predictive

            add_posterior_predictive(idata, self, seed=seed)
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

    def psis_khat(self, num_samples: int = 2000, seed: int | None = None) -> float:
        """Pareto k-hat of the importance weights p(x, z)/q(z) (Yao et al. 2018).

        Below 0.5 the guide is close enough for importance sampling to be reliable; 0.5-0.7 is
        usable with care; above 0.7 the approximation should not be trusted.

        References
        ----------
        Yao, Y., Vehtari, A., Simpson, D. & Gelman, A. (2018). Yes, but did it work?:
        Evaluating variational inference. ICML.
        """
        from ppl_vi.diagnostics import psis  # diagnostics imports this module

        log_p, log_q = self.log_weights(num_samples, seed)
        return psis((log_p - log_q).detach().cpu().double().numpy())[1]

    def importance_means(
        self, num_samples: int = 16000, seed: int | None = None
    ) -> tuple[dict, float]:
        """Posterior means corrected by Pareto-smoothed importance sampling, and the k-hat.

        The guide serves as the proposal: with draws :math:`z_s \\sim q` and smoothed
        normalised weights :math:`\\tilde w_s \\propto p(x, z_s) / q(z_s)` (Vehtari et al.
        2024), :math:`\\hat E[f] = \\sum_s \\tilde w_s f(z_s)`. This removes most of the bias of
        the guide's own means when k-hat is below 0.7 (above it the estimate is not reliable;
        the returned k-hat says which case applies).

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
        from ppl_vi.diagnostics import psis  # diagnostics imports this module

        samples, log_p, log_q = self._draws(num_samples, seed)
        smoothed, khat = psis((log_p - log_q).detach().cpu().double().numpy())
        weights = torch.as_tensor(np.exp(smoothed))  # normalised: logsumexp 0
        means = {}
        for name, value in samples.items():
            flat = value.detach().cpu().double().reshape(value.shape[0], -1)
            means[name] = (weights @ flat).reshape(value.shape[1:]).to(value.dtype)
        return means, khat

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
        """Save the fitted parameters, loss history and model data to ``path`` (atomically)."""
        data_saved = io.plain_data(self.model_args) and io.plain_data(self.model_kwargs)
        payload = {
            **io.header("result"),
            "model": self.info.fingerprint(),
            "guide": self.guide_spec,
            "elbo": self.elbo_spec,
            "params": {k: v.detach().cpu() for k, v in self._param_state["params"].items()},
            "losses": torch.as_tensor(self.losses, dtype=torch.float64),
            "converged": self.converged,
            "interrupted": self.interrupted,
            "wall_time": float(self.wall_time),
            "seed": self.seed,
            "args": io.to_cpu(list(self.model_args)) if data_saved else None,
            "kwargs": io.to_cpu(self.model_kwargs) if data_saved else None,
        }
        io.atomic_save(payload, path)


def load(
    path: str | os.PathLike, model: Callable, *model_args, guide=None, device="auto", **model_kwargs
) -> VIResult:
    """Load a result saved with :meth:`VIResult.save` for ``model``.

    The model's data are restored from the file when they were saved; otherwise pass them as
    ``*model_args, **model_kwargs``. Guides built by name are rebuilt automatically; for any
    other guide pass a fresh instance as ``guide=``. A file saved for another model (different
    latent sites) raises :class:`~ppl_vi.io.CheckpointError`.
    """
    from ppl_vi.fit import move_to_device, resolve_device, resolve_guide

    payload = io.read(path, "result")
    dev = resolve_device(device)
    model_args, model_kwargs = io.saved_data(payload, path, model_args, model_kwargs, "ppl_vi.load")
    args = move_to_device(tuple(model_args), dev)
    kwargs = move_to_device(dict(model_kwargs), dev)
    with device_context(dev):
        info = model_info(model, args, kwargs)
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
    with pyro.get_param_store().scope() as param_state, device_context(dev):
        guide_obj, guide_spec = resolve_guide(guide, model, guide_kwargs)
        with poutine.block(), torch.no_grad():
            guide_obj(*args, **kwargs)
        io.restore_params(payload["params"], dev, f"'{path}'")
    return VIResult(
        model=model,
        guide=guide_obj,
        model_args=args,
        model_kwargs=kwargs,
        param_state=param_state,
        info=info,
        losses=payload["losses"].numpy(),
        converged=payload["converged"],
        interrupted=payload["interrupted"],
        device=dev,
        guide_spec=guide_spec,
        elbo_spec=payload["elbo"],
        wall_time=payload["wall_time"],
        seed=payload["seed"],
    )
