"""Leaderboard maths: Bradley-Terry ratings by maximum likelihood, bootstrap intervals, Elo, matrices.

Bradley-Terry, the way the LMSYS arena computes it: P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)),
fitted by maximum likelihood over all votes at once (so, unlike Elo, the order of votes does not
matter); a tie counts as half a win for each side, and so does "both bad" (a tie between two bad
answers). Ratings are centred on 1000. A very weak L2 penalty keeps a model that never lost finite.

Speed: votes are first counted per (model A, model B, outcome) cell, so a fit costs the same for
100 or 100,000 votes. A bootstrap round resamples the votes with replacement, which is the same as
drawing the cell counts from a multinomial; all rounds are then fitted together by batched Newton
steps (the log-likelihood is concave, the Hessian is K x K).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BASE_RATING = 1000.0
SCALE = 400.0  # rating points per factor 10 in odds, as in chess Elo and the LMSYS leaderboard
OUTCOME = {"A": 1.0, "B": 0.0, "tie": 0.5, "both bad": 0.5}  # A's score
ELO_K = 4.0  # LMSYS's online-Elo step: small, so the column moves slowly with each vote
L2_PENALTY = 1e-4  # on natural-log strengths; only matters for a model that won (or lost) every battle
NEWTON_STEPS = 60
MAX_STEP = 4.0  # a Newton step never moves a strength by more than this (natural-log units)


@dataclass
class VoteCounts:
    """Votes counted per cell: ``wins[c]`` is A's score total for cell ``(a[c], b[c])``, ``n[c]`` votes."""

    models: list[str]
    cell_a: np.ndarray  # (C,) model index of side A
    cell_b: np.ndarray  # (C,) model index of side B
    cell_score: np.ndarray  # (C,) A's score in this cell: 1, 0 or 0.5
    cell_votes: np.ndarray  # (C,) how many votes fell in this cell

    @property
    def total(self) -> int:
        return int(self.cell_votes.sum())


def count_votes(model_a: Sequence[str], model_b: Sequence[str], choices: Sequence[str]) -> VoteCounts:
    if not (len(model_a) == len(model_b) == len(choices)):
        raise ValueError("model_a, model_b and choices must have the same length")
    unknown = set(choices) - set(OUTCOME)
    if unknown:
        raise ValueError(f"unknown vote choice(s) {sorted(unknown)}; valid: {list(OUTCOME)}")
    models = sorted(set(model_a) | set(model_b))
    index = {m: i for i, m in enumerate(models)}
    a = np.fromiter((index[m] for m in model_a), dtype=np.int64, count=len(model_a))
    b = np.fromiter((index[m] for m in model_b), dtype=np.int64, count=len(model_b))
    score_code = np.fromiter(({"A": 2, "tie": 1, "both bad": 1, "B": 0}[c] for c in choices), np.int64)
    keys = (a * len(models) + b) * 3 + score_code
    cells, votes = np.unique(keys, return_counts=True)
    return VoteCounts(
        models,
        cell_a=cells // 3 // len(models) if models else cells,
        cell_b=cells // 3 % len(models) if models else cells,
        cell_score=(cells % 3) / 2.0,
        cell_votes=votes.astype(np.float64),
    )


def _win_matrices(counts: VoteCounts, cell_votes: np.ndarray) -> np.ndarray:
    """(R, K, K) matrices W with W[r, i, j] = i's score against j in resample r (ties as halves)."""
    k = len(counts.models)
    rounds = cell_votes.shape[0]
    wins = np.zeros((rounds, k * k))
    np.add.at(wins.T, counts.cell_a * k + counts.cell_b, (cell_votes * counts.cell_score).T)
    np.add.at(wins.T, counts.cell_b * k + counts.cell_a, (cell_votes * (1 - counts.cell_score)).T)
    return wins.reshape(rounds, k, k)


def fit_bradley_terry(wins: np.ndarray) -> np.ndarray:
    """Maximum-likelihood strengths (natural log, mean zero) for each (K, K) win matrix in ``wins``.

    ``wins``: (R, K, K); returns (R, K). Batched, damped Newton steps on the concave log-likelihood
    ``sum_ij W_ij log sigmoid(t_i - t_j) - penalty/2 |t|^2``.
    """
    rounds, k, _ = wins.shape
    theta = np.zeros((rounds, k))
    games = wins + wins.transpose(0, 2, 1)
    eye = np.eye(k)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(theta[:, :, None] - theta[:, None, :])))  # P(i beats j), (R, K, K)
        surprise = wins * (1.0 - p)
        grad = surprise.sum(2) - surprise.sum(1) - L2_PENALTY * theta
        curvature = games * p * (1.0 - p)
        hessian = curvature.sum(2)[:, :, None] * eye - curvature + L2_PENALTY * eye  # minus the Hessian
        step = np.linalg.solve(hessian, grad[:, :, None])[:, :, 0]
        largest = np.abs(step).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, MAX_STEP / np.maximum(largest, 1e-300))
        theta += step
        if largest.max() < 1e-9:
            break
    return theta - theta.mean(axis=1, keepdims=True)


def to_rating(theta: np.ndarray) -> np.ndarray:
    return BASE_RATING + SCALE / np.log(10.0) * theta


def bootstrap_ratings(counts: VoteCounts, rounds: int, seed: int = 0) -> np.ndarray:
    """(rounds, K) ratings, each fitted on the votes resampled with replacement."""
    rng = np.random.default_rng(seed)
    resampled = rng.multinomial(counts.total, counts.cell_votes / counts.total, size=rounds).astype(float)
    return to_rating(fit_bradley_terry(_win_matrices(counts, resampled)))


def online_elo(model_a: Sequence[str], model_b: Sequence[str], choices: Sequence[str]) -> dict[str, float]:
    """Classic Elo in vote order (K = 4, base 1000): what readers used to chess ratings expect."""
    ratings: dict[str, float] = {}
    for a, b, choice in zip(model_a, model_b, choices):
        ra, rb = ratings.setdefault(a, BASE_RATING), ratings.setdefault(b, BASE_RATING)
        expected_a = 1.0 / (1.0 + 10.0 ** ((rb - ra) / SCALE))
        delta = ELO_K * (OUTCOME[choice] - expected_a)
        ratings[a], ratings[b] = ra + delta, rb - delta
    return ratings


@dataclass
class Leaderboard:
    """One task's (and profile's) table, with the matrices behind the heatmaps."""

    rows: list[dict]
    models: list[str]  # order of the matrices' rows and columns: best rated first
    win_rate: np.ndarray  # (K, K): share of i's battles against j that i won, ties as halves; NaN: none
    battles: np.ndarray  # (K, K): votes between i and j, either side
    votes: int
    computed_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )


def compute_leaderboard(
    model_a: Sequence[str],
    model_b: Sequence[str],
    choices: Sequence[str],
    *,
    bootstrap_rounds: int = 200,
    seed: int = 0,
    display_names: dict[str, str] | None = None,
) -> Leaderboard:
    """Ratings with 95 % percentile-bootstrap intervals, Elo, rank, battles and win rate per model.

    Votes are given in the order they were cast (that order matters for the Elo column only).
    A model's rank is 1 + the number of models whose interval lies entirely above its own.
    """
    counts = count_votes(model_a, model_b, choices)
    k = len(counts.models)
    if k == 0:
        return Leaderboard([], [], np.zeros((0, 0)), np.zeros((0, 0)), 0)
    wins = _win_matrices(counts, counts.cell_votes[None, :])
    rating = to_rating(fit_bradley_terry(wins))[0]
    samples = bootstrap_ratings(counts, bootstrap_rounds, seed) if bootstrap_rounds else rating[None, :]
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    elo = online_elo(model_a, model_b, choices)
    games = wins[0] + wins[0].T
    played = games.sum(1)
    ties = np.zeros(k)
    decisive = counts.cell_score != 0.5
    np.add.at(ties, counts.cell_a[~decisive], counts.cell_votes[~decisive])
    np.add.at(ties, counts.cell_b[~decisive], counts.cell_votes[~decisive])
    order = np.argsort(-rating, kind="stable")
    rows = []
    for i in order:
        outright_wins = wins[0][i].sum() - ties[i] / 2
        rows.append(
            {
                "rank": int(1 + (low > high[i]).sum()),
                "model": counts.models[i],
                "name": (display_names or {}).get(counts.models[i], counts.models[i]),
                "rating": round(float(rating[i]), 1),
                "ci_low": round(float(low[i]), 1),
                "ci_high": round(float(high[i]), 1),
                "elo": round(elo[counts.models[i]], 1),
                "battles": int(played[i]),
                "wins": int(round(outright_wins)),
                "ties": int(ties[i]),
                "losses": int(round(played[i] - outright_wins - ties[i])),
                "win_rate": round(float(wins[0][i].sum() / played[i]), 4),
            }
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(games > 0, wins[0] / games, np.nan)
    return Leaderboard(
        rows,
        [counts.models[i] for i in order],
        win_rate[np.ix_(order, order)],
        games[np.ix_(order, order)],
        counts.total,
    )
