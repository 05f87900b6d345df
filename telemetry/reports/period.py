"""`--since/--until` values: ISO dates, `7d`-style spans, `today`, `mtd`."""

from __future__ import annotations

import datetime as dt
import re

_SPAN = re.compile(r"^(\d+)([dw])$")


class PeriodError(ValueError):
    pass


def parse_day(value: str | None, today: dt.date, *, default: dt.date) -> dt.date:
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v == "today":
        return today
    if v == "yesterday":
        return today - dt.timedelta(days=1)
    if v == "mtd":
        return today.replace(day=1)
    m = _SPAN.match(v)
    if m:
        n = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
        return today - dt.timedelta(days=n)
    try:
        return dt.date.fromisoformat(v[:10]) if len(v) >= 10 else dt.date.fromisoformat(v)
    except ValueError:
        raise PeriodError(f"{value!r} is not a date (use YYYY-MM-DD, 7d, 4w, today or mtd)") from None


def parse_period(since: str | None, until: str | None, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    today = today or dt.datetime.now(dt.UTC).date()
    start = parse_day(since, today, default=today - dt.timedelta(days=30))
    end = parse_day(until, today, default=today)
    if start > end:
        raise PeriodError(f"--since {start} is after --until {end}")
    return start, end
