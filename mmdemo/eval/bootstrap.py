"""95 % bootstrap intervals for evaluation scores, and whether two models' intervals overlap.

Every score our evaluation scripts report is a statistic of a sample of images (captioners) or prompts
(generators); the interval says how much it would move on another sample of the same size. We use the
percentile bootstrap (Efron & Tibshirani 1993; Koehn 2004 for BLEU) through ``scipy.stats.bootstrap``:
resample the images/prompts with replacement ``resamples`` times, recompute the score on each resample,
and take the 2.5th and 97.5th percentiles.

A corpus-level score is recomputed at corpus level on each resample, never averaged from sentence
scores: BLEU sums the resampled images' n-gram statistics and takes BLEU of the sums; CIDEr-D recomputes
its document frequencies on the resampled references. Scores that are means of per-item values
(ShapesEval accuracies, CLIP score, ROUGE-L, and per-image METEOR) are resampled as means.

Intervals are seeded (``seed``), so a results file is reproducible to the last digit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000  # percentile-interval end points settle to about 0.1 point of BLEU at this count
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval ``[low, high]`` at ``level`` from ``resamples`` resamples."""

    low: float
    high: float
    level: float = LEVEL
    resamples: int = RESAMPLES

    def to_json(self, digits: int = 4) -> list[float]:
        return [round(self.low, digits), round(self.high, digits)]


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval | None:
    """Percentile interval of ``statistic(indices)`` over resamples of ``range(n)`` with replacement.

    ``statistic`` receives an integer array of ``n`` item indices (repeats allowed) and returns the score
    of that resampled corpus. ``None`` when ``n < 2``: one item has no spread to measure.
    """
    if n < 2 or resamples < 1:
        return None
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.arange(n),),
        lambda indices: float(statistic(np.asarray(indices, dtype=np.int64))),
        vectorized=False,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",  # BCa would need n extra jackknife evaluations of corpus-level scores
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # every resample gave the same score
        value = float(statistic(np.arange(n)))
        return Interval(value, value, level, resamples)
    return Interval(float(low), float(high), level, resamples)


def mean_interval(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval | None:
    """Interval of the mean of per-item values (accuracies as 0/1, per-image scores)."""
    array = np.asarray(values, dtype=np.float64)
    return bootstrap_interval(
        lambda idx: array[idx].mean(), len(array), resamples=resamples, level=level, seed=seed
    )


def overlap(a: Sequence[float] | Interval, b: Sequence[float] | Interval) -> bool:
    """Whether two intervals share at least one point. Overlapping 95 % intervals do not prove two
    models equal; disjoint ones say the difference is unlikely to be sampling noise."""
    (a_low, a_high), (b_low, b_high) = _pair(a), _pair(b)
    return a_low <= b_high and b_low <= a_high


def compare(
    name_a: str,
    value_a: float,
    interval_a: Sequence[float] | Interval | None,
    name_b: str,
    value_b: float,
    interval_b: Sequence[float] | Interval | None,
) -> str:
    """One sentence comparing two models' scores and saying whether their intervals overlap."""
    if interval_a is None or interval_b is None:
        return f"{name_a} {value_a:.2f} vs {name_b} {value_b:.2f}: no interval (fewer than 2 items)"
    verdict = (
        "intervals overlap: the difference may be sampling noise"
        if overlap(interval_a, interval_b)
        else "intervals do not overlap"
    )
    return (
        f"{name_a} {with_interval(value_a, _pair(interval_a))} vs "
        f"{name_b} {with_interval(value_b, _pair(interval_b))}: {verdict}"
    )


def _pair(interval: Sequence[float] | Interval) -> tuple[float, float]:
    return (interval.low, interval.high) if isinstance(interval, Interval) else (interval[0], interval[1])


def with_interval(value: float | None, interval: Sequence[float] | None, digits: int = 2) -> str:
    """``"69.60 [67.10, 72.00]"`` for tables; just the value when there is no interval."""
    if value is None:
        return "-"
    if not interval:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
