"""NUTS baselines on Pyro's ``MCMC``: one call, a result shaped like a VI fit's."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_uniform, init_to_value

from ppl_vi import data, io
from ppl_vi.infer_util import device_context, improper_safe, model_info
from ppl_vi.predictive import (
    add_posterior_predictive,
    broadcasts,
    inference_dims,
    log_likelihood_group,
    observed_data,
    pointwise_log_likelihood,
    site_draws,
)
from ppl_vi.runtime import LOCK, seeded
from ppl_vi.stats import arviz as _arviz

__all__ = ["NUTSResult", "run_nuts", "load_nuts"]


class _NUTS(NUTS):
    """Pyro's NUTS whose per-chain diagnostics also carry the adapted step size."""

    def diagnostics(self):
        out = super().diagnostics()
        out["step_size"] = float(self.step_size)
        return out


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (got {name}={value!r})")
    return value


def run_nuts(
    model: Callable,
    *args,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 1,
    seed: int | None = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    init_values: dict | None = None,
    init_strategy: Callable | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    **kwargs,
) -> NUTSResult:
    """Run Pyro's NUTS on ``model(*args, **kwargs)`` and return a :class:`NUTSResult`.

    Several chains run in parallel processes when the machine has a spare core for each
    (Pyro's ``MCMC`` decides; on CUDA it uses the ``spawn`` start method) and one after the
    other otherwise. Every chain starts from its own draw of the init strategy.

    Parameters
    ----------
    model : callable
        A Pyro model; ``*args, **kwargs`` are its data.
    num_warmup, num_samples : int, default 500, 1000
        Warm-up (adaptation) iterations and kept draws, per chain.
    num_chains : int, default 1
    seed : int or None, default 0
        Seeds Pyro's generators (chain ``i`` then uses ``seed``-derived seed ``+ i``).
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
        ``"auto"`` picks CUDA when available. Tensor arguments are moved there.
    progress : bool, default True
        Show Pyro's progress bar.
    init_values : dict, optional
        Initial (constrained) values by site name, for ``init_to_value``. Needed for good
        starts with flat improper priors (``ImproperUniform``), which cannot be sampled; sites
        not listed start from the default strategy.
    init_strategy : callable, optional
        Any Pyro init strategy (default: ``init_to_uniform``; sites with improper priors start
        at ``biject_to(support)(0)``).
    target_accept_prob, max_tree_depth, jit_compile
        Passed to :class:`pyro.infer.NUTS`.

    Returns
    -------
    NUTSResult

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.models import normal_normal
    >>> nuts = ppl_vi.run_nuts(normal_normal.model, **normal_normal.load_data(),
    ...                        num_warmup=100, num_samples=100, progress=False)
    >>> nuts.samples["mu"].shape
    torch.Size([100])
    """
    _check_count("num_warmup", num_warmup, 0)
    _check_count("num_samples", num_samples, 1)
    _check_count("num_chains", num_chains, 1)
    if not 0 < target_accept_prob < 1:
        raise ValueError(
            f"target_accept_prob must be in (0, 1) (got target_accept_prob={target_accept_prob!r})"
        )
    if init_values is not None and init_strategy is not None:
        raise ValueError("pass either init_values or init_strategy, not both")
    dev = data.resolve_device(device)
    args, kwargs = data.prepare(tuple(args), dict(kwargs), dev, model)
    with LOCK, device_context(dev):
        info = model_info(model, args, kwargs)
    if info.discrete:
        raise ValueError(
            f"NUTS needs continuous latent sites; {info.discrete} are discrete. Sum them out "
            "with pyro.infer.config_enumerate (NUTS enumerates such sites) or use VI with "
            "elbo='rb_score'"
        )
    if init_values is not None:
        unknown = sorted(set(init_values) - set(info.latent))
        if unknown:
            raise ValueError(
                f"init_values names {unknown}, which are not latent sites of the model "
                f"(latent sites: {sorted(info.latent)})"
            )
        values = {k: torch.as_tensor(v, device=dev) for k, v in init_values.items()}
        strategy = init_to_value(values=values, fallback=improper_safe(init_to_uniform))
    else:
        strategy = init_strategy or init_to_uniform
    kernel = _NUTS(
        model,
        init_strategy=improper_safe(strategy),
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        jit_compile=jit_compile,
        ignore_jit_warnings=True,
        max_plate_nesting=info.max_plate_nesting,
    )
    with LOCK, seeded(seed), device_context(dev), warnings.catch_warnings():
        # Pyro says so when it builds the sampler; the docstring says it here
        warnings.filterwarnings("ignore", message=".*Chains will be drawn sequentially")
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=num_warmup,
            num_chains=num_chains,
            disable_progbar=not progress,
            mp_context="spawn" if dev.type == "cuda" and num_chains > 1 else None,
        )
        start = time.perf_counter()
        mcmc.run(*args, **kwargs)
        wall = time.perf_counter() - start
    grouped = mcmc.get_samples(group_by_chain=True)  # (chain, draw, ...)
    chains = {k: v.detach() for k, v in grouped.items()}
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in chains.items()}
    with device_context(dev):
        info.batched = broadcasts(model, flat, args, kwargs, info)
    if info.deterministic:
        with device_context(dev):
            extra = site_draws(model, flat, list(info.deterministic), args, kwargs, info)
        for name, value in extra.items():
            chains[name] = value.reshape((num_chains, num_samples) + value.shape[1:])
    diverging = np.zeros((num_chains, num_samples), dtype=bool)
    step_size = np.full(num_chains, np.nan)
    accept = np.full(num_chains, np.nan)
    diag = mcmc.diagnostics()  # Pyro's public per-chain sampler statistics
    for c in range(num_chains):
        key = f"chain {c}"
        idx = np.asarray(diag.get("divergences", {}).get(key, []), dtype=int)
        diverging[c, idx[(idx >= 0) & (idx < num_samples)]] = True
        step_size[c] = diag.get("step_size", {}).get(key, np.nan)
        accept[c] = float(diag.get("acceptance rate", {}).get(key, np.nan))
    result = NUTSResult(
        model=model,
        model_args=args,
        model_kwargs=kwargs,
        info=info,
        chains=chains,
        diverging=diverging,
        step_size=step_size,
        accept_rate=accept,
        wall_time=wall,
        settings={
            "num_warmup": num_warmup,
            "num_samples": num_samples,
            "num_chains": num_chains,
            "seed": seed,
            "target_accept_prob": target_accept_prob,
            "max_tree_depth": max_tree_depth,
        },
        device=dev,
    )
    result.mcmc = mcmc
    return result


class NUTSResult:
    """Draws of a NUTS run, with the same accessors as :class:`~ppl_vi.VIResult`.

    Attributes
    ----------
    samples : dict
        Site name -> tensor ``(num_chains * num_samples, *site_shape)`` for every latent and
        ``pyro.deterministic`` site (chains concatenated).
    chains : dict
        The same draws grouped by chain, ``(num_chains, num_samples, *site_shape)``.
    diverging : numpy.ndarray
        ``(num_chains, num_samples)`` booleans: divergent transitions.
    step_size, accept_rate : numpy.ndarray
        Adapted step size and mean acceptance probability of each chain.
    wall_time : float
        Seconds of sampling, warm-up included.
    mcmc : pyro.infer.MCMC or None
        The sampler that produced the draws (``mcmc.summary()``, ``mcmc.diagnostics()``,
        ``arviz.from_pyro(mcmc)``); None for a result loaded from a file.
    settings : dict
        ``num_warmup``, ``num_samples``, ``num_chains``, ``seed`` and the NUTS options.
    """

    def __init__(
        self,
        model,
        model_args,
        model_kwargs,
        info,
        chains,
        diverging,
        step_size,
        accept_rate,
        wall_time,
        settings,
        device="cpu",
    ):
        self.model = model
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs)
        self.info = info
        self.chains = chains
        self.diverging = np.asarray(diverging, dtype=bool)
        self.step_size = np.asarray(step_size, dtype=np.float64)
        self.accept_rate = np.asarray(accept_rate, dtype=np.float64)
        self.wall_time = float(wall_time)
        self.settings = dict(settings)
        self.device = torch.device(device)
        self.mcmc = None

    @property
    def num_chains(self) -> int:
        return int(self.diverging.shape[0])

    def rhat(self) -> dict:
        """Rank-normalised split R-hat of every scalar component (ArviZ); NaN for one chain."""
        az = _arviz()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = az.rhat(self.to_inference_data(log_likelihood=False))
        out = {}
        for name in table.data_vars:
            values = np.asarray(table[name].values)
            if values.ndim == 0:
                out[name] = float(values)
                continue
            for idx in np.ndindex(values.shape):
                out[f"{name}[{','.join(map(str, idx))}]"] = float(values[idx])
        return out

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"NUTSResult(model={self.info.name}, chains={s['num_chains']}, "
            f"draws={s['num_samples']}, warmup={s['num_warmup']}, "
            f"divergences={int(self.diverging.sum())}, wall_time={self.wall_time:.1f}s)"
        )

    @property
    def samples(self) -> dict:
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.chains.items()}

    @property
    def num_divergences(self) -> int:
        return int(self.diverging.sum())

    def to_inference_data(
        self,
        posterior_predictive: bool = False,
        seed: int | None = 0,
        log_likelihood: bool = True,
        coords: dict | None = None,
        dims: dict | None = None,
    ):
        """An :class:`arviz.InferenceData`: ``posterior`` (chain, draw), ``sample_stats``
        (``diverging``, ``step_size`` per draw, ``acceptance_rate`` per chain mean),
        ``observed_data``, ``log_likelihood`` (pointwise, so ``az.loo`` and ``az.waic`` work)
        and, with ``posterior_predictive=True``, replicated observations
        (``pyro.infer.Predictive``).

        Variable names and dims are those of :meth:`ppl_vi.VIResult.to_inference_data` (named
        from the model's plates; ``coords`` and ``dims`` add to or override them), so
        ``arviz.plot_forest([vi_idata, nuts_idata])`` lines them up.
        """
        az = _arviz()
        posterior = {k: v.cpu().numpy() for k, v in self.chains.items()}
        n_chain, n_draw = self.diverging.shape
        stats = {
            "diverging": self.diverging,
            "step_size": np.repeat(self.step_size[:, None], n_draw, axis=1),
            "acceptance_rate": np.repeat(self.accept_rate[:, None], n_draw, axis=1),
        }
        latent = {k: v.to(self.device) for k, v in self.samples.items() if k in self.info.latent}
        all_dims, all_coords = inference_dims(self, latent, dims, coords)
        observed = observed_data(self.model, latent, self.model_args, self.model_kwargs, self.info)
        idata = az.from_dict(
            posterior=posterior,
            sample_stats=stats,
            observed_data=observed or None,
            dims={k: v for k, v in all_dims.items() if k in posterior or k in observed},
            coords=all_coords,
            attrs={"inference_library": "ppl_vi", "method": "NUTS (pyro.infer.MCMC)"},
        )
        if posterior_predictive and observed:
            add_posterior_predictive(
                idata, self, seed=seed, dims=dims, coords=coords, log_likelihood=log_likelihood
            )
        elif log_likelihood and observed:
            loglik = pointwise_log_likelihood(
                self.model, latent, self.model_args, self.model_kwargs, self.info
            )
            idata.extend(log_likelihood_group(loglik, n_chain, n_draw, all_dims, all_coords))
        return idata

    def summary(self):
        """ArviZ summary: mean, sd, HDI, MCSE, ``ess_bulk``, ``ess_tail`` and ``r_hat``."""
        az = _arviz()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # r_hat of one chain
            return az.summary(self.to_inference_data(log_likelihood=False), round_to="none")

    def save(self, path: str | os.PathLike) -> None:
        """Save draws, sampler statistics and (plain) data to ``path`` atomically."""
        data_saved = io.plain_data(self.model_args) and io.plain_data(self.model_kwargs)
        payload = {
            **io.header("nuts"),
            "model": self.info.fingerprint(),
            "chains": {k: v.detach().cpu() for k, v in self.chains.items()},
            "diverging": torch.as_tensor(self.diverging),
            "step_size": torch.as_tensor(self.step_size),
            "accept_rate": torch.as_tensor(self.accept_rate),
            "wall_time": self.wall_time,
            "settings": self.settings,
            "args": io.to_cpu(list(self.model_args)) if data_saved else None,
            "kwargs": io.to_cpu(self.model_kwargs) if data_saved else None,
        }
        io.atomic_save(payload, path)


def load_nuts(path: str | os.PathLike, model: Callable, *model_args, **model_kwargs) -> NUTSResult:
    """Load a :class:`NUTSResult` saved with :meth:`NUTSResult.save` for ``model``.

    The data are restored from the file when they were saved; otherwise pass them. A file
    saved for another model raises :class:`~ppl_vi.io.CheckpointError`.
    """
    payload = io.read(path, "nuts")
    model_args, model_kwargs = io.saved_data(
        payload, path, model_args, model_kwargs, "ppl_vi.load_nuts"
    )
    model_args, model_kwargs = data.prepare(tuple(model_args), dict(model_kwargs), "cpu", model)
    with LOCK:
        info = model_info(model, model_args, model_kwargs)
    io.check_model(payload, path, info, "sampled from")
    chains = dict(payload["chains"])
    info.batched = broadcasts(
        model, {k: v.reshape((-1,) + v.shape[2:]) for k, v in chains.items()}, model_args,
        model_kwargs, info,
    )  # fmt: skip
    return NUTSResult(
        model=model,
        model_args=model_args,
        model_kwargs=model_kwargs,
        info=info,
        chains=chains,
        diverging=payload["diverging"].numpy(),
        step_size=payload["step_size"].numpy(),
        accept_rate=payload["accept_rate"].numpy(),
        wall_time=payload["wall_time"],
        settings=payload["settings"],
    )
