"""Leaderboard cost at scale: Bradley-Terry fit + bootstrap intervals on many synthetic votes.

    python bench/arena_ratings.py [--votes 100000] [--models 9] [--rounds 200] [--threads 2]

Votes come from a synthetic tournament with known strengths (random pairs, 10 % ties). Prints the wall
time of counting the votes, the maximum-likelihood fit, the bootstrap rounds and the whole leaderboard
(what the Leaderboard tab recomputes when votes were added), best of three runs, plus the worst gap
between fitted and true ratings as a sanity check. Target: the whole leaderboard under 2 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--votes", type=int, default=100_000)
    p.add_argument(
        "--models", type=int, default=9, help="models in the tournament (the app has 4 or 5 per task)"
    )
    p.add_argument("--rounds", type=int, default=200, help="bootstrap rounds")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads (cores to use)")
    return p.parse_args(argv)


def best_of(runs: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)  # before numpy loads its BLAS
    import numpy as np

    from mmdemo.arena import ratings

    rng = np.random.default_rng(0)
    truth = np.linspace(-1.5, 1.5, args.models)
    a = rng.integers(0, args.models, args.votes)
    b = (a + rng.integers(1, args.models, args.votes)) % args.models
    p = 1.0 / (1.0 + np.exp(-(truth[a] - truth[b])))
    u = rng.random(args.votes)
    choices = np.where(np.abs(u - p) < 0.05, "tie", np.where(u < p, "A", "B")).tolist()
    names = [f"model-{i}" for i in range(args.models)]
    model_a, model_b = [names[i] for i in a], [names[i] for i in b]

    count_s, counts = best_of(3, lambda: ratings.count_votes(model_a, model_b, choices))
    wins = ratings._win_matrices(counts, counts.cell_votes[None, :])
    fit_s, theta = best_of(3, lambda: ratings.fit_bradley_terry(wins))
    boot_s, _ = best_of(3, lambda: ratings.bootstrap_ratings(counts, args.rounds))
    total_s, board = best_of(
        3, lambda: ratings.compute_leaderboard(model_a, model_b, choices, bootstrap_rounds=args.rounds)
    )
    fitted = ratings.to_rating(theta[0])
    expected = ratings.to_rating(truth - truth.mean())
    print(f"{args.votes} votes, {args.models} models, {args.rounds} bootstrap rounds, {args.threads} threads")
    print(f"count votes        {count_s:7.3f} s")
    print(f"maximum likelihood {fit_s:7.3f} s")
    print(f"bootstrap          {boot_s:7.3f} s")
    print(f"whole leaderboard  {total_s:7.3f} s  (target < 2 s: {'met' if total_s < 2 else 'NOT met'})")
    print(
        f"worst |fitted - true| rating: {np.abs(fitted - expected).max():.1f} points (ties shrink the gaps)"
    )
    widest = max(r["ci_high"] - r["ci_low"] for r in board.rows)
    print(f"widest 95 % interval: {widest:.1f} points")


if __name__ == "__main__":
    main()
