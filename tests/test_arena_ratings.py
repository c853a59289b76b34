"""Bradley-Terry ratings checked on synthetic tournaments whose true strengths we chose."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from mmdemo.arena import ratings


def tournament(strengths: np.ndarray, votes: int, seed: int, tie_band: float = 0.0):
    """Random pairs, random sides; A wins with the Bradley-Terry probability (natural-log strengths).

    ``tie_band``: a vote is a tie when the coin lands within this distance of the win probability
    (so ties are likelier between close models), keeping the BT win share ``p`` per side: E[score] = p.
    """
    rng = np.random.default_rng(seed)
    k = len(strengths)
    a = rng.integers(0, k, votes)
    b = (a + rng.integers(1, k, votes)) % k
    p = 1.0 / (1.0 + np.exp(-(strengths[a] - strengths[b])))
    u = rng.random(votes)
    choice = np.where(np.abs(u - p) < tie_band, "tie", np.where(u < p, "A", "B"))
    names = [f"model-{i}" for i in range(k)]
    return [names[i] for i in a], [names[i] for i in b], list(choice), names


def test_the_fit_recovers_known_strengths_and_their_order():
    truth = np.array([-1.2, -0.5, 0.0, 0.4, 1.3])
    model_a, model_b, choices, names = tournament(truth, 20_000, seed=1)
    board = ratings.compute_leaderboard(model_a, model_b, choices, bootstrap_rounds=50)
    assert [row["model"] for row in board.rows] == names[::-1]  # best first
    fitted = np.array([next(r["rating"] for r in board.rows if r["model"] == n) for n in names])
    expected = ratings.to_rating(truth - truth.mean())
    assert np.abs(fitted - expected).max() < 15  # rating points; 400 points = 10x odds
    assert board.votes == 20_000 and sum(r["battles"] for r in board.rows) == 40_000


def test_the_fit_is_the_maximum_likelihood_scipy_finds():
    truth = np.array([0.3, -0.2, 0.8, -0.9])
    model_a, model_b, choices, _ = tournament(truth, 3_000, seed=2, tie_band=0.1)
    counts = ratings.count_votes(model_a, model_b, choices)
    wins = ratings._win_matrices(counts, counts.cell_votes[None, :])[0]

    def negative_log_likelihood(theta):
        diff = theta[:, None] - theta[None, :]
        return -(wins * -np.logaddexp(0.0, -diff)).sum() + ratings.L2_PENALTY / 2 * theta @ theta

    reference = minimize(negative_log_likelihood, np.zeros(4), method="BFGS", options={"gtol": 1e-10}).x
    ours = ratings.fit_bradley_terry(wins[None])[0]
    np.testing.assert_allclose(ours, reference - reference.mean(), atol=1e-4)


def test_ties_count_as_half_a_win_for_each_side():
    # A beats B once, B beats A once, and one tie: dead even. Then "both bad" acts the same as "tie".
    even = ratings.compute_leaderboard(
        ["x", "y", "x"], ["y", "x", "y"], ["A", "A", "tie"], bootstrap_rounds=0
    )
    assert [r["rating"] for r in even.rows] == [1000.0, 1000.0]
    assert even.rows[0]["ties"] == 1 and even.rows[0]["win_rate"] == 0.5
    # x: one win and two ties out of three = 2/3 of the points, so odds 2:1 -> 400*log10(2) apart
    lopsided = ratings.compute_leaderboard(["x"] * 3, ["y"] * 3, ["A", "tie", "both bad"], bootstrap_rounds=0)
    gap = lopsided.rows[0]["rating"] - lopsided.rows[1]["rating"]
    assert lopsided.rows[0]["model"] == "x" and gap == pytest.approx(400 * np.log10(2), abs=0.5)


def test_95_percent_intervals_cover_the_truth_at_about_the_nominal_rate():
    truth = np.array([-0.8, -0.3, 0.0, 0.2, 0.9])
    expected = ratings.to_rating(truth - truth.mean())
    covered = []
    for seed in range(40):  # 40 tournaments x 5 models = 200 intervals
        model_a, model_b, choices, names = tournament(truth, 1_500, seed=100 + seed)
        board = ratings.compute_leaderboard(model_a, model_b, choices, bootstrap_rounds=200, seed=seed)
        for row in board.rows:
            true_rating = expected[names.index(row["model"])]
            covered.append(row["ci_low"] <= true_rating <= row["ci_high"])
            assert row["ci_low"] <= row["rating"] <= row["ci_high"]
    rate = float(np.mean(covered))
    # 200 intervals at 95 %: the binomial 99.9 % range is about 0.90-0.99.
    assert 0.88 <= rate <= 0.995, rate


def test_matrices_elo_and_rank_are_consistent():
    truth = np.array([-2.0, 0.0, 2.0])
    model_a, model_b, choices, names = tournament(truth, 3_000, seed=5)
    board = ratings.compute_leaderboard(model_a, model_b, choices, bootstrap_rounds=100)
    assert board.models == names[::-1]
    assert np.allclose(board.battles, board.battles.T) and board.battles.sum() == 2 * 3_000
    off_diagonal = ~np.eye(3, dtype=bool)
    assert np.allclose((board.win_rate + board.win_rate.T)[off_diagonal], 1.0)  # ties split
    assert board.win_rate[0, 2] > 0.9  # the strongest beats the weakest almost always
    assert [r["rank"] for r in board.rows] == [1, 2, 3]  # intervals far apart
    elos = [r["elo"] for r in board.rows]
    assert elos == sorted(elos, reverse=True)


def test_unknown_choices_are_refused_and_no_votes_give_an_empty_board():
    with pytest.raises(ValueError, match="unknown vote choice"):
        ratings.compute_leaderboard(["x"], ["y"], ["C"])
    assert ratings.compute_leaderboard([], [], []).rows == []
