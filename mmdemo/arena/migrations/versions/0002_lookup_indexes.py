"""Indexes for the two hot queries: a session's recent battles and votes (rate limit), and one
leaderboard's battles (task + profile).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_arena_battles_session_created", "arena_battles", ["session_hash", "created_at"])
    op.create_index("ix_arena_battles_task_profile", "arena_battles", ["task", "profile"])
    op.create_index("ix_arena_votes_session_created", "arena_votes", ["session_hash", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_arena_votes_session_created", table_name="arena_votes")
    op.drop_index("ix_arena_battles_task_profile", table_name="arena_battles")
    op.drop_index("ix_arena_battles_session_created", table_name="arena_battles")
