"""Idempotent batch inserts into `usage_records` plus exact `usage_daily` increments, in one transaction.

Only rows actually inserted are added to the daily totals, so replays and duplicates count once; rows and
totals commit together or not at all. Upserts take their row locks in key order, so concurrent writers do
not deadlock each other; a transaction that still loses a race (deadlock, serialization failure) is
retried whole, never spooled half-done.
SQLite: one `INSERT OR IGNORE` pass; when it ignored a row, dedupe by lookup inside a write transaction (ids by
their (created_at, id) key, request-ids by their index), then the driver's `executemany`.
PostgreSQL: `COPY` inside a savepoint of the one transaction; on a duplicate, roll back to it and go through
a staging table, `INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import Engine, select

from ..finance.hourly import HOURLY_DIMS, HOURLY_SUMS
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
_INSERT = {mark: f"INSERT INTO usage_records ({_COLS}) VALUES ({', '.join(mark for _ in RECORD_COLUMNS)})"
           for mark in ("?", "%s")}  # driver SQL, by paramstyle (sqlite3: qmark, psycopg: format)
_INSERT_OR_IGNORE = _INSERT["?"].replace("INSERT", "INSERT OR IGNORE", 1)  # SQLite's optimistic pass
_SOURCE_ATTR = {"id": "record_id"}
_ID, _CREATED_AT = RECORD_COLUMNS.index("id"), RECORD_COLUMNS.index("created_at")
DAILY_DIMS = ("day", "team", "project", "user", "deployment", "model", "tags")
LATENCY_DIMS = ("day", "deployment", "bucket")
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


def _sqlite_time(value: dt.datetime) -> str:
    """created_at as SQLite stores it: naive UTC text, as sqlite3's default datetime adapter writes it."""
    return _naive_utc(value).isoformat(" ")


_TIME_PROBES = (dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                dt.datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))))


def _decimal_text(value: Decimal) -> str:
    """A cost as SQLite stores it: exact, plain notation (ExactDecimal's bind processor, inlined)."""
    return format(value if type(value) is Decimal else Decimal(value), "f")


def _adapter_writes_isoformat() -> bool:
    """Whether sqlite3's datetime adapter stores what `_sqlite_time` writes (or there is none, since it is
    deprecated from Python 3.12: then the text is ours to write)."""
    probe_conn = sqlite3.connect(":memory:")
    try:
        adapted = [probe_conn.execute("SELECT ?", (_naive_utc(p),)).fetchone()[0] for p in _TIME_PROBES]
        return adapted == [_sqlite_time(p) for p in _TIME_PROBES]
    except Exception:  # no default adapter
        return True
    finally:
        probe_conn.close()


_DECIMAL_PROBES = (Decimal("0.0123000000"), Decimal("1E-10"), Decimal("0"), Decimal("-2.5E+3"), Decimal("12345.6"))


def is_error(record: UsageRecord) -> bool:
    return is_service_error(record.error_type, record.status_code)


def tags_key(tags: dict[str, str] | None) -> str:
    """Canonical JSON of a tag set, the rollup's `tags` dimension ("" when none, or too long to key on)."""
    if not tags:
        return ""
    text = json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= MAX_TAGS_KEY else ""


class Rollups:
    """The increments one batch adds to `usage_daily`, `usage_daily_latency` and `usage_hourly`, keyed by
    each table's dimensions (in column order), summed in one pass over the rows."""

    __slots__ = ("daily", "latency", "hourly")

    def __init__(self) -> None:
        self.daily: dict[tuple[Any, ...], list[Any]] = {}
        self.latency: dict[tuple[Any, ...], list[int]] = {}
        self.hourly: dict[tuple[Any, ...], list[int]] = {}


def rollup_increments(records: Iterable[UsageRecord]) -> Rollups:
    """One pass: the sums `usage_daily` adds per (day, team, project, user, deployment, model, tags), the
    `usage_daily_latency` bucket counts per (day, deployment, bucket), and the `usage_hourly` sums per
    (hour, resource, deployment, model, team, project); each cost is scaled to 1e-10 USD once."""
    out = Rollups()
    totals, latency, hourly = out.daily, out.latency, out.hourly
    bucket_of = bisect.bisect_left
    bounds = LATENCY_BUCKETS_MS
    utc = dt.UTC
    memo: dict[tuple[tuple[str, str], ...], str] = {}
    hour_start = hour_end = dt.datetime.max.replace(tzinfo=utc)  # the UTC hour of the last row, [start, end)
    day = hour_start.date()
    one_hour = dt.timedelta(hours=1)
    for r in records:
        created = r.created_at
        if created.tzinfo is not utc:
            created = created.astimezone(utc)
        if not hour_start <= created < hour_end:  # a batch's rows mostly share an hour: its day and key too
            hour_start = created.replace(minute=0, second=0, microsecond=0)
            hour_end = hour_start + one_hour if hour_start.year < dt.MAXYEAR else hour_start
            day = created.date()
        items = tuple(r.tags.items()) if r.tags else ()
        tags = memo.get(items)
        if tags is None:
            tags = memo[items] = tags_key(r.tags)
        team, project = (r.team or "")[:128], (r.project or "")[:128]  # cut like the row's columns
        deployment, model = (r.deployment or "")[:128], (r.model or "")[:128]
        key = (day, team, project, (r.user or "")[:128], deployment, model, tags)
        t = totals.get(key)
        if t is None:
            t = totals[key] = [0] * 12 + [0.0, 0, 0]
        hkey = (hour_start, (r.resource or "")[:128].lower(), deployment, model, team, project)
        h = hourly.get(hkey)
        if h is None:
            h = hourly[hkey] = [0] * len(HOURLY_SUMS)
        status = r.status_code or 0
        input_tokens, cache_creation, cache_read = r.input_tokens, r.cache_creation_input_tokens, \
            r.cache_read_input_tokens
        if r.operation == "count_tokens":  # free: not a billed call, its tokens not billed input
            t[13] += 1
            t[14] += input_tokens
        else:
            t[0] += 1
            t[4] += input_tokens
        t[1] += status >= 400 or (r.error_type is not None and r.error_type not in CALLER_ENDED)
        t[2] += status == 429 or r.error_type == "rate_limit_error"
        t[3] += status >= 500
        t[5] += r.output_tokens
        t[6] += cache_creation
        t[7] += r.cache_creation_5m_input_tokens
        t[8] += r.cache_creation_1h_input_tokens
        t[9] += cache_read
        h[0] += 1
        h[1] += input_tokens
        h[2] += r.output_tokens
        h[3] += cache_creation
        h[4] += cache_read
        cost = r.cost_usd
        if cost is None:
            t[11] += 1
            h[7] += 1
        else:
            cost_e10 = int(cost.scaleb(COST_SCALE))
            t[10] += cost_e10
            h[5] += cost_e10
            # a row with a list cost but no billed cost (written before the finance revision, or by a writer
            # without discounts) is billed at list
            billed = r.billed_cost_usd
            h[6] += cost_e10 if billed is None or billed is cost else int(billed.scaleb(COST_SCALE))
        if r.latency_ms is not None:
            t[12] += r.latency_ms
            lkey = (day, deployment, bucket_of(bounds, r.latency_ms))
            slot = latency.get(lkey)
            if slot is None:
                latency[lkey] = [1]
            else:
                slot[0] += 1
    return out


class _Upsert:
    """`INSERT … ON CONFLICT (keys) DO UPDATE SET sum = table.sum + excluded.sum` as driver SQL, built once:
    the same statement SQLite (3.24+) and PostgreSQL both run, with the columns' own bind processors
    applied to the keys (what SQLAlchemy would bind), and none of its per-execute statement work."""

    def __init__(self, table: Any, keys: Sequence[str], sums: Sequence[str], dialect: Any) -> None:
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        cols = [*keys, *sums]
        quoted = [f'"{c}"' for c in cols]
        self.sql = (f'INSERT INTO {table.name} ({", ".join(quoted)}) VALUES ({", ".join(mark for _ in cols)}) '
                    f'ON CONFLICT ({", ".join(quoted[:len(keys)])}) DO UPDATE SET '
                    + ", ".join(f'"{c}" = {table.name}."{c}" + excluded."{c}"' for c in sums))
        self.processors = [(i, proc) for i, name in enumerate(cols)
                           if (proc := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))]

    def run(self, raw: Any, increments: dict[tuple[Any, ...], list[Any]]) -> None:
        if not increments:
            return
        rows = []
        # one lock order for every writer: concurrent batches touching the same days wait, never deadlock
        for key in sorted(increments):
            row = [*key, *increments[key]]
            for i, proc in self.processors:
                if row[i] is not None:
                    row[i] = proc(row[i])
            rows.append(tuple(row))
        # on the DB-API connection of the open transaction: SQLAlchemy's execution context (events, result
        # set-up) costs ~70 µs a statement, most of what a small batch's rollups cost
        cursor = raw.cursor()
        try:
            cursor.executemany(self.sql, rows)
        finally:
            cursor.close()


class LedgerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._partitions: set[dt.date] = set()
        table = UsageRecordRow.__table__
        # column index → bind processor, only where the dialect has one (dates, decimals, JSON)
        processors = {i: proc for i, name in enumerate(RECORD_COLUMNS)
                      if (proc := table.c[name].type.bind_processor(engine.dialect)) is not None}
        if self.dialect == "sqlite":  # the same values as the TypeDecorators bind, minus their call chains
            created = RECORD_COLUMNS.index("created_at")
            reference = processors.get(created)
            probe = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
            if reference is not None and reference(probe) == _naive_utc(probe):  # UTCDateTime: naive UTC
                # and as the text sqlite3's datetime adapter stores, without its Python call per row
                processors[created] = _sqlite_time if _adapter_writes_isoformat() else _naive_utc
            for name in ("cost_usd", "billed_cost_usd", "discount"):  # ExactDecimal: exact plain text
                at = RECORD_COLUMNS.index(name)
                reference = processors.get(at)
                if reference is not None and all(reference(d) == _decimal_text(d) for d in _DECIMAL_PROBES):
                    processors[at] = _decimal_text
        processors[RECORD_COLUMNS.index("tags")] = self._tags_json  # as text, for executemany and COPY alike
        self._processors = processors
        # server-supplied strings longer than their column are cut, not allowed to fail a whole batch
        self._limits = {i: length for i, name in enumerate(RECORD_COLUMNS)
                        if (length := getattr(table.c[name].type, "length", None))}
        self._tags_memo: dict[tuple[tuple[str, str], ...], str] = {}
        self.retries = 0  # transactions run again after a lost race
        self._upserts = (_Upsert(UsageDailyRow.__table__, DAILY_DIMS, DAILY_SUMS, engine.dialect),
                         _Upsert(UsageDailyLatencyRow.__table__, LATENCY_DIMS, ("count",), engine.dialect),
                         _Upsert(UsageHourlyRow.__table__, HOURLY_DIMS, HOURLY_SUMS, engine.dialect))
        self._row = self._row_function()

    def _tags_json(self, tags: dict[str, str]) -> str:
        """Most rows share a handful of tag sets: serialize each once."""
        key = tuple(tags.items())
        text = self._tags_memo.get(key)
        if text is None:
            text = json.dumps(tags, separators=(",", ":"))
            if len(self._tags_memo) < 4096:
                self._tags_memo[key] = text
        return text

    def _row_function(self) -> Callable[[UsageRecord], tuple[Any, ...]]:
        """record → driver tuple as one generated function, straight-line: each column read once, cut to its
        length and put through its bind processor only where it has one. The same steps as a loop over the
        columns, without the intermediate list and the per-column loop overhead (~40 % of the conversion)."""
        limits, processors = self._limits, self._processors
        lines = ["def row(r):"]
        scope: dict[str, Any] = {}
        for i, name in enumerate(RECORD_COLUMNS):
            lines.append(f"    v{i} = r.{_SOURCE_ATTR.get(name, name)}")
            if i in limits:
                lines.append(f"    if v{i} is not None and len(v{i}) > {limits[i]}: v{i} = v{i}[:{limits[i]}]")
            if i in processors:
                scope[f"p{i}"] = processors[i]
                lines.append(f"    if v{i} is not None: v{i} = p{i}(v{i})")
        lines.append(f"    return ({', '.join(f'v{i}' for i in range(len(RECORD_COLUMNS)))},)")
        exec(compile("\n".join(lines), f"<{type(self).__name__} row>", "exec"), scope)  # noqa: S102 - our own code
        return scope["row"]  # type: ignore[no-any-return]

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
        and let `_insert_checked` work out which rows are new (replays, duplicate request-ids).

        One transaction on the pool's DB-API connection, BEGIN IMMEDIATE to COMMIT: the rows and their totals
        go in together, without SQLAlchemy's per-statement execution layer (~50 µs a batch, most of what a
        batch of a few rows costs besides SQLite's own work)."""
        rows = [self._row(r) for r in records]
        pooled = self.engine.raw_connection()
        try:
            raw = pooled.driver_connection
            raw.execute("BEGIN IMMEDIATE")  # the write lock up front, as every ledger transaction (db.py)
            try:
                before = raw.total_changes
                raw.executemany(_INSERT_OR_IGNORE, rows)
                if raw.total_changes - before != len(rows):
                    raw.execute("ROLLBACK")
                    return None
                self._add_totals(raw, records)
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    with contextlib.suppress(Exception):  # the original error is the one to classify
                        raw.execute("ROLLBACK")
                raise
        finally:
            pooled.close()  # back to the pool
        return len(rows)

    def _insert_checked(self, records: Sequence[UsageRecord]) -> int:
        table = UsageRecordRow.__table__
        with self.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE (see db.py), so no lock upgrade
            rows = [self._row(r) for r in records]
            rids = [r.request_id for r in records if r.request_id]
            seen_ids: set[str] = set()
            seen_rids: set[str] = set()
            if self.dialect == "sqlite":
                seen_ids.update(self._stored_ids_sqlite(conn, rows))
            else:
                for chunk in _chunks([r.record_id for r in records], 500):
                    seen_ids.update(conn.scalars(select(table.c.id).where(table.c.id.in_(chunk))))
            for chunk in _chunks(rids, 500):
                seen_rids.update(conn.scalars(select(table.c.request_id).where(table.c.request_id.in_(chunk))))
            new: list[UsageRecord] = []
            new_rows: list[tuple[Any, ...]] = []
            for r, row in zip(records, rows, strict=True):
                if r.record_id in seen_ids or (r.request_id and r.request_id in seen_rids):
                    continue
                seen_ids.add(r.record_id)
                if r.request_id:
                    seen_rids.add(r.request_id)
                new.append(r)
                new_rows.append(row)
            if new:
                conn.exec_driver_sql(_INSERT["?" if self.dialect == "sqlite" else "%s"], new_rows)
                self._add_daily(conn, new)
        return len(new)

    @staticmethod
    def _stored_ids_sqlite(conn: Any, rows: Sequence[Sequence[Any]]) -> set[str]:
        """Ids of the batch already stored under their own created_at: probes of the (created_at, id) key
        (revision 0005), with created_at bound exactly as the insert binds it. A replay keeps its created_at."""
        out: set[str] = set()
        cursor = conn.connection.driver_connection.cursor()
        try:
            for chunk in _chunks(rows, 500):
                marks = ", ".join("(?, ?)" for _ in chunk)
                params = [v for row in chunk for v in (row[_CREATED_AT], row[_ID])]
                out.update(i for (i,) in cursor.execute(
                    "SELECT id FROM usage_records WHERE (created_at, id) IN "
                    f"(SELECT * FROM (VALUES {marks}))", params))
        finally:
            cursor.close()
        return out

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
        """Add the rows just inserted to the daily, latency and hourly totals (same transaction)."""
        self._add_totals(conn.connection.driver_connection, records)

    def _add_totals(self, raw: Any, records: Sequence[UsageRecord]) -> None:
        """`_add_daily` on the DB-API connection of the open transaction."""
        rollups = rollup_increments(records)
        daily, latency, hourly = self._upserts
        daily.run(raw, rollups.daily)
        latency.run(raw, rollups.latency)
        hourly.run(raw, rollups.hourly)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
