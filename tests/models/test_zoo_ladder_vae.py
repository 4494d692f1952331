"""The ladder VAE's generative model: data, site order, exact log density, subsampling, networks."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.nn import functional as F

from ppl_vi.models import ladder_vae as lv
from ppl_vi.models import vae_digits

DIMS = (5, 3, 2)  # z1, z2, z3
HIDDEN = 7


def _param(name):
    return pyro.get_param_store()[f"ladder_vae$$${name}"]


def _mlp(net, value):
    """The two-layer network ``net`` ("x", "z1", ...) of the param store, by hand."""
    hidden = F.relu(value @ _param(f"{net}.0.weight").T + _param(f"{net}.0.bias"))
    return hidden @ _param(f"{net}.2.weight").T + _param(f"{net}.2.bias")


def _log_joint_by_hand(x, z, dims):
    """log p(x, z) per image from the model's equations, with the param store's weights."""
    top = len(dims)
    total = dist.Normal(0.0, 1.0).log_prob(z[f"z{top}"]).sum(-1)
    for i in range(top - 1, 0, -1):
        out = _mlp(f"z{i}", z[f"z{i + 1}"])
        loc, scale = out[..., : dims[i - 1]], F.softplus(out[..., dims[i - 1] :]) + lv.SCALE_FLOOR
        total = total + dist.Normal(loc, scale).log_prob(z[f"z{i}"]).sum(-1)
    logits = _mlp("x", z["z1"])
    return total + dist.Bernoulli(logits=logits).log_prob(x).sum(-1)


def test_load_data_is_the_vae_digits_split():
    for split in ("train", "test"):
        torch.testing.assert_close(
            lv.load_data(split)["x"], vae_digits.load_data(split)["x"], atol=0, rtol=0
        )
    assert lv.load_data("test", n=5)["x"].shape == (5, 64)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        lv.load_data("valid")


def test_sites_in_top_down_order_with_shapes_and_params():
    data = lv.load_data(n=10)
    trace = poutine.trace(lv.model).get_trace(**data, latent_dims=DIMS, hidden_dim=HIDDEN)
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]
    assert sites == ["z3", "z2", "z1", "x"] == [*lv.site_names(DIMS), "x"]
    for i, d in enumerate(DIMS, start=1):
        assert trace.nodes[f"z{i}"]["value"].shape == (10, d)
        assert trace.nodes[f"z{i}"]["fn"].event_shape == (d,)
    assert trace.nodes["x"]["fn"].batch_shape == (10,)
    shapes = {k: tuple(v.shape) for k, v in pyro.get_param_store().items()}
    assert shapes == {
        "ladder_vae$$$x.0.weight": (7, 5),
        "ladder_vae$$$x.0.bias": (7,),
        "ladder_vae$$$x.2.weight": (64, 7),
        "ladder_vae$$$x.2.bias": (64,),
        "ladder_vae$$$z1.0.weight": (7, 3),
        "ladder_vae$$$z1.0.bias": (7,),
        "ladder_vae$$$z1.2.weight": (10, 7),
        "ladder_vae$$$z1.2.bias": (10,),
        "ladder_vae$$$z2.0.weight": (7, 2),
        "ladder_vae$$$z2.0.bias": (7,),
        "ladder_vae$$$z2.2.weight": (6, 7),
        "ladder_vae$$$z2.2.bias": (6,),
    }


def test_log_density_is_the_models_equations(float64):
    """Exact: the trace's log p(x, z) per image equals the equations of the docstring."""
    data = lv.load_data(n=6)
    trace = poutine.trace(lv.model).get_trace(**data, latent_dims=DIMS, hidden_dim=HIDDEN)
    trace.compute_log_prob()
    per_image = sum(trace.nodes[n]["log_prob"] for n in ["z3", "z2", "z1", "x"])
    z = {n: trace.nodes[n]["value"] for n in ["z3", "z2", "z1"]}
    expected = _log_joint_by_hand(data["x"], z, DIMS)
    torch.testing.assert_close(per_image, expected, atol=1e-10, rtol=0)


def test_latents_may_carry_particle_dims(float64):
    """Vectorized particles: z with a leading dim gives each particle its own log density."""
    data = lv.load_data(n=4)
    gen = torch.Generator().manual_seed(1)
    z = {f"z{i}": torch.randn(3, 4, d, generator=gen) for i, d in enumerate(DIMS, start=1)}

    def batched(**kwargs):
        with pyro.plate("particles", 3, dim=-2):
            return lv.model(**kwargs)

    conditioned = poutine.condition(batched, data=z)
    trace = poutine.trace(conditioned).get_trace(**data, latent_dims=DIMS, hidden_dim=HIDDEN)
    trace.compute_log_prob()
    per_image = sum(trace.nodes[n]["log_prob"] for n in ["z3", "z2", "z1", "x"])
    assert per_image.shape == (3, 4)
    torch.testing.assert_close(
        per_image, _log_joint_by_hand(data["x"], z, DIMS), atol=1e-10, rtol=0
    )


def test_subsampling_uses_the_batch_rows_and_scales():
    data = lv.load_data()
    trace = poutine.trace(lv.model).get_trace(**data, subsample_size=32)
    idx = trace.nodes["data"]["value"]
    assert trace.nodes["z1"]["value"].shape == (32, 8) and trace.nodes["z2"]["value"].shape == (
        32,
        4,
    )
    torch.testing.assert_close(trace.nodes["x"]["value"], data["x"][idx])
    for name in ("z2", "z1", "x"):
        assert trace.nodes[name]["scale"] == pytest.approx(1500 / 32)


def test_init_is_fixed_the_template_is_never_trained_and_the_store_drives_the_model():
    data = lv.load_data(n=16)
    template = {k: v.clone() for k, v in lv.decoder_template().state_dict().items()}
    names = [f"ladder_vae$$${k}" for k in template]
    poutine.trace(lv.model).get_trace(**data)
    first = {k: pyro.param(k).detach().clone() for k in names}
    for k, v in template.items():
        torch.testing.assert_close(first[f"ladder_vae$$${k}"], v.float(), atol=0, rtol=0)
    # a step of gradient ascent on log p(x, z) moves every weight in the store
    params = [pyro.get_param_store()._params[k] for k in names]
    optim = torch.optim.SGD(params, lr=0.1)
    trace = poutine.trace(lv.model).get_trace(**data)
    (-trace.log_prob_sum()).backward()
    optim.step()
    for k in names:
        assert not torch.equal(pyro.param(k).detach(), first[k]), k
    # the model runs the store's (trained) values: the logits follow them
    trained = poutine.trace(lv.model).get_trace(**data)
    z1 = trained.nodes["z1"]["value"]
    torch.testing.assert_close(trained.nodes["_RETURN"]["value"], _mlp("x", z1).detach())
    for k, v in lv.decoder_template().state_dict().items():
        torch.testing.assert_close(v, template[k], atol=0, rtol=0)
    pyro.clear_param_store()  # a fresh store starts from the same weights
    poutine.trace(lv.model).get_trace(**data)
    for k in names:
        torch.testing.assert_close(pyro.param(k).detach(), first[k], atol=0, rtol=0)


def test_size_change_needs_a_fresh_store():
    data = lv.load_data(n=4)
    poutine.trace(lv.model).get_trace(**data)
    with pytest.raises(ValueError, match=r"latent_dims=\(8, 3\).*call pyro.clear_param_store"):
        poutine.trace(lv.model).get_trace(**data, latent_dims=(8, 3))


def test_prior_predictive_and_dtype(float64):
    trace = poutine.trace(lv.model).get_trace(num_data=5)
    assert trace.nodes["x"]["value"].shape == (5, 64)
    assert trace.nodes["x"]["value"].dtype == torch.float64
    assert set(trace.nodes["x"]["value"].unique().tolist()) <= {0.0, 1.0}
    pyro.clear_param_store()
    data = {"x": lv.load_data(n=3)["x"].float()}
    trace = poutine.trace(lv.model).get_trace(**data)
    assert trace.nodes["z1"]["value"].dtype == torch.float32
    assert trace.nodes["_RETURN"]["value"].dtype == torch.float32


def test_one_layer_is_a_plain_vae():
    trace = poutine.trace(lv.model).get_trace(**lv.load_data(n=3), latent_dims=(6,))
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]
    assert sites == ["z1", "x"]
    assert sorted(k.split("$$$")[1].split(".")[0] for k in pyro.get_param_store()) == ["x"] * 4


def test_bad_arguments():
    data = lv.load_data(n=3)
    with pytest.raises(TypeError, match=r"latent_dims must be a sequence .*got latent_dims=8"):
        lv.model(**data, latent_dims=8)
    with pytest.raises(ValueError, match=r"latent_dims must hold one or more integers >= 1"):
        lv.model(**data, latent_dims=(8, 0))
    with pytest.raises(ValueError, match=r"latent_dims must hold one or more integers >= 1"):
        lv.model(**data, latent_dims=())
    with pytest.raises(ValueError, match=r"hidden_dim must be an integer >= 1 \(got hidden_dim=0"):
        lv.model(**data, hidden_dim=0)
    with pytest.raises(ValueError, match="pass either x or num_data"):
        lv.model()
    with pytest.raises(TypeError, match="latent_dims must be a sequence"):
        lv.site_names("z1")
