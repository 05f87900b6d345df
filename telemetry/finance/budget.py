"""Monthly budgets per team, project or resource (or all Claude spend), on billed cost (after the discount),
with a forecast to month end that says how it was made.

Forecasts, both exact (fractions of hours, compared without rounding):
- `trailing` (default): month-to-date + the run rate of the last N days (N = 7) × the hours left in the month.
  The window may reach into last month, so the first days of a month still get a sensible rate.
- `linear`: month-to-date × hours in the month / hours elapsed.
A budget fires when the forecast is strictly above it, or when month-to-date spend is strictly above X % of it;
exactly at a threshold it stays quiet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from sqlalchemy import Engine, func, select

from ..ledger.models import COST_SCALE, UsageHourlyRow

SCOPES = ("team", "project", "resource")
METHODS = ("trailing", "linear")
HOUR = dt.timedelta(hours=1)
QUANTUM = Decimal("1e-10")


class BudgetError(ValueError):
    """A budget that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Budget:
    amount: Decimal  # USD per calendar month (UTC), billed
    scope: str | None = None  # team | project | resource; None: all Claude spend in the ledger
    target: str | None = None
    alert_at_percent: tuple[Decimal, ...] = (Decimal(100),)
    forecast: str | None = "trailing"  # trailing | linear | None (no forecast rule)
    forecast_days: int = 7
    name: str | None = None

    @property
    def subject(self) -> str:
        return f"{self.scope} {self.target}" if self.scope else "all Claude spend"

    @property
    def label(self) -> str:
        return self.name or f"budget {self.subject} ${_usd(self.amount)}/month"


@dataclass
class Forecast:
    method: str
    exact: Fraction
    description: str
    inputs: dict[str, str]

    @property
    def value(self) -> Decimal:
        return _decimal(self.exact)


@dataclass
class BudgetStatus:
    budget: Budget
    month: str
    now: dt.datetime
    spent: Decimal
    forecast: Forecast | None
    firing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def percent_spent(self) -> Decimal | None:
        if not self.budget.amount:
            return None
        return (self.spent / self.budget.amount * 100).quantize(Decimal("0.01"))

    def as_dict(self) -> dict[str, Any]:
        b = self.budget
        return {"budget": b.label, "scope": b.scope, "target": b.target, "amount_usd": _usd(b.amount),
                "month": self.month, "now": self.now.isoformat(), "spent_usd": _usd(self.spent),
                "percent_spent": None if self.percent_spent is None else _usd(self.percent_spent),
                "alert_at_percent": [_usd(p) for p in b.alert_at_percent],
                "forecast": None if self.forecast is None else {
                    "method": self.forecast.method, "value_usd": _usd(self.forecast.value),
                    "description": self.forecast.description, "inputs": self.forecast.inputs},
                "firing": self.firing}


def _usd(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _decimal(value: Fraction) -> Decimal:
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(QUANTUM)


def _hours(delta: dt.timedelta) -> Fraction:
    return Fraction(delta // dt.timedelta(microseconds=1), 3_600_000_000)


def month_bounds(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start = now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def billed_e10(engine: Engine, budget: Budget, start: dt.datetime, end: dt.datetime) -> int:
    """Billed cost (1e-10 USD) of the hours starting in [start, end) within the budget's scope."""
    t = UsageHourlyRow.__table__
    stmt = select(func.coalesce(func.sum(t.c.billed_e10), 0)).where(t.c.hour >= start, t.c.hour < end)
    if budget.scope:
        value = (budget.target or "").lower() if budget.scope == "resource" else budget.target or ""
        stmt = stmt.where(t.c[budget.scope] == value)
    with engine.connect() as conn:
        return int(conn.scalar(stmt) or 0)


def forecast(engine: Engine, budget: Budget, now: dt.datetime, spent_e10: int, method: str | None = None
             ) -> Forecast:
    method = method or budget.forecast or "trailing"
    start, end = month_bounds(now)
    spent = Fraction(spent_e10, 10**COST_SCALE)
    left = _hours(end - now)
    if method == "linear":
        elapsed = _hours(now - start)
        exact = spent if elapsed == 0 else spent * _hours(end - start) / elapsed
        return Forecast(method, exact, f"linear: month-to-date × {_fmt(_hours(end - start))} h in the month / "
                        f"{_fmt(elapsed)} h elapsed", {
                            "month_to_date_usd": _usd(_decimal(spent)), "hours_elapsed": _fmt(elapsed),
                            "hours_in_month": _fmt(_hours(end - start))})
    days = budget.forecast_days
    window_start = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=days)
    window_e10 = billed_e10(engine, budget, window_start, now)
    window_h = _hours(now - window_start)
    rate = Fraction(window_e10, 10**COST_SCALE) / window_h  # USD per hour
    exact = spent + rate * left
    return Forecast(method, exact, f"trailing {days}-day run rate: month-to-date + ${_usd(_decimal(rate * 24))}"
                    f"/day × {_fmt(left / 24)} days left", {
                        "month_to_date_usd": _usd(_decimal(spent)), "window_start": window_start.isoformat(),
                        "window_end": now.isoformat(), "window_spent_usd": _usd(_decimal(Fraction(window_e10,
                                                                                                  10**COST_SCALE))),
                        "rate_usd_per_day": _usd(_decimal(rate * 24)), "days_left": _fmt(left / 24)})


def _fmt(value: Fraction) -> str:
    return _usd((Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.01")))


def evaluate_budget(engine: Engine, budget: Budget, now: dt.datetime) -> BudgetStatus:
    """Month-to-date billed spend, the forecast, and which of the budget's rules fire."""
    now = now.astimezone(dt.UTC)
    start, _ = month_bounds(now)
    spent_e10 = billed_e10(engine, budget, start, now)
    spent = Decimal(spent_e10).scaleb(-COST_SCALE)
    fc = forecast(engine, budget, now, spent_e10) if budget.forecast else None
    status = BudgetStatus(budget, f"{start:%Y-%m}", now, spent, fc)
    crossed = [p for p in budget.alert_at_percent if spent > budget.amount * p / 100]
    if crossed:
        pct = max(crossed)
        limit = budget.amount * pct / 100
        status.firing.append({
            "kind": "budget_spent", "value": spent, "threshold": limit,
            "message": f"{budget.subject}: spent ${_usd(spent)} this month ({status.percent_spent} % of "
                       f"${_usd(budget.amount)}), above {_usd(pct)} % = ${_usd(limit)}"})
    if fc is not None and fc.exact > Fraction(budget.amount):
        status.firing.append({
            "kind": "budget_forecast", "value": fc.value, "threshold": budget.amount,
            "message": f"{budget.subject}: forecast ${_usd(fc.value)} for {status.month} is above the budget "
                       f"${_usd(budget.amount)} ({fc.description}; spent ${_usd(spent)} so far)"})
    return status


def _amount(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise BudgetError(f"{where}: {value!r} is not a number")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise BudgetError(f"{where}: {value!r} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise BudgetError(f"{where}: {value!r} must be a positive number")
    return d


def make_budget(spec: dict[str, Any], where: str) -> Budget:
    """One `[[budget]]` table: `team = "search"` (or project/resource, or none for all), `amount = "500"`,
    `alert_at_percent = [80, 100]`, `forecast = "trailing" | "linear" | false`, `forecast_days = 7`, `name`."""
    unknown = set(spec) - {*SCOPES, "amount", "alert_at_percent", "forecast", "forecast_days", "name"}
    if unknown:
        raise BudgetError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    scopes = [s for s in SCOPES if s in spec]
    if len(scopes) > 1:
        raise BudgetError(f"{where}: give one of team, project or resource (got {', '.join(scopes)})")
    scope = scopes[0] if scopes else None
    target = spec.get(scope) if scope else None
    if scope and (not isinstance(target, str) or not target):
        raise BudgetError(f"{where}.{scope}: must be a non-empty string")
    if "amount" not in spec:
        raise BudgetError(f"{where}: amount (USD per month) is required")
    amount = _amount(spec["amount"], f"{where}.amount")
    raw = spec.get("alert_at_percent", [100])
    raw = raw if isinstance(raw, list) else [raw]
    percents = tuple(_amount(p, f"{where}.alert_at_percent") for p in raw)
    method = spec.get("forecast", "trailing")
    if method is False:
        method = None
    elif method not in METHODS:
        raise BudgetError(f"{where}.forecast: must be trailing, linear or false (got {method!r})")
    days = spec.get("forecast_days", 7)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 62:
        raise BudgetError(f"{where}.forecast_days: must be a whole number of days, 1-62")
    name = spec.get("name")
    return Budget(amount, scope, target, percents, method, days, str(name) if name else None)


def parse_budget_flag(text: str, alert_at: Sequence[str], forecast_method: str, forecast_days: int) -> Budget:
    """`--budget team:search=500`, `project:ranker=200`, `resource:contoso-east=1000` or `all=3000`."""
    where = f"--budget {text!r}"
    subject, sep, amount = text.rpartition("=")
    if not sep or not subject:
        raise BudgetError(f"{where}: expected SCOPE:NAME=USD (team:search=500) or all=USD")
    spec: dict[str, Any] = {"amount": amount.strip(), "forecast_days": forecast_days,
                            "forecast": False if forecast_method == "none" else forecast_method}
    if alert_at:
        spec["alert_at_percent"] = list(alert_at)
    if subject.strip() not in ("all", "total"):
        scope, colon, name = subject.partition(":")
        if not colon or scope.strip() not in SCOPES:
            raise BudgetError(f"{where}: scope must be team, project, resource or all")
        spec[scope.strip()] = name.strip()
    return make_budget(spec, where)


def daily_cumulative(engine: Engine, scope: str, start: dt.datetime, end: dt.datetime
                     ) -> dict[str, dict[dt.date, Decimal]]:
    """Billed USD per day for each value of `scope` (team, project, resource) in [start, end)."""
    t = UsageHourlyRow.__table__
    stmt = (select(t.c.hour, t.c[scope], t.c.billed_e10).where(t.c.hour >= start, t.c.hour < end))
    out: dict[str, dict[dt.date, int]] = {}
    with engine.connect() as conn:
        for hour, key, e10 in conn.execute(stmt):
            day = hour.astimezone(dt.UTC).date()
            series = out.setdefault(key or "(none)", {})
            series[day] = series.get(day, 0) + (e10 or 0)
    return {k: {d: Decimal(v).scaleb(-COST_SCALE) for d, v in s.items()} for k, s in out.items()}
