"""Alembic environment: runs on the connection :func:`mmdemo.arena.db.upgrade` passes in."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "Run arena migrations through mmdemo.arena.db.upgrade(engine), which passes a connection."
    )
# render_as_batch: SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
