"""Plots and checks built on matplotlib and ArviZ."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure


def plot_losses(losses, path: str | os.PathLike | None = None, title: str = "Training loss"):
    """Plot the loss (-ELBO) per step with a running mean; save to ``path`` when given.

    Returns the :class:`matplotlib.figure.Figure` (made without pyplot, so it works on machines
    without a display).
    """
    losses = np.asarray(losses, dtype=float)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.75", lw=0.6, label="loss per step")
    window = max(1, min(100, len(losses) // 20))
    if len(losses) >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", lw=1.5, label=f"mean of {window} steps")
    if len(losses):
        lo, hi = np.percentile(losses, [1, 99])
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("step")
    ax.set_ylabel("loss = -ELBO (nats)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
