"""Loss curves as PNGs: what every training script writes beside its weights (``loss.png``, ``loss_curve.png``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Curve:
    """One line of a loss plot: ``values`` at ``steps``, drawn faint with a running mean over it when ``smooth``."""

    label: str
    steps: Sequence[float]
    values: Sequence[float]
    smooth: bool = True
    style: str = "-"  # "o-" for sparse points such as one validation loss per epoch


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (shorter at the start), NaNs read as 0."""
    cumsum = np.cumsum(np.nan_to_num(np.asarray(values, dtype=float)))
    out = cumsum.copy()
    out[window:] = cumsum[window:] - cumsum[:-window]
    return out / np.minimum(np.arange(1, len(out) + 1), window)


def plot_loss_curves(
    path: Path,
    curves: Sequence[Curve],
    *,
    title: str = "",
    ylabel: str = "loss",
    log_y: bool = False,
    separate: bool = False,
) -> None:
    """Write ``curves`` to ``path``: on one axes, or side by side when ``separate`` (losses of different scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [c for c in curves if len(c.values) and any(math.isfinite(v) for v in c.values)]
    panels = max(1, len(curves)) if separate else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 if panels == 1 else 4.5 * panels, 3.5), squeeze=False)
    for i, curve in enumerate(curves):
        ax = axes[0][i if separate else 0]
        if curve.smooth and len(curve.values) > 1:
            window = max(1, len(curve.values) // 50)
            ax.plot(curve.steps, curve.values, lw=0.6, alpha=0.35)
            ax.plot(curve.steps, running_mean(curve.values, window), lw=1.5, label=f"{curve.label} (mean of {window})")
        else:
            ax.plot(curve.steps, curve.values, curve.style, lw=1.2, label=curve.label)
        if separate:
            ax.set_title(curve.label)
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale("log")
        if not separate and curves:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
