"""What the HTML report's finance view shows, read from `usage_hourly`: list vs billed cost, the discount, CCUs,
each team's month burn-down with its forecast, and (from `reconcile --format json`) the bill vs the ledger."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from ..ledger.models import COST_SCALE, UsageHourlyRow
from .budget import Budget, Forecast, forecast, month_bounds
from .discount import CCU_USD
from .reconcile import ReconcileError


@dataclass
class TeamCost:
    team: str
    list_usd: Decimal
    billed_usd: Decimal


@dataclass
class FinanceSummary:
    list_usd: Decimal
    billed_usd: Decimal
    unpriced: int
    teams: list[TeamCost]

    @property
    def discount_usd(self) -> Decimal:
        return self.list_usd - self.billed_usd

    @property
    def discount_percent(self) -> Decimal | None:
        return None if not self.list_usd else (self.discount_usd / self.list_usd * 100).quantize(Decimal("0.01"))

    @property
    def ccus(self) -> Decimal:
        return self.billed_usd / CCU_USD


@dataclass
class BurnDown:
    team: str
    month_start: dt.date
    days_in_month: int
    cumulative: list[Decimal]  # billed USD by the end of each day so far
    now: dt.datetime
    spent: Decimal
    forecast: Forecast | None
    budget: Decimal | None = None
    inputs: dict[str, str] = field(default_factory=dict)


def _usd(e10: int | None) -> Decimal:
    return Decimal(e10 or 0).scaleb(-COST_SCALE)


def _start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def summary(engine: Engine, since: dt.date, until: dt.date) -> FinanceSummary:
    t = UsageHourlyRow.__table__
    stmt = (select(t.c.team, func.sum(t.c.cost_e10), func.sum(t.c.billed_e10), func.sum(t.c.unpriced))
            .where(t.c.hour >= _start(since), t.c.hour < _start(until + dt.timedelta(days=1)))
            .group_by(t.c.team))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    teams = sorted((TeamCost(team or "(none)", _usd(c), _usd(b)) for team, c, b, _ in rows),
                   key=lambda x: (-x.billed_usd, x.team))
    return FinanceSummary(sum((x.list_usd for x in teams), Decimal(0)),
                          sum((x.billed_usd for x in teams), Decimal(0)), sum(int(n or 0) for *_, n in rows), teams)


def burn_downs(engine: Engine, until: dt.date, budgets: list[Budget] | None = None, limit: int = 6,
               now: dt.datetime | None = None) -> list[BurnDown]:
    """The month that holds `until` (up to the last full hour): per team, cumulative billed cost by day and a
    trailing 7-day forecast to month end; the budget line where a team budget exists."""
    # as of the last full hour, as Foundry meters: the page is the same for a whole hour (and before and after a
    # purge, since `usage_hourly` outlives retention)
    real_now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    month_start, month_end = month_bounds(_start(until))
    at = min(real_now, month_end)
    days = (month_end - month_start).days
    t = UsageHourlyRow.__table__
    since = min(month_start, at - dt.timedelta(days=7))  # a team busy last week has a forecast, even on the 1st
    stmt = (select(t.c.hour, t.c.team, t.c.billed_e10)
            .where(t.c.hour >= since, t.c.hour < at))
    per_team: dict[str, list[int]] = {}
    with engine.connect() as conn:
        for hour, team, e10 in conn.execute(stmt):
            series = per_team.setdefault(team or "", [0] * days)
            hour = hour.astimezone(dt.UTC)
            if hour >= month_start:
                series[(hour - month_start).days] += e10 or 0
    by_team = {b.target: b.amount for b in budgets or () if b.scope == "team"}
    elapsed_days = (at - month_start).days + (1 if at < month_end else 0)
    out = []
    for team, series in sorted(per_team.items(), key=lambda kv: (-sum(kv[1]), kv[0]))[:limit]:
        running, cumulative = 0, []
        for e10 in series[:elapsed_days]:
            running += e10
            cumulative.append(_usd(running))
        fc = forecast(engine, Budget(Decimal(1), "team", team), at, running) if at < month_end else None
        out.append(BurnDown(team or "(none)", month_start.date(), days, cumulative, at, _usd(running), fc,
                            by_team.get(team), fc.inputs if fc else {}))
    return out


def load_reconciliation(path: str | Path) -> list[tuple[str, Decimal, Decimal]]:
    """Per day: (day, bill, ledger) summed over resources, from `reconcile --format json` output."""
    p = Path(path)
    try:
        data: Any = json.loads(p.read_text("utf-8"))
        days: dict[str, list[Decimal]] = {}
        for line in data["lines"]:
            pair = days.setdefault(line["day"], [Decimal(0), Decimal(0)])
            pair[0] += Decimal(line["billed_usd"] or 0)
            pair[1] += Decimal(line["ledger_usd"] or 0)
    except FileNotFoundError:
        raise ReconcileError(f"reconciliation {p} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, ArithmeticError) as exc:
        raise ReconcileError(f"reconciliation {p} is not `reconcile --format json` output "
                             f"({type(exc).__name__})") from None
    return [(day, bill, ledger) for day, (bill, ledger) in sorted(days.items())]
