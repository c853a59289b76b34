"""Arena: blind battles between two anonymous models, votes in a database, a Bradley-Terry leaderboard.

- :mod:`mmdemo.arena.db`: SQLAlchemy models, engine, Alembic migrations (SQLite or PostgreSQL);
- :mod:`mmdemo.arena.battles`: drawing two models, storing their outputs, voting, rate limits;
- :mod:`mmdemo.arena.ratings`: Bradley-Terry ratings with bootstrap intervals, Elo, win-rate matrices;
- :mod:`mmdemo.arena.export`: votes as CSV / JSON lines, optional periodic export to a Hub dataset.
"""
