"""Every guide family over the joint latent space honours the same contract."""

import pyro
import pytest
import torch

import ppl_vi
from ppl_vi.infer_util import model_info
from ppl_vi.models import eight_schools

# the guides that apply to any model with continuous latents (amortized and diffusion guides
# need a data plate and their own models; they have their own tests)
GENERIC = ["mean_field", "full_rank", "iaf", "hvm"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GENERIC)
def test_guide_contract(name, device, tmp_path):
    data = eight_schools.load_data()
    result = ppl_vi.fit(
        eight_schools.model, **data, guide=name, num_steps=60, progress=False, device=device
    )
    info = model_info(eight_schools.model, (), data)
    draws = result.sample(200, seed=0)
    # draws have the model's site shapes and supports
    for site, shape in info.latent.items():
        assert draws[site].shape == (200, *shape), site
    assert (draws["tau"] > 0).all()
    torch.testing.assert_close(
        draws["theta"], draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_t"]
    )
    # gradients of the ELBO are finite for every parameter
    with result.param_scope():
        with pyro.poutine.trace(param_only=True) as tr:
            pyro.infer.Trace_ELBO().loss_and_grads(eight_schools.model, result.guide, **data)
        params = [site["value"].unconstrained() for site in tr.trace.nodes.values()]
        assert params and all(torch.isfinite(p.grad).all() for p in params)
        for p in params:
            p.grad = None
    # save / load round trip: same parameters, same draws
    path = tmp_path / "fit.pt"
    result.save(path)
    loaded = ppl_vi.load(path, eight_schools.model, device=device)
    for key, value in result.params.items():
        assert torch.equal(loaded.params[key].cpu(), value.cpu()), key
    again = loaded.sample(200, seed=0)
    for site in draws:
        torch.testing.assert_close(again[site], draws[site])
