"""Leaderboard cost at scale: Bradley-Terry fit + bootstrap intervals on many synthetic votes.

    python bench/arena_ratings.py [--votes 100000] [--models 9] [--rounds 200] [--threads 2] [--database]

Votes come from a synthetic tournament with known strengths (random pairs, 10 % ties). Prints the wall
time of counting the votes, the maximum-likelihood fit, the bootstrap rounds and the whole leaderboard
(what the Leaderboard tab recomputes when votes were added), best of three runs, plus the worst gap
between fitted and true ratings as a sanity check. Target: the whole leaderboard under 2 s on 2 cores.
``--database`` also stores the votes in a temporary SQLite arena database and times the Leaderboard tab's
real path: the query that reads every vote, plus the fit.
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
    p.add_argument("--database", action="store_true", help="also time reading the votes from SQLite")
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
    print(f"worst |fitted - true| rating: {np.abs(fitted - expected).max():.1f} points")
    widest = max(r["ci_high"] - r["ci_low"] for r in board.rows)
    print(f"widest 95 % interval: {widest:.1f} points")
    if args.database:
        time_database(model_a, model_b, choices, args.rounds)


def time_database(model_a: list[str], model_b: list[str], choices: list[str], rounds: int) -> None:
    """Store the votes as battles + votes in a fresh SQLite arena, then time ``Arena.leaderboard``."""
    import tempfile
    from pathlib import Path

    from sqlalchemy import insert

    from mmdemo.arena import db
    from mmdemo.arena.battles import Arena, ArenaConfig
    from mmdemo.runtime import ModelManager

    folder = Path(tempfile.mkdtemp(prefix="arena-bench-"))
    arena = Arena(
        ArenaConfig(data_dir=folder, bootstrap_rounds=rounds), ModelManager("demo", device="cpu"), {}
    )
    now = db.utcnow()
    battles = [
        dict(id=f"b{i}", task="generate", profile="demo", model_a=a, model_b=b, input_hash="h", settings="{}",
             session_hash="s", app_version="bench", created_at=now)
        for i, (a, b) in enumerate(zip(model_a, model_b))
    ]  # fmt: skip
    votes = [
        dict(battle_id=f"b{i}", choice=c, session_hash="s", created_at=now) for i, c in enumerate(choices)
    ]
    start = time.perf_counter()
    with arena.sessions.begin() as session:
        session.execute(insert(db.Battle), battles)
        session.execute(insert(db.Vote), votes)
    stored_s = time.perf_counter() - start
    start = time.perf_counter()
    board = arena.leaderboard("generate", profile="demo")
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    arena.leaderboard("generate", profile="demo")
    cached_s = time.perf_counter() - start
    print(f"SQLite: storing {board.votes} votes {stored_s:.2f} s (once); leaderboard from the database "
          f"{first_s:.3f} s (target < 2 s: {'met' if first_s < 2 else 'NOT met'}); unchanged votes, cached {cached_s:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
