r"""A Gaussian diffusion model on vectors: learned reverse chain, fixed forward chain as guide.

The generative model over data :math:`x \in \mathbb{R}^D` and latents :math:`z_1, \dots, z_T`
(Sohl-Dickstein et al., 2015; Ho et al., 2020) is

.. math::

    z_T &\sim \mathcal{N}(0, I), \\
    z_{t-1} \mid z_t &\sim \mathcal{N}\big(\mu_\theta(z_t, t), \sigma_t^2 I\big),
        \qquad t = T, \dots, 2, \\
    x \mid z_1 &\sim \mathcal{N}\big(\mu_\theta(z_1, 1), \sigma_1^2 I\big),

with :math:`T` = ``num_diffusion_steps``. The mean uses the noise-prediction form of Ho et al.
(2020, eq. 11),
:math:`\mu_\theta(z_t, t) = \big(z_t - \beta_t (1 - \bar\alpha_t)^{-1/2}\,
\epsilon_\theta(z_t, t)\big) / \sqrt{1 - \beta_t}`, where :math:`\epsilon_\theta` is a small
time-conditioned MLP (``hidden_size`` units, registered with ``pyro.module`` as
``"diffusion_chain.denoiser"``) and :math:`\beta_t, \bar\alpha_t` come from the reference
schedule ``schedule`` (``"linear"`` from ``beta_min`` to ``beta_max``, or ``"cosine"``). Use
the same schedule as the guide :class:`ppl_vi.guides.DiffusionChain`; with another schedule the
model stays valid, only its parameterisation fits less well.

The scales :math:`\sigma_t` are learned (``pyro.param("diffusion_chain.log_scale")``, one per
step, initialised at :math:`\sqrt{\beta_t}`, the "fixed large" choice of Ho et al.); the optimal
value is the forward posterior variance plus the mean-squared error of :math:`\mu_\theta`. The
decoder :math:`p(x \mid z_1)` is kept Gaussian (Ho et al. use a discretised decoder for
8-bit images; our data are continuous). At :math:`t = 1` the mean formula is exactly the
prediction of :math:`x` from :math:`z_1`. The data live in a ``pyro.plate`` named ``"data"``
(dim -1) that can subsample (``subsample_size``).

Sites
-----
``"z_1"``, ..., ``"z_T"``
    latent, shape ``(B, D)`` (event dim 1) in the plate ``"data"``.
``"x"``
    observed, shape ``(B, D)``.

Data
----
:func:`load_data` simulates, with ``torch.Generator().manual_seed(20250)`` (no download):
``"ring"``, the 8-Gaussian ring (8 isotropic Gaussians of sd 0.1 centred on a circle of
radius 2, Grathwohl et al., 2019); ``"moons"``, two interleaved half circles with Gaussian noise
of sd 0.1; ``"gaussian"``, :math:`\mathcal{N}(m, \Sigma)` with :data:`GAUSSIAN_LOC` and
:data:`GAUSSIAN_COV` (its entropy :func:`gaussian_entropy` bounds the expected ELBO:
:math:`\mathbb{E}_{p_\text{data}}[\mathrm{ELBO}(x)] \le \mathbb{E}_{p_\text{data}}[\log
p_\theta(x)] \le -H(p_\text{data})`); and ``"digits"``, scikit-learn's bundled 8x8 digits
scaled to :math:`[-1, 1]` (:math:`D = 64`).

References
----------
Sohl-Dickstein, J., Weiss, E., Maheswaranathan, N. & Ganguli, S. (2015). Deep unsupervised
learning using nonequilibrium thermodynamics. ICML.
Ho, J., Jain, A. & Abbeel, P. (2020). Denoising diffusion probabilistic models. NeurIPS.
Nichol, A. & Dhariwal, P. (2021). Improved denoising diffusion probabilistic models. ICML.
Grathwohl, W. et al. (2019). FFJORD: free-form continuous dynamics for scalable reversible
generative models. ICLR.

Examples
--------
>>> import pyro
>>> from ppl_vi.models import diffusion_chain as dc
>>> data = dc.load_data("ring", num_data=100)
>>> data["x"].shape
torch.Size([100, 2])
>>> trace = pyro.poutine.trace(dc.model).get_trace(**data, num_diffusion_steps=5,
...                                                 subsample_size=16)
>>> trace.nodes["z_5"]["value"].shape, trace.nodes["x"]["value"].shape
(torch.Size([16, 2]), torch.Size([16, 2]))
>>> dc.sample(64, num_diffusion_steps=5).shape      # ancestral samples from p_theta(x)
torch.Size([64, 2])
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = [
    "model",
    "load_data",
    "sample",
    "reference_schedule",
    "gaussian_entropy",
    "Denoiser",
    "DATA_SETS",
    "GAUSSIAN_LOC",
    "GAUSSIAN_COV",
]

DATA_SETS = ("ring", "moons", "gaussian", "digits")
#: Mean and covariance of the ``"gaussian"`` data set.
GAUSSIAN_LOC = (0.5, -0.5)
GAUSSIAN_COV = ((1.0, 0.6), (0.6, 0.8))

_SEED = 20250
_NUM_FREQUENCIES = 8


def reference_schedule(
    num_diffusion_steps: int, schedule: str, beta_min: float, beta_max: float
) -> torch.Tensor:
    r"""Noise levels :math:`\beta_1, \dots, \beta_T`, float64, shape ``(T,)``.

    ``"linear"``: evenly spaced from ``beta_min`` to ``beta_max`` (Ho et al., 2020).
    ``"cosine"``: :math:`\bar\alpha_t = f(t)/f(0)`, :math:`f(t) = \cos^2\big(\frac{t/T + s}{1 + s}
    \frac{\pi}{2}\big)`, :math:`s = 0.008`, :math:`\beta_t` clipped at 0.999 (Nichol & Dhariwal,
    2021, eq. 17). The same formulas as :class:`ppl_vi.guides.DiffusionChain` (the model zoo
    does not import the guides).
    """
    if isinstance(num_diffusion_steps, bool) or not isinstance(num_diffusion_steps, int) or (
        num_diffusion_steps < 1
    ):
        raise ValueError(
            f"num_diffusion_steps must be an integer >= 1 (got {num_diffusion_steps!r})"
        )
    t = num_diffusion_steps
    if schedule == "linear":
        if t == 1:
            return torch.tensor([beta_min], dtype=torch.float64)
        return torch.linspace(beta_min, beta_max, t, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(t + 1, dtype=torch.float64) / t
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(
        f"schedule must be 'linear' or 'cosine' for the model (got schedule={schedule!r})"
    )


class Denoiser(nn.Module):
    r"""Time-conditioned MLP :math:`\epsilon_\theta(z, t)`: ``[z, sin/cos(2^k \pi t/T)]`` -> D."""

    def __init__(self, data_dim: int, hidden_size: int, num_diffusion_steps: int):
        super().__init__()
        self.num_diffusion_steps = num_diffusion_steps
        self.net = nn.Sequential(
            nn.Linear(data_dim + 2 * _NUM_FREQUENCIES, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, data_dim),
        )

    def forward(self, z: torch.Tensor, t: int) -> torch.Tensor:
        freqs = 2.0 ** torch.arange(_NUM_FREQUENCIES, dtype=z.dtype, device=z.device)
        angle = math.pi * t / self.num_diffusion_steps * freqs
        emb = torch.cat([angle.sin(), angle.cos()]).expand(*z.shape[:-1], -1)
        return self.net(torch.cat([z, emb], dim=-1))


def _reverse_loc(
    net: Denoiser, z: torch.Tensor, t: int, betas: torch.Tensor, abar: torch.Tensor
) -> torch.Tensor:
    # Ho et al. (2020), eq. 11; t is 1-based, the tensors 0-based.
    beta, ab = betas[t - 1], abar[t - 1]
    return (z - beta / (1 - ab).sqrt() * net(z, t)) / (1 - beta).sqrt()


def _components(
    ref: torch.Tensor,
    data_dim: int,
    num_diffusion_steps: int,
    schedule: str,
    beta_min: float,
    beta_max: float,
    hidden_size: int,
):
    betas64 = reference_schedule(num_diffusion_steps, schedule, beta_min, beta_max)
    betas = betas64.to(dtype=ref.dtype, device=ref.device)
    abar = torch.cumprod(1 - betas64, 0).to(dtype=ref.dtype, device=ref.device)
    net = Denoiser(data_dim, hidden_size, num_diffusion_steps).to(
        dtype=ref.dtype, device=ref.device
    )
    net = pyro.module("diffusion_chain.denoiser", net, update_module_params=True)
    log_scale = pyro.param("diffusion_chain.log_scale", 0.5 * betas.log())
    return betas, abar, net, log_scale.exp()


def model(
    x: torch.Tensor | None = None,
    num_diffusion_steps: int = 1000,
    schedule: str = "linear",
    beta_min: float = 1e-4,
    beta_max: float = 0.02,
    hidden_size: int = 64,
    subsample_size: int | None = None,
    num_data: int | None = None,
    data_dim: int = 2,
) -> torch.Tensor:
    """Diffusion model: reverse chain from ``z_T`` to ``x``.

    Parameters
    ----------
    x : torch.Tensor, optional
        Data, shape ``(N, D)``. When ``None`` the model samples ``num_data`` points of
        dimension ``data_dim``.
    num_diffusion_steps : int
        Number of latent steps :math:`T`.
    schedule, beta_min, beta_max
        Reference noise schedule of the mean parameterisation (see :func:`reference_schedule`).
    hidden_size : int
        Width of the two hidden layers of the denoiser.
    subsample_size : int, optional
        Mini-batch size of the plate ``"data"``.
    num_data, data_dim : int
        Shape of the sample when ``x`` is ``None``.

    Returns
    -------
    torch.Tensor
        The observed (or sampled) ``x`` of the mini-batch, shape ``(B, D)``.
    """
    if x is None:
        if num_data is None:
            raise ValueError("pass either x or num_data")
        n, d = num_data, data_dim
        ref = torch.zeros(())
    else:
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, D) (got shape {tuple(x.shape)})")
        n, d = x.shape
        ref = x
    t_max = num_diffusion_steps
    betas, abar, net, scale = _components(
        ref, d, t_max, schedule, beta_min, beta_max, hidden_size
    )
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as idx:
        # all rows in order need no copy; a mini-batch gathers its rows
        x_batch = x if x is None or subsample_size is None else x.index_select(0, idx)
        z = pyro.sample(
            f"z_{t_max}", dist.Normal(ref.new_zeros(len(idx), d), 1.0).to_event(1)
        )
        for t in range(t_max, 1, -1):
            loc = _reverse_loc(net, z, t, betas, abar)
            z = pyro.sample(f"z_{t - 1}", dist.Normal(loc, scale[t - 1]).to_event(1))
        loc = _reverse_loc(net, z, 1, betas, abar)
        return pyro.sample("x", dist.Normal(loc, scale[0]).to_event(1), obs=x_batch)


@torch.no_grad()
def sample(num_samples: int, **model_kwargs) -> torch.Tensor:
    """Ancestral samples of ``x`` from the model with the current parameter store.

    ``model_kwargs`` are those of :func:`model` except ``x`` (``data_dim`` sets ``D``).
    Returns shape ``(num_samples, D)``.
    """
    with pyro.poutine.block():
        return model(num_data=num_samples, **model_kwargs)


def load_data(
    name: str = "ring", num_data: int = 2000, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Simulated (``"ring"``, ``"moons"``, ``"gaussian"``) or bundled (``"digits"``) data.

    Parameters
    ----------
    name : str
        One of :data:`DATA_SETS`.
    num_data : int
        Number of points (ignored for ``"digits"``, which has 1797).
    dtype : torch.dtype, optional
        Defaults to ``torch.get_default_dtype()``.

    Returns
    -------
    dict
        ``{"x": tensor of shape (num_data, D)}``.
    """
    dtype = dtype or torch.get_default_dtype()
    gen = torch.Generator().manual_seed(_SEED)
    f64 = torch.float64
    if name == "ring":
        k = torch.randint(8, (num_data,), generator=gen)
        angle = 2 * math.pi * k.to(f64) / 8
        centres = 2.0 * torch.stack([angle.cos(), angle.sin()], -1)
        x = centres + 0.1 * torch.randn(num_data, 2, generator=gen, dtype=f64)
    elif name == "moons":
        upper = torch.rand(num_data, generator=gen) < 0.5
        s = math.pi * torch.rand(num_data, generator=gen, dtype=f64)
        x = torch.where(
            upper[:, None],
            torch.stack([s.cos(), s.sin()], -1),
            torch.stack([1 - s.cos(), 0.5 - s.sin()], -1),
        )
        x = x + 0.1 * torch.randn(num_data, 2, generator=gen, dtype=f64)
    elif name == "gaussian":
        chol = torch.linalg.cholesky(torch.tensor(GAUSSIAN_COV, dtype=f64))
        eps = torch.randn(num_data, 2, generator=gen, dtype=f64)
        x = torch.tensor(GAUSSIAN_LOC, dtype=f64) + eps @ chol.T
    elif name == "digits":
        from sklearn.datasets import load_digits

        x = torch.as_tensor(load_digits().data, dtype=f64) / 8.0 - 1.0
    else:
        raise ValueError(f"name must be one of {list(DATA_SETS)} (got name={name!r})")
    return {"x": x.to(dtype)}


def gaussian_entropy() -> float:
    r"""Entropy :math:`H = \frac12 \log\det(2\pi e \Sigma)` of the ``"gaussian"`` data."""
    cov = torch.tensor(GAUSSIAN_COV, dtype=torch.float64)
    return 0.5 * torch.logdet(2 * math.pi * math.e * cov).item()
