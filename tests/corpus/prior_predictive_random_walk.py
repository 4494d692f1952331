"""Student-t random walk with ``pyro.deterministic`` from Pyro's tutorial
``prior_predictive.ipynb``, verbatim.

``process_noise`` (StudentT, ``dt`` plate) is cumulated into ``trend =
pyro.deterministic("trend", process_noise.cumsum(-1))`` and observed with Normal noise in a
``t`` plate; the model signature is ``model(T: int = 1000, data=None)``. Change: ``T=100`` and
the data are one trajectory simulated from the model at ``df=3, p_scale=0.1, m_scale=1``, drawn
with ``poutine.condition`` as in the tutorial's ``plot_trajectory`` (under ``poutine.seed``).
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch


def model(T: int = 1000, data=None):
    # Sample parameters from the prior.
    df = pyro.sample("df", dist.LogNormal(0, 1))
    p_scale = pyro.sample("p_scale", dist.LogNormal(0, 1))  # process noise
    m_scale = pyro.sample("m_scale", dist.LogNormal(0, 1))  # measurement noise

    # Simulate a time series.
    with pyro.plate("dt", T):
        process_noise = pyro.sample("process_noise", dist.StudentT(df, 0, p_scale))
    trend = pyro.deterministic("trend", process_noise.cumsum(-1))
    with pyro.plate("t", T):
        return pyro.sample("obs", dist.Normal(trend, m_scale), obs=data)


def data():
    params = {
        "df": torch.as_tensor(3.0),
        "p_scale": torch.as_tensor(0.1),
        "m_scale": torch.as_tensor(1.0),
    }
    trajectory = poutine.seed(poutine.condition(model, params), rng_seed=12345)(T=100)
    return (), {"T": 100, "data": trajectory.detach()}
