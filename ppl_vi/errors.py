"""The exceptions ppl-vi raises on purpose.

Two families: errors found *before* training starts (bad arguments, bad data, a model that
cannot be fitted), which are ``ValueError``/``TypeError`` subclasses and cost nothing to fix; and
errors that stop a fit *after* it has started, which all carry the work done so far in
``err.result``.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "FitError", "NonFiniteLossError"]


class DataError(ValueError):
    """The model's data cannot be used as given (found before step 1).

    The message names the data argument and/or the model's sample site, the offending index and
    value, and the fix.
    """


class CheckpointError(RuntimeError):
    """A saved file cannot be used: unreadable, damaged, of another kind, or written for another
    model, data or settings."""


class FitError(RuntimeError):
    """A fit stopped after training had started; nothing finished is lost.

    Attributes
    ----------
    step : int
        The step (1-based) that could not be completed.
    result : VIResult or None
        The fit up to the last completed step (its parameters never saw the failed step).
    """

    def __init__(self, message: str, step: int | None = None, result=None):
        super().__init__(message)
        self.step = step
        self.result = result


class NonFiniteLossError(FitError, FloatingPointError):
    """The loss or a gradient became NaN or infinite during a fit.

    Attributes
    ----------
    step : int
        The step (1-based) whose loss or gradient was not finite.
    site : str or None
        The first sample site found with a non-finite value or log density, when found.
    result : VIResult
        The fit up to the last finite step; its parameters never saw the bad gradient.
    """

    def __init__(self, message: str, step: int, site: str | None, result=None):
        super().__init__(message, step=step, result=result)
        self.site = site
