"""Site-occupancy model with the discrete occupancy state summed out by hand in ``pyro.factor``.

The standard occupancy model (MacKenzie et al. 2002; Kery & Royle ch. 10): site ``i`` is
occupied with probability ``psi`` and, if occupied, each of ``J`` visits detects the species
with probability ``p``. Written the way Pyro users marginalise a discrete latent without
enumeration: ``log(psi) + sum_j Bernoulli(p).log_prob(y_ij)`` and ``log(1 - psi) + log[no
detections]`` combined with ``torch.logsumexp`` and added with ``pyro.factor`` inside the
``sites`` plate (cf. the ``pyro.factor`` likelihood in ``workflow.ipynb``). Data: 150 simulated
sites x 4 visits as an int64 numpy detection matrix.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch


def model(y):
    n_sites, n_visits = y.shape
    psi = pyro.sample("psi", dist.Beta(1.0, 1.0))  # occupancy probability
    p = pyro.sample("p", dist.Beta(1.0, 1.0))  # detection probability
    with pyro.plate("sites", n_sites):
        detected = y.sum(-1) > 0
        log_lik_occupied = torch.log(psi) + dist.Bernoulli(p).log_prob(y.float()).sum(-1)
        log_lik_empty = torch.log1p(-psi) + torch.log((~detected).float())
        pyro.factor("obs", torch.logsumexp(torch.stack([log_lik_occupied, log_lik_empty]), dim=0))


def data():
    rng = np.random.default_rng(0)
    n_sites, n_visits, psi, p = 150, 4, 0.6, 0.4
    occupied = rng.random(n_sites) < psi
    y = ((rng.random((n_sites, n_visits)) < p) & occupied[:, None]).astype(np.int64)
    return (y,), {}
