r"""Ladder inference network (Sønderby et al. 2016) for hierarchical latent Gaussian models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.runtime import NonlocalExit
from torch import nn
from torch.distributions import Independent
from torch.nn import functional as F

from ._base import check_init_scale, check_local_site, find_data_plate
from .amortized import Amortized, _is_identity, _softplus_inv, _store_backed
from .mean_field import MeanField

__all__ = ["Ladder", "merge_gaussians", "INFERENCE"]

#: The two inference networks: the ladder's top-down merge, or the plain bottom-up chain.
INFERENCE = ("ladder", "bottom_up")

_SCALE_FLOOR = 1e-6  # added to every softplus scale of the guide, as in Amortized


def merge_gaussians(
    loc_hat: torch.Tensor, scale_hat: torch.Tensor, loc_p: torch.Tensor, scale_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Precision-weighted combination of two diagonal Gaussians (Sønderby et al. 2016, eq. 19).

    .. math::

        \sigma_q^2 = \frac{1}{\hat\sigma^{-2} + \sigma_p^{-2}}, \qquad
        \mu_q = \big(\hat\mu\, \hat\sigma^{-2} + \mu_p\, \sigma_p^{-2}\big)\, \sigma_q^2,

    so that :math:`\mathcal N(z; \mu_q, \sigma_q^2) \propto \mathcal N(z; \hat\mu, \hat\sigma^2)
    \, \mathcal N(z; \mu_p, \sigma_p^2)` elementwise, with :math:`(\hat\mu, \hat\sigma)` =
    ``(loc_hat, scale_hat)`` and :math:`(\mu_p, \sigma_p)` = ``(loc_p, scale_p)``. The arguments
    broadcast against each other.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        :math:`(\mu_q, \sigma_q)`.
    """
    prec_hat, prec_p = scale_hat.pow(-2), scale_p.pow(-2)
    var = 1.0 / (prec_hat + prec_p)
    return (loc_hat * prec_hat + loc_p * prec_p) * var, var.sqrt()


def _normal_params(fn, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)`` of a site distribution that is a Normal, possibly ``.to_event`` /
    ``.expand``-ed, broadcast to the site's full shape ``batch_shape + event_shape``."""
    d = fn
    while isinstance(d, (Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    if not isinstance(d, torch.distributions.Normal):
        raise ValueError(
            f"Ladder reads the model's conditional of site '{name}' given the layers above and "
            f"merges it with the bottom-up estimate, so it must be a Normal (possibly "
            f".to_event() or .expand()); got {type(fn).__name__}"
            + (f" of {type(d).__name__}" if d is not fn else "")
            + ". Write the site as dist.Normal(loc, scale).to_event(1), or use "
            "inference='bottom_up', which does not read it"
        )
    shape = fn.batch_shape + fn.event_shape
    return d.loc.expand(shape), d.scale.expand(shape)


class Ladder(AutoGuide):
    r"""Ladder (or plain bottom-up) inference network for hierarchical latent Gaussian models.

    The model's latent sample sites inside the data plate are the layers of the hierarchy, in
    the order the model samples them: :math:`z_L` first (the top) and :math:`z_1` last (next to
    the data), each conditionally Normal given the layers above,
    :math:`p_\theta(z_i \mid z_{i+1}) = \mathcal N(\mu_{p,i}, \sigma_{p,i}^2)`.
    With ``inference="ladder"`` (Sønderby et al. 2016, eq. 17-19) a deterministic bottom-up pass

    .. math::

        d_1 = f_1(x), \quad d_{i+1} = f_{i+1}(d_i), \qquad
        \hat\mu_i = W^\mu_i d_i + b^\mu_i, \quad
        \hat\sigma_i = \operatorname{softplus}(W^\sigma_i d_i + b^\sigma_i + c),

    is followed by a top-down pass that shares the generative model's conditionals:

    .. math::

        q(z_L \mid x) &= \mathcal N(\hat\mu_L, \hat\sigma_L^2), \\
        q(z_i \mid z_{i+1}, x) &= \mathcal N(\mu_{q,i}, \sigma_{q,i}^2), \qquad
        \sigma_{q,i}^2 = \frac{1}{\hat\sigma_i^{-2} + \sigma_{p,i}^{-2}}, \quad
        \mu_{q,i} = \big(\hat\mu_i \hat\sigma_i^{-2} + \mu_{p,i}\, \sigma_{p,i}^{-2}\big)
            \sigma_{q,i}^2,

    with :math:`(\mu_{p,i}, \sigma_{p,i})` the model's own conditional at the guide's draw of
    :math:`z_{i+1}` (and of any global latents). The guide reads it by running the model,
    conditioned on the draws so far and hidden from the inference, up to site :math:`z_i`
    (``poutine.escape``): the same networks with the same parameters, so gradients reach the
    generative parameters :math:`\theta` through :math:`\mu_{p,i}, \sigma_{p,i}` as well, as in
    the paper. The guide's density is :math:`q(z \mid x) = q(z_L \mid x) \prod_{i<L} q(z_i \mid
    z_{i+1}, x)`, the product of the merged Normals.

    With ``inference="bottom_up"`` it is the plain hierarchical VAE's inference model that
    Sønderby et al. compare with (their eq. 2-3): a Markov chain from the data up,

    .. math::

        q(z_1 \mid x) = \mathcal N\big(\hat\mu_1(d_1), \hat\sigma_1^2(d_1)\big), \quad
        q(z_{i+1} \mid z_i) = \mathcal N\big(\hat\mu_{i+1}(d_{i+1}), \hat\sigma_{i+1}^2(d_{i+1})
        \big), \quad d_1 = f_1(x),\ d_{i+1} = f_{i+1}(z_i),

    with the same widths and heads; it does not read the model.

    Each :math:`f_i` is ``Linear -> ReLU`` with ``hidden_dims[i - 1]`` outputs; :math:`x` is the
    flattened observed values of one datum (all observed sites in the data plate); :math:`c` is
    set so that a zero head output gives :math:`\hat\sigma` = ``init_scale``. A site with a
    vector or matrix event shape is one layer (flattened for the heads). Global latents (outside
    the data plate) get a :class:`~ppl_vi.guides.MeanField` guide, drawn first; the conditionals
    are read at those draws.

    Shapes
    ------
    :math:`x`: ``(B, input_size)``; :math:`d_i`: ``(B, hidden_dims[i-1])``; :math:`\hat\mu_i,
    \hat\sigma_i`: the layer's site shape, ``(B, d_i)`` for a ``.to_event(1)`` site; under
    vectorized particles the draws, :math:`\mu_{p,i}, \sigma_{p,i}` and the merged parameters
    carry the particle dims on the left, ``(K, B, d_i)``.

    Parameters
    ----------
    model : callable
        The Pyro model: real-valued latent sites in the data plate (and in no other plate), top
        layer first; with ``"ladder"``, each one below the top a Normal given the layers above.
    hidden_dims : int or sequence of int, default 128
        Width of :math:`d_i`, one per latent layer from the bottom (``z1``) up, or one width for
        all.
    inference : {"ladder", "bottom_up"}, default "ladder"
        The ladder network's top-down merge, or the plain bottom-up hierarchical guide.
    data_plate : str, optional
        Name of the plate that indexes the data. By default the single plate holding observed
        sites.
    init_scale : float, default 0.1
        :math:`\hat\sigma` (and the global guide's scale) for a zero network output.

    Raises
    ------
    ValueError
        For a model without a data plate or without local latents, a discrete or constrained
        local latent, a local latent in a further plate, a ``hidden_dims`` whose length is not
        the number of layers, or (``"ladder"``) a conditional that is not a Normal.

    Notes
    -----
    Any ELBO that evaluates the guide at its own reparameterised draws applies: ``Trace_ELBO``,
    ``IWAE`` (``gradient="reparam"``; DReG and STL need each parameter in the model or the guide,
    not both, and the ladder's conditionals are in both), ``RenyiELBO``. A single latent layer
    is allowed: then both inference networks are the Normal encoder :math:`q(z_1 \mid x) =
    \mathcal N(\hat\mu_1, \hat\sigma_1^2)`. Sønderby et al. also use batch normalisation (not
    part of this guide) and a warm-up of the KL term, which on these digits (tutorial 12) the
    ladder needs more than the plain guide: without it, units of :math:`z_i` can settle on a
    near-deterministic conditional :math:`\sigma_{p,i} \to 0` that the merge copies at no KL
    cost (their data share :math:`\hat\sigma_i^{-2} / (\hat\sigma_i^{-2} +
    \sigma_{p,i}^{-2})` goes to 0, see :meth:`layer_params`). Warm up with
    ``ppl_vi.fit(..., kl_anneal=num_steps)``.

    References
    ----------
    Sønderby, C. K., Raiko, T., Maaløe, L., Sønderby, S. K. & Winther, O. (2016). Ladder
    variational autoencoders. NeurIPS.

    Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic backpropagation and
    approximate inference in deep generative models. ICML.

    Examples
    --------
    >>> import ppl_vi
    >>> from ppl_vi.guides.ladder import Ladder
    >>> from ppl_vi.models import ladder_vae
    >>> train = ladder_vae.load_data(n=200)
    >>> result = ppl_vi.fit(ladder_vae.model, **train, subsample_size=50, guide=Ladder,
    ...                     guide_kwargs={"hidden_dims": 32}, num_steps=20, progress=False)
    >>> draws = result.sample(5)
    >>> draws["z2"].shape, draws["z1"].shape
    (torch.Size([5, 200, 4]), torch.Size([5, 200, 8]))
    >>> with result.param_scope():
    ...     layers = result.guide.layer_params(**train)
    >>> sorted(layers["z1"])
    ['data_loc', 'data_scale', 'loc', 'prior_loc', 'prior_scale', 'scale', 'value']
    """

    def __init__(
        self,
        model,
        *,
        hidden_dims: int | Sequence[int] = 128,
        inference: str = "ladder",
        data_plate: str | None = None,
        init_scale: float = 0.1,
    ):
        if isinstance(hidden_dims, int) and not isinstance(hidden_dims, bool):
            widths = (hidden_dims,)
        elif isinstance(hidden_dims, Sequence) and not isinstance(hidden_dims, (str, bytes)):
            widths = tuple(hidden_dims)
        else:
            raise TypeError(
                f"hidden_dims must be an int or a sequence of ints (got {hidden_dims!r})"
            )
        if not widths or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in widths
        ):
            raise ValueError(
                f"hidden_dims must hold integers >= 1 (got hidden_dims={hidden_dims!r})"
            )
        if inference not in INFERENCE:
            raise ValueError(f"inference must be one of {INFERENCE} (got inference={inference!r})")
        if data_plate is not None and not isinstance(data_plate, str):
            raise TypeError(f"data_plate must be a plate name or None (got {data_plate!r})")
        super().__init__(model)
        self.hidden_dims = hidden_dims if isinstance(hidden_dims, int) else widths
        self.inference = inference
        self.data_plate = data_plate
        self._init_scale = check_init_scale(init_scale)
        self._scale_shift = _softplus_inv(self._init_scale)

    def get_config(self) -> dict:
        """Constructor arguments that determine the guide's structure (used by ``load``)."""
        widths = self.hidden_dims
        return {
            "hidden_dims": widths if isinstance(widths, int) else list(widths),
            "inference": self.inference,
            "data_plate": self.data_plate,
            "init_scale": self._init_scale,
        }

    # ------------------------------------------------------------------ structure
    # the observed values of the current (mini-)batch, found as the amortized guide finds them
    _observed_batch = Amortized._observed_batch

    def _setup_prototype(self, *args, **kwargs):
        with poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        self.prototype_trace = trace
        found = find_data_plate(trace, self.data_plate, "Ladder")
        plate = self._plate = found.name
        self._plate_dim = found.dim
        self._observed = [s["name"] for s in found.observed]
        local = found.local
        if not local:
            raise ValueError(
                f"Ladder found no latent sample site inside the data plate {plate!r}; it needs "
                "the layers z_L, ..., z_1 of a hierarchical model there"
            )
        self._layout = {}
        for s in local:  # in model order: top layer first
            name = s["name"]
            check_local_site(s, plate, "Ladder")
            if not _is_identity(biject_to(s["fn"].support)):
                raise ValueError(
                    f"Ladder draws every layer from a Normal and needs real-valued local latents, "
                    f"but site '{name}' has support {s['fn'].support}; give it a Normal "
                    "conditional (e.g. sample it unconstrained and transform it in the model)"
                )
            event_dim = s["fn"].event_dim
            pos = self._plate_dim - event_dim  # tensor dim of the plate in the value
            shape = s["value"].movedim(pos, 0).shape[1:]
            self._layout[name] = {
                "event_dim": event_dim,
                "pos": pos,
                "shape": tuple(shape),
                "size": math.prod(shape),
            }
        self._top_down = [s["name"] for s in local]
        if self.inference == "ladder":
            for name in self._top_down[1:]:
                _normal_params(trace.nodes[name]["fn"], name)
        num_layers = len(local)
        widths = self.hidden_dims
        widths = (widths,) * num_layers if isinstance(widths, int) else widths
        if len(widths) != num_layers:
            raise ValueError(
                f"hidden_dims must give one width per latent layer: the model has {num_layers} "
                f"({', '.join(reversed(self._top_down))}, bottom up), but got "
                f"hidden_dims={self.hidden_dims!r}; pass {num_layers} widths or a single int"
            )
        _, x, _ = self._observed_batch(args, kwargs)
        self.input_size = x.shape[-1]
        globals_ = [s["name"] for s in found.outside]
        if globals_:
            hidden = poutine.block(self.model, hide=list(self._layout))
            self.global_guide = MeanField(hidden, init_scale=self._init_scale)
            # AutoGuide.__setattr__ makes a child guide defer to its parent (as in AutoGuideList);
            # this one traces its own (blocked) model and builds its own plates.
            self.global_guide.master = None
        else:
            self.global_guide = None
        sizes = [self._layout[name]["size"] for name in reversed(self._top_down)]  # bottom up
        blocks, heads, width = [], [], self.input_size
        for i, (h, size) in enumerate(zip(widths, sizes, strict=True)):
            if i > 0:  # the ladder climbs d_i; the plain guide conditions on the draw z_i
                width = widths[i - 1] if self.inference == "ladder" else sizes[i - 1]
            blocks.append(nn.Sequential(nn.Linear(width, h), nn.ReLU()))
            heads.append(nn.Linear(h, 2 * size))
        store = pyro.get_param_store()
        for attr, modules in (("bottom_up", blocks), ("heads", heads)):
            for name, p in nn.ModuleList(modules).named_parameters():
                full = f"{self._pyro_name}.{attr}.{name}"
                if full in store and store[full].shape != p.shape:
                    raise ValueError(
                        f"the param store holds {full!r} with shape {tuple(store[full].shape)}, "
                        f"but this guide needs shape {tuple(p.shape)} (another guide of this "
                        "class with other sizes ran in the same store); call "
                        "pyro.clear_param_store() first"
                    )
        self.bottom_up = _store_backed(nn.ModuleList(blocks).to(dtype=x.dtype, device=x.device))
        self.heads = _store_backed(nn.ModuleList(heads).to(dtype=x.dtype, device=x.device))

    # ------------------------------------------------------------------ pieces
    def _head(self, i: int, d: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s (0 = bottom) location and scale from ``d`` ``(..., B, h)``, laid out
        like the site's value."""
        size = self._layout[name]["size"]
        out = self.heads[i](d)  # (..., B, 2 size)
        loc, raw = out[..., :size], out[..., size:]
        scale = F.softplus(raw + self._scale_shift) + _SCALE_FLOOR
        return self._unflatten(loc, name), self._unflatten(scale, name)

    def _unflatten(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        """``(..., B, size)`` -> the site's layout (the plate's dim at its place)."""
        info = self._layout[name]
        out = flat.reshape(*flat.shape[:-1], *info["shape"])
        return out.movedim(-len(info["shape"]) - 1, info["pos"])

    def _flatten(self, value: torch.Tensor, name: str) -> torch.Tensor:
        """A site's value -> ``(..., B, size)``."""
        info = self._layout[name]
        out = value.movedim(info["pos"], -len(info["shape"]) - 1)
        return out.reshape(*out.shape[: out.dim() - len(info["shape"])], info["size"])

    def _prior_conditional(self, name, values, idx, args, kwargs):
        """The model's ``(loc, scale)`` of site ``name`` given ``values`` (the layers above and
        the globals): the model runs, conditioned and hidden, until it reaches the site."""
        data = {**values, self._plate: idx}
        model = poutine.escape(
            poutine.condition(self.model, data=data), escape_fn=lambda msg: msg["name"] == name
        )
        with poutine.block():
            try:
                model(*args, **kwargs)
            except NonlocalExit as e:
                fn = e.site["fn"]
            else:
                raise ValueError(
                    f"the model did not reach its latent site '{name}' on this call, but it did "
                    "when the guide was built; Ladder needs the same layers on every call (no "
                    "control flow that skips a sample site)"
                )
        return _normal_params(fn, name)

    # ------------------------------------------------------------------ guide
    def forward(self, *args, **kwargs) -> dict:
        return self._draw(args, kwargs, None)

    def layer_params(self, *args, **kwargs) -> dict:
        """One draw of the guide (not recorded by any inference) with each layer's parameters.

        Returns ``{site: {...}}`` in model order, top first: ``"value"`` (the draw), ``"loc"``
        and ``"scale"`` of the Normal it was drawn from, and with ``inference="ladder"`` the
        parts of the merge, ``"data_loc"``, ``"data_scale"`` (:math:`\\hat\\mu_i,
        \\hat\\sigma_i`) and, below the top, ``"prior_loc"``, ``"prior_scale"``
        (:math:`\\mu_{p,i}, \\sigma_{p,i}`). Each is laid out like the site's value.
        """
        record = {}
        with poutine.block():
            self._draw(args, kwargs, record)
        return {name: record[name] for name in self._top_down}

    def _draw(self, args, kwargs, record) -> dict:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        values = {} if self.global_guide is None else dict(self.global_guide(*args, **kwargs))
        idx0, x, full_size = self._observed_batch(args, kwargs)
        # Building the plate emits its subsample site: the model replays these indices, or a
        # replayed guide gets the indices of the trace it replays (see Amortized.forward).
        plate = pyro.plate(self._plate, full_size, subsample=idx0, dim=self._plate_dim)
        idx = plate.indices
        if idx is not idx0:
            _, x, _ = self._observed_batch(args, kwargs, idx)
        record = {} if record is None else record
        bottom_up = list(reversed(self._top_down))
        if self.inference == "ladder":
            # eq. 17-18: deterministic bottom-up pass and its heads
            d, data_params = x, {}
            for i, name in enumerate(bottom_up):
                d = self.bottom_up[i](d)  # (B, h_i)
                data_params[name] = self._head(i, d, name)
            # eq. 19: top-down, each layer merged with the model's conditional given the draw above
            for name in self._top_down:
                loc_hat, scale_hat = data_params[name]
                info = {"data_loc": loc_hat, "data_scale": scale_hat}
                if name == self._top_down[0]:
                    loc, scale = loc_hat, scale_hat
                else:
                    loc_p, scale_p = self._prior_conditional(name, values, idx, args, kwargs)
                    loc, scale = merge_gaussians(loc_hat, scale_hat, loc_p, scale_p)
                    info.update(prior_loc=loc_p, prior_scale=scale_p)
                values[name] = self._sample(plate, name, loc, scale)
                record[name] = {"value": values[name], "loc": loc, "scale": scale, **info}
        else:
            # the plain hierarchical guide: z_1 from x, then each layer from the draw below
            h = x
            for i, name in enumerate(bottom_up):
                loc, scale = self._head(i, self.bottom_up[i](h), name)
                values[name] = self._sample(plate, name, loc, scale)
                record[name] = {"value": values[name], "loc": loc, "scale": scale}
                h = self._flatten(values[name], name)  # (..., B, size_i)
        return values

    def _sample(self, plate, name, loc, scale) -> torch.Tensor:
        with plate:
            normal = dist.Normal(loc, scale).to_event(self._layout[name]["event_dim"])
            return pyro.sample(name, normal)
