r"""The VampPrior (Tomczak & Welling, 2018): a mixture of the guide's encoder at pseudo-inputs.

.. math::

    p_\lambda(z) = \frac1K \sum_{k=1}^K q_\phi(z \mid u_k)

This is the public home of :class:`VampPrior` and :class:`VampMixture`. They are defined in
:mod:`ppl_vi.models.vae_digits` because the zoo's VAE uses them (``prior="vamp"``) and zoo
models import only Pyro and PyTorch; nothing here depends on that model.

How the encoder is shared between model and guide
--------------------------------------------------
In Pyro a parameter is one entry of the param store, found by name, so one network serves model
and guide when both run it under the same names:

- Pyro's VAE-tutorial style: the guide runs ``pyro.module("encoder", net)``; build the prior
  with ``VampPrior(net, K, input_shape, encoder_name="encoder")`` (each call registers ``net``
  under that name, with the store's values).
- An :class:`~ppl_vi.guides.Amortized` guide given ``encoder=net`` converts ``net`` in place
  into a :class:`~pyro.nn.PyroModule` whose weights live in the store (``"Amortized.encoder.*"``);
  a ``VampPrior(net, K, input_shape)`` holding the same object then reads those weights. Before
  the guide's first call ``net`` still runs its own initial weights, the same values.
- The zoo's :func:`ppl_vi.models.vae_digits.model` owns its encoder (``"vae_encoder"``) and
  :func:`ppl_vi.models.vae_digits.shared_encoder` hands it to the guide.

References
----------
Tomczak, J. M. & Welling, M. (2018). VAE with a VampPrior. AISTATS.

Examples
--------
>>> import pyro, pyro.distributions as dist, torch
>>> from torch import nn
>>> from ppl_vi.vamp import VampPrior
>>> net = nn.Linear(5, 2 * 2)                      # raw outputs: 2 locations, 2 raw scales
>>> prior = VampPrior(net, num_pseudo=3, input_shape=5, encoder_name="encoder")
>>> def model(x):
...     with pyro.plate("data", x.shape[0]):
...         z = pyro.sample("z", prior())
...         pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)
>>> trace = pyro.poutine.trace(model).get_trace(torch.zeros(7, 1))
>>> trace.nodes["z"]["value"].shape
torch.Size([7, 2])
>>> pyro.clear_param_store()
"""

from __future__ import annotations

from ppl_vi.models.vae_digits import VampMixture, VampPrior

__all__ = ["VampPrior", "VampMixture"]
