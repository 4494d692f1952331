"""NumPyro counterparts of two zoo models, for benchmark scripts that compare against NumPyro.

The benchmark scripts import this module as a sibling (``from _numpyro import ...``; they run
from the repository root as ``python benchmarks/x.py``). It holds

- NumPyro translations of :mod:`ppl_vi.models.eight_schools` (non-centred) and
  :mod:`ppl_vi.models.logistic_regression`, with the same distributions, priors,
  parameterisation, site names, shapes and plates as the Pyro models;
- :func:`log_density_check`, which shows the translations are the same models: both log
  joint densities agree at random latent values;
- :func:`svi_step_times` (NumPyro SVI, ``AutoNormal`` guide, ``Trace_ELBO``, Adam 0.01, jitted)
  and :func:`nuts` (NumPyro NUTS, one chain, default settings).

NumPyro and JAX are optional (``pip install 'ppl-vi[numpyro]'``): importing this module never
imports them; every function that needs them imports them when called. Use :func:`available`
to decide whether to run the comparison.

Importing this module also configures JAX, before JAX is imported, for a fair comparison with
torch running on one thread: CPU only and single-threaded XLA CPU execution, float32
(:func:`threads_note` describes it). The settings only take effect if JAX has not been
imported earlier in the process.

    python benchmarks/_numpyro.py   # checks the translations, then times SVI and NUTS
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable

import numpy as np

__all__ = [
    "MODELS",
    "available",
    "threads_note",
    "eight_schools",
    "logistic_regression",
    "load_data",
    "log_densities",
    "log_density_check",
    "svi_step_times",
    "nuts",
]

#: Names accepted by the functions below.
MODELS = ("eight_schools", "logistic_regression")

_XLA_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_JAX_IMPORTED_BEFORE_CONFIG = "jax" in sys.modules


def _configure_jax() -> None:
    """Single-threaded CPU XLA, set through the environment before JAX is imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _XLA_THREAD_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_XLA_THREAD_FLAGS}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


_configure_jax()


def available() -> tuple[bool, str]:
    """Whether NumPyro and JAX can be imported.

    Returns
    -------
    tuple of (bool, str)
        ``(True, "numpyro X / jax Y")``, or ``(False, reason)`` with an install hint.
    """
    try:
        import jax
        import numpyro
    except ImportError:
        return (
            False,
            "NumPyro is not installed (pip install 'ppl-vi[numpyro]'); NumPyro comparisons skipped",
        )
    return True, f"numpyro {numpyro.__version__} / jax {jax.__version__}"


def threads_note() -> str:
    """One line describing how JAX was configured for the comparison."""
    note = (
        f"JAX: XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (single-threaded XLA CPU "
        f"execution), JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r}, float32"
    )
    if _JAX_IMPORTED_BEFORE_CONFIG:
        note += "; WARNING: jax was imported before _numpyro, so these settings may not apply"
    return note


# --------------------------------------------------------------------------------------------
# Models: line-by-line translations of models/eight_schools.py and models/logistic_regression.py


def eight_schools(J: int, sigma, y=None):
    r"""Non-centred eight schools, as :func:`ppl_vi.models.eight_schools.model`.

    .. math::

        \mu \sim \mathcal{N}(0, 5^2), \quad \tau \sim \mathrm{HalfCauchy}(5), \quad
        \tilde\theta_j \sim \mathcal{N}(0, 1), \quad \theta_j = \mu + \tau\tilde\theta_j, \quad
        y_j \sim \mathcal{N}(\theta_j, \sigma_j^2),

    with ``J`` schools, known standard errors ``sigma`` (shape ``(J,)``) and observed effects
    ``y`` (shape ``(J,)``; sampled when ``None``). Sites ``mu``, ``tau``, ``theta_t``
    (plate ``"school"``, dim -1), deterministic ``theta`` and observed ``y``.
    """
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", J, dim=-1):
        theta_t = numpyro.sample("theta_t", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_t)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)
    return theta


def logistic_regression(X, y=None, prior_scale: float | None = None):
    r"""Logistic regression, as :func:`ppl_vi.models.logistic_regression.model`.

    .. math::

        \alpha \sim \mathcal{N}(0, s_0^2), \quad \beta \sim \mathcal{N}(0, s_0^2 I_D), \quad
        y_i \sim \mathrm{Bernoulli}\big(\operatorname{logit}^{-1}(\alpha + x_i^\top\beta)\big),

    with features ``X`` (shape ``(N, D)``), labels ``y`` (0.0 / 1.0, shape ``(N,)``; sampled
    when ``None``) and prior scale :math:`s_0` = ``prior_scale`` (default
    ``ppl_vi.models.logistic_regression.PRIOR_SCALE``). Sites ``alpha``, ``beta`` (one vector
    site, ``.to_event(1)``) and observed ``y`` in the plate ``"data"`` (dim -1). The Pyro
    model's mini-batch option (``subsample_size``) is not translated.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    if prior_scale is None:
        from ppl_vi.models.logistic_regression import PRIOR_SCALE

        prior_scale = PRIOR_SCALE
    n, d = X.shape[-2], X.shape[-1]
    alpha = numpyro.sample("alpha", dist.Normal(0.0, prior_scale))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(d), prior_scale).to_event(1))
    with numpyro.plate("data", n, dim=-1):
        logits = alpha + (X * beta).sum(-1)  # as in the Pyro model
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y)
    return logits


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"name must be one of {MODELS} (got name={name!r})")


def _pyro_module(name: str):
    _check_name(name)
    if name == "eight_schools":
        from ppl_vi.models import eight_schools as module
    else:
        from ppl_vi.models import logistic_regression as module
    return module


def load_data(name: str) -> dict:
    """The Pyro model's data (``load_data()`` of the zoo module) as NumPy arrays.

    Integers (``J``) stay integers; tensors become arrays of the same dtype (float32 by
    default), which JAX keeps as float32.
    """
    data = _pyro_module(name).load_data()
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in data.items()}


def _bound_model(name: str) -> Callable:
    """The NumPyro model with its data bound, so jitted functions take no data arguments."""
    _check_name(name)
    model = eight_schools if name == "eight_schools" else logistic_regression
    return functools.partial(model, **load_data(name))


# --------------------------------------------------------------------------------------------
# Translation check


def _random_latents(name: str, data: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Latent values in float32 (``tau`` positive), shapes as in the models."""
    if name == "eight_schools":
        latents = {
            "mu": rng.normal(0.0, 5.0),
            "tau": np.exp(rng.normal(1.0, 1.0)),
            "theta_t": rng.normal(0.0, 1.0, size=data["J"]),
        }
    else:
        d = data["X"].shape[-1]
        latents = {"alpha": rng.normal(0.0, 1.0), "beta": rng.normal(0.0, 1.0, size=d)}
    return {k: np.asarray(v, dtype=np.float32) for k, v in latents.items()}


def log_densities(name: str, num_points: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log joint densities of the Pyro model and of its translation at the same latent values.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`.
    num_points : int
        Number of random latent values.
    seed : int
        Seed of the NumPy generator that draws them.

    Returns
    -------
    tuple of numpy.ndarray
        ``(pyro_logp, numpyro_logp)``, each of shape ``(num_points,)``: Pyro's
        ``log_prob_sum()`` of the model traced with the latents conditioned, and
        ``numpyro.infer.util.log_density`` of the NumPyro model, both in float32.
    """
    import jax.numpy as jnp
    import pyro
    import torch
    from numpyro.infer.util import log_density

    if num_points < 1:
        raise ValueError(f"num_points must be >= 1 (got num_points={num_points})")
    module = _pyro_module(name)
    torch_data = module.load_data()
    model = _bound_model(name)
    rng = np.random.default_rng(seed)
    pyro_logp, numpyro_logp = [], []
    for _ in range(num_points):
        latents = _random_latents(name, torch_data, rng)
        conditioned = pyro.condition(
            module.model, data={k: torch.as_tensor(v) for k, v in latents.items()}
        )
        trace = pyro.poutine.trace(conditioned).get_trace(**torch_data)
        pyro_logp.append(float(trace.log_prob_sum()))
        logp, _ = log_density(model, (), {}, {k: jnp.asarray(v) for k, v in latents.items()})
        numpyro_logp.append(float(logp))
    return np.array(pyro_logp), np.array(numpyro_logp)


def log_density_check(name: str, num_points: int = 5, seed: int = 0) -> float:
    """Largest absolute difference of the two log joint densities (see :func:`log_densities`).

    In float32 it should be about 1e-4 relative to the size of the log density or less.
    """
    pyro_logp, numpyro_logp = log_densities(name, num_points, seed)
    return float(np.max(np.abs(pyro_logp - numpyro_logp)))


# --------------------------------------------------------------------------------------------
# Timing


def svi_step_times(name: str, steps: int = 1000, repeats: int = 1, seed: int = 0) -> dict:
    """Seconds per NumPyro SVI step, once the update is compiled.

    NumPyro SVI with an ``AutoNormal`` guide, ``Trace_ELBO()`` and ``numpyro.optim.Adam(0.01)``;
    ``jax.jit(svi.update)`` is compiled once (timed as ``compile_s``), then
    every repeat starts from a fresh ``svi.init``, runs 5 warm-up updates and times ``steps``
    updates, blocking on the final state before the clock stops (JAX dispatches
    asynchronously, so the loop measures throughput).

    Parameters
    ----------
    name : str
        One of :data:`MODELS`.
    steps : int
        Timed updates per repeat.
    repeats : int
        Number of timed repeats.
    seed : int
        Seed of the PRNG key (repeat ``r`` uses ``seed + r``).

    Returns
    -------
    dict
        ``cpu_s_per_step`` (list, one per repeat): CPU seconds of this process per step
        (``time.process_time``, as the torch side measures, all threads counted);
        ``wall_s_per_step`` (list): wall seconds per step (``time.perf_counter``);
        ``compile_s`` (float): wall seconds of the first ``svi.init`` (which runs the model
        and guide op by op) and the first, compiling call of the jitted update;
        ``final_loss`` (list): the last loss (-ELBO estimate) of each repeat.
    """
    import jax
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    if steps < 1 or repeats < 1:
        raise ValueError(f"steps and repeats must be >= 1 (got steps={steps}, repeats={repeats})")
    model = _bound_model(name)
    svi = SVI(model, AutoNormal(model), numpyro.optim.Adam(0.01), Trace_ELBO())
    update = jax.jit(svi.update)

    start = time.perf_counter()
    jax.block_until_ready(update(svi.init(jax.random.PRNGKey(seed))))
    compile_s = time.perf_counter() - start

    out = {"cpu_s_per_step": [], "wall_s_per_step": [], "compile_s": compile_s, "final_loss": []}
    for r in range(repeats):
        state = svi.init(jax.random.PRNGKey(seed + r))
        for _ in range(5):
            state, loss = update(state)
        jax.block_until_ready(state)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            state, loss = update(state)
        jax.block_until_ready((state, loss))
        out["cpu_s_per_step"].append((time.process_time() - cpu) / steps)
        out["wall_s_per_step"].append((time.perf_counter() - wall) / steps)
        out["final_loss"].append(float(loss))
    return out


def nuts(name: str, num_warmup: int = 500, num_samples: int = 1000, seed: int = 0) -> dict:
    """NumPyro NUTS (one chain, default settings), run twice in this process.

    ``MCMC.run`` (warm-up and sampling) is wrapped in one ``jax.jit``: the first call (PRNG
    key ``seed``) traces and compiles it, the second (key ``seed + 1``) reuses the compiled
    sampler. Plain repeated ``MCMC.run`` calls would not show the compiled speed: in NumPyro
    0.22 every call builds a fresh collection closure and so recompiles its sampling loop
    (seconds, against a fraction of a second of sampling for these models). Both clocks stop
    after ``jax.block_until_ready`` on the draws.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`.
    num_warmup, num_samples : int
        Warm-up (adaptation) and kept iterations per run.
    seed : int
        Seed of the first run's PRNG key.

    Returns
    -------
    dict
        ``plain_first_wall_s`` / ``plain_wall_s``: wall seconds of a first and a second plain
        ``MCMC.run`` call (as users call it), ``plain_means`` the second call's means;
        ``first_wall_s`` / ``first_cpu_s``: wall and process-CPU seconds of the first run
        (compile + sample); ``wall_s`` / ``cpu_s``: the same for the second run (once
        compiled); ``means`` and ``sds``: site name -> NumPy array, posterior mean and
        standard deviation of every latent site and of the deterministic ``theta``, from the
        second run's ``num_samples`` draws; ``num_divergent``: divergent transitions among
        those draws.
    """
    import jax
    from numpyro.infer import MCMC, NUTS

    def make_mcmc():
        return MCMC(
            NUTS(_bound_model(name)),
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=1,
            progress_bar=False,
        )

    mcmc = make_mcmc()

    @jax.jit
    def run(rng_key):
        mcmc.run(rng_key, extra_fields=("diverging",))
        return mcmc.get_samples(), mcmc.get_extra_fields()["diverging"]

    times = []
    for key in (seed, seed + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        samples, diverging = jax.block_until_ready(run(jax.random.PRNGKey(key)))
        times.append((time.perf_counter() - wall, time.process_time() - cpu))

    # as users call it: MCMC.run twice; the second call is the usual "once compiled" figure
    plain = make_mcmc()
    plain_times = []
    for key in (seed, seed + 1):
        wall = time.perf_counter()
        plain.run(jax.random.PRNGKey(key))
        plain_samples = jax.block_until_ready(plain.get_samples())
        plain_times.append(time.perf_counter() - wall)
    plain_samples = {k: np.asarray(v) for k, v in plain_samples.items()}

    samples = {k: np.asarray(v) for k, v in samples.items()}
    return {
        "plain_first_wall_s": plain_times[0],
        "plain_wall_s": plain_times[1],
        "plain_means": {k: v.mean(0) for k, v in plain_samples.items()},
        "first_wall_s": times[0][0],
        "first_cpu_s": times[0][1],
        "wall_s": times[1][0],
        "cpu_s": times[1][1],
        "means": {k: v.mean(0) for k, v in samples.items()},
        "sds": {k: v.std(0, ddof=1) for k, v in samples.items()},
        "num_divergent": int(np.asarray(diverging).sum()),
    }


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    ok, message = available()
    print(message)
    if not ok:
        sys.exit(0)
    print(f"torch {torch.__version__}: {torch.get_num_threads()} intra-op thread(s)")
    print(threads_note())
    np.set_printoptions(precision=3, suppress=True, linewidth=100)
    for model_name in MODELS:
        print(f"\n== {model_name}")
        pyro_logp, numpyro_logp = log_densities(model_name)
        diff = float(np.max(np.abs(pyro_logp - numpyro_logp)))
        print(f"log density: max |pyro - numpyro| = {diff:.3g} (log p in {pyro_logp.round(2)})")
        times = svi_step_times(model_name, steps=1000)
        print(
            f"NumPyro SVI (AutoNormal, Trace_ELBO, Adam 0.01): "
            f"{1e3 * times['cpu_s_per_step'][0]:.4f} ms/step CPU, "
            f"{1e3 * times['wall_s_per_step'][0]:.4f} ms/step wall, "
            f"compile {times['compile_s']:.2f} s, final loss {times['final_loss'][0]:.2f}"
        )
        result = nuts(model_name)
        print(
            "NumPyro NUTS (500 warm-up + 1000 draws, 1 chain): "
            f"first run {result['first_wall_s']:.2f} s wall / {result['first_cpu_s']:.2f} s CPU "
            "(compile + sample), "
            f"compiled {result['wall_s']:.3f} s wall "
            f"({result['cpu_s']:.3f} s CPU), {result['num_divergent']} divergent"
        )
        for site, mean in result["means"].items():
            print(f"  {site:8s} mean {mean}  sd {result['sds'][site]}")
