import warnings

import pyro
import pytest
import torch

warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)

# One intra-op thread: on a small shared machine, more threads make small models slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from a fixed seed, an empty param store and float32 defaults."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run a test in double precision (exact identities need it)."""
    torch.set_default_dtype(torch.float64)
    yield
