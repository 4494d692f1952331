"""No hidden global state: the caller's random stream, results, threads, keyword namespaces."""

import threading

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi.guides import IAF, MeanField
from ppl_vi.models import normal_normal

DATA = normal_normal.load_data()
QUICK = {"num_steps": 150, "progress": False, "convergence": None}


def test_fit_leaves_the_global_random_stream_alone():
    pyro.set_rng_seed(11)
    expected = (torch.rand(3), np.random.rand(3))  # noqa: NPY002 - the global stream
    pyro.set_rng_seed(11)
    ppl_vi.fit(normal_normal.model, **DATA, **QUICK)
    after = (torch.rand(3), np.random.rand(3))  # noqa: NPY002
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])


def test_simulate_then_fit_loops_get_different_data():
    pyro.set_rng_seed(0)
    datasets, means = [], []
    for _ in range(3):
        x = 2.0 + torch.randn(20)
        datasets.append(x)
        result = ppl_vi.fit(normal_normal.model, x=x, **QUICK)
        means.append(float(result.params["MeanField.locs.mu"]))
    assert not torch.equal(datasets[0], datasets[1]) and not torch.equal(datasets[1], datasets[2])
    assert len(set(means)) == 3


def test_seed_none_draws_from_and_advances_the_global_stream():
    pyro.set_rng_seed(4)
    a = ppl_vi.fit(normal_normal.model, **DATA, seed=None, **QUICK)
    after_a = torch.rand(1)
    pyro.set_rng_seed(4)
    b = ppl_vi.fit(normal_normal.model, **DATA, seed=4, **QUICK)
    np.testing.assert_array_equal(a.losses, b.losses)
    pyro.set_rng_seed(4)
    assert not torch.equal(torch.rand(1), after_a), "seed=None consumed the global stream"


@pytest.mark.parametrize("guide_cls", [MeanField, IAF])
def test_a_reused_guide_does_not_change_an_earlier_result(guide_cls):
    alone = ppl_vi.fit(normal_normal.model, **DATA, guide=guide_cls(normal_normal.model), **QUICK)
    guide = guide_cls(normal_normal.model)
    first = ppl_vi.fit(normal_normal.model, **DATA, guide=guide, **QUICK)
    # a second fit trains the same guide object (on other data) before `first` is ever used
    second = ppl_vi.fit(normal_normal.model, x=DATA["x"] + 5.0, guide=guide, **QUICK)
    for name, value in alone.params.items():
        assert torch.equal(first.params[name], value), name
    assert torch.equal(first.sample(50, seed=1)["mu"], alone.sample(50, seed=1)["mu"])
    # the second fit moved on from the first one's parameters, and using the first result
    # leaves the second alone
    shift = second.sample(500, seed=1)["mu"].mean() - first.sample(500, seed=1)["mu"].mean()
    assert float(shift) > 0.5  # towards a mean 4.8 higher, at lr 0.01 for 150 steps
    after = second.params
    first.sample(10)
    assert all(torch.equal(second.params[k], v) for k, v in after.items())


def test_a_reused_pyro_module_guide_keeps_results_apart():
    class Guide(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(1, 2)
            pyro.nn.module.to_pyro_module_(self.net)

        def forward(self, x):
            loc, log_scale = self.net(torch.ones(1))
            pyro.sample("mu", dist.Normal(loc, log_scale.exp()))

    guide = Guide()
    a = ppl_vi.fit(normal_normal.model, **DATA, guide=guide, **QUICK)
    a_draws = a.sample(20, seed=0)["mu"]
    b = ppl_vi.fit(normal_normal.model, x=DATA["x"] - 5.0, guide=guide, **QUICK)
    assert torch.equal(a.sample(20, seed=0)["mu"], a_draws)
    assert float(b.sample(200, seed=0)["mu"].mean()) < float(a_draws.mean()) - 2.0


def test_two_fits_in_two_threads_equal_the_same_fits_in_turn():
    inputs = [DATA["x"], DATA["x"] + 3.0]
    alone = [ppl_vi.fit(normal_normal.model, x=x, **QUICK) for x in inputs]
    out, errors = [None, None], []

    def work(i):
        try:
            out[i] = ppl_vi.fit(normal_normal.model, x=inputs[i], **QUICK)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for mine, reference in zip(out, alone, strict=True):
        np.testing.assert_array_equal(mine.losses, reference.losses)
        for name, value in reference.params.items():
            assert torch.equal(mine.params[name], value)


# ------------------------------------------------------------------ keyword namespaces
def model_with_seed(x, seed=0):
    mu = pyro.sample("mu", dist.Normal(float(seed), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def test_a_model_argument_named_like_a_fit_option_is_refused():
    with pytest.raises(
        TypeError,
        match=r"seed=3 is ambiguous: 'seed' is both an option of "
        r"ppl_vi.fit and an argument of the model.*model_kwargs",
    ):
        ppl_vi.fit(model_with_seed, DATA["x"], seed=3, **QUICK)


def test_model_kwargs_keep_the_model_arguments_apart():
    result = ppl_vi.fit(model_with_seed, DATA["x"], seed=3, model_kwargs={"seed": 50}, **QUICK)
    assert result.model_kwargs["seed"] == 50
    # the prior moved to 50: the fitted mean is pulled towards it
    assert float(result.params["MeanField.locs.mu"]) > 1.0
    # given positionally the model's argument is not ambiguous
    positional = ppl_vi.fit(model_with_seed, DATA["x"], 50, seed=3, **QUICK)
    np.testing.assert_array_equal(positional.losses, result.losses)
    with pytest.raises(TypeError, match=r"given twice"):
        ppl_vi.fit(model_with_seed, x=DATA["x"], model_kwargs={"x": DATA["x"]}, **QUICK)
