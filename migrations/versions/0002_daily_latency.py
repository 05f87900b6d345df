"""Latency histogram per day and deployment (usage_daily_latency), kept past retention.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_daily_latency",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "deployment", "bucket", name="pk_usage_daily_latency"),
    )


def downgrade() -> None:
    op.drop_table("usage_daily_latency")
