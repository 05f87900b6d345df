"""SQLite's usage_records keyed by (created_at, id) (revision 0005): an existing ledger upgrades in place with
every row and total kept, replays stay idempotent, and no ledger query scans the table for want of an index."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal

from alembic import command
from sqlalchemy import event

from telemetry.ledger.db import alembic_config, get_engine, upgrade
from telemetry.ledger.models import UsageRecordRow
from telemetry.ledger.retention import purge
from telemetry.ledger.store import RECORD_COLUMNS, LedgerStore
from telemetry.pricing.reprice import reprice
from telemetry.pricing.table import load_price_table
from telemetry.reports.lookup import find
from telemetry.reports.stats import deployment_stats

from .helpers import make_record

TOTALS = ("usage_daily", "usage_daily_latency", "usage_hourly")


def _records(start: int, n: int) -> list:
    out = []
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=3)
    for i in range(start, start + n):
        r = make_record(i, request_id=None if i % 7 == 0 else "auto", cost=None if i % 11 == 0 else "0.0123",
                        team=("search", "ads")[i % 2], resource=f"Res{i % 3}")
        # whole seconds (stored without a fraction), odd microseconds, and several rows in one microsecond
        r.created_at = base + dt.timedelta(seconds=i // 3, microseconds=(0 if i % 5 == 0 else 7 * (i % 3)))
        out.append(r)
    return out


def _dump(path: str) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("usage_records", *TOTALS)}
    finally:
        conn.close()


def _schema(path: str) -> tuple[list[str], set[str]]:
    conn = sqlite3.connect(path)
    try:
        key = [name for _, name in sorted((pk, name) for _, name, _, _, _, pk in
                                          conn.execute("PRAGMA table_info(usage_records)") if pk)]
        indexes = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage_records' AND sql IS NOT NULL")}
        return key, indexes
    finally:
        conn.close()


def test_populated_v4_ledger_upgrades_in_place_keeping_every_row_and_total(tmp_path):
    path = str(tmp_path / "v4.db")
    url = f"sqlite:///{path}"
    upgrade(url, "0004")
    assert _schema(path) == (["id", "created_at"], {"uq_usage_records_request_id", "ix_usage_records_apim_request_id",
                                                   "ix_usage_records_created_at"})
    records = _records(0, 700)
    store = LedgerStore(get_engine(url))
    assert store.insert(records[:400]) == 400
    assert store.insert(records[300:]) == 300  # the old schema's checked path: 100 duplicates skipped
    before = _dump(path)
    assert len(before["usage_records"]) == 700

    upgrade(url)
    assert _schema(path) == (["created_at", "id"], {"uq_usage_records_request_id", "ix_usage_records_apim_request_id"})
    assert _dump(path) == before  # every row, every column, every total

    store = LedgerStore(get_engine(url))
    assert store.insert(records) == 0  # replays of rows written before the upgrade count once
    assert store.insert(records[::3]) == 0  # and through the optimistic path's fallback alone
    assert _dump(path) == before
    fresh = _records(1000, 50)
    assert store.insert(fresh + records[:10]) == 50
    after = _dump(path)
    assert len(after["usage_records"]) == 750

    command.downgrade(alembic_config(url), "0004")  # and back, then up again: still the same rows
    assert _schema(path)[0] == ["id", "created_at"]
    assert _dump(path) == after
    get_engine(url).dispose()
    upgrade(url)
    assert _schema(path)[0] == ["created_at", "id"]
    assert _dump(path) == after


def test_ledger_queries_probe_indexes_never_scan_the_rows(tmp_path):
    """Every statement the store (replays, duplicates), retention, re-pricing, lookup and stats run against
    usage_records searches an index: none scans the table or a whole index (EXPLAIN QUERY PLAN)."""
    path = str(tmp_path / "ledger.db")
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = get_engine(url)
    statements: list[str] = []

    @event.listens_for(engine, "connect")
    def _trace(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.set_trace_callback(statements.append)  # the SQL with its values, as SQLite runs it

    engine.dispose()
    store = LedgerStore(engine)
    records = _records(0, 60)
    for r in records[:20]:
        r.created_at -= dt.timedelta(days=40)
    store.insert(records)
    assert store.insert(records[:5] + _records(100, 3)) == 3  # a replay with new rows: the checked path
    for r in records[20:30]:
        r.cost_usd = Decimal("9")  # mispriced: reprice changes them back
    LedgerStore(engine)._insert_checked(records[20:30])
    # two rows written through SQLAlchemy Core, whose created_at text has a ".000000" fraction where the
    # store's has none, at the very second of a store row: the keyset still visits every row once
    same_second = next(r for r in records[20:] if r.created_at.microsecond == 0)
    core = [{c: v for c, v in zip(RECORD_COLUMNS, store._row(r), strict=True)} for r in _records(200, 2)]
    for values in core:
        values["created_at"] = same_second.created_at
    with engine.begin() as conn:
        conn.execute(UsageRecordRow.__table__.insert(), core)
    with sqlite3.connect(path) as check:
        stored = {t for (t,) in check.execute("SELECT created_at FROM usage_records WHERE created_at LIKE ?",
                                               (f"{same_second.created_at:%Y-%m-%d %H:%M:%S}%",))}
    assert len(stored) == 2  # the same instant, stored as two texts
    today = dt.datetime.now(dt.UTC).date()
    table = load_price_table()
    first = reprice(engine, table, today - dt.timedelta(days=10), today, batch_size=7)
    assert first.rows == 45 and first.changed > 0 and first.skipped == 0  # 40 + 3 new + 2 by Core, once each
    again = reprice(engine, table, today - dt.timedelta(days=10), today, batch_size=3)
    assert again.rows == 45 and again.changed == 0
    assert find(engine, records[40].request_id) is not None
    assert find(engine, records[41].apim_request_id) is not None
    deployment_stats(engine, dt.datetime.now(dt.UTC) - dt.timedelta(days=5), dt.datetime.now(dt.UTC))
    assert purge(engine, 30).rows == 20
    engine.dispose()

    probe = sqlite3.connect(path)
    checked = 0
    for sql in statements:
        head = sql.lstrip().split(None, 1)[0].upper()
        if "usage_records" not in sql or head not in ("SELECT", "UPDATE", "DELETE"):
            continue
        plan = [row[3] for row in probe.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not [p for p in plan if p.startswith("SCAN usage_records")], (sql, plan)
        checked += 1
    probe.close()
    kinds = " ".join(statements)
    assert "(created_at, id) IN" in kinds and "DELETE FROM usage_records" in kinds and "UPDATE usage_records" in kinds
    assert checked >= 8


def test_every_column_round_trips_exactly(db_url):
    """The store's generated record → row conversion against the models reading the rows back: every column,
    with long strings cut to their length, exact costs, NULLs, tags, text capture and non-UTC times."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    upgrade(db_url)
    full = make_record(1, cost="0.0000000001", resource="Res-A", trace_id="t" * 40, span_id="s" * 20,
                       operation="count_tokens", stream=True, status_code=529, error_type="overloaded_error",
                       error_message="x" * 5000, response_id="msg_" + "r" * 200, finish_reason="end_turn",
                       output_tokens=7, cache_creation_input_tokens=3, cache_creation_5m_input_tokens=1,
                       cache_creation_1h_input_tokens=2, cache_read_input_tokens=4, web_search_requests=5,
                       billed_cost_usd=Decimal("0.0000000009"), discount=Decimal("0.1"), ttft_ms=1.25,
                       user="u" * 300, tags={"ü": "ß", "k": "v"}, prompt="p" * 3000, completion="c")
    full.created_at = dt.datetime(2026, 11, 30, 23, 59, 59, 999_999,
                                  tzinfo=dt.timezone(dt.timedelta(hours=-5)))  # 04:59:59.999999 UTC
    bare = make_record(2, request_id=None, cost=None, latency_ms=None, tags={}, deployment=None, model=None,
                       team=None, project=None, apim_request_id=None)
    bare.created_at = dt.datetime(2026, 12, 1, 5, tzinfo=dt.UTC)  # a whole second
    assert LedgerStore(get_engine(db_url)).insert([full, bare]) == 2
    with Session(get_engine(db_url)) as session:
        got = {r.id: r for r in session.scalars(select(UsageRecordRow))}
    for record in (full, bare):
        row = got[record.record_id]
        for column in UsageRecordRow.__table__.columns:
            want = getattr(record, "record_id" if column.name == "id" else column.name)
            length = getattr(column.type, "length", None)
            if isinstance(want, str) and length:
                want = want[:length]
            if column.name == "created_at":
                want = want.astimezone(dt.UTC)
            assert getattr(row, column.name) == want, column.name
    assert got[full.record_id].cost_usd == Decimal("1E-10") and got[bare.record_id].cost_usd is None
