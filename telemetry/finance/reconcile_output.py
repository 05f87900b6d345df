"""A reconciliation as a rich table, CSV or JSON (amounts in plain decimal notation)."""

from __future__ import annotations

import csv
import io
import json

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
    table = Table(show_lines=False)
    for name, justify in (("day", "left"), ("resource", "left"), ("billed USD", "right"), ("ledger USD", "right"),
                          ("difference", "right"), ("%", "right"), ("status", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for line in rec.lines:
        d = line.as_dict()
        style = None if line.status == "ok" else "red"
        table.add_row(d["day"], d["resource"], d["billed_usd"] or "—", d["ledger_usd"] or "—",
                      d["difference_usd"], "—" if d["percent"] is None else d["percent"], line.status, style=style)
    t = rec.totals()
    table.add_row("total", "", t["billed_usd"], t["ledger_usd"], t["difference_usd"], "", "", style="bold")
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
