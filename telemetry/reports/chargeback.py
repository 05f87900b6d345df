"""Chargeback: cost and usage grouped by any dimensions, read from the rollups only (`usage_daily` for usage
and list cost, `usage_hourly` for billed cost), so totals are the same before and after retention and the time
does not grow with the number of raw rows."""

from __future__ import annotations

import calendar
import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select

from ..finance.discount import ccus
from ..ledger.models import COST_SCALE, UsageDailyRow, UsageHourlyRow
from ..numbers import plain

DIMENSIONS = ("team", "project", "user", "deployment", "model", "day", "month")
COUNTERS = ("requests", "errors", "rate_limited", "server_errors", "input_tokens", "output_tokens",
            "cache_creation_input_tokens", "cache_read_input_tokens", "unpriced",
            "count_tokens_requests", "count_tokens_input_tokens")  # free token counting, apart from billed
HOURLY_KEYS = ("team", "project", "deployment", "model")  # --by keys usage_hourly holds (plus day and month)


class ReportError(ValueError):
    pass


def parse_by(value: str | None) -> list[str]:
    """Dimension names, plus `tag:KEY` for a usage_context tag."""
    if value is None:
        return ["team"]
    keys = []
    for raw in (k.strip() for k in value.split(",")):
        if not raw:
            continue
        if raw.lower().startswith("tag:"):
            if not raw[4:].strip():
                raise ReportError("--by tag: needs a tag name, e.g. tag:feature")
            keys.append("tag:" + raw[4:].strip())
        elif raw.lower() in DIMENSIONS:
            keys.append(raw.lower())
        else:
            raise ReportError(f"unknown --by key {raw!r}; choose from {', '.join(DIMENSIONS)} or tag:NAME")
    if not keys:
        raise ReportError(f"--by {value!r} names no dimension; choose from {', '.join(DIMENSIONS)} or tag:NAME")
    return list(dict.fromkeys(keys))


def _sql_dim(dim: str) -> str:
    return "day" if dim == "month" else "tags" if dim.startswith("tag:") else dim


@dataclass
class Row:
    keys: dict[str, str]
    requests: int = 0
    errors: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    unpriced: int = 0
    count_tokens_requests: int = 0
    count_tokens_input_tokens: int = 0
    cost_e10: int = 0
    billed_e10: int | None = None  # after the contractual discount, from usage_hourly; None: not known exactly

    @property
    def cost_usd(self) -> Decimal:
        return Decimal(self.cost_e10).scaleb(-COST_SCALE)

    @property
    def billed_usd(self) -> Decimal | None:
        return None if self.billed_e10 is None else Decimal(self.billed_e10).scaleb(-COST_SCALE)

    @property
    def discount_usd(self) -> Decimal | None:
        return None if self.billed_e10 is None else Decimal(self.cost_e10 - self.billed_e10).scaleb(-COST_SCALE)

    @property
    def ccus(self) -> Decimal | None:
        billed = self.billed_usd
        return None if billed is None else ccus(billed)

    def add(self, other: dict[str, Any]) -> None:
        for name in (*COUNTERS, "cost_e10"):
            setattr(self, name, getattr(self, name) + int(other[name] or 0))

    def as_dict(self) -> dict[str, Any]:
        return {**self.keys, **{k: getattr(self, k) for k in COUNTERS}, "cost_usd": plain(self.cost_usd),
                "billed_usd": plain(self.billed_usd), "discount_usd": plain(self.discount_usd),
                "ccus": plain(self.ccus)}


@dataclass
class Report:
    since: dt.date
    until: dt.date
    by: list[str]
    rows: list[Row]
    total: Row
    forecast_usd: Decimal | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def discounted(self) -> bool:
        """Some billed cost differs from list (or is unknown): the table then shows billed, discount and CCUs."""
        return any(r.billed_e10 != r.cost_e10 for r in [*self.rows, self.total])

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(), "by": self.by,
            "rows": [r.as_dict() for r in self.rows], "total": self.total.as_dict(),
            "month_end_forecast_usd": plain(self.forecast_usd),
            "notes": list(self.notes),
        }


def _label(value: Any, dim: str) -> str:
    if dim == "day":
        return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]
    return value or "(none)"


def chargeback(engine: Engine, since: dt.date, until: dt.date, by: list[str],
               today: dt.date | None = None) -> Report:
    t = UsageDailyRow.__table__
    sql_dims = list(dict.fromkeys(_sql_dim(d) for d in by))
    tag_values: dict[str, dict[str, Any]] = {}
    sums = [func.sum(t.c[name]).label(name) for name in (*COUNTERS, "cost_e10")]
    stmt = (select(*(t.c[d] for d in sql_dims), *sums)
            .where(t.c.day >= since, t.c.day <= until)
            .group_by(*(t.c[d] for d in sql_dims)))
    grouped: dict[tuple[str, ...], Row] = {}
    total = Row(keys={d: "TOTAL" for d in by})
    with engine.connect() as conn:
        for rec in conn.execute(stmt).mappings():
            keys = {}
            for d in by:
                if d == "month":
                    day = rec["day"]
                    keys[d] = (day.isoformat() if isinstance(day, dt.date) else str(day))[:7]
                elif d.startswith("tag:"):
                    raw = rec["tags"] or ""
                    parsed = tag_values.get(raw)
                    if parsed is None:
                        parsed = tag_values[raw] = json.loads(raw) if raw else {}
                    keys[d] = str(parsed.get(d[4:], "(none)"))
                else:
                    keys[d] = _label(rec[d], d)
            key = tuple(keys[d] for d in by)
            grouped.setdefault(key, Row(keys=keys)).add(rec)
            total.add(rec)
    rows = sorted(grouped.values(), key=lambda r: (-r.cost_e10, tuple(r.keys.values())))
    if any(d in ("day", "month") for d in by):
        rows.sort(key=lambda r: tuple(r.keys.values()))
    report = Report(since, until, by, rows, total)
    _add_billed(engine, report)
    report.forecast_usd = forecast(report, today or dt.datetime.now(dt.UTC).date())
    if total.unpriced:
        report.notes.append(f"{total.unpriced} requests have no price (unknown model): their cost is not included")
    if total.count_tokens_requests:
        report.notes.append(f"{total.count_tokens_requests} count_tokens calls ({total.count_tokens_input_tokens:,} "
                            "tokens counted) are free and not in calls, tokens or cost")
    return report


def _add_billed(engine: Engine, report: Report) -> None:
    """Billed cost per row and in the total, exactly from `usage_hourly` over the same UTC days. A group whose
    hourly list cost differs from its daily one (hourly totals missing for rows purged before they existed) is
    left empty rather than guessed; so are keys usage_hourly lacks (user, tag:NAME), unless no row in the window
    has a discount — then billed equals list exactly (a discount is never negative, so an hour billed at list
    had every row in it billed at list)."""
    t = UsageHourlyRow.__table__
    start = dt.datetime.combine(report.since, dt.time(), dt.UTC)
    window = [t.c.hour >= start]
    if report.until < dt.date.max:  # --until 9999-12-31 has no next day
        window.append(t.c.hour < dt.datetime.combine(report.until + dt.timedelta(days=1), dt.time(), dt.UTC))
    with engine.connect() as conn:
        cost, billed, discounted = conn.execute(select(
            func.coalesce(func.sum(t.c.cost_e10), 0), func.coalesce(func.sum(t.c.billed_e10), 0),
            func.count().filter(t.c.cost_e10 != t.c.billed_e10)).where(*window)).one()
        exact = all(d in (*HOURLY_KEYS, "day", "month") for d in report.by)
        grouped: dict[tuple[str, ...], list[int]] = {}
        if exact:
            dims = [d for d in HOURLY_KEYS if d in report.by]
            cols = [t.c[d] for d in dims] + ([t.c.hour] if {"day", "month"} & set(report.by) else [])
            stmt = (select(*cols, func.sum(t.c.cost_e10), func.sum(t.c.billed_e10)).where(*window)
                    .group_by(*cols))
            for rec in conn.execute(stmt):
                values = dict(zip(dims, rec, strict=False))
                if len(cols) > len(dims):
                    hour = rec[len(dims)]
                    day = (hour if hour.tzinfo else hour.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).date()
                    values["day"], values["month"] = day.isoformat(), day.isoformat()[:7]
                key = tuple(values[d] if d in ("day", "month") else _label(values[d], d) for d in report.by)
                sums = grouped.setdefault(key, [0, 0])
                sums[0] += int(rec[-2] or 0)
                sums[1] += int(rec[-1] or 0)
    covered = int(cost) == report.total.cost_e10
    report.total.billed_e10 = int(billed) if covered else None
    missing = 0
    for row in report.rows:
        if exact:
            sums = grouped.get(tuple(row.keys[d] for d in report.by))
            row.billed_e10 = sums[1] if sums is not None and sums[0] == row.cost_e10 else None
        else:
            row.billed_e10 = row.cost_e10 if covered and not discounted else None
        missing += row.billed_e10 is None
    if not covered:
        report.notes.append("billed USD, discount and CCUs are left empty where usage_hourly does not hold the "
                            "same list cost as usage_daily (hourly totals start at the upgrade that added them; "
                            "rows purged before it are in neither)")
    elif missing and not exact:
        keys = ", ".join(d for d in report.by if d not in (*HOURLY_KEYS, "day", "month"))
        report.notes.append(f"billed USD, discount and CCUs per {keys} are left empty: the billed ledger "
                            "(usage_hourly) has no such key and the window has a discount, which cannot be split "
                            "exactly (each row's billed cost is rounded on its own); the TOTAL is exact, and "
                            "--by team, project, deployment, model, day or month gives them per group")
    elif missing:
        report.notes.append(f"billed USD, discount and CCUs are left empty for {missing} groups whose hourly list "
                            "cost differs from usage_daily's")


def forecast(report: Report, today: dt.date) -> Decimal | None:
    """Month-end cost from the month-to-date run rate, for reports that start on the 1st of this month."""
    if report.since != today.replace(day=1) or report.until < today:
        return None
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    elapsed = today.day  # today counts as a (partial) day of spend
    return (report.total.cost_usd / elapsed * days_in_month).quantize(Decimal("0.01"))


def daily_series(engine: Engine, since: dt.date, until: dt.date, dim: str) -> dict[str, dict[str, Decimal]]:
    """{dim value: {day: cost}} for charts."""
    t = UsageDailyRow.__table__
    stmt = (select(t.c.day, t.c[dim], func.sum(t.c.cost_e10))
            .where(t.c.day >= since, t.c.day <= until).group_by(t.c.day, t.c[dim]))
    out: dict[str, dict[str, Decimal]] = defaultdict(dict)
    with engine.connect() as conn:
        for day, value, cost in conn.execute(stmt):
            out[value or "(none)"][_label(day, "day")] = Decimal(int(cost or 0)).scaleb(-COST_SCALE)
    return out
