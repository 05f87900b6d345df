"""The ledger's one rollup pass per batch agrees with the finance module's own hourly increments (the 0004
migration's backfill), row for row, including billed-at-list, unpriced, count_tokens and odd hosts."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from telemetry.finance.hourly import HOURLY_DIMS, HOURLY_SUMS, hourly_increments
from telemetry.ledger.store import rollup_increments
from telemetry.record import UsageRecord


def _records(n: int) -> list[UsageRecord]:
    rng = random.Random(11)
    base = dt.datetime(2026, 12, 1, 22, 59, 58, tzinfo=dt.UTC)
    tz = dt.timezone(dt.timedelta(hours=-5))
    out = []
    for i in range(n):
        created = base + dt.timedelta(seconds=rng.randint(0, 7200), microseconds=rng.randint(0, 999_999))
        cost = rng.choice([None, Decimal("0.0000123"), Decimal("1.5"), Decimal("0.00000000009")])
        billed = None if cost is None else rng.choice([None, cost, cost * Decimal("0.8")])
        out.append(UsageRecord(
            created_at=created.astimezone(tz) if i % 3 == 0 else created, operation_id=f"op{i}", attempt=0,
            operation=rng.choice(["chat", "chat", "count_tokens"]), resource=rng.choice([None, "Res-A", "res-a",
                                                                                           "x" * 200]),
            deployment=rng.choice([None, "claude-haiku-4-5", "d" * 150]), model=rng.choice([None, "m1"]),
            team=rng.choice([None, "search", "t" * 130]), project=rng.choice([None, "p"]),
            input_tokens=rng.randint(0, 10**6), output_tokens=rng.randint(0, 10**5),
            cache_creation_input_tokens=rng.randint(0, 100), cache_read_input_tokens=rng.randint(0, 100),
            cost_usd=cost, billed_cost_usd=billed, latency_ms=rng.choice([None, 12.5, 1800.0])))
    return out


def test_one_pass_hourly_equals_finance_increments():
    records = _records(2000)
    expected = {tuple(row[k] for k in HOURLY_DIMS): [row[k] for k in HOURLY_SUMS]
                for row in hourly_increments(records)}
    assert rollup_increments(records).hourly == expected
    assert sum(v[0] for v in expected.values()) == len(records)
