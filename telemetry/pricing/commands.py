"""The CLI's `prices`, `prices check` and `reprice` output; cli.py only registers them."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from ..numbers import plain
from .table import PriceError, PriceTable, load_price_table


def current_table(path: Path | None = None) -> PriceTable:
    """The table in force: built-in, the price file (--prices or FOUNDRY_TELEMETRY_PRICES), the deployments map."""
    from ..settings import Settings

    settings = Settings.from_env()
    return load_price_table(path or settings.prices_path, settings.deployments)


def print_prices(path: Path | None, fmt: str, console: Console) -> None:
    from .listing import prices_document

    doc = prices_document(current_table(path))
    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    table = Table(title="Prices in force (USD per million tokens)", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0))
    table.add_column("model", overflow="fold")
    table.add_column("from", overflow="fold")
    for name in ("in", "w5m", "w1h", "read", "out"):
        table.add_column(name, justify="right", no_wrap=True, min_width=5)
    table.add_column("retires", overflow="fold")
    sources: dict[str, list[str]] = {}
    for m in doc["models"]:
        for i, p in enumerate(m["rates"]):
            rates = [p[k] for k in ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")]
            table.add_row(m["model"] if i == 0 else "", p["effective"] or "—", *rates,
                          (m["retirement"] or "") if i == 0 else "")
            tier = p["tier"]
            if tier:
                table.add_row(f"  prompt > {tier['above_prompt_tokens']:,}", "", *(tier[k] for k in (
                    "input", "cache_write_5m", "cache_write_1h", "cache_read", "output")), "")
            sources.setdefault(f"{p['source']} (checked {p['checked'] or '?'})", []).append(m["model"])
    console.print(table)
    for m in doc["models"]:
        if m["aliases"]:
            console.print(f"aliases of {m['model']}: {', '.join(m['aliases'])}", soft_wrap=True)
    for source, models in sources.items():
        console.print(f"source for {', '.join(dict.fromkeys(models))}: {source}", soft_wrap=True, highlight=False)
    console.print(f"web search: ${doc['web_search_per_1000']} per 1,000 requests. A model not listed is unpriced "
                  "(cost NULL, never guessed).", soft_wrap=True)
    for name, d in doc["deployments"].items():
        console.print(f"deployment {name} → {d['model']} × {d['multiplier']} (the model only when a response "
                      "names none)", soft_wrap=True)


def print_check(file: Path, path: Path | None, fmt: str, console: Console) -> bool:
    """True when a rate differs (the caller exits 1)."""
    from .litellm import check

    result = check(current_table(path), file)
    if fmt == "json":
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
        return bool(result.mismatches)
    if result.mismatches:
        table = Table(title=f"Mismatches against {file}", box=box.SIMPLE_HEAD, pad_edge=False)
        for name in ("model", "field", "table", "file", "file key"):
            table.add_column(name, overflow="fold")
        for m in result.mismatches:
            table.add_row(m.model, m.field, m.table or "—", m.file or "—", m.file_key)
        console.print(table)
    for model in result.missing_in_file:
        console.print(f"missing in file: {model}", soft_wrap=True)
    for key in result.missing_in_table:
        console.print(f"missing in table: {key} (stays unpriced)", soft_wrap=True)
    for m in result.missing_fields:
        console.print(f"not in file: {m.model} {m.field} (table {m.table}; {m.file_key})", soft_wrap=True)
    verdict = f"{len(result.mismatches)} mismatches" if result.mismatches else "no mismatches"
    console.print(f"{verdict}; {len(result.compared)} models compared, {len(result.missing_in_file)} missing in the "
                  f"file, {len(result.missing_in_table)} missing in the table")
    return bool(result.mismatches)


def run_reprice(engine: Any, since: dt.date, until: dt.date, dry_run: bool, path: Path | None, console: Console,
                err: Console) -> None:
    from ..settings import Settings
    from .reprice import reprice

    table = current_table(path)
    # multipliers come from the deployments map: re-pricing under another map changes every data-zone row
    mapped = ", ".join(f"{n}={d.model}*{plain(d.multiplier)}" for n, d in sorted(table.deployments.items()))
    err.print(f"deployments map: {mapped or 'none (FOUNDRY_TELEMETRY_DEPLOYMENTS unset): no multipliers'}",
              soft_wrap=True, highlight=False)
    result = reprice(engine, table, since, until, dry_run=dry_run)
    verb = "would change" if dry_run else "changed"
    console.print(f"re-priced {result.rows:,} rows created {since} to {until} (UTC): {verb} {result.changed:,}",
                  soft_wrap=True)
    console.print(f"before: ${plain(result.before_usd)} ({result.unpriced_before:,} unpriced)", soft_wrap=True)
    console.print(f"after:  ${plain(result.after_usd)} ({result.unpriced_after:,} unpriced)", soft_wrap=True)
    diff = result.difference_usd
    console.print(f"difference: {'+' if diff >= 0 else '-'}${plain(abs(diff))}", soft_wrap=True)
    if result.skipped:
        err.print(f"note: {result.skipped} rows changed while this ran and were left as they are; run it again")
    if result.days_adjusted:
        what = "would be adjusted" if dry_run else "adjusted"
        console.print(f"daily totals {what} by exactly the difference on {len(result.days_adjusted)} days "
                      f"({result.days_adjusted[0]} to {result.days_adjusted[-1]})", soft_wrap=True)
    retention = Settings.from_env().retention_days
    first = result.first_row_day
    if first is None or first > since:
        kept_from = first.isoformat() if first else "no day in the window"
        console.print(f"days before {kept_from} have no per-request rows left (retention: {retention} days): "
                      "their daily totals were left as they were", soft_wrap=True)


def retired_notes(engine: Any, since: dt.date, until: dt.date) -> list[str]:
    """`report`'s warnings about traffic to retired models; a bad price file is a note, not a failure."""
    from .listing import retired_traffic_notes

    try:
        return retired_traffic_notes(engine, since, until, current_table())
    except PriceError as exc:
        return [f"retirement check skipped: {exc}"]
