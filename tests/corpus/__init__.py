"""A corpus of Pyro models written the way Pyro's own examples and tutorials write them.

Each case is one module of this package defining ``model`` (a function, a bound method, a
handler-wrapped callable or a ``PyroModule`` instance) and ``data() -> (args, kwargs)``, exactly
as a user would call ``model(*args, **kwargs)``. Data come from scikit-learn's bundled data sets
or are simulated with a fixed seed; some cases hand the model numpy arrays or pandas Series
(features ``"numpy_data"`` / ``"pandas_data"``) as users do, and :func:`to_torch` converts them
the way ``check_pyro.py`` does before running plain Pyro.

Cases whose Pyro original trains with something other than ``AutoNormal`` + ``Trace_ELBO``
also define ``pyro_guide(model)`` and ``pyro_elbo()``, building the guide and ELBO that the
original uses (``pyro_recipe`` describes them).

``autonormal_fits`` records whether plain ``SVI(model, AutoNormal(model),
pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())`` runs 300 steps with finite losses on the
torch-converted data; it was measured with ``python tests/corpus/check_pyro.py``, which also
runs every ``pyro_recipe``.

Feature tags: ``to_event_matmul``, ``group_index``, ``python_if``, ``pyro_module``, ``mask``,
``factor``, ``deterministic``, ``discrete``, ``enumerate``, ``numpy_data``, ``pandas_data``,
``subsample``, ``markov``, ``funnel``, ``nested_plates``, ``improper``, ``vectorized_plate``,
``sequential_plate``, ``constrained``, ``multivariate``, ``scale``, plus ``condition``
(observations through ``pyro.condition``), ``reparam`` (``poutine.reparam``), ``nn_module``
(``pyro.module`` registering torch networks), ``amortized`` (neural guide), ``unplated_batch``
(batched sites outside any plate and without ``.to_event``, as NumPyro code writes them),
``float64`` (float64 torch data), ``list_data`` (a Python list of tensors), ``dict_data``
(a dict of tensors), ``marginalized`` (a discrete latent summed out by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import (
    ar2_for_loop,
    baseball_fully_pooled,
    baseball_partially_pooled,
    baseball_partially_pooled_with_logit,
    bayesian_regression_functional,
    bayesian_regression_module,
    bnn_pyromodule,
    cjs_capture_recapture,
    coal_mining_enumerated,
    coal_mining_python_if,
    coin_sequential_plate,
    conditioned_scale,
    dmm,
    easyguide_time_series,
    eight_schools_centered,
    eight_schools_svi,
    gamma_poisson_deterministic,
    gmm,
    hmm,
    horseshoe_regression,
    ice_cream_sales,
    lda,
    linear_regression_to_event,
    lkj_cholesky,
    logistic_growth_regional,
    logistic_regression_subsample,
    missing_covariate_obs_mask,
    mle_map_masked_prior,
    mvn_unknown_covariance,
    neals_funnel,
    neals_funnel_reparam,
    occupancy_marginalized,
    osic_hierarchical_pandas,
    poisson_glm_varying_intercept,
    prior_predictive_random_walk,
    radon_varying_intercept,
    sparse_regression,
    weighted_regression_scale,
    workflow_sparse_factor,
)

PYRO = "https://github.com/pyro-ppl/pyro/blob/dev/"
NUMPYRO = "https://github.com/pyro-ppl/numpyro/blob/master/"


@dataclass(frozen=True)
class Case:
    """One corpus model: its module, where it comes from and how plain Pyro fares on it."""

    name: str
    module: ModuleType
    source: str
    features: tuple[str, ...]
    autonormal_fits: bool
    pyro_recipe: str | None = None
    slow: bool = False

    @property
    def model(self):
        return self.module.model

    def data(self) -> tuple[tuple, dict]:
        """Fresh ``(args, kwargs)`` as the module builds them (numpy/pandas left as they are)."""
        return self.module.data()

    def torch_data(self) -> tuple[tuple, dict]:
        """``(args, kwargs)`` with numpy arrays and pandas objects converted by :func:`to_torch`."""
        args, kwargs = self.data()
        return to_torch(args), to_torch(kwargs)

    def pyro_guide(self, model=None):
        """The guide Pyro's original builds (only for cases with a ``pyro_recipe``)."""
        return self.module.pyro_guide(self.model if model is None else model)

    def pyro_elbo(self):
        """The ELBO Pyro's original uses (only for cases with a ``pyro_recipe``)."""
        return self.module.pyro_elbo()

    def __repr__(self) -> str:
        return f"Case({self.name!r})"


def to_torch(obj: Any) -> Any:
    """Convert numpy arrays/scalars and pandas Series/DataFrames to torch tensors, recursively
    through tuples, lists and dicts: float arrays become float32, integer arrays int64 and bool
    arrays bool. Torch tensors and everything else are returned unchanged."""
    import numpy as np
    import pandas as pd
    import torch

    if isinstance(obj, (pd.Series, pd.DataFrame)):
        obj = obj.to_numpy()
    if isinstance(obj, (np.ndarray, np.generic)):
        tensor = torch.as_tensor(np.asarray(obj))
        return tensor.float() if tensor.is_floating_point() else tensor
    if isinstance(obj, dict):
        return {key: to_torch(value) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_torch(value) for value in obj)
    if isinstance(obj, list):
        return [to_torch(value) for value in obj]
    return obj


CASES: list[Case] = [
    Case(
        "baseball_fully_pooled",
        baseball_fully_pooled,
        PYRO + "examples/baseball.py (fully_pooled), verbatim; Efron-Morris data inlined",
        ("vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "baseball_partially_pooled",
        baseball_partially_pooled,
        PYRO + "examples/baseball.py (partially_pooled), verbatim; Efron-Morris data inlined",
        ("vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "baseball_partially_pooled_with_logit",
        baseball_partially_pooled_with_logit,
        PYRO + "examples/baseball.py (partially_pooled_with_logit), verbatim; data inlined",
        ("vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "sparse_regression",
        sparse_regression,
        PYRO + "examples/sparse_regression.py, verbatim model; N=40, P=8, local RNG",
        ("multivariate", "constrained", "dict_data"),
        autonormal_fits=True,
        pyro_recipe="MAP: AutoDelta(model, init_loc_fn=init_loc_fn) + Trace_ELBO",
    ),
    Case(
        "bayesian_regression_module",
        bayesian_regression_module,
        PYRO + "tutorial/source/bayesian_regression.ipynb (BayesianRegression), verbatim; "
        "simulated rugged data",
        ("pyro_module", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "bayesian_regression_functional",
        bayesian_regression_functional,
        PYRO + "tutorial/source/bayesian_regression_ii.ipynb (model), verbatim; simulated "
        "rugged data passed as numpy columns",
        ("numpy_data", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "linear_regression_to_event",
        linear_regression_to_event,
        "X @ w + b with w ~ Normal(0, 1).to_event(1), the pattern of "
        + PYRO
        + "tutorial/source/predictive_deterministic.ipynb; sklearn diabetes as numpy",
        ("to_event_matmul", "numpy_data", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "gmm",
        gmm,
        PYRO + "tutorial/source/gmm.ipynb, verbatim (five data points)",
        ("discrete", "enumerate", "vectorized_plate", "constrained"),
        autonormal_fits=False,
        pyro_recipe="AutoDelta(poutine.block(model, expose=['weights', 'locs', 'scale']), "
        "init_loc_fn=...) + TraceEnum_ELBO(max_plate_nesting=1)",
    ),
    Case(
        "lda",
        lda,
        PYRO + "examples/lda.py, verbatim model and amortized guide; tiny corpus drawn from "
        "the model",
        ("discrete", "enumerate", "nested_plates", "constrained", "amortized"),
        autonormal_fits=False,
        pyro_recipe="functools.partial(parametrized_guide, make_predictor(args)) (amortized "
        "MLP guide, documents subsampled in the guide) + TraceEnum_ELBO(max_plate_nesting=2); "
        "the example uses ClippedAdam",
    ),
    Case(
        "hmm",
        hmm,
        PYRO + "examples/hmm.py (model_1), verbatim; simulated binary sequences",
        (
            "discrete",
            "enumerate",
            "markov",
            "mask",
            "nested_plates",
            "subsample",
            "constrained",
        ),
        autonormal_fits=False,
        pyro_recipe="MAP Baum-Welch: AutoDelta(poutine.block(model, expose_fn=lambda msg: "
        "msg['name'].startswith('probs_'))) + TraceEnum_ELBO(max_plate_nesting=2)",
    ),
    Case(
        "dmm",
        dmm,
        PYRO + "examples/dmm.py (Emitter, GatedTransition, DMM.model), verbatim; tiny "
        "networks, simulated sequences; the example's RNN guide is left out",
        ("markov", "scale", "mask", "nn_module", "vectorized_plate"),
        autonormal_fits=True,
        slow=True,
    ),
    Case(
        "neals_funnel",
        neals_funnel,
        PYRO + "tests/infer/reparam/test_neutra.py (neals_funnel), verbatim",
        ("funnel", "vectorized_plate"),
        autonormal_fits=True,
    ),
    Case(
        "neals_funnel_reparam",
        neals_funnel_reparam,
        "Pyro's neals_funnel under poutine.reparam(config={'x': LocScaleReparam(0.0)}), as "
        + NUMPYRO
        + "examples/funnel.py (Pyro needs a float centered)",
        ("funnel", "reparam", "vectorized_plate"),
        autonormal_fits=True,
    ),
    Case(
        "eight_schools_svi",
        eight_schools_svi,
        PYRO + "examples/eight_schools/svi.py + data.py, verbatim (mu, tau inside the plate)",
        ("vectorized_plate", "constrained"),
        autonormal_fits=True,
        pyro_recipe="hand-written mean-field guide (examples/eight_schools/svi.py) + Trace_ELBO",
    ),
    Case(
        "eight_schools_centered",
        eight_schools_centered,
        NUMPYRO + "README.md (eight_schools) in Pyro; numpy data as in the README",
        ("funnel", "numpy_data", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "poisson_glm_varying_intercept",
        poisson_glm_varying_intercept,
        "varying-intercept Poisson GLM in Pyro idiom (no single Pyro original); simulated",
        ("group_index", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "radon_varying_intercept",
        radon_varying_intercept,
        "Gelman & Hill radon varying-intercept model (PyMC multilevel primer) in Pyro, styled "
        "after "
        + NUMPYRO
        + "notebooks/source/bayesian_hierarchical_linear_regression.ipynb; simulated numpy data",
        ("group_index", "numpy_data", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "osic_hierarchical_pandas",
        osic_hierarchical_pandas,
        NUMPYRO + "notebooks/source/bayesian_hierarchical_linear_regression.ipynb (model) in "
        "Pyro; simulated data passed as pandas Series",
        ("pandas_data", "group_index", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "bnn_pyromodule",
        bnn_pyromodule,
        "PyroModule MLP with PyroSample priors, after "
        + PYRO
        + "tutorial/source/modules.ipynb and bayesian_regression.ipynb; sklearn iris",
        ("pyro_module", "vectorized_plate"),
        autonormal_fits=True,
    ),
    Case(
        "logistic_regression_subsample",
        logistic_regression_subsample,
        "logistic regression with plate(..., subsample_size=64) as in "
        + PYRO
        + "tutorial/source/svi_part_ii.ipynb and tensor_shapes.ipynb; sklearn breast cancer",
        ("subsample", "to_event_matmul"),
        autonormal_fits=True,
    ),
    Case(
        "workflow_sparse_factor",
        workflow_sparse_factor,
        PYRO + "tutorial/source/workflow.ipynb (second model), verbatim; simulated dataset dict",
        ("deterministic", "factor", "nested_plates", "constrained", "dict_data"),
        autonormal_fits=True,
    ),
    Case(
        "logistic_growth_regional",
        logistic_growth_regional,
        PYRO + "tutorial/source/logistic-growth.ipynb (regional_model2), verbatim; simulated "
        "counts",
        ("nested_plates", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "gamma_poisson_deterministic",
        gamma_poisson_deterministic,
        PYRO + "tutorial/source/predictive_deterministic.ipynb, verbatim model and data",
        ("deterministic", "to_event_matmul", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "prior_predictive_random_walk",
        prior_predictive_random_walk,
        PYRO + "tutorial/source/prior_predictive.ipynb (model), verbatim; T=100 simulated",
        ("deterministic", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "mle_map_masked_prior",
        mle_map_masked_prior,
        PYRO + "tutorial/source/mle_map.ipynb (masked_model), verbatim",
        ("mask", "improper", "vectorized_plate", "constrained"),
        autonormal_fits=True,
        pyro_recipe="MLE: AutoDelta(model) + Trace_ELBO",
    ),
    Case(
        "missing_covariate_obs_mask",
        missing_covariate_obs_mask,
        "pyro.sample(..., obs_mask=...) imputation (Pyro docs), after "
        + NUMPYRO
        + "notebooks/source/bayesian_imputation.ipynb; sklearn diabetes with NaNs as numpy",
        ("mask", "numpy_data", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "coal_mining_enumerated",
        coal_mining_enumerated,
        "PyMC disaster_model.py changepoint in Pyro's enumeration idiom ("
        + PYRO
        + "tutorial/source/enumeration.ipynb)",
        ("discrete", "enumerate", "vectorized_plate", "constrained"),
        autonormal_fits=False,
        pyro_recipe="AutoNormal(poutine.block(model, hide=['switchpoint'])) + "
        "TraceEnum_ELBO(max_plate_nesting=1)",
    ),
    Case(
        "coal_mining_python_if",
        coal_mining_python_if,
        "PyMC disaster_model.py changepoint with a continuous switchpoint, sequential plate "
        "and a Python if; first 40 years as int64 numpy",
        ("python_if", "sequential_plate", "numpy_data", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "cjs_capture_recapture",
        cjs_capture_recapture,
        PYRO + "examples/capture_recapture/cjs.py (model_1), verbatim; simulated histories",
        ("discrete", "enumerate", "markov", "mask", "vectorized_plate", "constrained"),
        autonormal_fits=False,
        pyro_recipe="AutoDiagonalNormal(poutine.block(model, expose_fn=phi*/rho*)) + "
        "TraceEnum_ELBO(max_plate_nesting=1, num_particles=20, vectorize_particles=True)",
    ),
    Case(
        "occupancy_marginalized",
        occupancy_marginalized,
        "site-occupancy model (MacKenzie 2002) with the occupancy state summed out via "
        "logsumexp in pyro.factor; simulated int64 numpy detections",
        ("factor", "marginalized", "numpy_data", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "coin_sequential_plate",
        coin_sequential_plate,
        PYRO + "tutorial/source/svi_part_ii.ipynb (sequential plate model), verbatim; data "
        "list from svi_part_i.ipynb",
        ("sequential_plate", "list_data", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "ar2_for_loop",
        ar2_for_loop,
        NUMPYRO + "examples/ar2.py (ar2_for_loop) in Pyro; 30 simulated steps as numpy",
        ("markov", "deterministic", "numpy_data", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "lkj_cholesky",
        lkj_cholesky,
        PYRO + "examples/lkj.py, verbatim (float64 data); n=200, d=3",
        ("multivariate", "constrained", "unplated_batch", "float64", "vectorized_plate"),
        autonormal_fits=False,
    ),
    Case(
        "mvn_unknown_covariance",
        mvn_unknown_covariance,
        "LKJCholesky x LogNormal(...).to_event(1) scales as in "
        + PYRO
        + "examples/contrib/forecast/bart.py, structure of examples/lkj.py; numpy data",
        ("multivariate", "constrained", "numpy_data", "vectorized_plate"),
        autonormal_fits=True,
    ),
    Case(
        "easyguide_time_series",
        easyguide_time_series,
        PYRO + "tutorial/source/easyguide.ipynb (model), verbatim; one mini-batch of 20",
        ("subsample", "markov", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "weighted_regression_scale",
        weighted_regression_scale,
        "survey-weighted regression with poutine.scale(scale=weights) (poutine.scale docs); "
        "sklearn wine as numpy",
        ("scale", "to_event_matmul", "numpy_data", "vectorized_plate", "constrained"),
        autonormal_fits=True,
    ),
    Case(
        "conditioned_scale",
        conditioned_scale,
        PYRO + "tutorial/source/intro_part_ii.ipynb (deferred_conditioned_scale), verbatim",
        ("condition",),
        autonormal_fits=True,
    ),
    Case(
        "ice_cream_sales",
        ice_cream_sales,
        PYRO + "tutorial/source/intro_part_i.ipynb (weather, ice_cream_sales), verbatim, "
        "conditioned on sales=180",
        ("discrete", "python_if", "condition"),
        autonormal_fits=False,
    ),
    Case(
        "horseshoe_regression",
        horseshoe_regression,
        NUMPYRO + "examples/horseshoe_regression.py (model_normal_likelihood) in Pyro; "
        "simulated numpy data",
        ("unplated_batch", "deterministic", "numpy_data", "constrained"),
        autonormal_fits=False,
    ),
]

assert len({case.name for case in CASES}) == len(CASES)
assert all(case.module.__name__.rsplit(".", 1)[-1] == case.name for case in CASES)

__all__ = ["CASES", "Case", "to_torch"]
