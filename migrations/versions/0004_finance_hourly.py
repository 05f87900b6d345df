"""Finance: billed cost per row (after the contractual discount) and exact hourly totals per resource.

The hourly table is backfilled, exactly (Decimal), from the rows still in the ledger; they were written without a
discount, so their billed cost is their list cost. Days already past retention only have `usage_daily`, which has
no resource: reconciliation and budgets start from the oldest row kept.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from types import SimpleNamespace

import sqlalchemy as sa
from alembic import op

from telemetry.finance.hourly import hourly_increments
from telemetry.ledger.models import ExactDecimal, UTCDateTime

_ROW_COLUMNS = ("created_at", "resource", "deployment", "model", "team", "project", "input_tokens", "output_tokens",
                "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # on PostgreSQL the partitioned parent passes the new column on to every partition
    op.add_column("usage_records", sa.Column("billed_cost_usd", ExactDecimal(), nullable=True))
    op.add_column("usage_records", sa.Column("discount", ExactDecimal(), nullable=True))
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
    _backfill()


def _backfill() -> None:
    types = {"created_at": UTCDateTime(), "cost_usd": ExactDecimal()}
    rows = sa.table("usage_records", *(sa.column(c, types.get(c)) for c in _ROW_COLUMNS))
    hourly = sa.table("usage_hourly", sa.column("hour", UTCDateTime()), *(sa.column(c) for c in (
        "resource", "deployment", "model", "team", "project", "requests", "input_tokens", "output_tokens",
        "cache_creation_input_tokens", "cache_read_input_tokens", "cost_e10", "billed_e10", "unpriced")))
    conn = op.get_bind()
    # streamed (a server-side cursor on PostgreSQL), totalled in memory per hour × dimensions, then inserted
    result = conn.execute(sa.select(*(rows.c[c] for c in _ROW_COLUMNS)).execution_options(yield_per=10_000))

    def records():  # type: ignore[no-untyped-def]
        for row in result:
            r = SimpleNamespace(**row._mapping)
            r.billed_cost_usd = None  # no discount was known: billed at list
            yield r

    increments = hourly_increments(records())  # type: ignore[arg-type]
    for i in range(0, len(increments), 5_000):
        conn.execute(hourly.insert(), increments[i:i + 5_000])


def downgrade() -> None:
    op.drop_table("usage_hourly")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("discount")
        batch.drop_column("billed_cost_usd")
