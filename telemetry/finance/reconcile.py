"""Reconcile an Azure Cost Management export with the ledger, per day × resource.

Reads both export shapes — FOCUS (`ChargePeriodStart`, `ResourceId`, `PublisherName`, `BilledCost`, …) and the
older cost details (`Date`, `ResourceId`, `MeterName`, `CostInBillingCurrency`, …) — line by line with the csv
module, so a multi-million-line export never sits in memory. Claude rows are kept by publisher or meter name;
the ledger side is `usage_hourly.billed_e10` (list × (1 − discount)), the same quantity the bill meters.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, select

from ..ledger.models import COST_SCALE, UsageHourlyRow
from .discount import CCU_USD

csv.field_size_limit(1 << 24)


class ReconcileError(ValueError):
    """An export or resource map that cannot be read; the message is one line (and names the line)."""


# logical field → accepted header names (compared case-insensitively), in order of preference
FOCUS = {
    "day": ("ChargePeriodStart",),
    "resource_id": ("ResourceId",),
    "resource_name": ("ResourceName",),
    "publisher": ("PublisherName", "x_PublisherName"),
    "meter": ("x_SkuMeterName", "SkuMeter", "x_SkuDescription"),
    "quantity": ("ConsumedQuantity", "PricingQuantity"),
    "cost": ("BilledCost",),
    "currency": ("BillingCurrency",),
    "category": ("ChargeCategory",),
}
COST_DETAILS = {
    "day": ("Date", "UsageDate"),
    "resource_id": ("ResourceId", "InstanceId", "InstanceName"),
    "resource_name": ("ResourceName",),
    "publisher": ("PublisherName",),
    "meter": ("MeterName",),
    "quantity": ("Quantity", "UsageQuantity"),
    "cost": ("CostInBillingCurrency", "Cost", "PreTaxCost"),
    "currency": ("BillingCurrencyCode", "BillingCurrency", "Currency"),
    "category": ("ChargeType",),
}
REQUIRED = ("day", "cost")
_ISO_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
_US_DAY = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})")


@dataclass(frozen=True)
class ClaudeFilter:
    """Which export rows are Claude on Foundry: publisher or meter name contains one of these (any case)."""

    publishers: tuple[str, ...] = ("anthropic",)
    meters: tuple[str, ...] = ("claude",)

    def keeps(self, publisher: str, meter: str) -> bool:
        p, m = publisher.lower(), meter.lower()
        return any(x in p for x in self.publishers) or any(x in m for x in self.meters)


@dataclass
class ExportTotals:
    format: str
    path: str
    lines: int = 0
    claude_rows: int = 0
    ignored_rows: int = 0  # other publishers and meters
    non_usage_rows: int = 0  # purchases, taxes, credits: not usage the ledger can see
    currencies: set[str] = field(default_factory=set)
    first_day: dt.date | None = None
    last_day: dt.date | None = None
    cost: dict[tuple[dt.date, str], Decimal] = field(default_factory=dict)
    quantity: dict[tuple[dt.date, str], Decimal] = field(default_factory=dict)


def _day(text: str) -> dt.date:
    text = text.strip()
    if m := _ISO_DAY.match(text):
        y, mo, d = (int(g) for g in m.groups())
    elif m := _US_DAY.match(text):  # cost details: MM/DD/YYYY
        mo, d, y = (int(g) for g in m.groups())
    else:
        raise ValueError(f"{text!r} is not a date")
    return dt.date(y, mo, d)


def _amount(text: str) -> Decimal:
    text = text.strip()
    if not text:
        return Decimal(0)
    value = Decimal(text)  # exports write 1.2E-05 as often as 0.000012: Decimal reads both exactly
    if not value.is_finite():
        raise InvalidOperation
    return value


def resource_name(resource_id: str, name: str) -> str:
    """`/subscriptions/…/accounts/contoso-east` → `contoso-east` (Azure names compare case-insensitively)."""
    rid = resource_id.strip().rstrip("/")
    tail = rid.rsplit("/", 1)[-1] if rid else ""
    return (tail or name.strip()).lower()


def _columns(header: Sequence[str], path: str) -> tuple[str, dict[str, int]]:
    folded = {h.strip().lstrip("\ufeff").lower(): i for i, h in enumerate(header)}
    for label, spec in (("focus", FOCUS), ("cost-details", COST_DETAILS)):
        found = {}
        for key, names in spec.items():
            for name in names:
                if name.lower() in folded:
                    found[key] = folded[name.lower()]
                    break
        if all(k in found for k in REQUIRED) and (label == "cost-details" or "chargeperiodstart" in folded):
            if "resource_id" not in found and "resource_name" not in found:
                raise ReconcileError(f"{path} line 1: no ResourceId or ResourceName column")
            return label, found
    raise ReconcileError(f"{path} line 1: not a Cost Management export (need ChargePeriodStart + BilledCost "
                         f"(FOCUS) or Date + CostInBillingCurrency (cost details))")


def _lines(fh: TextIO, progress: Callable[[int], None] | None) -> Iterator[str]:
    done = 0
    for n, line in enumerate(fh, 1):
        done += len(line)
        if progress is not None and n % 20_000 == 0:
            progress(done)
        yield line
    if progress is not None:
        progress(done)


def read_export(path: str | Path, claude: ClaudeFilter = ClaudeFilter(),
                progress: Callable[[int], None] | None = None) -> ExportTotals:
    """Stream the export and total its Claude usage per (day, resource). `progress(chars_read)` is called
    every 20,000 lines."""
    p = Path(path)
    try:
        fh = open(p, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError:
        raise ReconcileError(f"export {p} does not exist") from None
    except OSError as exc:
        raise ReconcileError(f"export {p}: {exc.strerror or exc}") from None
    with fh:
        reader = csv.reader(_lines(fh, progress))
        try:
            header = next(reader)
        except StopIteration:
            raise ReconcileError(f"{p} line 1: the export is empty") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ReconcileError(f"{p} line 1: {exc}") from None
        fmt, col = _columns(header, str(p))
        totals = ExportTotals(fmt, str(p))
        # the hot loop: column indices as locals, and memos, since days, publishers and resource ids repeat
        width = len(header)
        i_day, i_cost = col["day"], col["cost"]
        idx = {k: col.get(k, width) for k in ("publisher", "meter", "category", "quantity", "currency",
                                               "resource_id", "resource_name")}
        i_pub, i_meter, i_cat, i_qty = idx["publisher"], idx["meter"], idx["category"], idx["quantity"]
        i_cur, i_rid, i_rname = idx["currency"], idx["resource_id"], idx["resource_name"]
        days: dict[str, dt.date] = {}
        kept: dict[tuple[str, str], bool] = {}
        names: dict[tuple[str, str], str] = {}
        cost_of, quantity_of = totals.cost, totals.quantity
        zero = Decimal(0)
        first = last = None
        lines = claude_rows = ignored = non_usage = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ReconcileError(f"{p} line {reader.line_num}: {exc}") from None
            if len(row) != width:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                raise ReconcileError(f"{p} line {reader.line_num}: {len(row)} fields, the header has {width}")
            row.append("")  # index `width` stands for a column the export does not have
            lines += 1
            text = row[i_day]
            day = days.get(text)
            if day is None:
                try:
                    day = _day(text)
                except ValueError:
                    raise ReconcileError(f"{p} line {reader.line_num}: {text!r} is not a date") from None
                if len(days) < 100_000:
                    days[text] = day
                first = day if first is None or day < first else first
                last = day if last is None or day > last else last
            who = (row[i_pub], row[i_meter])
            keep = kept.get(who)
            if keep is None:
                keep = kept[who] = claude.keeps(*who)
            if not keep:
                ignored += 1
                continue
            category = row[i_cat]
            if category and category.strip().lower() != "usage":
                non_usage += 1
                continue
            try:
                cost = _amount(row[i_cost])
                quantity = _amount(row[i_qty])
            except InvalidOperation:
                raise ReconcileError(f"{p} line {reader.line_num}: cost {row[i_cost]!r} or quantity "
                                     f"{row[i_qty]!r} is not a number") from None
            ids = (row[i_rid], row[i_rname])
            name = names.get(ids)
            if name is None:
                name = resource_name(*ids)
                if len(names) < 100_000:
                    names[ids] = name
            key = (day, name)
            cost_of[key] = cost_of.get(key, zero) + cost
            quantity_of[key] = quantity_of.get(key, zero) + quantity
            claude_rows += 1
            if (currency := row[i_cur]) and (code := currency.strip().upper()):
                totals.currencies.add(code)
        totals.lines, totals.claude_rows, totals.ignored_rows, totals.non_usage_rows = (
            lines, claude_rows, ignored, non_usage)
        totals.first_day, totals.last_day = first, last
    return totals


def load_resource_map(path: str | Path | None) -> dict[str, str]:
    """Ledger resource (from the endpoint host: a custom domain, a gateway) → Azure resource name. A TOML file
    of `"llm.contoso.com" = "contoso-east"` lines, optionally under `[resources]`."""
    if path is None:
        return {}
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ReconcileError(f"resource map {p} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReconcileError(f"resource map {p}: {exc}".splitlines()[0]) from None
    table = data.get("resources", data)
    if not isinstance(table, dict) or not all(isinstance(v, str) and v for v in table.values()):
        raise ReconcileError(f"resource map {p}: expected \"ledger-name\" = \"azure-resource\" strings")
    return {str(k).lower(): v.lower() for k, v in table.items()}


def ledger_totals(engine: Engine, since: dt.date, until: dt.date, resource_map: dict[str, str]
                  ) -> tuple[dict[tuple[dt.date, str], int], dict[tuple[dt.date, str], int]]:
    """Billed cost (1e-10 USD) and unpriced rows per (day, Azure resource name) from `usage_hourly`."""
    t = UsageHourlyRow.__table__
    start = dt.datetime.combine(since, dt.time(), dt.UTC)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.UTC)
    stmt = (select(t.c.hour, t.c.resource, t.c.billed_e10, t.c.unpriced)
            .where(t.c.hour >= start, t.c.hour < end))
    billed: dict[tuple[dt.date, str], int] = {}
    unpriced: dict[tuple[dt.date, str], int] = {}
    with engine.connect() as conn:
        for hour, resource, e10, n in conn.execute(stmt):
            key = (hour.astimezone(dt.UTC).date(), resource_map.get(resource, resource) or "(unknown)")
            billed[key] = billed.get(key, 0) + (e10 or 0)
            if n:
                unpriced[key] = unpriced.get(key, 0) + n
    return billed, unpriced


@dataclass
class Line:
    day: dt.date
    resource: str
    billed_usd: Decimal | None  # the bill (None: the bill has no such day × resource)
    ledger_usd: Decimal | None  # the ledger (None: no traffic recorded)
    bill_ccus: Decimal | None
    ledger_ccus: Decimal | None
    unpriced_rows: int
    status: str  # ok | differs | bill only | ledger only

    @property
    def difference(self) -> Decimal:
        return (self.billed_usd or Decimal(0)) - (self.ledger_usd or Decimal(0))

    @property
    def percent(self) -> Decimal | None:
        """Difference as a percentage of the bill (of the ledger when the bill has nothing)."""
        base = self.billed_usd or self.ledger_usd
        return None if not base else (self.difference / base * 100).quantize(Decimal("0.0001"))

    def as_dict(self) -> dict[str, Any]:
        def s(v: Decimal | None) -> str | None:
            return None if v is None else _plain(v)

        pct = self.percent
        return {"day": self.day.isoformat(), "resource": self.resource, "billed_usd": s(self.billed_usd),
                "ledger_usd": s(self.ledger_usd), "difference_usd": _plain(self.difference),
                "percent": None if pct is None else _plain(pct), "bill_ccus": s(self.bill_ccus),
                "ledger_ccus": s(self.ledger_ccus), "unpriced_rows": self.unpriced_rows, "status": self.status}


@dataclass
class Reconciliation:
    export: ExportTotals
    since: dt.date
    until: dt.date
    tolerance: Decimal
    abs_tolerance: Decimal
    lines: list[Line]
    resource_map: dict[str, str]
    basis: str = "cost"

    @property
    def beyond_tolerance(self) -> list[Line]:
        return [x for x in self.lines if x.status != "ok"]

    @property
    def bill_only(self) -> list[Line]:
        return [x for x in self.lines if x.status == "bill only"]

    @property
    def ledger_only(self) -> list[Line]:
        return [x for x in self.lines if x.status == "ledger only"]

    def totals(self) -> dict[str, str]:
        bill = sum((x.billed_usd or Decimal(0) for x in self.lines), Decimal(0))
        ledger = sum((x.ledger_usd or Decimal(0) for x in self.lines), Decimal(0))
        return {"billed_usd": _plain(bill), "ledger_usd": _plain(ledger), "difference_usd": _plain(bill - ledger)}

    def as_dict(self) -> dict[str, Any]:
        e = self.export
        return {
            "export": {"path": e.path, "format": e.format, "lines": e.lines, "claude_rows": e.claude_rows,
                       "ignored_rows": e.ignored_rows, "non_usage_rows": e.non_usage_rows,
                       "currencies": sorted(e.currencies)},
            "since": self.since.isoformat(), "until": self.until.isoformat(),
            "basis": self.basis, "tolerance": _plain(self.tolerance), "abs_tolerance_usd": _plain(self.abs_tolerance),
            "ok": not self.beyond_tolerance, "totals": self.totals(),
            "lines": [x.as_dict() for x in self.lines],
            "bill_only": [f"{x.day} {x.resource}" for x in self.bill_only],
            "ledger_only": [f"{x.day} {x.resource}" for x in self.ledger_only],
        }


def _plain(value: Decimal) -> str:
    """Plain notation, never 1E-7; trailing zeros kept only as far as the value needs them."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def reconcile(engine: Engine, export: ExportTotals, *, tolerance: Decimal = Decimal("0.005"),
              abs_tolerance: Decimal = Decimal(0), resource_map: dict[str, str] | None = None,
              since: dt.date | None = None, until: dt.date | None = None, basis: str = "cost") -> Reconciliation:
    """Compare per day × resource. A line is within tolerance when |bill − ledger| ≤ tolerance × bill, or
    ≤ abs_tolerance USD; a day × resource only one side has is never within it unless both amounts are zero.
    `basis="ccus"` takes the bill's consumed CCUs × $0.01 instead of its cost (a bill in another currency)."""
    mapping = resource_map or {}
    if basis not in ("cost", "ccus"):
        raise ReconcileError(f"basis must be cost or ccus (got {basis!r})")
    foreign = sorted(export.currencies - {"USD"})
    if basis == "cost" and foreign:
        raise ReconcileError(f"{export.path}: billed in {', '.join(foreign)}, the ledger is in USD; "
                             f"compare consumed CCUs instead with --basis ccus")
    bill_of = export.cost if basis == "cost" else {k: q * CCU_USD for k, q in export.quantity.items()}
    if since is None or until is None:
        if export.first_day is None or export.last_day is None:
            raise ReconcileError(f"{export.path}: no rows, so no period to compare (give --since and --until)")
        since = since or export.first_day
        until = until or export.last_day
    billed, unpriced = ledger_totals(engine, since, until, mapping)
    keys = {k for k in bill_of if since <= k[0] <= until} | set(billed) | set(unpriced)
    lines = []
    for day, resource in sorted(keys):
        bill = bill_of.get((day, resource))
        e10 = billed.get((day, resource))
        ledger = None if e10 is None else Decimal(e10).scaleb(-COST_SCALE)
        quantity = export.quantity.get((day, resource))
        diff = abs((bill or Decimal(0)) - (ledger or Decimal(0)))
        within = diff <= abs_tolerance or (bill is not None and diff <= tolerance * abs(bill))
        if bill is None:
            status = "ok" if within else "ledger only"
        elif ledger is None:
            status = "ok" if within else "bill only"
        else:
            status = "ok" if within else "differs"
        lines.append(Line(day, resource, bill, ledger, quantity,
                          None if ledger is None else ledger / CCU_USD, unpriced.get((day, resource), 0), status))
    return Reconciliation(export, since, until, tolerance, abs_tolerance, lines, mapping, basis)


CSV_FIELDS = ("day", "resource", "billed_usd", "ledger_usd", "difference_usd", "percent", "bill_ccus",
              "ledger_ccus", "unpriced_rows", "status")
