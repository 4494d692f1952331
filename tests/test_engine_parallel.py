"""Data-parallel set-up checks that need no second process: a one-process gloo group."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist

from ppl_vi import Engine


@pytest.fixture
def one_process_group(tmp_path):
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    tdist.destroy_process_group()


def test_jit_true_is_refused_with_data_parallel_training(one_process_group):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), subsample_size=4) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match=r"^jit=True is not available with distributed=True"):
        Engine(model, jit=True, distributed=True).init(torch.zeros(8))
