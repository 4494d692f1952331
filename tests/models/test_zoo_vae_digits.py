"""The VAE's generative model on binarised digits: data, shapes, subsampling, decoder handling."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from ppl_vi.guides.amortized import Amortized
from ppl_vi.models import vae_digits as vd

DECODER = (
    "vae_decoder$$$0.weight",
    "vae_decoder$$$0.bias",
    "vae_decoder$$$2.weight",
    "vae_decoder$$$2.bias",
)


def test_load_data_split_and_binarisation():
    from sklearn.datasets import load_digits

    train, test = vd.load_data("train")["x"], vd.load_data("test")["x"]
    assert train.shape == (1500, 64) and test.shape == (297, 64)
    assert train.dtype == torch.get_default_dtype()
    raw = torch.as_tensor(load_digits().data)
    torch.testing.assert_close(train[0], (raw[0] > 8).to(train.dtype))
    torch.testing.assert_close(test[-1], (raw[-1] > 8).to(test.dtype))
    assert set(torch.cat([train, test]).unique().tolist()) == {0.0, 1.0}
    assert vd.load_data("test", n=5)["x"].shape == (5, 64)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        vd.load_data("valid")


def test_shapes_and_params():
    data = vd.load_data(n=10)
    trace = poutine.trace(vd.model).get_trace(**data, latent_dim=3, hidden_dim=7)
    assert trace.nodes["z"]["value"].shape == (10, 3)
    assert trace.nodes["z"]["fn"].event_shape == (3,)
    assert trace.nodes["x"]["fn"].batch_shape == (10,)
    assert trace.nodes["x"]["fn"].event_shape == (64,)
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted(DECODER)
    assert store["vae_decoder$$$0.weight"].shape == (7, 3)
    assert store["vae_decoder$$$2.weight"].shape == (64, 7)


def test_subsampling_uses_the_batch_rows_and_scales():
    data = vd.load_data()
    trace = poutine.trace(vd.model).get_trace(**data, subsample_size=32)
    idx = trace.nodes["data"]["value"]
    assert trace.nodes["z"]["value"].shape == (32, 8)
    torch.testing.assert_close(trace.nodes["x"]["value"], data["x"][idx])
    assert trace.nodes["x"]["scale"] == pytest.approx(1500 / 32)
    assert trace.nodes["z"]["scale"] == pytest.approx(1500 / 32)


def test_decoder_init_is_fixed_and_the_template_is_never_trained():
    data = vd.load_data(n=16)
    template = {k: v.clone() for k, v in vd.decoder_template().state_dict().items()}
    poutine.trace(vd.model).get_trace(**data)
    first = {k: pyro.param(k).detach().clone() for k in DECODER}
    guide = Amortized(vd.model, hidden_dims=(16,))
    svi = SVI(vd.model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        svi.step(**data)
    assert not torch.equal(pyro.param(DECODER[0]).detach(), first[DECODER[0]])
    for k, v in vd.decoder_template().state_dict().items():
        torch.testing.assert_close(v, template[k], atol=0, rtol=0)
    pyro.clear_param_store()  # a fresh store starts from the same weights
    poutine.trace(vd.model).get_trace(**data)
    for k in DECODER:
        torch.testing.assert_close(pyro.param(k).detach(), first[k], atol=0, rtol=0)


def test_one_svi_step_updates_decoder_and_encoder():
    data = vd.load_data(n=64)
    guide = Amortized(vd.model, hidden_dims=(32,))
    svi = SVI(vd.model, guide, Adam({"lr": 0.01}), Trace_ELBO(max_plate_nesting=1))
    guide(**data, subsample_size=16)
    store = pyro.get_param_store()
    before = {k: store[k].detach().clone() for k in store.keys()}
    assert any(k.startswith("Amortized.encoder") for k in before)
    assert all(k in before for k in DECODER)
    svi.step(**data, subsample_size=16)
    for k, v in before.items():
        assert not torch.equal(store[k].detach(), v), k  # every weight moved


def test_size_change_needs_a_fresh_store():
    data = vd.load_data(n=4)
    poutine.trace(vd.model).get_trace(**data)
    with pytest.raises(ValueError, match="call pyro.clear_param_store"):
        poutine.trace(vd.model).get_trace(**data, latent_dim=3)


def test_prior_predictive_and_dtype(float64):
    trace = poutine.trace(vd.model).get_trace(num_data=5)
    assert trace.nodes["x"]["value"].shape == (5, 64)
    assert trace.nodes["x"]["value"].dtype == torch.float64
    pyro.clear_param_store()
    data = {"x": vd.load_data(n=3)["x"].float()}
    trace = poutine.trace(vd.model).get_trace(**data)
    assert trace.nodes["z"]["value"].dtype == torch.float32
    with pytest.raises(ValueError, match="pass either x or num_data"):
        vd.model()
