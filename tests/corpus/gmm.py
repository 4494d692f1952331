"""Gaussian mixture model from Pyro's tutorial ``gmm.ipynb``, verbatim.

``@config_enumerate`` model with a discrete ``assignment`` per data point in the ``data`` plate.
The tutorial fits MAP globals with ``AutoDelta(poutine.block(model, expose=["weights", "locs",
"scale"]), init_loc_fn=init_loc_fn)`` and ``TraceEnum_ELBO(max_plate_nesting=1)``, enumerating
``assignment`` out; ``pyro_guide`` and ``pyro_elbo`` build those. Data: the tutorial's five
points.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta

K = 2  # Fixed number of components.


@config_enumerate
def model(data):
    # Global variables.
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))

    with pyro.plate("data", len(data)):
        # Local variables.
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def data():
    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])
    return (data,), {}


def pyro_guide(model):
    (data_,), _ = data()

    def init_loc_fn(site):
        if site["name"] == "weights":
            # Initialize weights to uniform.
            return torch.ones(K) / K
        if site["name"] == "scale":
            return (data_.var() / 2).sqrt()
        if site["name"] == "locs":
            return data_[torch.multinomial(torch.ones(len(data_)) / len(data_), K)]
        raise ValueError(site["name"])

    return AutoDelta(
        poutine.block(model, expose=["weights", "locs", "scale"]),
        init_loc_fn=init_loc_fn,
    )


def pyro_elbo():
    return TraceEnum_ELBO(max_plate_nesting=1)
