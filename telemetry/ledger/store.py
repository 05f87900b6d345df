"""Idempotent batch inserts into `usage_records` plus exact `usage_daily` increments, in one transaction.

Only rows actually inserted are added to the daily totals, so replays and duplicates count once; rows and
totals commit together or not at all. Upserts take their row locks in key order, so concurrent writers do
not deadlock each other; a transaction that still loses a race (deadlock, serialization failure) is
retried whole, never spooled half-done.
SQLite: dedupe by lookup inside a write transaction, then the driver's `executemany`.
PostgreSQL: `COPY` inside a savepoint of the one transaction; on a duplicate, roll back to it and go through
a staging table, `INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import operator
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from ..finance.hourly import HOURLY_DIMS, HOURLY_SUMS, hourly_increments
from ..record import CALLER_ENDED, UsageRecord, is_service_error
from .db import ensure_partitions
from .faults import TRANSIENT, classify
from .models import (
    COST_SCALE,
    LATENCY_BUCKETS_MS,
    UsageDailyLatencyRow,
    UsageDailyRow,
    UsageHourlyRow,
    UsageRecordRow,
)

RECORD_COLUMNS = [c.name for c in UsageRecordRow.__table__.columns]
_COLS = ", ".join(f'"{c}"' for c in RECORD_COLUMNS)  # quoted: "user" is reserved on PostgreSQL
_SOURCE_ATTR = {"id": "record_id"}
DAILY_DIMS = ("day", "team", "project", "user", "deployment", "model", "tags")
MAX_TAGS_KEY = 1024
TRANSIENT_RETRIES = 6  # whole-transaction retries after a deadlock or serialization failure
DAILY_SUMS = (
    "requests", "errors", "rate_limited", "server_errors", "input_tokens", "output_tokens",
    "cache_creation_input_tokens", "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
    "cache_read_input_tokens", "cost_e10", "unpriced", "latency_ms_sum",
    "count_tokens_requests", "count_tokens_input_tokens",  # free token counting, apart from billed calls
)


def _value(record: UsageRecord, column: str) -> Any:
    return getattr(record, _SOURCE_ATTR.get(column, column))


def _naive_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value
    return (value if value.tzinfo is dt.UTC else value.astimezone(dt.UTC)).replace(tzinfo=None)


def is_error(record: UsageRecord) -> bool:
    return is_service_error(record.error_type, record.status_code)


def tags_key(tags: dict[str, str] | None) -> str:
    """Canonical JSON of a tag set, the rollup's `tags` dimension ("" when none, or too long to key on)."""
    if not tags:
        return ""
    text = json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= MAX_TAGS_KEY else ""


def rollup_increments(records: Iterable[UsageRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One pass: the sums `usage_daily` adds per (day, team, project, user, deployment, model, tags), and
    the `usage_daily_latency` bucket counts per (day, deployment, bucket)."""
    totals: dict[tuple[Any, ...], list[Any]] = {}
    latency: dict[tuple[Any, ...], int] = {}
    bucket_of = bisect.bisect_left
    bounds = LATENCY_BUCKETS_MS
    utc = dt.UTC
    memo: dict[tuple[tuple[str, str], ...], str] = {}
    for r in records:
        created = r.created_at
        day = (created if created.tzinfo is utc else created.astimezone(utc)).date()
        items = tuple(r.tags.items()) if r.tags else ()
        tags = memo.get(items)
        if tags is None:
            tags = memo[items] = tags_key(r.tags)
        key = (day, (r.team or "")[:128], (r.project or "")[:128], (r.user or "")[:128],
               (r.deployment or "")[:128], (r.model or "")[:128], tags)  # cut like the row's columns
        t = totals.get(key)
        if t is None:
            t = totals[key] = [0] * 12 + [0.0, 0, 0]
        status = r.status_code or 0
        if r.operation == "count_tokens":  # free: not a billed call, its tokens not billed input
            t[13] += 1
            t[14] += r.input_tokens
        else:
            t[0] += 1
            t[4] += r.input_tokens
        t[1] += status >= 400 or (r.error_type is not None and r.error_type not in CALLER_ENDED)
        t[2] += status == 429 or r.error_type == "rate_limit_error"
        t[3] += status >= 500
        t[5] += r.output_tokens
        t[6] += r.cache_creation_input_tokens
        t[7] += r.cache_creation_5m_input_tokens
        t[8] += r.cache_creation_1h_input_tokens
        t[9] += r.cache_read_input_tokens
        if r.cost_usd is None:
            t[11] += 1
        else:
            t[10] += int(r.cost_usd.scaleb(COST_SCALE))
        if r.latency_ms is not None:
            t[12] += r.latency_ms
            lkey = (day, key[4], bucket_of(bounds, r.latency_ms))
            latency[lkey] = latency.get(lkey, 0) + 1
    daily = [dict(zip(DAILY_DIMS, key, strict=True), **dict(zip(DAILY_SUMS, sums, strict=True)))
             for key, sums in totals.items()]
    return daily, [{"day": d, "deployment": dep, "bucket": b, "count": n} for (d, dep, b), n in latency.items()]


class LedgerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._partitions: set[dt.date] = set()
        table = UsageRecordRow.__table__
        # one attrgetter for all columns, processors only where the dialect has one (dates, decimals, JSON)
        self._get = operator.attrgetter(*(_SOURCE_ATTR.get(c, c) for c in RECORD_COLUMNS))
        self._processors = [(i, proc) for i, name in enumerate(RECORD_COLUMNS)
                            if (proc := table.c[name].type.bind_processor(engine.dialect)) is not None]
        if self.dialect == "sqlite":  # what UTCDateTime binds (naive UTC), minus the TypeDecorator call chain
            at = RECORD_COLUMNS.index("created_at")
            reference = table.c.created_at.type.bind_processor(engine.dialect)
            probe = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
            if reference is not None and reference(probe) == _naive_utc(probe):
                self._processors = [(i, p) for i, p in self._processors if i != at] + [(at, _naive_utc)]
        # server-supplied strings longer than their column are cut, not allowed to fail a whole batch
        self._limits = [(i, length) for i, name in enumerate(RECORD_COLUMNS)
                        if (length := getattr(table.c[name].type, "length", None))]
        tags_at = RECORD_COLUMNS.index("tags")
        self._processors = [(i, p) for i, p in self._processors if i != tags_at]
        self._processors.append((tags_at, self._tags_json))  # as text, for executemany and COPY alike
        self._tags_memo: dict[tuple[tuple[str, str], ...], str] = {}
        self.retries = 0  # transactions run again after a lost race

    def _tags_json(self, tags: dict[str, str]) -> str:
        """Most rows share a handful of tag sets: serialize each once."""
        key = tuple(tags.items())
        text = self._tags_memo.get(key)
        if text is None:
            text = json.dumps(tags, separators=(",", ":"))
            if len(self._tags_memo) < 4096:
                self._tags_memo[key] = text
        return text

    def _row(self, record: UsageRecord) -> list[Any]:
        values = list(self._get(record))
        for i, length in self._limits:
            v = values[i]
            if v is not None and len(v) > length:
                values[i] = v[:length]
        for i, proc in self._processors:
            if values[i] is not None:
                values[i] = proc(values[i])
        return values

    def insert(self, records: Sequence[UsageRecord]) -> int:
        """Insert what is new, with its daily totals, atomically; returns how many rows were new.

        A lost race (deadlock, serialization failure) rolls the whole transaction back and runs it again
        with jittered backoff; any other error is raised for the writer to classify."""
        if not records:
            return 0
        delay = 0.02
        for attempt in range(TRANSIENT_RETRIES + 1):
            try:
                if self.dialect == "postgresql":
                    return self._insert_postgresql(records)
                return self._insert_generic(records)
            except Exception as exc:
                if attempt == TRANSIENT_RETRIES or classify(exc) != TRANSIENT:
                    raise
                self.retries += 1
                self._partitions.clear()  # a partition dropped under us is recreated on the next try
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- SQLite and others -----------------------------------------------------------------------

    def _insert_generic(self, records: Sequence[UsageRecord]) -> int:
        if self.dialect == "sqlite":
            inserted = self._insert_sqlite_optimistic(records)
            if inserted is not None:
                return inserted
        return self._insert_checked(records)

    def _insert_sqlite_optimistic(self, records: Sequence[UsageRecord]) -> int | None:
        """The common case, no duplicates: one `INSERT OR IGNORE` pass. If any row was ignored, roll back
        and let `_insert_checked` work out which rows are new (replays, duplicate request-ids)."""
        sql = f"INSERT OR IGNORE INTO usage_records ({_COLS}) VALUES ({', '.join('?' for _ in RECORD_COLUMNS)})"
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            conn.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE via the engine hook
            before = raw.total_changes
            raw.executemany(sql, [self._row(r) for r in records])
            if raw.total_changes - before != len(records):
                conn.rollback()
                return None
            self._add_daily(conn, records)
            conn.commit()
        return len(records)

    def _insert_checked(self, records: Sequence[UsageRecord]) -> int:
        table = UsageRecordRow.__table__
        with self.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE (see db.py), so no lock upgrade
            ids = [r.record_id for r in records]
            rids = [r.request_id for r in records if r.request_id]
            seen_ids: set[str] = set()
            seen_rids: set[str] = set()
            for chunk in _chunks(ids, 500):
                seen_ids.update(conn.scalars(select(table.c.id).where(table.c.id.in_(chunk))))
            for chunk in _chunks(rids, 500):
                seen_rids.update(conn.scalars(select(table.c.request_id).where(table.c.request_id.in_(chunk))))
            new: list[UsageRecord] = []
            for r in records:
                if r.record_id in seen_ids or (r.request_id and r.request_id in seen_rids):
                    continue
                seen_ids.add(r.record_id)
                if r.request_id:
                    seen_rids.add(r.request_id)
                new.append(r)
            if new:
                placeholders = ", ".join("?" if self.dialect == "sqlite" else "%s" for _ in RECORD_COLUMNS)
                conn.exec_driver_sql(f"INSERT INTO usage_records ({_COLS}) VALUES ({placeholders})",
                                     [tuple(self._row(r)) for r in new])
                self._add_daily(conn, new)
        return len(new)

    # -- PostgreSQL ------------------------------------------------------------------------------

    def _insert_postgresql(self, records: Sequence[UsageRecord]) -> int:
        ensure_partitions(self.engine, {r.created_at.astimezone(dt.UTC).date() for r in records},
                          self._partitions)
        rows = [self._row(r) for r in records]
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            # a real SAVEPOINT inside the open transaction (psycopg's `raw.transaction()` would open and
            # COMMIT a transaction of its own here, before the totals): rows and totals commit together
            savepoint = conn.begin_nested()
            try:  # the common case, no duplicates: COPY straight into the table
                with raw.cursor() as cur, cur.copy(f"COPY usage_records ({_COLS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            except psycopg.errors.UniqueViolation:
                savepoint.rollback()  # back to before the COPY: work out which rows are new
                inserted = self._insert_postgresql_checked(raw, records, rows)
            else:
                savepoint.commit()
                inserted = list(records)
            self._add_daily(conn, inserted)
        return len(inserted)

    def _insert_postgresql_checked(self, raw: Any, records: Sequence[UsageRecord],
                                   rows: list[list[Any]]) -> list[UsageRecord]:
        """In the caller's transaction: stage the batch, insert what is new, return those records."""
        by_id = {r.record_id: r for r in records}
        with raw.cursor() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS usage_records_staging "
                        "(LIKE usage_records INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            cur.execute("TRUNCATE usage_records_staging")
            with cur.copy(f"COPY usage_records_staging ({_COLS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                f"INSERT INTO usage_records ({_COLS}) "
                f"SELECT DISTINCT ON (COALESCE(request_id, id), created_at) {_COLS} "
                f"FROM usage_records_staging ORDER BY COALESCE(request_id, id), created_at, id "
                f"ON CONFLICT DO NOTHING RETURNING id")
            return [by_id[row[0]] for row in cur.fetchall()]

    # -- rollups ---------------------------------------------------------------------------------

    def _add_daily(self, conn: Any, records: Sequence[UsageRecord]) -> None:
        """Add the rows just inserted to the daily totals and latency histograms (same transaction)."""
        daily, latency = rollup_increments(records)
        self._upsert_add(conn, UsageDailyRow.__table__, DAILY_DIMS, DAILY_SUMS, daily)
        self._upsert_add(conn, UsageDailyLatencyRow.__table__, ("day", "deployment", "bucket"), ("count",), latency)
        self._upsert_add(conn, UsageHourlyRow.__table__, HOURLY_DIMS, HOURLY_SUMS, hourly_increments(records))

    def _upsert_add(self, conn: Any, table: Any, keys: Sequence[str], sums: Sequence[str],
                    rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        # one lock order for every writer: concurrent batches touching the same days wait, never deadlock
        rows = sorted(rows, key=lambda row: tuple(row[k] for k in keys))
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = dialect_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys],
            set_={name: table.c[name] + stmt.excluded[name] for name in sums},
        )
        conn.execute(stmt, rows)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
