"""Report output: rich table, CSV (stable header for finance import), JSON."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

from rich import box
from rich.console import Console
from rich.table import Table

from ..numbers import money
from .chargeback import Report

CSV_COLUMNS = ("requests", "errors", "input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "cost_usd", "unpriced", "count_tokens_requests")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str) -> str:
    """A spreadsheet runs a cell that begins with = + - @ as a formula: make it text."""
    return "'" + value if value.startswith(_FORMULA) else value


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*report.by, *CSV_COLUMNS])
    for row in [*report.rows, report.total]:
        d = row.as_dict()
        writer.writerow([*(safe_cell(row.keys[k]) for k in report.by), *(d[c] for c in CSV_COLUMNS)])
    return buf.getvalue()


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)


def _money(value: Decimal) -> str:
    return money(value)


def to_table(report: Report, console: Console) -> None:
    table = Table(title=f"Chargeback {report.since} → {report.until}", show_footer=True, box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for key in report.by:  # names fold rather than vanish behind an ellipsis on narrow terminals
        table.add_column(key, footer="TOTAL" if key == report.by[0] else "", overflow="fold", min_width=6)
    t = report.total
    numeric = {"requests": t.requests, "errors": t.errors, "input_tokens": t.input_tokens,
               "output_tokens": t.output_tokens, "cache_creation_input_tokens": t.cache_creation_input_tokens,
               "cache_read_input_tokens": t.cache_read_input_tokens}
    headers = {"requests": "calls", "cache_creation_input_tokens": "cache wr", "cache_read_input_tokens": "cache rd",
               "input_tokens": "in tok", "output_tokens": "out tok"}
    for name, value in numeric.items():
        table.add_column(headers.get(name, name), justify="right", footer=f"{value:,}")
    table.add_column("USD", justify="right", footer=_money(t.cost_usd), no_wrap=True,
                     min_width=len(_money(t.cost_usd)))
    table.add_column("unpriced", justify="right", footer=f"{t.unpriced:,}")
    for row in report.rows:
        table.add_row(*(row.keys[k] for k in report.by), *(f"{getattr(row, n):,}" for n in numeric),
                      _money(row.cost_usd), f"{row.unpriced:,}")
    console.print(table)
    if report.forecast_usd is not None:
        console.print(f"Month-end forecast at the current run rate: [bold]{money(report.forecast_usd, 2)}[/bold]")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")

