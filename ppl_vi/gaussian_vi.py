r"""Gaussian VI without stochastic-gradient ELBO ascent: Pathfinder and batch-and-match.

Both work on the model's joint unconstrained space (:class:`ppl_vi.potential.LogDensity`) and
return a :class:`~ppl_vi.VIResult` of a Gaussian guide that every diagnostic reads as usual.
They are reached through :func:`ppl_vi.fit` (``guide="pathfinder"``, ``guide="bam"``) and
run inside the fit engine: the same data checks, device, seeded random stream, progress bar,
and (for batch-and-match, whose steps are engine steps) checkpoints, callbacks, the stopping
rule and non-finite handling.
"""

from __future__ import annotations

import functools
import math
import time
import warnings

import torch
from tqdm import tqdm

from ppl_vi.engine import Engine
from ppl_vi.errors import FitError
from ppl_vi.pathfinder import HISTORY_SIZE, MAX_ITERS, NUM_ELBO_DRAWS, single_path
from ppl_vi.potential import LogDensity
from ppl_vi.result import VIResult

__all__ = ["fit_pathfinder", "set_gaussian"]

#: Starting points are drawn uniformly in [-radius, radius] on the unconstrained space (Stan's
#: default initialisation); a start where the log density is not finite is drawn again.
INIT_RADIUS = 2.0
MAX_INIT_TRIES = 100


def method_dtype(model, args: tuple, kwargs: dict, dtype="auto", device="auto"):
    """The dtype the Gaussian methods run the model in: ``dtype`` when given, else float64 when
    the model runs in it (one run from its prior and one replay with the latent values cast to
    float64, data cast, on a copy of the random stream, parameters in a scope of their own),
    else torch's default with a warning (a model holding
    float32 networks, e.g. a ``PyroModule`` built in float32, cannot take float64 data)."""
    import pyro

    from ppl_vi import data
    from ppl_vi.infer_util import device_context, trace_model
    from ppl_vi.runtime import LOCK, default_dtype, rng_state, using_rng

    if not (isinstance(dtype, str) and dtype == "auto"):
        return dtype
    dev = data.resolve_device(device)
    try:
        with LOCK, default_dtype(torch.float64), torch.no_grad(), device_context(dev):
            with pyro.get_param_store().scope(), using_rng(rng_state(dev), dev):
                a, k = data.prepare(tuple(args), dict(kwargs), dev, model, torch.float64)
                trace = trace_model(model, a, k)
                # the methods' draws are float64 even where the model's own prior draws are not
                # (a float32 network upstream of a site): replay with every latent value cast
                for site in trace.nodes.values():
                    if site["type"] == "sample" and not site["is_observed"]:
                        value = site["value"]
                        if torch.is_tensor(value) and value.is_floating_point():
                            site["value"] = value.to(torch.float64)
                pyro.poutine.trace(pyro.poutine.replay(model, trace=trace)).get_trace(*a, **k)
        return torch.float64
    except Exception as e:  # noqa: BLE001 - any failure: the model's own dtype decides
        warnings.warn(
            f"the model does not run in float64 ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:120]}); it runs in "
            f"{str(torch.get_default_dtype()).removeprefix('torch.')}, where badly conditioned "
            "posteriors can stop L-BFGS early. Build the model's modules in float64 "
            "(torch.set_default_dtype(torch.float64)) to avoid this",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def set_gaussian(guide, locs: torch.Tensor, scale_trils: torch.Tensor) -> None:
    """Set a FullRank (one Gaussian) or GaussianMixture guide to the given Gaussians.

    Shapes
    ------
    locs : (K, D); scale_trils : (K, D, D) lower Cholesky factors.
    """
    from ppl_vi.guides import FullRank, GaussianMixture

    with torch.no_grad():
        if isinstance(guide, GaussianMixture):
            like = guide.locs
            guide.locs.data.copy_(locs)
            guide.scale_trils = scale_trils.to(like.dtype).clone()
        elif isinstance(guide, FullRank):
            like = guide.loc
            tril = scale_trils[0].to(like.dtype)
            diag = torch.diagonal(tril).clamp_min(torch.finfo(tril.dtype).tiny)
            guide.loc.data.copy_(locs[0])
            guide.scale = diag.clone()
            guide.scale_tril = (tril / diag[:, None]).clone()
        else:
            raise TypeError(f"cannot set a {type(guide).__name__} to a Gaussian")


def starting_points(log_density: LogDensity, num: int, radius: float) -> list:
    """``num`` starts uniform in ``[-radius, radius]^D`` where the log density is finite."""
    out = []
    for _ in range(num):
        for _ in range(MAX_INIT_TRIES):
            x0 = (torch.rand(log_density.dim) * 2 - 1) * radius
            if radius == 0 or bool(torch.isfinite(log_density(x0[None])).all()):
                break
        else:
            raise FitError(
                f"no starting point with a finite log density in {MAX_INIT_TRIES} uniform draws "
                f"on [-{radius}, {radius}] of the unconstrained space; pass init_radius=0 (start "
                "at the origin) or a smaller radius",
                step=0,
            )
        out.append(x0)
    return out


def fit_pathfinder(
    model,
    *model_args,
    num_paths: int = 4,
    max_iters: int = MAX_ITERS,
    history_size: int = HISTORY_SIZE,
    num_elbo_draws: int = NUM_ELBO_DRAWS,
    init_radius: float = INIT_RADIUS,
    seed: int | None = 0,
    device="auto",
    progress: bool | str = True,
    model_kwargs: dict | None = None,
    dtype="auto",
    **kwargs,
) -> VIResult:
    """Single- (``num_paths=1``) or multi-path Pathfinder (:mod:`ppl_vi.pathfinder`).

    Returns a :class:`~ppl_vi.VIResult` with a :class:`~ppl_vi.guides.FullRank` guide (one
    path) or an equally weighted :class:`~ppl_vi.guides.GaussianMixture` of the paths' best
    Gaussians; its ``sample`` and ``to_inference_data`` draws are importance-resampled with
    Pareto smoothing (``result.resampled``), as in the paper, and ``result.method_info`` has
    the paper's diagnostics: ELBO per path, iterations, log-density evaluations (with and
    without gradient). ``result.losses`` are the -ELBO estimates along the paths.
    """
    from ppl_vi.guides import FullRank, GaussianMixture

    counts = {"num_paths": num_paths, "max_iters": max_iters, "history_size": history_size,
              "num_elbo_draws": num_elbo_draws}  # fmt: skip
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1 (got {name}={value!r})")
    radius_ok = isinstance(init_radius, (int, float)) and math.isfinite(init_radius)
    if not radius_ok or init_radius < 0:
        raise ValueError(f"init_radius must be a number >= 0 (got init_radius={init_radius!r})")
    if model_kwargs:
        kwargs = {**kwargs, **model_kwargs}
    dtype = method_dtype(model, model_args, kwargs, dtype, device)
    guide = FullRank if num_paths == 1 else GaussianMixture
    guide_kwargs = None if num_paths == 1 else {"num_components": num_paths}
    label = progress if isinstance(progress, str) else "pathfinder"
    engine = Engine(model, guide, "elbo", guide_kwargs=guide_kwargs, device=device, seed=seed,
                    dtype=dtype)  # fmt: skip
    state = engine.init(*model_args, **kwargs)
    start = time.perf_counter()
    paths, failures = [], []
    with engine.session(state):
        log_density = LogDensity(engine.model, engine.guide, engine.args, engine.kwargs,
                                 engine.info)  # fmt: skip
        starts = starting_points(log_density, num_paths, float(init_radius))
        init_evals = log_density.num_evals
        for i, x0 in enumerate(starts):
            desc = f"{label} path {i + 1}/{num_paths}" if num_paths > 1 else label
            with tqdm(desc=desc, unit="iter", disable=not progress, dynamic_ncols=True) as bar:
                try:
                    path = single_path(
                        log_density, x0.to(engine.device), max_iters=max_iters,
                        history_size=history_size, num_elbo_draws=num_elbo_draws,
                        on_iter=lambda _, elbo: bar.update(1),
                    )  # fmt: skip
                except ValueError as e:
                    failures.append(f"path {i + 1}: {e}")
                    continue
                except KeyboardInterrupt:
                    if not paths:  # nothing finished: nothing to return
                        raise
                    state.interrupted = True  # keep the finished paths (Ctrl-C keeps work)
                    failures.append(f"paths {i + 1}-{num_paths}: interrupted (Ctrl-C)")
                    break
            paths.append(path)
            state.losses.extend(-e for e in path.elbos)
        if not paths:
            raise FitError("every Pathfinder path failed: " + "; ".join(failures), step=0)
        if failures:
            warnings.warn(
                f"{num_paths - len(paths)} of {num_paths} Pathfinder paths failed or did not "
                "run and are left out of the mixture: " + "; ".join(failures),
                RuntimeWarning,
                stacklevel=2,
            )
        locs = torch.stack([p.loc for p in paths])
        trils = torch.stack([p.scale_tril for p in paths])
        if isinstance(engine.guide, GaussianMixture) and len(paths) < num_paths:
            # failed paths: their components repeat the successful ones (equal weights kept)
            idx = torch.arange(num_paths) % len(paths)
            locs, trils = locs[idx], trils[idx]
        set_gaussian(engine.guide, locs, trils)
    state.step = len(state.losses)
    state.finalize()
    result = VIResult.from_state(state, engine, time.perf_counter() - start)
    result.resampled = True
    result.method_info = {
        "method": "pathfinder",
        "num_paths": num_paths,
        "paths": [
            {
                "elbo": p.elbo,
                "best_iter": p.best,
                "num_iters": p.num_iters,
                "num_grads": p.num_grads,
                "num_evals": p.num_evals,
                "stop_reason": p.stop_reason,
            }
            for p in paths
        ],  # fmt: skip
        "failed_paths": failures,
        "num_grads": log_density.num_grads,
        "num_evals": log_density.num_evals,
        "init_evals": init_evals,
    }
    return result


# ---------------------------------------------------------------------------- batch and match
def bam_update(mu, cov, z, g, lam: float):
    r"""One batch-and-match update of ``N(mu, cov)`` (Cai et al. 2024, Algorithm 1).

    .. math::

        U = \lambda \Gamma + \tfrac{\lambda}{1+\lambda} \bar g \bar g^\top,\quad
        V = \Sigma + \lambda C + \tfrac{\lambda}{1+\lambda} (\mu - \bar z)(\mu - \bar z)^\top,

        \Sigma' = 2 V \big(I + (I + 4 U V)^{1/2}\big)^{-1},\quad
        \mu' = \tfrac{1}{1+\lambda} \mu + \tfrac{\lambda}{1+\lambda} (\Sigma' \bar g + \bar z)

    with :math:`\bar z, C` the mean and covariance of the draws ``z``, :math:`\bar g, \Gamma`
    those of their scores ``g`` and :math:`\lambda` = ``lam``. :math:`\Sigma'` is computed as
    the symmetric solution of :math:`\Sigma' U \Sigma' + \Sigma' = V`,
    :math:`\Sigma' = W\, 2 (I + (I + 4 W U W)^{1/2})^{-1} W` with :math:`W = V^{1/2}`, from two
    symmetric eigendecompositions (the paper's form takes the square root of the
    non-symmetric :math:`UV`).

    Shapes
    ------
    mu : (D,); cov : (D, D); z, g : (B, D).
    """
    B = z.shape[0]
    zbar, gbar = z.mean(0), g.mean(0)
    zc, gc = z - zbar, g - gbar
    C = zc.T @ zc / B
    Gamma = gc.T @ gc / B
    r = lam / (1 + lam)
    U = lam * Gamma + r * torch.outer(gbar, gbar)
    V = cov + lam * C + r * torch.outer(mu - zbar, mu - zbar)
    W = _sym_fn(V, torch.sqrt)
    M = W @ U @ W
    X = _sym_fn(M, lambda e: 2.0 / (1.0 + torch.sqrt(1.0 + 4.0 * e)))
    new_cov = W @ X @ W
    new_cov = 0.5 * (new_cov + new_cov.T)
    new_mu = mu / (1 + lam) + r * (new_cov @ gbar + zbar)
    return new_mu, new_cov


def _sym_fn(A: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` applied to the eigenvalues of the symmetric ``A`` (clamped at 0)."""
    evals, evecs = torch.linalg.eigh(0.5 * (A + A.T))
    return (evecs * fn(evals.clamp_min(0.0))) @ evecs.T


def patch(cov: torch.Tensor, factor: torch.Tensor, diag: torch.Tensor, num_iters: int = 1):
    r"""Project ``cov`` onto low-rank plus diagonal covariances ``L L^T + diag(psi)`` by EM
    steps of factor analysis started at ``(factor, diag)`` (the "patch" step of Modi, Cai &
    Saul 2025; one step by default, as there).

    .. math::

        eta = L^	op (L L^	op + \Psi)^{-1},\quad
        L' = \Sigma eta^	op (I - eta L + eta \Sigma eta^	op)^{-1},\quad
        \Psi' = \operatorname{diag}(\Sigma - L' eta \Sigma)

    The target ``(L, psi)`` of a covariance that is exactly low-rank plus diagonal is a fixed
    point. Here :math:`\Sigma` is formed densely (the paper keeps it implicit to scale to
    thousands of dimensions; this costs :math:`O(D^3)` per step).

    Shapes
    ------
    cov : (D, D); factor : (D, r); diag : (D,). Returns ``(factor, diag)``.
    """
    eye = torch.eye(factor.shape[1], dtype=cov.dtype, device=cov.device)
    for _ in range(num_iters):
        model_cov = factor @ factor.T + torch.diag(diag)
        beta = torch.linalg.solve(model_cov, factor).T  # (r, D)
        ezz = eye - beta @ factor + beta @ cov @ beta.T
        factor_new = torch.linalg.solve(ezz, (cov @ beta.T).T).T
        diag = torch.diagonal(cov - factor_new @ beta @ cov).clamp_min(torch.finfo(cov.dtype).eps)
        factor = factor_new
    return factor, diag


def set_low_rank(guide, loc: torch.Tensor, factor: torch.Tensor, diag: torch.Tensor) -> None:
    """Set a LowRank guide to ``N(loc, factor factor^T + diag(diag))`` (Pyro's
    parameterisation ``cov = S (F F^T + I) S`` with ``S = diag(sqrt(diag))``)."""
    with torch.no_grad():
        like = guide.loc
        s = diag.sqrt().to(like.dtype)
        guide.loc.data.copy_(loc)
        guide.scale = s.clone()
        guide.cov_factor.data.copy_(factor.to(like.dtype) / s[:, None])


class BatchMatch(Engine):
    r"""Batch-and-match VI (Cai et al. 2024) as an engine: each step draws ``batch_size``
    points from the current full-rank Gaussian, evaluates the model's scores there and applies
    the closed-form update :func:`bam_update` with :math:`\lambda_t = B D / t` (the paper's
    schedule for Gaussian-like targets; ``lam`` fixes it instead).

    With ``rank`` the Gaussian is low-rank plus diagonal (:class:`~ppl_vi.guides.LowRank`):
    each update is projected back onto that family by :func:`patch` (Modi, Cai & Saul 2025).

    The guide is a :class:`~ppl_vi.guides.FullRank`; its parameters are the state, so progress,
    checkpoints, callbacks and the stopping rule work as for an SGD fit. A step whose draws
    leave the model's support (a non-finite log density or score) fails like a non-finite SGD
    step: the state stays at the last good update. ``loss`` is the -ELBO estimate of the
    current Gaussian from the batch (mean log density plus the Gaussian's entropy).

    References
    ----------
    Cai, D., Modi, C., Pillaud-Vivien, L., Margossian, C. C., Gower, R. M., Blei, D. M. & Saul,
    L. K. (2024). Batch and match: black-box variational inference with a score-based
    divergence. ICML. Modi, C., Cai, D. & Saul, L. K. (2025). Batch, match, and patch:
    low-rank approximations for score-based variational inference. AISTATS.
    """

    def __init__(self, model, *, batch_size: int = 32, lam: float | None = None,
                 rank: int | None = None, init_loc_fn="feasible", init_scale: float = 1.0,
                 **engine_kwargs):  # fmt: skip
        from ppl_vi.guides import FullRank, LowRank

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2 (got batch_size={batch_size!r})")
        if lam is not None and not (isinstance(lam, (int, float)) and lam > 0):
            raise ValueError(f"lam must be a number > 0 or None (got lam={lam!r})")
        self.batch_size, self.lam, self.rank = batch_size, lam, rank
        engine_kwargs.setdefault("dtype", torch.float64)  # the closed-form update needs it
        guide_kwargs = {"init_loc_fn": init_loc_fn, "init_scale": init_scale}
        if rank is not None:
            guide_kwargs["rank"] = rank
        family = FullRank if rank is None else LowRank
        super().__init__(model, family, "elbo", guide_kwargs=guide_kwargs, **engine_kwargs)
        self.log_density = None

    def init(self, *args, **kwargs):
        state = super().init(*args, **kwargs)
        self.log_density = LogDensity(self.model, self.guide, self.args, self.kwargs, self.info)
        return state

    def settings(self) -> dict:
        bam = {"batch_size": self.batch_size, "lam": self.lam, "rank": self.rank}
        return {**super().settings(), "bam": bam}

    def _step(self, state, args, kwargs, factor: float) -> float:
        from ppl_vi.engine import _set_torch_rng, _torch_rng
        from ppl_vi.errors import NonFiniteLossError

        guide = self.guide
        rng = _torch_rng(self.device)
        with torch.no_grad():
            mu = guide.loc.detach().clone()
            if self.rank is None:
                tril = guide.scale[..., None] * guide.scale_tril
                cov = tril @ tril.T
            else:
                factor = guide.cov_factor * guide.scale[:, None]
                diag = guide.scale**2
                cov = factor @ factor.T + torch.diag(diag)
                tril = torch.linalg.cholesky(cov)
        d = mu.shape[0]
        eps = torch.randn(self.batch_size, d, dtype=mu.dtype, device=mu.device)
        z = mu + eps @ tril.detach().T
        value, grad = self.log_density.value_and_grad(z)
        lam = self.lam if self.lam is not None else self.batch_size * d / (state.step + 1)
        new_mu, new_cov = bam_update(mu, cov, z, grad, lam)
        if self.rank is not None:
            new_factor, new_diag = patch(new_cov, factor, diag)
            new_cov = new_factor @ new_factor.T + torch.diag(new_diag)
        try:
            new_tril = torch.linalg.cholesky(new_cov)
        except torch.linalg.LinAlgError:
            new_tril = None
        entropy = torch.diagonal(tril).log().sum() + 0.5 * d * (1 + math.log(2 * math.pi))
        loss = -float(value.mean() + entropy)
        if (
            new_tril is None
            or not torch.isfinite(value).all()
            or not torch.isfinite(new_mu).all()
            or not math.isfinite(loss)
        ):
            _set_torch_rng(rng)
            error = NonFiniteLossError(
                f"batch-and-match step {state.step + 1}: "
                + ("a draw left the model's support (non-finite log density)"
                   if not torch.isfinite(value).all() else "the update was not finite")
                + f". Training stopped; the Gaussian from step {state.step} is kept "
                "(err.result). Try a fixed, smaller lam= or start from Pathfinder.",
                step=state.step + 1,
                site=None,
            )  # fmt: skip
            error.state = state
            raise error
        self._guard.hold()
        try:
            if self.rank is None:
                set_gaussian(guide, new_mu[None], new_tril[None])
            else:
                set_low_rank(guide, new_mu, new_factor, new_diag)
            state.step += 1
            state.losses.append(loss)
        finally:
            self._guard.release()
        return loss


# ---------------------------------------------------------------------------- init="pathfinder"
def best_gaussian(result: VIResult) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The Pathfinder result's best Gaussian: ``(loc (D,), scale_tril (D, D), sites)`` with
    ``sites = {name: (constrained value, unconstrained value, unconstrained sd)}`` at the
    Gaussian's mean, per latent site."""
    from ppl_vi.guides import FullRank

    if result.method_info.get("method") != "pathfinder":
        raise ValueError("init= takes 'pathfinder' or a result of fit(guide='pathfinder')")
    guide = result.guide
    with result.param_scope(), torch.no_grad():
        if isinstance(guide, FullRank):
            loc = guide.loc.detach().clone()
            tril = (guide.scale[..., None] * guide.scale_tril).detach().clone()
        else:
            paths = result.method_info["paths"]
            k = max(range(len(paths)), key=lambda i: paths[i]["elbo"])
            loc = guide.locs[k].detach().clone()
            tril = guide.scale_trils[k].detach().clone()
        sd = tril.pow(2).sum(-1).sqrt()
        sites = {}
        for (site, u), (_, s) in zip(
            guide._unpack_latent(loc), guide._unpack_latent(sd), strict=True
        ):
            value = torch.distributions.biject_to(site["fn"].support)(u)
            sites[site["name"]] = (value.reshape(site["value"].shape), u, s)
    return loc, tril, sites


def init_guide_kwargs(guide, guide_kwargs: dict | None, sites: dict) -> dict:
    """``guide_kwargs`` with ``init_loc_fn`` (Pathfinder's locations) and ``init_scale`` (the
    median of its sds) for a guide named or given as a class that takes them."""
    import inspect

    from ppl_vi.guides import GUIDES

    cls = GUIDES.get(guide) if isinstance(guide, str) else guide
    if not isinstance(cls, type):
        raise ValueError(
            "init='pathfinder' sets the initial values of a guide built by ppl-vi: give the "
            "guide as a name or a class (not a ready instance), or set its parameters yourself"
        )
    accepted = inspect.signature(cls.__init__).parameters
    out = dict(guide_kwargs or {})
    if "init_loc_fn" in accepted:
        values = {name: value for name, (value, _, _) in sites.items()}
        out.setdefault("init_loc_fn", functools.partial(_init_to_values, values))
    if "init_scale" in accepted:
        sds = torch.cat([s.reshape(-1) for _, _, s in sites.values()])
        out.setdefault("init_scale", float(sds.median()))
    return out


def _init_to_values(values: dict, site: dict) -> torch.Tensor:
    """An init strategy: the site's value from ``values`` in torch's default dtype when it is
    called (the engine's dtype: the fit may run in another dtype than Pathfinder did)."""
    from pyro.infer.autoguide.initialization import init_to_feasible

    value = values.get(site["name"])
    if value is None:
        return init_to_feasible(site)
    return value.to(torch.get_default_dtype())


def apply_init(engine, state, loc: torch.Tensor, tril: torch.Tensor, sites: dict) -> None:
    """Set a FullRank guide to the Gaussian, a LowRank guide to its projection on low-rank plus
    diagonal covariances (:func:`patch`) and a MeanField guide to its locations and sds
    (other guides were initialised through :func:`init_guide_kwargs`)."""
    import pyro

    from ppl_vi.guides import FullRank, LowRank, MeanField

    with engine.session(state), torch.no_grad():
        if isinstance(engine.guide, FullRank):
            set_gaussian(engine.guide, loc[None].to(engine.device), tril[None].to(engine.device))
        elif isinstance(engine.guide, LowRank):
            guide = engine.guide
            like = guide.loc
            cov = (tril @ tril.T).to(like)
            factor, diag = patch(cov, (guide.cov_factor * guide.scale[:, None]).detach(),
                                 (guide.scale**2).detach(), num_iters=50)  # fmt: skip
            set_low_rank(guide, loc.to(like), factor, diag)
        elif isinstance(engine.guide, MeanField):
            store = pyro.get_param_store()
            prefix = engine.guide._pyro_name
            for name, (_, u, sd) in sites.items():
                for key, new in ((f"{prefix}.locs.{name}", u), (f"{prefix}.scales.{name}", sd)):
                    if key in store:
                        old = store[key]
                        store[key] = new.reshape(old.shape).to(engine.device, old.dtype)
