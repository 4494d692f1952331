"""Hierarchical variational model (HVM) guide, trained through its auxiliary bound."""

from __future__ import annotations

import math
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroParam
from torch.distributions import biject_to
from torch.nn import functional as F

from ._base import init_config, init_kwargs
from .iaf import iaf_transform, initial_contraction

__all__ = ["HVM"]


class HVM(AutoContinuous):
    r"""Mean-field likelihood mixed over a variational prior, fitted by the auxiliary bound.

    All latent sites are mapped to the unconstrained space and concatenated into
    :math:`u \in \mathbb{R}^D`. The guide is the hierarchical model of Ranganath et al. (2016)
    with mean-field locations :math:`\lambda` as variational parameters,

    .. math::

        \lambda \sim q(\lambda; \theta), \qquad
        u \mid \lambda \sim \mathcal{N}(\lambda, \operatorname{diag}\sigma^2),

    whose marginal :math:`q(u) = \int q(u \mid \lambda)\, q(\lambda)\, d\lambda` has no closed
    form. With a reverse model :math:`r(\lambda \mid u; \phi) = \mathcal{N}(\mu_\phi(u),
    \operatorname{diag} s_\phi(u)^2)` it is fitted by the auxiliary bound (eq. 5 there)

    .. math::

        \mathcal{L}(\theta, \sigma, \phi) = \mathbb{E}_{q(\lambda)\, q(u \mid \lambda)}\Big[
            \log p(x, T(u)) + \log |\det J_T(u)| + \log r(\lambda \mid u; \phi)
            - \log q(u \mid \lambda) - \log q(\lambda; \theta)\Big]
        \;\le\; \mathrm{ELBO}(q) \;\le\; \log p(x),

    the gap to :math:`\mathrm{ELBO}(q)` being
    :math:`\mathbb{E}_q[\mathrm{KL}(q(\lambda \mid u) \,\|\, r(\lambda \mid u))]`.
    :math:`T` maps :math:`u` to the constrained values (``biject_to`` of each site's support).
    :math:`q(\lambda; \theta)` is :math:`\mathcal{N}(m, \operatorname{diag} t^2)`, pushed through
    ``prior_flows`` gated IAF steps (as in :class:`~ppl_vi.guides.iaf.IAF`, with reversals
    between steps and two hidden layers of :math:`3 \max(D, 2)` units) when that is > 0;
    :math:`m` starts at ``init_loc_fn``, and :math:`t`, :math:`\sigma` and the initial
    :math:`s_\phi` at ``init_scale``; :math:`\mu_\phi(u) = u + \mathrm{MLP}(u)` and
    :math:`s_\phi(u) = \operatorname{softplus}(\mathrm{MLP}(u) + c)` share one tanh MLP with
    ``hidden_dim`` units whose last layer starts at zero. With ``prior_flows=0`` the marginal
    :math:`q(u) = \mathcal{N}(m, \operatorname{diag}(t^2 + \sigma^2))` is still mean field; the
    prior flow is what lets :math:`q(u)` capture dependence between coordinates.

    **How the bound reaches Pyro.** :math:`\lambda` is an auxiliary sample site
    (``infer={"is_auxiliary": True}``) with density :math:`q(\lambda)`; :math:`u` is drawn by
    reparameterisation without a site of its own, and each latent site of the model is emitted
    as a ``Delta`` at :math:`T(u)` whose ``log_density`` carries its coordinates' share of
    :math:`\log q(u \mid \lambda) - \log r(\lambda \mid u) - \log|\det J_T(u)|`. The guide's
    total log density is therefore :math:`\log q(\lambda) + \log q(u \mid \lambda) - \log
    r(\lambda \mid u) - \log|\det J_T(u)|`, and any ELBO that only evaluates the guide's log
    density at its own reparameterised draws optimises exactly :math:`\mathcal{L}`:
    ``"elbo"`` (:class:`pyro.infer.Trace_ELBO`), ``"iwae"`` with ``gradient="reparam"`` (then a
    bound on the auxiliary weights: it tightens towards :math:`\log p(x)` with the number of
    particles, but for fixed :math:`K` it is below the IWAE bound of the marginal :math:`q`) and
    ``"renyi"``. Not valid: IWAE ``gradient="dreg"``/``"stl"`` (they drop the score of
    :math:`q` at fixed :math:`z`, which here contains :math:`\phi`, :math:`\lambda`'s path and
    :math:`r`), ``"rb_score"`` (score-function gradients need :math:`\nabla \log q(z)` of the
    sampled sites; :math:`u` is not a sample site) and ``"stein"`` (it needs the guide's
    marginal density). The same holds for the importance weights of
    :meth:`~ppl_vi.result.VIResult.log_weights`, ``psis_khat`` and ``log_marginal_likelihood``:
    they use the auxiliary weights :math:`p(x, z)\, r(\lambda \mid u) / (q(\lambda)\,
    q(u \mid \lambda))`, still unbiased for :math:`p(x)`.

    Discrete latent sites are rejected with a ``ValueError``.

    Parameters
    ----------
    model : callable
        The Pyro model.
    hidden_dim : int, optional
        Width of the reverse model's hidden layer; default ``4 D``.
    prior_flows : int, default 0
        IAF steps in the variational prior :math:`q(\lambda)`; 0 keeps it a diagonal Normal.
    init_loc_fn : str, dict or callable, default "feasible"
        Initial :math:`m`, as for :class:`~ppl_vi.guides.MeanField`.
    init_scale : float, default 0.1
        Initial :math:`t`, :math:`\sigma` and :math:`s_\phi`.

    References
    ----------
    Ranganath, R., Tran, D. & Blei, D. M. (2016). Hierarchical variational models. ICML.

    Agakov, F. V. & Barber, D. (2004). An auxiliary variational method. ICONIP.

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.guides.hvm import HVM
    >>> from ppl_vi.models import normal_normal
    >>> result = ppl_vi.fit(normal_normal.model, **normal_normal.load_data(), guide=HVM,
    ...                     num_steps=200, progress=False)
    >>> sorted(result.sample(10))
    ['mu']
    """

    def __init__(
        self,
        model,
        *,
        hidden_dim: int | None = None,
        prior_flows: int = 0,
        init_loc_fn="feasible",
        init_scale: float = 0.1,
    ):
        if hidden_dim is not None and (
            isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1
        ):
            raise ValueError(f"hidden_dim must be an integer >= 1 (got hidden_dim={hidden_dim!r})")
        if isinstance(prior_flows, bool) or not isinstance(prior_flows, int) or prior_flows < 0:
            raise ValueError(
                f"prior_flows must be an integer >= 0 (got prior_flows={prior_flows!r})"
            )
        self.hidden_dim = hidden_dim
        self.prior_flows = prior_flows
        super().__init__(model, init_loc_fn=init_config(self, init_loc_fn, init_scale))

    def get_config(self) -> dict:
        """Constructor arguments that determine the guide's structure (used by ``load``)."""
        config = {
            "hidden_dim": self.hidden_dim,
            "prior_flows": self.prior_flows,
            **init_kwargs(self),
        }
        return config

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        dim = self.latent_dim
        init_loc = self._init_loc()
        shrink = 1.0
        if self.prior_flows:
            hidden = [3 * max(dim, 2)] * 2
            self.prior_transform = iaf_transform(dim, self.prior_flows, hidden, True).to(init_loc)
            shrink = 1.0 / initial_contraction(self.prior_flows)
        s0 = self._init_scale
        self.prior_loc = PyroParam(init_loc * shrink, constraints.real, event_dim=1)
        self.prior_scale = PyroParam(
            torch.full_like(init_loc, s0 * shrink), constraints.softplus_positive, event_dim=1
        )
        self.scale = PyroParam(
            torch.full_like(init_loc, s0), constraints.softplus_positive, event_dim=1
        )
        hidden_dim = self.hidden_dim if self.hidden_dim is not None else 4 * dim
        net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden_dim), torch.nn.Tanh(), torch.nn.Linear(hidden_dim, 2 * dim)
        )
        torch.nn.init.zeros_(net[-1].weight)
        torch.nn.init.zeros_(net[-1].bias)
        # Assigned to a PyroModule attribute: its parameters live in Pyro's param store.
        self.reverse_net = net.to(init_loc)
        self._reverse_offset = math.log(math.expm1(s0))  # softplus(offset) = init_scale

    def get_prior(self) -> dist.TorchDistribution:
        """The variational prior :math:`q(\\lambda)`, event shape ``(D,)``."""
        base = dist.Normal(self.prior_loc, self.prior_scale).to_event(1)
        if self.prior_flows:
            return dist.TransformedDistribution(base, self.prior_transform)
        return base

    def get_posterior(self, *args, **kwargs):
        """Not available: the HVM's marginal :math:`q(u)` has no closed-form density."""
        raise NotImplementedError("HVM has no closed-form posterior density; use the guide")

    def reverse(self, u: torch.Tensor) -> dist.Normal:
        """The reverse model :math:`r(\\lambda \\mid u)` as a Normal of the shape of ``u``."""
        out = self.reverse_net(u)  # (..., 2 D)
        shift, raw = out.split(self.latent_dim, dim=-1)
        return dist.Normal(u + shift, F.softplus(raw + self._reverse_offset))

    def forward(self, *args, **kwargs):
        """Draw :math:`\\lambda`, then :math:`u`, and emit every latent site as a ``Delta``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        lam = pyro.sample(
            f"_{self._pyro_name}_lambda", self.get_prior(), infer={"is_auxiliary": True}
        )  # (..., D)
        u = lam + self.scale * torch.randn_like(lam)  # (..., D), reparameterised
        # Per-coordinate log q(u_d | lambda_d) - log r(lambda_d | u), summed per site below.
        extra = dist.Normal(lam, self.scale).log_prob(u) - self.reverse(u).log_prob(lam)
        plates = self._create_plates(*args, **kwargs)
        extras = dict((site["name"], value) for site, value in self._unpack_latent(extra))
        result = {}
        for site, unconstrained_value in self._unpack_latent(u):
            name = site["name"]
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained_value)
            if poutine.get_mask() is False:
                log_density = 0.0
            else:
                log_density = transform.inv.log_abs_det_jacobian(value, unconstrained_value)
                log_density = sum_rightmost(
                    log_density, log_density.dim() - value.dim() + site["fn"].event_dim
                )
                unc_event_dim = (
                    site["fn"].event_dim
                    + len(self._unconstrained_shapes[name])
                    - len(site["value"].shape)
                )
                log_density = log_density + sum_rightmost(extras[name], unc_event_dim)
            delta = dist.Delta(value, log_density=log_density, event_dim=site["fn"].event_dim)
            with ExitStack() as stack:
                for frame in self._cond_indep_stacks[name]:
                    stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, delta)
        return result

    def _loc_scale(self, *args, **kwargs):
        # A Gaussian summary for median()/quantiles(): moments of 1000 draws of u.
        with torch.no_grad():
            lam = self.get_prior().sample((1000,))
            u = lam + self.scale * torch.randn_like(lam)
        return u.mean(0), u.std(0)
