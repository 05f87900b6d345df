"""Retention: per-request rows older than N days go; `usage_daily` stays.

PostgreSQL drops whole day partitions (instant, no vacuum debt) and deletes only inside the boundary day;
SQLite deletes in bounded batches, each its own short transaction, so writers are never locked for long.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, literal_column, select, text

from .db import ensure_partitions
from .models import UsageRecordRow

_PARTITION = re.compile(r"^usage_records_(\d{8})$")


@dataclass
class PurgeResult:
    cutoff: dt.datetime
    rows: int
    partitions: list[str]
    dry_run: bool


def cutoff_for(days: int, now: dt.datetime | None = None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)


def pg_partitions(engine: Engine) -> dict[dt.date, str]:
    with engine.connect() as conn:
        names = conn.scalars(text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage_records'"))
        out = {}
        for name in names:
            m = _PARTITION.match(name)
            if m:
                out[dt.datetime.strptime(m.group(1), "%Y%m%d").date()] = name
        return out


def create_partitions_ahead(engine: Engine, days: int = 7, today: dt.date | None = None) -> None:
    """PostgreSQL: yesterday through `days` ahead, so writers rarely create one on the hot path."""
    if engine.dialect.name != "postgresql":
        return
    today = today or dt.datetime.now(dt.UTC).date()
    ensure_partitions(engine, {today + dt.timedelta(days=offset) for offset in range(-1, days + 1)}, set())


def purge(
    engine: Engine,
    older_than_days: int,
    *,
    dry_run: bool = False,
    batch_size: int = 5000,
    now: dt.datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PurgeResult:
    cutoff = cutoff_for(older_than_days, now)
    table = UsageRecordRow.__table__
    with engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(table).where(table.c.created_at < cutoff)) or 0
    result = PurgeResult(cutoff, total, [], dry_run)
    if dry_run or total == 0 and engine.dialect.name != "postgresql":
        return result
    done = 0
    if engine.dialect.name == "postgresql":
        for day, name in sorted(pg_partitions(engine).items()):
            if day + dt.timedelta(days=1) <= cutoff.date():
                with engine.begin() as conn:
                    n = conn.scalar(text(f'SELECT count(*) FROM "{name}"')) or 0
                    conn.execute(text(f'ALTER TABLE usage_records DETACH PARTITION "{name}"'))
                    conn.execute(text(f'DROP TABLE "{name}"'))
                result.partitions.append(name)
                done += n
                if progress:
                    progress(done, total)
        create_partitions_ahead(engine)
    # SQLite's rows by rowid (its key is (created_at, id), revision 0005: no index on the id alone);
    # PostgreSQL's boundary day by id, its key's first column
    key = literal_column("rowid") if engine.dialect.name == "sqlite" else table.c.id
    while done < total:
        with engine.begin() as conn:
            ids = select(key).where(table.c.created_at < cutoff).limit(batch_size).scalar_subquery()
            n = conn.execute(delete(table).where(key.in_(ids))).rowcount or 0
        if n == 0:
            break
        done += n
        if progress:
            progress(done, total)
    return result


