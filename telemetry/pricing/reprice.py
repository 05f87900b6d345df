"""Re-pricing rows already in the ledger after a price fix, with the daily totals moved by exactly the
difference.

Each batch is one transaction: the rows' new `cost_usd` and the matching `usage_daily` adjustment commit
together. An update only lands if the row still holds the cost it was read with (compare-and-set), and
the daily totals are only ever *incremented*, as the writer's upserts do: concurrent writers (which only
insert new rows) and even a second reprice running at the same time cannot double-count. Running it twice
is the same as once: the second run finds nothing to change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, String, select, tuple_, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite

from ..finance.discount import billed_cost
from ..finance.hourly import add_reprice_delta, upsert_hourly_deltas
from ..ledger.models import COST_SCALE, UsageDailyRow, UsageRecordRow
from ..ledger.store import DAILY_DIMS, tags_key
from ..record import UsageRecord
from .table import PriceTable

_COLUMNS = ("id", "created_at", "operation_id", "attempt", "operation", "deployment", "model", "team", "project",
            "user", "tags", "input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens", "cache_read_input_tokens",
            "web_search_requests", "cost_usd", "resource", "billed_cost_usd", "discount")
_TOKEN_FIELDS = _COLUMNS[11:18]


@dataclass
class RepriceResult:
    since: dt.date
    until: dt.date
    dry_run: bool
    rows: int = 0  # rows in the window
    changed: int = 0  # rows whose cost changed (or would)
    skipped: int = 0  # rows changed by someone else between read and update: left to the next run
    before_usd: Decimal = Decimal(0)
    after_usd: Decimal = Decimal(0)
    unpriced_before: int = 0
    unpriced_after: int = 0
    days_adjusted: list[dt.date] = field(default_factory=list)
    first_row_day: dt.date | None = None  # older days have no rows left (retention): totals untouched

    @property
    def difference_usd(self) -> Decimal:
        return self.after_usd - self.before_usd


def _e10(cost: Decimal | None) -> int:
    return 0 if cost is None else int(cost.scaleb(COST_SCALE))


def _record(row: Any) -> UsageRecord:
    r = UsageRecord(created_at=row.created_at, operation_id=row.operation_id, attempt=row.attempt,
                    operation=row.operation, deployment=row.deployment, model=row.model)
    for name in _TOKEN_FIELDS:
        setattr(r, name, int(getattr(row, name) or 0))
    return r


def _daily_key(row: Any) -> tuple[Any, ...]:
    """The usage_daily key the writer added this row to (see store.rollup_increments)."""
    created = row.created_at
    day = (created if created.tzinfo is not None else created.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).date()
    return (day, (row.team or "")[:128], (row.project or "")[:128], (row.user or "")[:128],
            (row.deployment or "")[:128], (row.model or "")[:128], tags_key(row.tags or None))


def _same_cost(column: Any, row: Any, text: bool) -> Any:
    """Still what we read? On SQLite compare the stored text itself (older rows may hold float text)."""
    if row.cost_usd is None:
        return column.is_(None)
    return type_coerce(column, String) == row.raw_cost if text else column == row.cost_usd


def reprice(engine: Engine, table: PriceTable, since: dt.date, until: dt.date, *, dry_run: bool = False,
            batch_size: int = 1000, progress: Callable[[int], None] | None = None) -> RepriceResult:
    """Recompute `cost_usd` for rows created in [since, until] (UTC days, inclusive)."""
    t = UsageRecordRow.__table__
    d = UsageDailyRow.__table__
    start = dt.datetime.combine(since, dt.time(), dt.UTC)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.UTC)
    result = RepriceResult(since, until, dry_run)
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    upsert = insert(d)
    upsert = upsert.on_conflict_do_update(
        index_elements=[d.c[k] for k in DAILY_DIMS],
        set_={"cost_e10": d.c.cost_e10 + upsert.excluded.cost_e10,
              "unpriced": d.c.unpriced + upsert.excluded.unpriced})
    text = engine.dialect.name == "sqlite"
    raw = type_coerce(t.c.cost_usd, String) if text else t.c.cost_usd
    # SQLite: the row's created_at as stored (text), so its update probes the (created_at, id) key (revision 0005)
    created = type_coerce(t.c.created_at, String) if text else t.c.created_at
    # keyset: PostgreSQL on the id (its key's first column); SQLite on its key (created_at, id) (revision 0005),
    # with created_at as the stored text (written two ways, so it never round-trips through a datetime)
    cursor: tuple[Any, str] | None = None
    days: set[dt.date] = set()
    while True:
        stmt = (select(*(t.c[c] for c in _COLUMNS), raw.label("raw_cost"), created.label("raw_created_at"))
                .where(t.c.created_at >= start, t.c.created_at < end))
        if text:
            if cursor is not None:
                stmt = stmt.where(created >= cursor[0], tuple_(created, t.c.id) > tuple_(*cursor))
            stmt = stmt.order_by(t.c.created_at, t.c.id).limit(batch_size)
        else:
            if cursor is not None:
                stmt = stmt.where(t.c.id > cursor[1])
            stmt = stmt.order_by(t.c.id).limit(batch_size)
        # one transaction per batch: rows and their daily totals commit together (SQLite: BEGIN IMMEDIATE)
        with (engine.connect() if dry_run else engine.begin()) as conn:
            rows = conn.execute(stmt).all()
            if not rows:
                break
            deltas: dict[tuple[Any, ...], list[int]] = {}
            hourly: dict[tuple[Any, ...], list[int]] = {}  # usage_hourly moves too (telemetry.finance)
            for row in rows:
                old = row.cost_usd
                new = table.cost(_record(row))
                result.rows += 1
                day = _daily_key(row)[0]
                if result.first_row_day is None or day < result.first_row_day:
                    result.first_row_day = day
                result.before_usd += old or 0
                result.unpriced_before += old is None
                if new == old and (new is None) == (old is None):
                    result.after_usd += old or 0
                    result.unpriced_after += old is None
                    continue
                if not dry_run:
                    # the whole key: PostgreSQL touches only one day's partition, SQLite probes its key
                    where = [t.c.id == row.id, created == row.raw_created_at, _same_cost(t.c.cost_usd, row, text)]
                    # billed at the row's own discount: a re-price never changes the contract it was billed under
                    billed = None if row.discount is None else billed_cost(new, row.discount)
                    done = conn.execute(update(t).where(*where).values(cost_usd=new, billed_cost_usd=billed)
                                        ).rowcount
                    if done != 1:  # changed under us: it keeps what it has, the totals stay consistent
                        result.skipped += 1
                        result.after_usd += old or 0
                        result.unpriced_after += old is None
                        continue
                result.changed += 1
                result.after_usd += new or 0
                result.unpriced_after += new is None
                if not dry_run:
                    add_reprice_delta(hourly, row, old, new, row.billed_cost_usd, billed)
                delta = deltas.setdefault(_daily_key(row), [0, 0])
                delta[0] += _e10(new) - _e10(old)
                delta[1] += (new is None) - (old is None)
            if deltas and not dry_run:
                conn.execute(upsert, [{**dict(zip(DAILY_DIMS, key, strict=True)), "cost_e10": c, "unpriced": u}
                                      for key, (c, u) in deltas.items()])
                upsert_hourly_deltas(conn, engine.dialect.name, hourly)
            days.update(key[0] for key in deltas)
            last = rows[-1]
            cursor = (last.raw_created_at, last.id)
        if progress is not None:
            progress(result.rows)
        if len(rows) < batch_size:
            break
    result.days_adjusted = sorted(days)
    return result
