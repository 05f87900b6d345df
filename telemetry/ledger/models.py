"""Typed SQLAlchemy models of the ledger. Alembic revisions in `migrations/` create exactly these."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

COST_SCALE = 10  # costs are exact to 1e-10 USD


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC where the database has it exactly; text on SQLite, whose NUMERIC is a float.

    `impl` is the text type on purpose: SQLAlchemy runs the impl's bind processor after
    `process_bind_param`, and NUMERIC's processor on SQLite turns the exact text into a float."""

    impl = String(32)
    cache_ok = True
    length = None  # not a string column to the writer, which cuts over-long strings to their length

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(Numeric(20, COST_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = Decimal(value)
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value))


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


naming = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming)


class UsageRecordRow(Base):
    """One HTTP attempt. On PostgreSQL the table is range-partitioned by `created_at` (one per day).

    The key is (id, created_at) on PostgreSQL; on SQLite (revision 0005) the same key in the order
    (created_at, id), which grows at its right edge as calls arrive and serves every created_at range, so
    SQLite has no separate created_at index (`info["dialects"]`: where an index exists; migrations/env.py)."""

    __tablename__ = "usage_records"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    apim_request_id: Mapped[str | None] = mapped_column(String(128))
    operation_id: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
    resource: Mapped[str | None] = mapped_column(String(128))
    deployment: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(32), default="chat")
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    response_id: Mapped[str | None] = mapped_column(String(128))
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_5m_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_1h_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    web_search_requests: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    billed_cost_usd: Mapped[Decimal | None] = mapped_column(ExactDecimal())  # list × (1 − discount)
    discount: Mapped[Decimal | None] = mapped_column(ExactDecimal())  # kept, so a re-price bills at the same terms
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    team: Mapped[str | None] = mapped_column(String(128))
    project: Mapped[str | None] = mapped_column(String(128))
    user: Mapped[str | None] = mapped_column(String(128))
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    prompt: Mapped[str | None] = mapped_column(Text)
    completion: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # unique with the partition key, as PostgreSQL requires; a replayed record has the same created_at
        Index("uq_usage_records_request_id", "request_id", "created_at", unique=True),
        Index("ix_usage_records_apim_request_id", "apim_request_id"),
        Index("ix_usage_records_created_at", "created_at", info={"dialects": ("postgresql",)}),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


class UsageDailyRow(Base):
    """Exact per-day totals for every dimension reports group by; outlives retention."""

    __tablename__ = "usage_daily"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    team: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    project: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    user: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    deployment: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    model: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    tags: Mapped[str] = mapped_column(String(1024), primary_key=True, default="")  # canonical JSON, "" if none
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_limited: Mapped[int] = mapped_column(BigInteger, default=0)
    server_errors: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_5m_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_1h_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # integer units of 1e-10 USD: sums stay exact in SQL on every backend
    cost_e10: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    # token counting is free: its attempts and tokens are kept apart from the billed ones (revision 0003)
    count_tokens_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    count_tokens_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)

    @property
    def cost_usd(self) -> Decimal:
        return Decimal(self.cost_e10).scaleb(-COST_SCALE)


LATENCY_BUCKETS_MS = (25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500,
                      10000, 15000, 20000, 30000, 45000, 60000, 90000, 120000)  # upper bounds; one more: above


class UsageDailyLatencyRow(Base):
    """Latency histogram per day and deployment: percentiles for reports that outlive retention."""

    __tablename__ = "usage_daily_latency"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)  # index into LATENCY_BUCKETS_MS
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageHourlyRow(Base):
    """Exact hourly totals per resource, as Foundry meters CCUs: list and billed cost (after the contractual
    discount) in integer 1e-10 USD. Reconciliation with the Azure bill and budgets read this; outlives retention."""

    __tablename__ = "usage_hourly"

    hour: Mapped[dt.datetime] = mapped_column(UTCDateTime(), primary_key=True)  # start of the UTC hour
    resource: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    deployment: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    model: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    team: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    project: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_e10: Mapped[int] = mapped_column(BigInteger, default=0)  # list price
    billed_e10: Mapped[int] = mapped_column(BigInteger, default=0)  # after discount
    unpriced: Mapped[int] = mapped_column(BigInteger, default=0)
