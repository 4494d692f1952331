"""Helpers shared by the model-zoo tests."""

import pyro
from pyro import poutine


def batched_log_density(model, zs, data):
    """The model's log density of site "z" at each row of zs, via an outer plate over the draws."""

    def batched(**kwargs):
        with pyro.plate("draws", zs.shape[0], dim=-1):
            return model(**kwargs)

    trace = poutine.trace(poutine.condition(batched, data={"z": zs})).get_trace(**data)
    trace.compute_log_prob()
    return trace.nodes["z"]["log_prob"]
