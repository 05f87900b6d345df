"""Report output: rich table, CSV (stable header for finance import), JSON."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ..numbers import money
from .chargeback import Report

CSV_COLUMNS = ("requests", "errors", "input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "cost_usd", "unpriced", "count_tokens_requests",
               "billed_usd", "discount_usd", "ccus")  # finance columns appended: existing imports keep their places
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
        writer.writerow([*(safe_cell(row.keys[k]) for k in report.by), *("" if d[c] is None else d[c]
                                                                          for c in CSV_COLUMNS)])
    return buf.getvalue()


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)


def write_out(output: Path | None, console: Console, err: Console, *,
              table: Callable[[Console], None] | None = None, text: str | None = None) -> None:
    """Where a command's result goes: a rich table to the terminal (or to a file at 160 columns), text to
    stdout (or to a file, said on stderr). One place for every command with `-o FILE`."""
    if table is not None:
        if output:
            with open(output, "w", encoding="utf-8") as fh:
                table(Console(file=fh, width=160))
            err.print(f"wrote {output}")
        else:
            table(console)
    elif output:
        output.write_text(text or "", encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text or "")


def _money(value: Decimal) -> str:
    """How a cost is printed in the table (number formatting lives here, layout below)."""
    return money(value)


def _count(value: int) -> str:
    return f"{value:,}"


# (attribute, header) in order of importance: the first ones stay longest as the terminal narrows
NUMERIC = (("requests", "calls"), ("cost_usd", "USD"), ("unpriced", "unpriced"), ("output_tokens", "out tok"),
           ("input_tokens", "in tok"),
           ("errors", "errors"), ("cache_read_input_tokens", "cache rd"),
           ("cache_creation_input_tokens", "cache wr"))
SHOWN = ("requests", "errors", "input_tokens", "output_tokens", "cache_creation_input_tokens",
         "cache_read_input_tokens", "cost_usd", "unpriced")  # left-to-right order on screen
# with a discount somewhere: billed right after USD in importance, discount and CCUs after unpriced
FINANCE_NUMERIC = (*NUMERIC[:2], ("billed_usd", "billed USD"), NUMERIC[2], ("discount_usd", "discount"),
                   ("ccus", "CCUs"), *NUMERIC[3:])
FINANCE_SHOWN = (*SHOWN[:7], "discount_usd", "billed_usd", "ccus", "unpriced")
HEADERS = dict(FINANCE_NUMERIC)


def _columns(report: Report) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Without any discount the table stays as it was (billed == list adds nothing but width)."""
    return (FINANCE_NUMERIC, FINANCE_SHOWN) if report.discounted else (NUMERIC, SHOWN)


def _cell(row: Any, name: str) -> str:
    if name in ("cost_usd", "billed_usd", "discount_usd", "ccus"):
        value = getattr(row, name)
        return NULL if value is None else money(value, 4, "") if name == "ccus" else _money(value)
    return _count(getattr(row, name))


def _table(report: Report, columns: list[str], title: str, stacked: bool) -> Table:
    """Names and numbers whole (never folded, never cut); headers may wrap at their spaces. `stacked` puts
    the grouping keys of a row under each other in one cell, for terminals too narrow to set them side by side."""
    headers = HEADERS
    table = Table(title=title, show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False, show_lines=stacked)
    key_columns = [report.by] if stacked else [[k] for k in report.by]
    for keys in key_columns:
        width = max(5, *(len(k) for k in keys), *(len(r.keys[k]) for r in report.rows for k in keys))
        table.add_column("\n".join(keys), footer="TOTAL" if keys[0] == report.by[0] else "", no_wrap=True,
                         min_width=width)
    for name in columns:
        width = max(max(len(w) for w in headers[name].split()), len(_cell(report.total, name)),
                    *(len(_cell(r, name)) for r in report.rows))
        table.add_column(headers[name], justify="right", footer=_cell(report.total, name), no_wrap=True,
                         min_width=width)
    for row in report.rows:
        names = ["\n".join(row.keys[k] for k in report.by)] if stacked else [row.keys[k] for k in report.by]
        table.add_row(*names, *(_cell(row, n) for n in columns))
    return table


def _candidates(report: Report) -> list[tuple[int, bool]]:
    """(how many numeric columns, stacked keys), most informative first; calls and USD always stay."""
    count = len(_columns(report)[0])
    side = [(n, False) for n in range(count, 1, -1)]
    if len(report.by) == 1:
        return side
    return [*side[:4], *((n, True) for n in range(count, 1, -1)), *side[4:]]


def to_table(report: Report, console: Console) -> None:
    """At any width: names and numbers whole. Fewer columns, then keys stacked in one cell, then one line
    per group; what was left out is said under the table."""
    title = f"Chargeback {report.since} → {report.until}"
    wide = console.options.update_width(1_000_000)
    numeric, shown = _columns(report)
    for count, stacked in _candidates(report):
        chosen = [name for name, _ in numeric[:count]]
        table = _table(report, [n for n in shown if n in chosen], title, stacked)
        if Measurement.get(console, wide, table).maximum <= console.width:
            console.print(table)
            hidden = [HEADERS[n] for n in shown if n not in chosen]
            if hidden:
                console.print(f"[dim]({', '.join(hidden)} left out at {console.width} columns; "
                              "--format csv or json has every column)[/dim]")
            break
    else:
        _to_lines(report, console, title)
    if report.forecast_usd is not None:
        console.print(f"Month-end forecast at the current run rate: [bold]{money(report.forecast_usd, 2)}[/bold]")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def _to_lines(report: Report, console: Console, title: str) -> None:
    """Too narrow for any table: a line of names per group, then `name=value` pairs wrapped only between pairs."""
    console.print(f"[bold]{title}[/bold]")
    for row in [*report.rows, report.total]:
        label = "TOTAL" if row is report.total else " · ".join(row.keys[k] for k in report.by)
        console.print(label, markup=False, highlight=False, soft_wrap=_longest_word(label) > console.width)
        pairs = " ".join(f"{HEADERS[n].replace(' ', '_')}={_cell(row, n)}" for n in _columns(report)[1])
        console.print(pairs, markup=False, highlight=False)


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


# -- lookup ------------------------------------------------------------------------------------------

NULL = "—"
LOOKUP_FIELDS = (  # (label, key in lookup.as_dict)
    ("time (UTC)", "time"), ("request-id", "request_id"), ("apim-request-id", "apim_request_id"),
    ("operation id", "operation_id"), ("attempt", "attempt"), ("status", "status_code"),
    ("error type", "error_type"), ("error message", "error_message"), ("resource", "resource"),
    ("deployment", "deployment"), ("model", "model"), ("operation", "operation"), ("stream", "stream"),
    ("input tokens", "input_tokens"), ("output tokens", "output_tokens"),
    ("cache write", "cache_creation_input_tokens"), ("cache write 5m", "cache_creation_5m_input_tokens"),
    ("cache write 1h", "cache_creation_1h_input_tokens"), ("cache read", "cache_read_input_tokens"),
    ("cost (USD)", "cost_usd"), ("latency ms", "latency_ms"), ("TTFT ms", "ttft_ms"), ("team", "team"),
    ("project", "project"), ("user", "user"), ("tags", "tags"), ("trace id", "trace_id"), ("span id", "span_id"),
)


def lookup_value(value: Any) -> str:
    """A stored value as a person reads it: no Python reprs, null as a dash."""
    if value is None or value == "":
        return NULL
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) if value else NULL
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return _count(value)
    return str(value)


def print_lookup(data: dict[str, Any], console: Console) -> None:
    """Label / value lines. An id is never cut: a value too long for the line moves below its label, and one
    longer than the terminal is printed whole (soft-wrapped by the terminal, intact when piped)."""
    label_width = max(len(label) for label, _ in LOOKUP_FIELDS) + 2
    for label, key in LOOKUP_FIELDS:
        text = lookup_value(data.get(key))
        _pair(console, label, text, label_width)
    console.print()
    console.print("[bold]For the Azure support ticket[/bold]")
    for label, key in (("request-id", "request_id"), ("apim-request-id", "apim_request_id"), ("time (UTC)", "time")):
        _pair(console, label, lookup_value(data.get(key)), label_width)
    console.print()
    console.print("[bold]Application Insights (KQL)[/bold]")
    for line in str(data.get("kql", "")).splitlines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _pair(console: Console, label: str, text: str, label_width: int) -> None:
    if label_width + len(text) <= console.width:
        console.print(f"{label:<{label_width}}{text}", markup=False, highlight=False, soft_wrap=True)
        return
    console.print(label, markup=False, highlight=False)
    if " " in text.strip() and _longest_word(text) <= console.width:
        console.print(text, markup=False, highlight=False)  # wraps at spaces only: every word fits a line
    else:
        console.print(text, markup=False, highlight=False, soft_wrap=True)  # one long id: whole, never cut
