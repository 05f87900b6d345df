"""What the price table says, for people (`prices`) and for reports (traffic to retired models)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, func, select

from ..ledger.models import UsageDailyRow
from ..numbers import plain
from .table import RATE_KEYS, PriceTable, Rates


def _rates(rates: Rates) -> dict[str, str | None]:
    return {k: plain(getattr(rates, k)) for k in RATE_KEYS}


def price_rows(table: PriceTable) -> list[dict[str, Any]]:
    """Every model with every dated period, its tier, source, checked date and retirement; plain decimals."""
    out = []
    for name in sorted(table.models):
        m = table.models[name]
        out.append({
            "model": name,
            "aliases": list(m.aliases),
            "retirement": m.retirement.isoformat() if m.retirement else None,
            "source": m.source,
            "checked": m.checked,
            "rates": [{
                "effective": p.effective.isoformat() if p.effective else None,
                **_rates(p.rates),
                "tier": ({"above_prompt_tokens": p.tier.threshold, **_rates(p.tier.rates)} if p.tier else None),
                "source": p.source, "checked": p.checked,
            } for p in m.periods],
        })
    return out


def prices_document(table: PriceTable) -> dict[str, Any]:
    return {
        "unit": "USD per million tokens",
        "web_search_per_1000": plain(table.web_search_per_1000),
        "models": price_rows(table),
        "deployments": {name: {"model": d.model, "multiplier": plain(d.multiplier)}
                        for name, d in sorted(table.deployments.items())},
    }


def retired_traffic_notes(engine: Engine, since: dt.date, until: dt.date, table: PriceTable) -> list[str]:
    """One note per model that answered calls on or after its retirement date, from the daily rollups."""
    retired = {k: m.retirement for k, m in table.models.items() if m.retirement is not None}
    if not retired:
        return []
    d = UsageDailyRow.__table__
    stmt = (select(d.c.model, d.c.day, func.sum(d.c.requests + d.c.count_tokens_requests))
            .where(d.c.day >= max(since, min(retired.values())), d.c.day <= until, d.c.model != "")
            .group_by(d.c.model, d.c.day))
    late: dict[str, list[Any]] = {}
    with engine.connect() as conn:
        for model, day, calls in conn.execute(stmt):
            key = table.resolve(model)
            day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])
            if key in retired and day >= retired[key] and calls:
                entry = late.setdefault(key, [0, day, day])
                entry[0] += int(calls)
                entry[1], entry[2] = min(entry[1], day), max(entry[2], day)
    return [f"{calls:,} calls went to {key} on or after its retirement on {retired[key].isoformat()} "
            f"({first.isoformat()} to {last.isoformat()}): move them to a current model"
            for key, (calls, first, last) in sorted(late.items())]
