"""The increments `usage_hourly` adds for rows (the 0004 migration's backfill). The ledger writer sums the same
increments in its one rollup pass over each batch (`ledger.store.rollup_increments`) and upserts them in the
same transaction as the rows; tests check the two agree."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from ..ledger.models import COST_SCALE, UsageHourlyRow
from ..record import UsageRecord

HOURLY_DIMS = ("hour", "resource", "deployment", "model", "team", "project")
HOURLY_SUMS = ("requests", "input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "cost_e10", "billed_e10", "unpriced")


def hourly_increments(records: Iterable[UsageRecord]) -> list[dict[str, Any]]:
    """Sums per (UTC hour, resource, deployment, model, team, project). A row with a list cost but no billed
    cost (written before the finance revision, or by a writer without discounts) is billed at list."""
    totals: dict[tuple[Any, ...], list[int]] = {}
    utc = dt.UTC
    for r in records:
        created = r.created_at if r.created_at.tzinfo is utc else r.created_at.astimezone(utc)
        hour = created.replace(minute=0, second=0, microsecond=0)
        key = (hour, (r.resource or "")[:128].lower(), (r.deployment or "")[:128], (r.model or "")[:128],
               (r.team or "")[:128], (r.project or "")[:128])
        t = totals.get(key)
        if t is None:
            t = totals[key] = [0] * len(HOURLY_SUMS)
        t[0] += 1
        t[1] += r.input_tokens
        t[2] += r.output_tokens
        t[3] += r.cache_creation_input_tokens
        t[4] += r.cache_read_input_tokens
        if r.cost_usd is None:
            t[7] += 1
        else:
            t[5] += int(r.cost_usd.scaleb(COST_SCALE))
            billed = r.cost_usd if r.billed_cost_usd is None else r.billed_cost_usd
            t[6] += int(billed.scaleb(COST_SCALE))
    return [dict(zip(HOURLY_DIMS, key, strict=True), **dict(zip(HOURLY_SUMS, sums, strict=True)))
            for key, sums in totals.items()]


def hourly_key(r: Any) -> tuple[Any, ...]:
    """The usage_hourly key a row was added to (as `hourly_increments` builds it)."""
    created = r.created_at if r.created_at.tzinfo is not None else r.created_at.replace(tzinfo=dt.UTC)
    hour = created.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return (hour, (r.resource or "")[:128].lower(), (r.deployment or "")[:128], (r.model or "")[:128],
            (r.team or "")[:128], (r.project or "")[:128])


def add_reprice_delta(deltas: dict[tuple[Any, ...], list[int]], row: Any, old: Decimal | None,
                      new: Decimal | None, old_billed: Decimal | None, new_billed: Decimal | None) -> None:
    """What a re-price moves in `usage_hourly` for one row: list, billed (list when unknown) and unpriced."""
    d = deltas.setdefault(hourly_key(row), [0, 0, 0])
    d[0] += _e10(new) - _e10(old)
    d[1] += _e10(new if new_billed is None else new_billed) - _e10(old if old_billed is None else old_billed)
    d[2] += (new is None) - (old is None)


def upsert_hourly_deltas(conn: Any, dialect: str, deltas: dict[tuple[Any, ...], list[int]]) -> None:
    """Increment-only, like the writer's upserts (same transaction as the rows' update)."""
    if not deltas:
        return
    t = UsageHourlyRow.__table__
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(t)
    stmt = stmt.on_conflict_do_update(index_elements=[t.c[k] for k in HOURLY_DIMS], set_={
        k: t.c[k] + stmt.excluded[k] for k in ("cost_e10", "billed_e10", "unpriced")})
    conn.execute(stmt, [{**dict(zip(HOURLY_DIMS, key, strict=True)), **{s: 0 for s in HOURLY_SUMS},
                         "cost_e10": c, "billed_e10": b, "unpriced": u} for key, (c, b, u) in deltas.items()])


def _e10(value: Decimal | None) -> int:
    return 0 if value is None else int(value.scaleb(COST_SCALE))
