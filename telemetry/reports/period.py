"""`--since/--until` values: ISO dates, `7d`-style spans, `today`, `mtd`."""

from __future__ import annotations

import datetime as dt
import re

_SPAN = re.compile(r"^(\d+)([dw])$")
MAX_SPAN_DAYS = 36_600  # a hundred years back is as far as any ledger goes


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
        digits = m.group(1).lstrip("0") or "0"
        n = int(digits) * (7 if m.group(2) == "w" else 1) if len(digits) <= 9 else MAX_SPAN_DAYS + 1
        if n > MAX_SPAN_DAYS:
            raise PeriodError(f"{value!r} reaches back more than {MAX_SPAN_DAYS // 366} years")
        return today - dt.timedelta(days=n)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        try:
            return dt.date.fromisoformat(v)
        except ValueError:
            pass
    else:
        try:  # a full ISO timestamp: its (UTC) day
            stamp = dt.datetime.fromisoformat(v.upper())
            if stamp.tzinfo is not None:
                stamp = stamp.astimezone(dt.UTC)
            if "t" in v or " " in v:
                return stamp.date()
        except ValueError:
            pass
    raise PeriodError(f"{value!r} is not a date (use YYYY-MM-DD, 7d, 4w, today or mtd)")


def parse_period(since: str | None, until: str | None, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    today = today or dt.datetime.now(dt.UTC).date()
    start = parse_day(since, today, default=today - dt.timedelta(days=30))
    end = parse_day(until, today, default=today)
    if start > end:
        raise PeriodError(f"--since {start} is after --until {end}")
    return start, end
