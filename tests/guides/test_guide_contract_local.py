"""The amortized guide honours the guide contract on a model with per-datum local latents.

``test_guide_contract.py`` covers the guides over the joint latent space on eight schools; the
amortized guide needs a data plate, so it is checked here on probabilistic PCA, fitted by name
with mini-batches.
"""

import pyro
import torch

import ppl_vi
from ppl_vi.guides.amortized import Amortized
from ppl_vi.infer_util import model_info
from ppl_vi.models import ppca

N, BATCH, DRAWS = 60, 10, 50


def test_amortized_guide_contract(tmp_path):
    data = ppca.load_data(n=N)
    result = ppl_vi.fit(
        ppca.model, **data, subsample_size=BATCH, guide="amortized", num_steps=60, progress=False
    )
    assert isinstance(result.guide, Amortized)
    info = model_info(ppca.model, (), {**data, "subsample_size": BATCH})
    assert dict(info.latent) == {"z": (N, 2)}  # the plate at full size, not the batch size
    draws = result.sample(DRAWS, seed=0)
    assert set(draws) == {"z"}
    assert draws["z"].shape == (DRAWS, N, 2)
    assert torch.isfinite(draws["z"]).all()
    # each datum's draws come from its own encoder output: the data are not exchangeable
    # (spread of the per-datum means against 4 Monte Carlo standard errors of one mean)
    assert draws["z"].mean(0)[:, 0].std() > 4 * draws["z"].std(0)[:, 0].mean() / DRAWS**0.5

    # gradients of a mini-batch ELBO are finite for every parameter, and reach the encoder
    with result.param_scope():
        with pyro.poutine.trace(param_only=True) as tr:
            pyro.infer.Trace_ELBO(max_plate_nesting=1).loss_and_grads(
                ppca.model, result.guide, **data, subsample_size=BATCH
            )
        params = {name: site["value"].unconstrained() for name, site in tr.trace.nodes.items()}
        assert any(name.startswith("Amortized.encoder") for name in params)
        for name, p in params.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
            p.grad = None

    # save / load by name: same parameters, same draws for the same seed
    path = tmp_path / "fit.pt"
    result.save(path)
    loaded = ppl_vi.load(path, ppca.model)
    assert isinstance(loaded.guide, Amortized)
    assert loaded.guide.get_config() == result.guide.get_config()
    assert set(loaded.params) == set(result.params)
    for key, value in result.params.items():
        assert torch.equal(loaded.params[key], value), key
    again = loaded.sample(DRAWS, seed=0)
    assert torch.equal(again["z"], draws["z"])
    other = loaded.sample(DRAWS, seed=1)
    assert not torch.equal(other["z"], draws["z"])  # the seed, not a constant, fixes the draws
