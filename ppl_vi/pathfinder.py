r"""Pathfinder: Gaussian approximations along an L-BFGS optimisation path.

Zhang, Carpenter, Gelman & Vehtari (2022). Pathfinder: parallel quasi-Newton variational
inference. JMLR 23(306).

One path (Algorithm 1 of the paper): L-BFGS maximises the unconstrained log density from a
random start; at every iterate :math:`x_l` the L-BFGS inverse-Hessian estimate
:math:`\Sigma_l = \operatorname{diag}(\alpha_l) + \beta_l \gamma_l \beta_l^\top` (Algorithm 3,
formula II.2) and the Newton step :math:`\mu_l = x_l + \Sigma_l \nabla \log p(x_l)` define a
Gaussian :math:`q_l = \mathcal{N}(\mu_l, \Sigma_l)`, whose ELBO is estimated from
``num_elbo_draws`` draws (Algorithm 4 samples it in :math:`O(DJ)`); the path returns the
Gaussian with the highest ELBO. Multi-path Pathfinder (Algorithm 2) runs several paths from
independent starts; their Gaussians form an equally weighted mixture, and draws are
importance-resampled with Pareto smoothing.

The L-BFGS loop is written here rather than taken from ``torch.optim.LBFGS``: that optimiser
keeps its history private, re-evaluates the objective at the start of every ``step`` call and
counts no evaluations, while Pathfinder needs every iterate's position and gradient. The line
search is torch's own strong-Wolfe search (``torch.optim.lbfgs._strong_wolfe``, cubic
interpolation, the same one ``LBFGS(line_search_fn="strong_wolfe")`` uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.optim.lbfgs import _strong_wolfe

__all__ = ["PathResult", "gaussian_factors", "lbfgs_alpha", "single_path"]

#: Paper defaults (Section 3): history J = 6, K = 5 ELBO draws per iterate, 1000 iterations.
HISTORY_SIZE = 6
NUM_ELBO_DRAWS = 5
MAX_ITERS = 1000
#: Stop when the relative change of the objective is below this (Stan's tol_rel_obj 1e4 * eps
#: in double precision is 2.2e-12; a looser value stops earlier on flat objectives).
REL_TOL = 1e-10
GRAD_TOL = 1e-8
#: Curvature parameter of the strong Wolfe line search (torch's and Stan's default). With an
#: exact line search (c2 -> 0) L-BFGS on a quadratic makes conjugate steps, and then Pathfinder's
#: Gaussian equals a Gaussian target exactly after D iterations (tests use c2 = 0.1 for that).
WOLFE_C2 = 0.9
#: Curvature condition of Algorithm 3: a pair updates the estimate only if s'z > eps * |z|.
CURVATURE_EPS = 1e-12


@dataclass
class PathResult:
    """One Pathfinder path.

    Attributes
    ----------
    loc, scale_tril : torch.Tensor
        The chosen Gaussian (``(D,)``, ``(D, D)`` lower Cholesky factor of its covariance).
    elbos : list of float
        ELBO estimate of each iterate's Gaussian (``-inf`` where it could not be evaluated).
    best : int
        Index of the chosen iterate.
    num_iters : int
        L-BFGS iterations.
    num_grads, num_evals : int
        Log-density evaluations with a gradient (L-BFGS and its line search), and all
        evaluations (those plus the ELBO draws).
    stop_reason : str
        Why L-BFGS stopped.
    """

    loc: torch.Tensor
    scale_tril: torch.Tensor
    elbos: list = field(default_factory=list)
    best: int = 0
    num_iters: int = 0
    num_grads: int = 0
    num_evals: int = 0
    stop_reason: str = ""

    @property
    def elbo(self) -> float:
        return self.elbos[self.best]


# ---------------------------------------------------------------------------- Algorithm 3
def lbfgs_alpha(alpha: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Diagonal of the inverse-Hessian estimate after the pair ``(s, z)`` (Algorithm 3's inner
    loop; ``z`` is the change of the gradient of ``-log p``)."""
    a = (z * alpha * z).sum()
    b = (z * s).sum()
    c = (s * s / alpha).sum()
    inv = a / (b * alpha) + z**2 / b - a * s**2 / (b * c * alpha**2)
    return 1.0 / inv


def gaussian_factors(S: torch.Tensor, Z: torch.Tensor, alpha: torch.Tensor):
    """``(beta, gamma)`` with ``Sigma = diag(alpha) + beta @ gamma @ beta.T`` (formula II.2).

    Shapes
    ------
    S, Z : (D, m) position and gradient changes (columns oldest first); alpha : (D,);
    beta : (D, 2m); gamma : (2m, 2m).
    """
    m = S.shape[1]
    StZ = S.T @ Z
    R = torch.triu(StZ) + torch.eye(m, dtype=S.dtype, device=S.device) * torch.finfo(S.dtype).eps
    eta = torch.diagonal(StZ)
    beta = torch.cat([alpha[:, None] * Z, S], dim=1)
    minv_r = -torch.linalg.inv(R)
    alpha_z = alpha.sqrt()[:, None] * Z
    block = minv_r.T @ (alpha_z.T @ alpha_z + torch.diag(eta)) @ minv_r
    zeros = torch.zeros(m, m, dtype=S.dtype, device=S.device)
    gamma = torch.cat([torch.cat([zeros, minv_r], 1), torch.cat([minv_r.T, block], 1)], 0)
    return beta, gamma


class _Gaussian:
    """``N(mu, Sigma)`` with ``Sigma = sqrt(alpha) (I + Q (L L' - I) Q') sqrt(alpha)``
    (Algorithm 4): draws and log densities in ``O(D m)`` per draw."""

    def __init__(self, x, grad_logp, alpha, S, Z):
        self.alpha = alpha
        self.dim = x.shape[0]
        if S.shape[1] == 0:
            self.Q = self.L = None
            self.mu = x + alpha * grad_logp
            self.logdet = alpha.log().sum()
            return
        beta, gamma = gaussian_factors(S, Z, alpha)
        self.Q, R = torch.linalg.qr(beta / alpha.sqrt()[:, None])
        eye = torch.eye(R.shape[0], dtype=x.dtype, device=x.device)
        inner = eye + R @ gamma @ R.T
        self.L = torch.linalg.cholesky(0.5 * (inner + inner.T))
        self.mu = x + alpha * grad_logp + beta @ (gamma @ (beta.T @ grad_logp))
        self.logdet = alpha.log().sum() + 2 * torch.diagonal(self.L).log().sum()

    def sample(self, eps: torch.Tensor):
        """Draws ``(K, D)`` and their log densities ``(K,)`` from standard normals ``eps``."""
        v = eps
        if self.Q is not None:
            eye = torch.eye(self.L.shape[0], dtype=eps.dtype, device=eps.device)
            v = eps + ((eps @ self.Q) @ (self.L - eye).T) @ self.Q.T
        phi = self.mu + self.alpha.sqrt() * v
        log_q = -0.5 * (self.logdet + (eps**2).sum(-1) + self.dim * math.log(2 * math.pi))
        return phi, log_q

    def scale_tril(self) -> torch.Tensor:
        """The dense lower Cholesky factor of ``Sigma`` ``(D, D)``."""
        root = torch.eye(self.dim, dtype=self.mu.dtype, device=self.mu.device)
        if self.Q is not None:
            root = root + self.Q @ (self.L - torch.eye(self.L.shape[0]).to(root)) @ self.Q.T
        root = self.alpha.sqrt()[:, None] * root
        cov = root @ root.T
        return torch.linalg.cholesky(0.5 * (cov + cov.T))


# ---------------------------------------------------------------------------- Algorithm 1
def single_path(
    log_density,
    x0: torch.Tensor,
    *,
    max_iters: int = MAX_ITERS,
    history_size: int = HISTORY_SIZE,
    num_elbo_draws: int = NUM_ELBO_DRAWS,
    rel_tol: float = REL_TOL,
    grad_tol: float = GRAD_TOL,
    wolfe_c2: float = WOLFE_C2,
    on_iter=None,
    history: list | None = None,
) -> PathResult:
    """One Pathfinder path from ``x0`` ``(D,)`` on ``log_density`` (a
    :class:`ppl_vi.potential.LogDensity` or anything with ``value_and_grad`` and
    ``__call__`` on ``(B, D)`` batches). ``on_iter(l, elbo)`` is called after each iterate;
    a ``history`` list receives each iterate's Gaussian ``(mu, Sigma)`` (dense; for tests).

    Returns the path's best Gaussian; raises ``ValueError`` when the log density is not finite
    at ``x0`` or no iterate's Gaussian has a finite ELBO.
    """
    grads0, evals0 = log_density.num_grads, log_density.num_evals
    value, grad = log_density.value_and_grad(x0[None])
    if not torch.isfinite(value).all():
        raise ValueError("the log density is not finite at the starting point")
    x, f, g = x0.clone(), -float(value[0]), -grad[0]  # minimise F = -log p; g = grad F
    alpha = torch.ones_like(x0)
    S, Z = [], []
    elbos, gaussians = [], []
    stop = f"reached max_iters={max_iters}"

    def obj(x_base, t, d):
        v, gr = log_density.value_and_grad((x_base + t * d)[None])
        return -float(v[0]), -gr[0]

    def evaluate(l: int):
        try:
            q = _Gaussian(x, -g, alpha, _cols(S, x), _cols(Z, x))
            eps = torch.randn(num_elbo_draws, x.shape[0], dtype=x.dtype, device=x.device)
            phi, log_q = q.sample(eps)
            elbo = float((log_density(phi) - log_q).mean())
        except (torch.linalg.LinAlgError, RuntimeError, ValueError):
            q, elbo = None, -math.inf
        elbos.append(elbo if math.isfinite(elbo) else -math.inf)
        gaussians.append(q)
        if history is not None and q is not None:
            tril = q.scale_tril()
            history.append((q.mu.detach().clone(), tril @ tril.T))
        if on_iter is not None:
            on_iter(l, elbos[-1])

    evaluate(0)
    num_iters = 0
    for l in range(1, max_iters + 1):
        d = -_two_loop(g, S, Z)
        gtd = float(g @ d)
        if not gtd < 0:  # not a descent direction: restart from steepest descent
            S, Z, d = [], [], -g
            gtd = float(g @ d)
        t = min(1.0, 1.0 / float(g.abs().sum())) if not S else 1.0
        f_new, g_new, t, _ = _strong_wolfe(obj, x, t, d, f, g, gtd, c2=wolfe_c2)
        x_new = x + t * d
        num_iters = l
        if not math.isfinite(f_new):
            stop = "the line search found no finite point"
            break
        s, z = x_new - x, g_new - g
        if float(s @ z) > CURVATURE_EPS * float(z.norm()):
            alpha = lbfgs_alpha(alpha, s, z)
            S.append(s)
            Z.append(z)
            if len(S) > history_size:
                S.pop(0)
                Z.pop(0)
        change = abs(f - f_new) / max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        evaluate(l)
        if change < rel_tol:
            stop = "relative change of the objective below rel_tol"
            break
        if float(g.norm()) < grad_tol:
            stop = "gradient norm below grad_tol"
            break
    best = max(range(len(elbos)), key=lambda i: elbos[i])
    if not math.isfinite(elbos[best]):
        raise ValueError("no Gaussian along the path had a finite ELBO estimate")
    q = gaussians[best]
    return PathResult(
        loc=q.mu.detach(),
        scale_tril=q.scale_tril().detach(),
        elbos=elbos,
        best=best,
        num_iters=num_iters,
        num_grads=log_density.num_grads - grads0,
        num_evals=log_density.num_evals - evals0,
        stop_reason=stop,
    )


def _cols(vectors: list, like: torch.Tensor) -> torch.Tensor:
    if not vectors:
        return like.new_zeros(like.shape[0], 0)
    return torch.stack(vectors, dim=1)


def _two_loop(g: torch.Tensor, S: list, Z: list) -> torch.Tensor:
    """``H g`` for the L-BFGS inverse Hessian ``H`` of the pairs (Nocedal & Wright, Alg. 7.4),
    with ``H_0 = (s'z / z'z) I`` from the newest pair."""
    q = g.clone()
    rhos = [1.0 / float(z @ s) for s, z in zip(S, Z, strict=True)]
    coeffs = []
    for s, z, rho in reversed(list(zip(S, Z, rhos, strict=True))):
        a = rho * float(s @ q)
        coeffs.append(a)
        q = q - a * z
    if S:
        q = q * (float(S[-1] @ Z[-1]) / float(Z[-1] @ Z[-1]))
    for (s, z, rho), a in zip(zip(S, Z, rhos, strict=True), reversed(coeffs), strict=True):
        b = rho * float(z @ q)
        q = q + (a - b) * s
    return q
