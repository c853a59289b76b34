"""Checks that stop a sampler before a NaN or an infinity becomes a picture.

A non-finite value turns into black pixels on the way to ``uint8`` (NaN -> 0) and a score of 0: the user sees
a plausible-looking failure and no message. Every sampler therefore checks its running state after each step
and its decoded pixels, and raises :class:`NonFiniteOutput`, which the app shows in that model's panel like any
other failure, naming the model, the step and which tensor went bad.
"""

from __future__ import annotations

import torch


class NonFiniteOutput(RuntimeError):
    """A model produced NaN or infinite values while sampling; no picture is made from them."""

    def __init__(self, model: str, where: str, nan: int, inf: int, total: int):
        self.model = model
        self.where = where
        self.nan = nan
        self.inf = inf
        super().__init__(
            f"{model} produced non-finite values {where} ({nan} NaN and {inf} infinite out of {total}), "
            "so no picture was made. This is a numerical failure of these settings (step count, guidance, "
            "precision), not of the prompt; try fewer steps or the other preset."
        )


def check_finite(tensor: torch.Tensor, *, model: str, where: str) -> torch.Tensor:
    """``tensor`` itself when every value is finite; otherwise raise :class:`NonFiniteOutput`.

    ``where`` finishes the sentence "<model> produced non-finite values ...", e.g. "at step 12 of 25 (the
    prediction at timestep 519)".
    """
    if bool(torch.isfinite(tensor).all()):
        return tensor
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    raise NonFiniteOutput(model, where, nan, inf, tensor.numel())
