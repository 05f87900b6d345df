"""Finance: billed cost per row (after the contractual discount) and exact hourly totals per resource.

Revision ID: 0004
Revises: 0002 (the coordinator re-chains after 0003)
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from telemetry.ledger.models import ExactDecimal, UTCDateTime

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # on PostgreSQL the partitioned parent passes the new column on to every partition
    op.add_column("usage_records", sa.Column("billed_cost_usd", ExactDecimal(), nullable=True))
    op.create_table(
        "usage_hourly",
        sa.Column("hour", UTCDateTime(), nullable=False),
        *(sa.Column(name, sa.String(128), nullable=False)
          for name in ("resource", "deployment", "model", "team", "project")),
        *(sa.Column(name, sa.BigInteger(), nullable=False)
          for name in ("requests", "input_tokens", "output_tokens", "cache_creation_input_tokens",
                       "cache_read_input_tokens", "cost_e10", "billed_e10", "unpriced")),
        sa.PrimaryKeyConstraint("hour", "resource", "deployment", "model", "team", "project",
                                name="pk_usage_hourly"),
    )


def downgrade() -> None:
    op.drop_table("usage_hourly")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("billed_cost_usd")
