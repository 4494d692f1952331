"""Pieces shared by the posteriordb regression translations."""

from __future__ import annotations

import torch


def least_squares_init(X: torch.Tensor, y: torch.Tensor | None, num_coefs: int) -> dict:
    """``beta`` by least squares of ``y`` on ``X`` and ``sigma`` = residual sd.

    Without a response (``y is None``) returns ``beta = 0`` and ``sigma = 1``. Tensors in the
    dtype/device of ``X``.
    """
    if y is None:
        return {"beta": X.new_zeros(num_coefs), "sigma": X.new_ones(())}
    beta = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
    return {"beta": beta, "sigma": (y - X @ beta).std()}
