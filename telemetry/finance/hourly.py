"""The increments `usage_hourly` adds for rows just inserted; the ledger store upserts them in the same
transaction as the rows (see `LedgerStore._add_daily`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from ..ledger.models import COST_SCALE
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
