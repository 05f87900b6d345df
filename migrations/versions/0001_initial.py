"""Ledger: usage_records (partitioned by day on PostgreSQL) and usage_daily.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

from telemetry.ledger.db import partition_ddl
from telemetry.ledger.models import ExactDecimal, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
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
        sa.PrimaryKeyConstraint("id", "created_at", name="pk_usage_records"),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index("uq_usage_records_request_id", "usage_records", ["request_id", "created_at"], unique=True)
    op.create_index("ix_usage_records_apim_request_id", "usage_records", ["apim_request_id"])
    op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])

    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("tags", sa.String(1024), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("rate_limited", sa.BigInteger(), nullable=False),
        sa.Column("server_errors", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_5m_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_1h_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_e10", sa.BigInteger(), nullable=False),
        sa.Column("unpriced", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("day", "team", "project", "user", "deployment", "model", "tags",
                                name="pk_usage_daily"),
    )

    if op.get_bind().dialect.name == "postgresql":
        today = dt.datetime.now(dt.UTC).date()
        for offset in range(-1, 8):  # a week ahead; the writer creates any other day it meets
            op.execute(partition_ddl(today + dt.timedelta(days=offset)))


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("usage_records")
