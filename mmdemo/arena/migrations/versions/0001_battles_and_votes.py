"""Battles, votes (one per battle: the battle id is the primary key) and shared settings.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arena_battles",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("profile", sa.String(8), nullable=False),
        sa.Column("model_a", sa.String(64), nullable=False),
        sa.Column("model_b", sa.String(64), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("input_path", sa.String(255)),
        sa.Column("seed", sa.BigInteger),
        sa.Column("preset", sa.String(16)),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("output_a", sa.Text),
        sa.Column("output_b", sa.Text),
        sa.Column("output_a_hash", sa.String(64)),
        sa.Column("output_b_hash", sa.String(64)),
        sa.Column("output_a_path", sa.String(255)),
        sa.Column("output_b_path", sa.String(255)),
        sa.Column("seconds_a", sa.Float),
        sa.Column("seconds_b", sa.Float),
        sa.Column("score_a", sa.Float),
        sa.Column("score_b", sa.Float),
        sa.Column("score_name", sa.String(64)),
        sa.Column("weights_a", sa.String(8)),
        sa.Column("weights_b", sa.String(8)),
        sa.Column("error_a", sa.Text),
        sa.Column("error_b", sa.Text),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("app_version", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "arena_votes",
        sa.Column(
            "battle_id",
            sa.String(40),
            sa.ForeignKey("arena_battles.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("choice", sa.String(8), nullable=False),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie', 'both bad')", name="ck_arena_votes_choice"),
    )
    op.create_table(
        "arena_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("arena_meta")
    op.drop_table("arena_votes")
    op.drop_table("arena_battles")
