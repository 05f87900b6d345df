"""usage_daily: count_tokens attempts and tokens kept apart from billed calls and tokens.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch:
        batch.add_column(sa.Column("count_tokens_requests", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("count_tokens_input_tokens", sa.BigInteger(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch:
        batch.drop_column("count_tokens_input_tokens")
        batch.drop_column("count_tokens_requests")
