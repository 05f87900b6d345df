"""Ledger ingest rate through the public path (records handed to the writer until all are durable) next to
the raw driver writing the same rows into the same table and indexes, in the same run.

SQLite: raw `sqlite3.executemany`. PostgreSQL (when FOUNDRY_TELEMETRY_TEST_PG_URL is set): raw `COPY`.
Targets: ≥ 0.8× raw on both, while staying idempotent on request-id.
Usage: python bench/ledger.py [ROWS]
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from decimal import Decimal

from sqlalchemy import create_engine, text

from telemetry.health import Health
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import RECORD_COLUMNS
from telemetry.ledger.writer import LedgerWriter
from telemetry.record import UsageRecord
from telemetry.settings import Settings


def records(n: int) -> list[UsageRecord]:
    now = dt.datetime.now(dt.UTC)
    out = []
    for i in range(n):
        out.append(UsageRecord(
            created_at=now - dt.timedelta(seconds=i % 3600), operation_id=uuid.uuid4().hex, attempt=0,
            request_id=f"req_{uuid.uuid4().hex[:24]}", apim_request_id=str(uuid.uuid4()),
            deployment=("claude-sonnet-4-5", "my-claude", "batchy")[i % 3], model="claude-sonnet-4-5-20250929",
            status_code=200, input_tokens=100 + i % 50, output_tokens=40, cost_usd=Decimal("0.0009000000"),
            latency_ms=420.0, team=("search", "support", "finance")[i % 3], project="p", tags={"f": "x"},
            record_id=uuid.uuid4().hex))
    return out


def through_writer(url: str, rows: list[UsageRecord], tmp: str) -> float:
    writer = LedgerWriter(Settings(db_url=url, spool_dir=f"{tmp}/spool-{uuid.uuid4().hex[:6]}",
                                   queue_size=len(rows) + 10, batch_size=2000), Health())
    writer.flush(60)  # connect and upgrade before the clock starts
    t = time.perf_counter()
    for r in rows:
        writer.write(r)
    writer.flush(600)
    elapsed = time.perf_counter() - t
    writer.close()
    assert writer.spool.pending() == 0 and writer.written == len(rows), "rows were spooled: not a clean run"
    return elapsed


def hand_written_params(rows: list[UsageRecord]) -> list[tuple]:
    """What hand-written code must do before `executemany`: records → driver tuples."""
    import json
    import operator

    get = operator.attrgetter(*("record_id" if c == "id" else c for c in RECORD_COLUMNS))
    at, tags, cost, stream = (RECORD_COLUMNS.index(c) for c in ("created_at", "tags", "cost_usd", "stream"))
    out = []
    for r in rows:
        v = list(get(r))
        v[at] = v[at].replace(tzinfo=None)
        v[tags] = json.dumps(v[tags])
        v[cost] = str(v[cost])
        v[stream] = int(v[stream])
        out.append(tuple(v))
    return out


def sqlite_raw(path: str, rows: list[UsageRecord], convert_inside: bool) -> float:
    params = None if convert_inside else hand_written_params(rows)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    cols = ", ".join(f'"{c}"' for c in RECORD_COLUMNS)
    sql = f"INSERT INTO usage_records ({cols}) VALUES ({', '.join('?' for _ in RECORD_COLUMNS)})"
    t = time.perf_counter()
    if params is None:
        params = hand_written_params(rows)
    for i in range(0, len(params), 2000):
        conn.executemany(sql, params[i:i + 2000])
        conn.commit()
    elapsed = time.perf_counter() - t
    conn.close()
    return elapsed


def pg_raw(url: str, rows: list[UsageRecord], convert_inside: bool) -> float:
    import json
    import operator

    get = operator.attrgetter(*("record_id" if c == "id" else c for c in RECORD_COLUMNS))
    j = RECORD_COLUMNS.index("tags")

    def convert() -> list[list]:
        out = []
        for r in rows:
            v = list(get(r))
            v[j] = json.dumps(v[j])
            out.append(v)
        return out

    params = None if convert_inside else convert()
    engine = get_engine(url)
    cols = ", ".join(f'"{c}"' for c in RECORD_COLUMNS)
    t = time.perf_counter()
    if params is None:
        params = convert()
    for i in range(0, len(params), 2000):  # one transaction per batch, as durable as the writer's batches
        with engine.begin() as conn:
            cur = conn.connection.driver_connection.cursor()
            with cur.copy(f"COPY usage_records ({cols}) FROM STDIN") as copy:
                for p in params[i:i + 2000]:
                    copy.write_row(p)
    return time.perf_counter() - t


def drop_pg(base: str, url: str) -> None:
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def fresh_pg(base: str) -> str:
    name = "bench_" + uuid.uuid4().hex[:8]
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


def report(label: str, n: int, ours: float, raw: float, raw_label: str) -> None:
    print(f"{label:10} public path {n / ours:9,.0f} rows/s   {raw_label:38} {n / raw:9,.0f} rows/s   "
          f"ratio {raw / ours:5.2f}")


def main(n: int = 50_000) -> None:
    tmp = tempfile.mkdtemp()
    print(f"{n:,} rows, three lookup indexes kept (request_id unique, apim_request_id, created_at)")
    ours_path, raw_path, raw2_path = f"{tmp}/ours.db", f"{tmp}/raw.db", f"{tmp}/raw2.db"
    for path in (ours_path, raw_path, raw2_path):
        upgrade(f"sqlite:///{path}")
    ours = through_writer(f"sqlite:///{ours_path}", records(n), tmp)
    report("SQLite", n, ours, sqlite_raw(raw_path, records(n), True), "raw executemany, records → tuples")
    report("SQLite", n, ours, sqlite_raw(raw2_path, records(n), False), "raw executemany, tuples prebuilt")
    base = os.environ.get("FOUNDRY_TELEMETRY_TEST_PG_URL")
    if base:
        ours_url, raw_url, raw2_url = fresh_pg(base), fresh_pg(base), fresh_pg(base)
        for url in (ours_url, raw_url, raw2_url):
            upgrade(url)
            from telemetry.ledger.db import ensure_partitions

            ensure_partitions(get_engine(url), {(dt.datetime.now(dt.UTC) - dt.timedelta(days=d)).date()
                                                for d in range(2)}, set())
        ours = through_writer(ours_url, records(n), tmp)
        report("PostgreSQL", n, ours, pg_raw(raw_url, records(n), True), "raw COPY, records → rows")
        report("PostgreSQL", n, ours, pg_raw(raw2_url, records(n), False), "raw COPY, rows prebuilt")
        for url in (ours_url, raw_url, raw2_url):
            drop_pg(base, url)
    else:
        print("PostgreSQL skipped: set FOUNDRY_TELEMETRY_TEST_PG_URL (e.g. $(bash .ci/pg-up.sh))")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
