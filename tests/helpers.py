"""Seeding helpers shared by the ledger, CLI and alert tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import func, select

from telemetry.ledger.db import get_engine
from telemetry.ledger.models import UsageDailyRow
from telemetry.record import UsageRecord


def daily_totals(url: str) -> dict:
    engine = get_engine(url)
    t = UsageDailyRow.__table__
    with engine.connect() as conn:
        row = conn.execute(select(func.sum(t.c.requests), func.sum(t.c.input_tokens), func.sum(t.c.output_tokens),
                                  func.sum(t.c.cost_e10))).one()
    return {"requests": row[0] or 0, "input": row[1] or 0, "output": row[2] or 0, "cost_e10": row[3] or 0}


def make_record(i: int, *, days_ago: float = 0, request_id: str | None = "auto", cost: str | None = "0.0123",
                **fields: object) -> UsageRecord:
    record = UsageRecord(
        created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago),
        operation_id=f"op{i}", attempt=0, request_id=f"req_{i}" if request_id == "auto" else request_id,
        apim_request_id=f"apim-{i}", deployment="claude-sonnet-4-5", model="claude-sonnet-4-5-20250929",
        status_code=200, input_tokens=10 + i, output_tokens=5, cost_usd=Decimal(cost or 0), latency_ms=12.5,
        team="search", project="ranker", tags={"k": "v"}, record_id=f"{i:032x}",
    )
    if cost is None:
        record.cost_usd = None
    for key, value in fields.items():
        setattr(record, key, value)
    return record


