"""SQLite: usage_records keyed by (created_at, id), without the separate created_at index.

Every row inserted on SQLite went into five B-trees: the rowid table, the (id, created_at) primary key — random
ids, so a random leaf each time —, the request-id and apim-request-id indexes and the created_at index. With
the key in the order (created_at, id) it grows at its right edge like the table itself (calls arrive in time
order) and it also serves every created_at range (reports, retention, re-pricing), so the created_at index goes:
four B-trees, two of them append-only. Replays keep the record's created_at, so `INSERT OR IGNORE` on the key
stays idempotent by record id. PostgreSQL keeps its schema (partitioned by day, key (id, created_at)).

The table is rebuilt in one transaction, rows copied in key order; a crash mid-way leaves the old table whole.
It needs free disk for a second copy of the rows while it runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from telemetry.ledger.models import ExactDecimal, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _columns() -> list[sa.Column]:
    """usage_records as revisions 0001 and 0004 left it (this revision must not follow later models)."""
    return [
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("apim_request_id", sa.String(128)),
        sa.Column("operation_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
        sa.Column("resource", sa.String(128)),
        sa.Column("deployment", sa.String(128)),
        sa.Column("model", sa.String(128)),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error_type", sa.String(64)),
        sa.Column("error_message", sa.Text()),
        sa.Column("response_id", sa.String(128)),
        sa.Column("finish_reason", sa.String(64)),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_5m_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_1h_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("web_search_requests", sa.Integer(), nullable=False),
        sa.Column("cost_usd", ExactDecimal()),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("ttft_ms", sa.Float()),
        sa.Column("team", sa.String(128)),
        sa.Column("project", sa.String(128)),
        sa.Column("user", sa.String(128)),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.Text()),
        sa.Column("completion", sa.Text()),
        sa.Column("billed_cost_usd", ExactDecimal()),
        sa.Column("discount", ExactDecimal()),
    ]


def _rebuild(key: tuple[str, str], created_at_index: bool) -> None:
    """Copy usage_records into a new table with primary key `key`, in key order, and swap it in."""
    columns = _columns()
    op.create_table("usage_records_rebuild", *columns, sa.PrimaryKeyConstraint(*key, name="pk_usage_records"))
    names = ", ".join(f'"{c.name}"' for c in columns)
    order = ", ".join(f'"{c}"' for c in key)
    op.execute(f"INSERT INTO usage_records_rebuild ({names}) SELECT {names} FROM usage_records ORDER BY {order}")
    op.drop_table("usage_records")  # and its indexes
    op.rename_table("usage_records_rebuild", "usage_records")
    op.create_index("uq_usage_records_request_id", "usage_records", ["request_id", "created_at"], unique=True)
    op.create_index("ix_usage_records_apim_request_id", "usage_records", ["apim_request_id"])
    if created_at_index:
        op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(("created_at", "id"), created_at_index=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(("id", "created_at"), created_at_index=True)
