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


@pytest.fixture
def sigint_handled():
    """Python's own SIGINT handler for the test. A process started in the background by a
    non-interactive shell (``make test &``) ignores SIGINT, and so would a test that sends it."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
