"""A reconciliation as a rich table, CSV or JSON (amounts in plain decimal notation)."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

from rich import box
from rich.console import Console
from rich.table import Table

from .reconcile import CSV_FIELDS, Reconciliation


def to_json(rec: Reconciliation) -> str:
    return json.dumps(rec.as_dict(), indent=2) + "\n"


def to_csv(rec: Reconciliation) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for line in rec.lines:
        writer.writerow({k: ("" if v is None else v) for k, v in line.as_dict().items()})
    return out.getvalue()


def to_table(rec: Reconciliation, console: Console) -> None:
    e = rec.export
    console.print(f"{e.path}: {e.format} export, {e.lines:,} lines, {e.claude_rows:,} Claude usage rows "
                  f"({e.ignored_rows:,} other publishers/meters ignored, {e.non_usage_rows:,} non-usage charges) · "
                  f"{rec.since} → {rec.until} · tolerance {rec.tolerance:%}"
                  + (f" or ${rec.abs_tolerance}" if rec.abs_tolerance else "")
                  + (" · bill taken as consumed CCUs × $0.01" if rec.basis == "ccus" else ""), soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, padding=(0, 1, 0, 0),
                  caption="USD rounded to 0.0001 here; --format json or csv is exact")
    for name, width in (("day", 10), ("resource", 12), ("billed", 0), ("ledger", 0), ("difference", 0),
                        ("%", 0), ("status", 11)):
        table.add_column(name, justify="left" if width else "right", no_wrap=name != "resource",
                         min_width=width or None, overflow="fold")
    for line in rec.lines:
        pct = line.percent
        table.add_row(line.day.isoformat(), line.resource, _short(line.billed_usd), _short(line.ledger_usd),
                      _short(line.difference), "—" if pct is None else f"{pct:.2f}", line.status,
                      style=None if line.status == "ok" else "red")
    t = rec.totals()
    table.add_row("total", "", *(_short(Decimal(t[k])) for k in ("billed_usd", "ledger_usd", "difference_usd")),
                  "", "", style="bold")
    console.print(table)
    if rec.bill_only:
        console.print("[red]on the bill, not in the ledger:[/red] "
                      + ", ".join(f"{x.day} {x.resource}" for x in rec.bill_only), soft_wrap=True)
    if rec.ledger_only:
        console.print("[red]in the ledger, not on the bill:[/red] "
                      + ", ".join(f"{x.day} {x.resource}" for x in rec.ledger_only), soft_wrap=True)
    bad = rec.beyond_tolerance
    if bad:
        console.print(f"[red]{len(bad)} day × resource beyond tolerance:[/red] "
                      + ", ".join(f"{x.day} {x.resource} ({x.status})" for x in bad[:20])
                      + (" …" if len(bad) > 20 else ""), soft_wrap=True)
    else:
        console.print("[green]ledger agrees with the bill[/green] within tolerance")


def _short(value: Decimal | None) -> str:
    return "—" if value is None else f"{value.quantize(Decimal('0.0001')):,}"
