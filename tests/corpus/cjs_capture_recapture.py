"""Cormack-Jolly-Seber capture-recapture ``model_1`` from Pyro's
``examples/capture_recapture/cjs.py``, verbatim.

Scalar ``phi``/``rho ~ Uniform(0, 1)``, an ``animals`` plate and a ``pyro.markov`` time loop of
discrete alive states ``z_t`` (``infer={"enumerate": "parallel"}``) under
``poutine.mask(mask=first_capture_mask)``. The example's guide is
``AutoDiagonalNormal(poutine.block(model, expose_fn=lambda msg: msg["name"][0:3] in ["phi",
"rho"]))`` with ``TraceEnum_ELBO(max_plate_nesting=1, num_particles=20,
vectorize_particles=True)``; ``pyro_guide``/``pyro_elbo`` build those. Change: the dipper CSV is
replaced by 80 simulated capture histories over 5 occasions (float 0/1 tensor, as the example
loads it); ``sex`` is unused by ``model_1`` and passed as ``None`` as in the example.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal


def model(capture_history, sex):
    N, T = capture_history.shape
    phi = pyro.sample("phi", dist.Uniform(0.0, 1.0))  # survival probability
    rho = pyro.sample("rho", dist.Uniform(0.0, 1.0))  # recapture probability

    with pyro.plate("animals", N, dim=-1):
        z = torch.ones(N)
        # we use this mask to eliminate extraneous log probabilities
        # that arise for a given individual before its first capture.
        first_capture_mask = torch.zeros(N).bool()
        for t in pyro.markov(range(T)):
            with poutine.mask(mask=first_capture_mask):
                mu_z_t = first_capture_mask.float() * phi * z + (1 - first_capture_mask.float())
                # we use parallel enumeration to exactly sum out
                # the discrete states z_t.
                z = pyro.sample(
                    f"z_{t}",
                    dist.Bernoulli(mu_z_t),
                    infer={"enumerate": "parallel"},
                )
                mu_y_t = rho * z
                pyro.sample(f"y_{t}", dist.Bernoulli(mu_y_t), obs=capture_history[:, t])
            first_capture_mask |= capture_history[:, t].bool()


def data():
    rng = np.random.default_rng(0)
    N, T, phi, rho = 80, 5, 0.7, 0.6
    first = rng.integers(0, T - 1, size=N)
    capture_history = np.zeros((N, T))
    for i in range(N):
        capture_history[i, first[i]] = 1.0
        alive = True
        for t in range(first[i] + 1, T):
            alive = alive and rng.random() < phi
            capture_history[i, t] = float(alive and rng.random() < rho)
    return (torch.tensor(capture_history).float(), None), {}


def pyro_guide(model):
    # we use poutine.block to only expose the continuous latent variables
    # in the models to AutoDiagonalNormal (all of which begin with 'phi'
    # or 'rho')
    def expose_fn(msg):
        return msg["name"][0:3] in ["phi", "rho"]

    return AutoDiagonalNormal(poutine.block(model, expose_fn=expose_fn))


def pyro_elbo():
    return TraceEnum_ELBO(max_plate_nesting=1, num_particles=20, vectorize_particles=True)
