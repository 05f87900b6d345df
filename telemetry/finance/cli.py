"""The `reconcile` command behind its compact registration in telemetry/cli.py."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from ..reports.render import write_out
from .reconcile import ClaudeFilter, ReconcileError, load_resource_map, read_export, reconcile
from .reconcile_output import to_csv, to_json, to_table


def _fraction(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ReconcileError(f"{option} {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ReconcileError(f"{option} {text!r} must be a non-negative number")
    return value


def _date(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReconcileError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def run_reconcile(engine: Any, export: Path, *, tolerance: str, abs_tolerance: str, fmt: str,
                  resource_map: Path | None, publishers: list[str] | None, meters: list[str] | None,
                  since: str | None, until: str | None, basis: str, output: Path | None,
                  console: Console, err: Console) -> int:
    """Read, compare, print; 1 when any day × resource is beyond tolerance."""
    tol = _fraction(tolerance, "--tolerance")
    abs_tol = _fraction(abs_tolerance, "--abs-tolerance")
    start, end = _date(since, "--since"), _date(until, "--until")
    mapping = load_resource_map(resource_map)
    claude = ClaudeFilter(tuple(p.lower() for p in publishers) if publishers else ClaudeFilter.publishers,
                          tuple(m.lower() for m in meters) if meters else ClaudeFilter.meters)
    if output is not None and not output.parent.exists():
        raise ReconcileError(f"folder {output.parent} does not exist")
    try:
        size = export.stat().st_size
    except FileNotFoundError:
        raise ReconcileError(f"export {export} does not exist") from None
    with Progress(TextColumn("reading export"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=size < 5_000_000) as progress:
        task = progress.add_task("read", total=size)
        totals = read_export(export, claude, lambda done: progress.update(task, completed=done))
    rec = reconcile(engine, totals, tolerance=tol, abs_tolerance=abs_tol, resource_map=mapping,
                    since=start, until=end, basis=basis)
    if fmt == "table":
        write_out(output, console, err, table=lambda c: to_table(rec, c))
    else:
        write_out(output, console, err, text=to_json(rec) if fmt == "json" else to_csv(rec))
    return 1 if rec.beyond_tolerance else 0
