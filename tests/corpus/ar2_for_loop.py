"""AR(2) time series with a Python ``for`` loop, NumPyro's ``examples/ar2.py`` (``ar2_for_loop``)
in Pyro.

``numpyro`` swapped for ``pyro`` and ``jnp.asarray(mu)`` for ``torch.stack(mu)``: one observed
site ``y_{i}`` per step, the previous *observed* values carried in Python variables, and
``pyro.deterministic("mu", ...)`` at the end. Data: 30 steps of a simulated AR(2) series as a
float64 numpy array, like the example's ``np`` data.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch


def model(y):
    alpha_1 = pyro.sample("alpha_1", dist.Normal(0, 1))
    alpha_2 = pyro.sample("alpha_2", dist.Normal(0, 1))
    const = pyro.sample("const", dist.Normal(0, 1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1))

    y_prev = y[1]
    y_prev_prev = y[0]
    mu = []
    for i in range(2, len(y)):
        m_t = const + alpha_1 * y_prev + alpha_2 * y_prev_prev
        mu.append(m_t)
        y_t = pyro.sample(f"y_{i}", dist.Normal(m_t, sigma), obs=y[i])
        y_prev_prev = y_prev
        y_prev = y_t

    pyro.deterministic("mu", torch.stack(mu))


def data():
    rng = np.random.default_rng(0)
    num_data, alpha_1, alpha_2, const, sigma = 30, 0.6, -0.3, 0.5, 0.8
    y = np.zeros(num_data)
    for t in range(2, num_data):
        y[t] = const + alpha_1 * y[t - 1] + alpha_2 * y[t - 2] + sigma * rng.standard_normal()
    return (y,), {}
