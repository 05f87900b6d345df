"""Chargeback report and support lookup over a large synthetic ledger, at two sizes in the same run, to show
that report time does not grow with the number of raw rows (it reads the daily rollups) and that a
lookup is an index probe.

Defaults: 1,000,000 rows on SQLite; 10,000,000 on PostgreSQL when FOUNDRY_TELEMETRY_TEST_PG_URL is set
(30 days × about 4 calls/s). Targets: report < 1 s, lookup < 5 ms.
Usage: python bench/report.py [SQLITE_ROWS] [PG_ROWS]
"""

from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ledger import drop_pg, fresh_pg  # noqa: E402

from telemetry.ledger.db import get_engine, upgrade  # noqa: E402
from telemetry.ledger.store import LedgerStore  # noqa: E402
from telemetry.record import UsageRecord  # noqa: E402
from telemetry.reports.chargeback import chargeback  # noqa: E402
from telemetry.reports.lookup import find  # noqa: E402

TEAMS = ["search", "support", "finance", "research", "ads", "legal"]
DEPLOYMENTS = ["claude-sonnet-4-5", "claude-haiku-4-5", "my-claude", "batchy", "claude-opus-4-5"]


def fill(store: LedgerStore, n: int, start: int, rng: random.Random, sample: list[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    batch: list[UsageRecord] = []
    for i in range(start, start + n):
        rid = f"req_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}"
        if i % 100_003 == 0:
            sample.append(rid)
        batch.append(UsageRecord(
            created_at=now - dt.timedelta(seconds=rng.random() * 30 * 86400), operation_id=f"op{i}", attempt=0,
            request_id=rid, apim_request_id=str(uuid.UUID(int=rng.getrandbits(128))),
            deployment=rng.choice(DEPLOYMENTS), model="claude-sonnet-4-5-20250929", status_code=200,
            input_tokens=rng.randint(10, 4000), output_tokens=rng.randint(10, 800),
            cost_usd=Decimal(rng.randint(1, 90000)).scaleb(-7), latency_ms=rng.random() * 4000,
            team=rng.choice(TEAMS), project="p", user=f"u{rng.randint(1, 50)}", record_id=uuid.uuid4().hex))
        if len(batch) == 10_000:
            store.insert(batch)
            batch = []
    if batch:
        store.insert(batch)


def measure(url: str, sample: list[str]) -> tuple[float, float]:
    engine = get_engine(url)
    today = dt.datetime.now(dt.UTC).date()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        chargeback(engine, today - dt.timedelta(days=30), today, ["team", "deployment", "day"])
        times.append(time.perf_counter() - t)
    lookups = []
    for rid in sample * 5:
        t = time.perf_counter()
        assert find(engine, rid) is not None
        lookups.append(time.perf_counter() - t)
    return statistics.median(times), statistics.median(lookups)


def run(label: str, url: str, total: int) -> None:
    upgrade(url)
    store = LedgerStore(get_engine(url))
    rng = random.Random(42)
    sample: list[str] = []
    half = total // 2
    t = time.perf_counter()
    fill(store, half, 0, rng, sample)
    fill_s = time.perf_counter() - t
    r1, l1 = measure(url, sample)
    fill(store, total - half, half, rng, sample)
    r2, l2 = measure(url, sample)
    print(f"{label:10} {half:>11,} rows: report {r1 * 1e3:7.1f} ms  lookup {l1 * 1e3:6.2f} ms   "
          f"(filled at {half / fill_s:,.0f} rows/s)")
    print(f"{label:10} {total:>11,} rows: report {r2 * 1e3:7.1f} ms  lookup {l2 * 1e3:6.2f} ms   "
          f"report ratio {r2 / r1:.2f} for {total / half:.1f}x the rows")


def main() -> None:
    sqlite_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    pg_rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
    run("SQLite", f"sqlite:///{tempfile.mkdtemp()}/bench.db", sqlite_rows)
    base = os.environ.get("FOUNDRY_TELEMETRY_TEST_PG_URL")
    if base:
        url = fresh_pg(base)
        try:
            run("PostgreSQL", url, pg_rows)
        finally:
            drop_pg(base, url)
    else:
        print("PostgreSQL skipped: set FOUNDRY_TELEMETRY_TEST_PG_URL (e.g. $(bash .ci/pg-up.sh))")


if __name__ == "__main__":
    main()
