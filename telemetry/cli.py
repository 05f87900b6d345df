"""`foundry-telemetry`: demo, emulator, report, lookup, purge, alerts, db, prices, reprice. Bad input: one line,
non-zero."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .settings import DEFAULT_DB_URL, SettingsError

HELP = {"help_option_names": ["-h", "--help"]}  # inherited by every sub-command's context
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, context_settings=HELP,
                  help="Observability and usage accounting for Claude on Microsoft Foundry.")
alerts_app = typer.Typer(no_args_is_help=True, help="Latency, error and cost alerting on the ledger.")
db_app = typer.Typer(no_args_is_help=True, help="Ledger schema.")
app.add_typer(alerts_app, name="alerts")
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True, soft_wrap=True)

MAX_DAYS = 36_600  # a hundred years: further back than any ledger, and still a valid date
MAX_WINDOW_MINUTES = 527_040  # one (leap) year
DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL (overrides FOUNDRY_TELEMETRY_DB_URL)")]


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _db_url(db: str | None, *, must_exist: bool) -> str:
    """The ledger URL (`--db`, else the environment), checked; a new SQLite file only in an existing folder."""
    from .ledger.db import normalize_url
    from .settings import check_db_url

    if db is not None and not db.strip():
        raise CliError("--db is empty; give a database URL, e.g. sqlite:///usage.db")
    url = db or os.environ.get("FOUNDRY_TELEMETRY_DB_URL") or DEFAULT_DB_URL
    check_db_url(url, "--db" if db else "FOUNDRY_TELEMETRY_DB_URL")
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        try:
            path.stat()
        except FileNotFoundError:
            pass
        except OSError as exc:  # a name too long, a file where a folder should be, no permission …
            raise CliError(f"cannot use {_one_line(Exception(path))[:120]}: {exc.strerror or exc}") from None
        if must_exist and not path.is_file():
            raise CliError(f"no ledger at {parsed.database} (run some traffic, or `foundry-telemetry db upgrade`)")
        if not path.parent.is_dir():
            raise CliError(f"folder {path.parent} does not exist (create it first)")
    return url


def _check_settings() -> Any:
    """The CLI refuses a bad setting (one line, exit 2) where an app would only warn and carry on."""
    from .pricing import load_price_table
    from .settings import Settings

    settings = Settings.from_env()
    load_price_table(settings.prices_path, settings.deployments)
    return settings


def _engine(db: str | None, *, must_exist: bool = True) -> Any:
    """An existing ledger, for commands that read or prune it: never creates or alters a schema."""
    from .ledger.db import check_schema, get_engine

    url = _db_url(db, must_exist=must_exist)
    check_schema(url)
    return get_engine(url)


@app.command()
def demo(
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, max=100_000, help="How many calls")] = 300,
    db: DbOpt = None,
    html: Annotated[Path, typer.Option("--html", help="Where to write the HTML report")] = Path("report.html"),
) -> None:
    """Start the emulator, drive mixed traffic through the instrumented SDK, print the report."""
    from .demo import run_demo

    _check_settings()
    if html.is_dir():
        raise CliError(f"--html {html} is a folder; give a file name")
    if not html.parent.is_dir():
        raise CliError(f"--html {html}: folder {html.parent} does not exist")
    url = _db_url(db, must_exist=False)
    target = run_demo(url, requests, html, console)
    if target:
        console.print(f"\n[bold]Support lookup[/bold] of a retried call: foundry-telemetry lookup {target}",
                      soft_wrap=True)
        _print_lookup(_engine(url), target, "table")


@app.command()
def emulator(
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    db: Annotated[str | None, typer.Option("--db", hidden=True, help="accepted like everywhere; unused")] = None,
) -> None:
    """Run the Foundry emulator alone (any SDK or curl can call it)."""
    from .emulator import EmulatorServer

    if not host.strip():
        raise CliError("--host is empty; give an address to listen on, e.g. 127.0.0.1")
    try:
        server = EmulatorServer(host=host, port=port)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    console.print(f"Foundry emulator on http://{host}:{server.port}/anthropic/  "
                  f"(AnthropicFoundry(base_url=…, api_key=any)); Ctrl-C stops it")
    server.serve_forever()


@app.command()
def report(
    since: Annotated[str | None, typer.Option(help="YYYY-MM-DD, 7d, 4w, today or mtd (default 30d)")] = None,
    until: Annotated[str | None, typer.Option(help="YYYY-MM-DD (inclusive, default today)")] = None,
    by: Annotated[str, typer.Option(help="team,project,user,deployment,model,day,month,tag:NAME")] = "team",
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or html")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file")] = None,
    budgets: Annotated[Path | None, typer.Option("--budgets", help="html: [[budget]]s of this rules TOML")] = None,
    reconciliation: Annotated[Path | None, typer.Option("--reconciliation",
                                                        help="html: `reconcile --format json` output")] = None,
    db: DbOpt = None,
) -> None:
    """Chargeback report from the daily rollups (totals survive retention)."""
    from .reports.chargeback import chargeback, parse_by
    from .reports.period import parse_period
    from .reports.render import to_csv, to_json, to_table, write_out

    if fmt not in ("table", "csv", "json", "html"):
        raise CliError(f"unknown --format {fmt!r}; choose table, csv, json or html")
    keys = parse_by(by)
    start, end = parse_period(since, until)
    if output is not None and not output.parent.exists():
        raise CliError(f"folder {output.parent} does not exist")
    engine = _engine(db)
    rep = chargeback(engine, start, end, keys)
    from .pricing.commands import retired_notes

    rep.notes.extend(retired_notes(engine, start, end))
    if fmt == "table":
        write_out(output, console, err, table=lambda c: to_table(rep, c))
        return
    if fmt == "html":
        from .alerts import load_rules
        from .finance.view import load_reconciliation
        from .reports.html import render_html

        budget_list = load_rules(budgets)[1].get("budgets") if budgets else None
        days = load_reconciliation(reconciliation) if reconciliation else None
        text = render_html(engine, rep, budget_list, days)
    else:
        text = to_csv(rep) if fmt == "csv" else to_json(rep) + "\n"
    write_out(output, console, err, text=text)


def _print_lookup(engine: Any, ident: str, fmt: str) -> None:
    from .reports.lookup import Ambiguous, as_dict, find
    from .reports.render import print_lookup

    try:
        row = find(engine, ident)
    except Ambiguous as exc:
        ids = ", ".join(m.request_id or m.apim_request_id or "?" for m in exc.matches[:3])
        more = "…" if exc.count > 3 else ""
        raise CliError(f"{ident!r} matches {exc.count:,} calls ({ids}{more}); give more of the id", 2) from None
    if row is None:
        raise CliError(f"no call with request-id or apim-request-id {ident!r}", 1)
    data = as_dict(row)
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    print_lookup(data, console)


@app.command()
def lookup(
    ident: Annotated[str, typer.Argument(metavar="ID", help="request-id or apim-request-id, or a unique prefix")],
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    db: DbOpt = None,
) -> None:
    """Find one call by its correlation id; exit 1 when none, 2 when a prefix is ambiguous."""
    if fmt not in ("table", "json"):
        raise CliError(f"unknown --format {fmt!r}; choose table or json")
    if not ident.strip():
        raise CliError("ID is empty; give a request-id or apim-request-id (or at least 4 characters of one)")
    _print_lookup(_engine(db), ident, fmt)


@app.command()
def purge(
    older_than_days: Annotated[int | None, typer.Option("--older-than-days", min=1, max=MAX_DAYS,
                                                        help="default FOUNDRY_TELEMETRY_RETENTION_DAYS or 30")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only")] = False,
    db: DbOpt = None,
) -> None:
    """Remove per-request rows past retention; daily totals stay."""
    from rich.progress import Progress

    from .ledger.retention import purge as do_purge
    from .settings import Settings

    days = older_than_days if older_than_days is not None else Settings.from_env().retention_days
    if not 1 <= days <= MAX_DAYS:
        raise CliError(f"--older-than-days must be between 1 and {MAX_DAYS} (got {days})")
    engine = _engine(db)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("purging", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = do_purge(engine, days, dry_run=dry_run, progress=update)
    verb = "would remove" if dry_run else "removed"
    extra = f" ({len(result.partitions)} day partitions dropped)" if result.partitions else ""
    console.print(f"{verb} {result.rows} rows older than {result.cutoff:%Y-%m-%d %H:%M} UTC{extra}")


@alerts_app.command("check")
def alerts_check(
    window: Annotated[int | None, typer.Option("--window", min=1, max=MAX_WINDOW_MINUTES,
                                               help="minutes (default 15)")] = None,
    p95_ms: Annotated[float | None, typer.Option("--p95-ms", help="p95 latency per deployment, ms")] = None,
    error_rate: Annotated[float | None, typer.Option("--error-rate", help="0-1, service failures")] = None,
    server_error_rate: Annotated[float | None, typer.Option("--server-error-rate", help="0-1, 5xx")] = None,
    rate_limit_rate: Annotated[float | None, typer.Option("--rate-limit-rate", help="0-1, 429")] = None,
    auth_error_rate: Annotated[float | None, typer.Option("--auth-error-rate", help="0-1, 401/403")] = None,
    cost_per_hour: Annotated[float | None, typer.Option("--cost-per-hour", help="USD budget per hour")] = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="TOML rule file")] = None,
    budget: Annotated[list[str] | None, typer.Option("--budget", help="monthly USD budget, billed: team:NAME=500, "
                                                     "project:NAME=…, resource:NAME=…, all=… (repeatable)")] = None,
    budget_alert_at: Annotated[list[str] | None, typer.Option("--budget-alert-at", help="fire when spent > this "
                                                              "% of the budget (repeatable; default 100)")] = None,
    budget_forecast: Annotated[str, typer.Option("--budget-forecast", help="trailing, linear or none")] = "trailing",
    forecast_days: Annotated[int, typer.Option("--forecast-days", min=1, max=62, help="trailing window")] = 7,
    at: Annotated[str | None, typer.Option("--at", help="evaluate as of this UTC time, ISO 8601 (default now)")] = None,
    webhook: Annotated[str | None, typer.Option("--webhook", help="POST JSON here when a rule fires")] = None,
    min_requests: Annotated[int, typer.Option("--min-requests", min=1, max=10**12)] = 1,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    db: DbOpt = None,
) -> None:
    """Evaluate the rules over the last window; exit 1 while any fires."""
    from .alerts import evaluate, load_rules, make_rule, post_webhook

    if fmt not in ("table", "json"):
        raise CliError(f"unknown --format {fmt!r}; choose table or json")
    rule_list = []
    options: dict[str, Any] = {}
    if rules is not None:
        rule_list, options = load_rules(rules)
    budgets = list(options.get("budgets", []))
    if budget:
        from .finance.budget import BudgetError, parse_budget_flag

        try:
            budgets += [parse_budget_flag(b, budget_alert_at or [], budget_forecast, forecast_days) for b in budget]
        except BudgetError as exc:
            raise CliError(str(exc)) from None
    flags = {"latency_p95": p95_ms, "error_rate": error_rate, "server_error_rate": server_error_rate,
             "rate_limit_rate": rate_limit_rate, "auth_error_rate": auth_error_rate, "cost_per_hour": cost_per_hour}
    for kind, value in flags.items():
        if value is not None:
            rule_list.append(make_rule({"kind": kind, "threshold": value, "min_requests": min_requests},
                                       f"--{kind.replace('_', '-')}"))
    if not rule_list and not budgets:
        raise CliError("no rules: give --p95-ms, --error-rate, --cost-per-hour, --budget … or --rules FILE")
    minutes = window if window is not None else options.get("window_minutes", 15)
    if not 1 <= minutes <= MAX_WINDOW_MINUTES:
        raise CliError(f"--window must be between 1 and {MAX_WINDOW_MINUTES} minutes (got {minutes})")
    when = None
    if at is not None:
        import datetime as dt

        try:
            when = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
            when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
            when + dt.timedelta(days=40)  # a month ahead must still be a date
        except (ValueError, OverflowError):
            raise CliError(f"--at {at!r} is not an ISO 8601 time (2026-11-16T12:00Z)") from None
    evaluation = evaluate(_engine(db), rule_list, minutes, when, budgets=budgets)
    hook = webhook or options.get("webhook")
    if fmt == "json":
        sys.stdout.write(json.dumps(evaluation.as_dict(), indent=2, default=str) + "\n")
    elif evaluation.firing:
        for f in evaluation.firing:
            where = f" on {f.deployment}" if f.deployment else ""
            if "message" in f.detail:  # budgets say what they compared
                console.print(f"[red]FIRING[/red] {f.rule}: {f.detail['message']}", soft_wrap=True)
                continue
            console.print(f"[red]FIRING[/red] {f.rule}{where}: {f.value:.4g} > {f.threshold:g} "
                          f"({f.requests} requests in {minutes} min)")
    else:
        console.print(f"[green]ok[/green] {len(rule_list) + len(budgets)} rules quiet over the last {minutes} min")
    if fmt != "json":
        from .finance.budget_output import print_budgets

        print_budgets(evaluation.budgets, console)
    if evaluation.firing and hook:
        try:
            post_webhook(hook, evaluation)
        except Exception as exc:  # the alert still fires through the exit code
            err.print(f"warning: webhook {hook} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if evaluation.firing:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Apply the Alembic migrations to the ledger."""
    from .ledger.db import upgrade

    url = _db_url(db, must_exist=False)
    upgrade(url)
    console.print(f"ledger at {make_url(url).render_as_string()} is up to date")


# -- prices, prices check, reprice: the logic lives in telemetry/pricing/ ---------------------------------
prices_app = typer.Typer(invoke_without_command=True,
                         help="The price table in force; `prices check FILE` compares it with LiteLLM's.")
app.add_typer(prices_app, name="prices")
PricesOpt = Annotated[Path | None, typer.Option("--prices",
                                                help="TOML price file (overrides FOUNDRY_TELEMETRY_PRICES)")]
HiddenDb = Annotated[str | None, typer.Option("--db", hidden=True, help="accepted like everywhere; unused")]


@prices_app.callback()
def prices(ctx: typer.Context, fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
           prices_file: PricesOpt = None, db: HiddenDb = None) -> None:
    """Every model's rates (USD per million tokens), tiers, effective dates, source, checked, retirement."""
    if ctx.invoked_subcommand is not None:
        return
    from .pricing.commands import print_prices

    if fmt not in ("table", "json"):
        raise CliError(f"unknown --format {fmt!r}; choose table or json")
    print_prices(prices_file, fmt, console)


@prices_app.command("check")
def prices_check(file: Annotated[Path, typer.Argument(metavar="FILE", help="LiteLLM's price JSON")],
                 fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
                 prices_file: PricesOpt = None, db: HiddenDb = None) -> None:
    """Compare with model_prices_and_context_window.json; exit 1 on a mismatch."""
    from .pricing.commands import print_check

    if fmt not in ("table", "json"):
        raise CliError(f"unknown --format {fmt!r}; choose table or json")
    if print_check(file, prices_file, fmt, console):
        raise typer.Exit(1)


@app.command()
def reprice(
    since: Annotated[str, typer.Option(help="YYYY-MM-DD (or 7d, mtd …), first day re-priced")],
    until: Annotated[str | None, typer.Option(help="YYYY-MM-DD (inclusive, default today)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change, change nothing")] = False,
    prices_file: PricesOpt = None,
    db: DbOpt = None,
) -> None:
    """Recompute cost_usd of the rows in the window with the current table; daily totals move by the difference."""
    from .pricing.commands import run_reprice
    from .reports.period import parse_period

    start, end = parse_period(since, until)
    run_reprice(_engine(db), start, end, dry_run, prices_file, console, err)


# -- spool (issue 8): logic in ledger/spool_cli.py ------------------------------------------------------
spool_app = typer.Typer(help="What waits in the ledger's spool, what was set aside and why.")
app.add_typer(spool_app, name="spool")
SpoolDirOpt = Annotated[str | None, typer.Option("--spool-dir", help="Spool folder (default: the ledger's own)")]


def _spool_dir(db: str | None, spool_dir: str | None) -> Path:
    from .settings import Settings

    return Settings.from_env(db_url=_db_url(db, must_exist=False), spool_dir=spool_dir).resolved_spool_dir


@spool_app.callback(invoke_without_command=True)
def spool(ctx: typer.Context, db: DbOpt = None, spool_dir: SpoolDirOpt = None,
          fmt: Annotated[str, typer.Option("--format", help="table | json")] = "table") -> None:
    """Pending rows, journal segments, set-aside rows with their reasons, quarantined files."""
    if ctx.invoked_subcommand is None:
        spool_status(db, spool_dir, fmt)


@spool_app.command("status")
def spool_status(db: DbOpt = None, spool_dir: SpoolDirOpt = None,
                 fmt: Annotated[str, typer.Option("--format", help="table | json")] = "table") -> None:
    """Pending rows, journal segments, set-aside rows with their reasons, quarantined files."""
    from .ledger.spool_cli import render, status

    if fmt not in ("table", "json"):
        raise CliError(f"unknown format {fmt!r} (use table or json)")
    st = status(_spool_dir(db, spool_dir))
    print(json.dumps(st.as_dict(), indent=2) if fmt == "json" else render(st))


@spool_app.command("requeue")
def spool_requeue(db: DbOpt = None, spool_dir: SpoolDirOpt = None) -> None:
    """Put set-aside rows back in the replay queue (after fixing what made the database refuse them)."""
    from .ledger.spool_cli import requeue

    files, records = requeue(_spool_dir(db, spool_dir))
    console.print(f"requeued {records} records from {files} files; the next writer on this ledger replays them")


@app.command()
def proxy(
    upstream: Annotated[list[str], typer.Option("--upstream", help="[NAME=]URL of a Foundry resource; repeat for "
                                                "several, chosen by /r/NAME/anthropic/… (the first is the default)")],
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT")] = "127.0.0.1:8787",
    key_map: Annotated[Path | None, typer.Option("--key-map", help="TOML/JSON: SHA-256 of a key → team/project/user")
                       ] = None,
    require_attribution: Annotated[bool, typer.Option("--require-attribution",
                                                      help="Reject requests with no team/project/user (400)")] = False,
    max_connections: Annotated[int, typer.Option("--max-connections", min=1, help="Upstream connections, at most")
                               ] = 256,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", min=0, help="Seconds to finish streams on exit")
                             ] = 30.0,
    db: DbOpt = None,
) -> None:
    """Gateway mode: a streaming reverse proxy to Foundry that records every request like the SDK path."""
    from .gateway.cli import run_proxy

    run_proxy(upstream, listen, _db_url(db, must_exist=False), key_map, require_attribution, max_connections,
              drain_timeout, console)


# -- finance (issue 13): logic in telemetry/finance/ ---------------------------------------------------------
@app.command()
def reconcile(
    export: Annotated[Path, typer.Argument(metavar="EXPORT.csv", help="Cost Management export (FOCUS, cost details)")],
    tolerance: Annotated[str, typer.Option(help="allowed |bill − ledger| as a fraction of the bill")] = "0.005",
    abs_tolerance: Annotated[str, typer.Option("--abs-tolerance", help="also allowed: this many USD")] = "0",
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
    resource_map: Annotated[Path | None, typer.Option("--resource-map", help="TOML: ledger name = Azure name")] = None,
    publisher: Annotated[list[str] | None, typer.Option("--publisher", help="keep rows whose publisher contains "
                                                        "this (repeatable; default anthropic)")] = None,
    meter: Annotated[list[str] | None, typer.Option("--meter", help="… or whose meter contains this "
                                                    "(repeatable; default claude)")] = None,
    since: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default: the export's first day)")] = None,
    until: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default: the export's last day)")] = None,
    basis: Annotated[str, typer.Option(help="cost, or ccus (consumed CCUs × $0.01, any currency)")] = "cost",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file")] = None,
    db: DbOpt = None,
) -> None:
    """The Azure bill vs the ledger per day × resource; exit 1 when any difference exceeds the tolerance."""
    from .finance.cli import run_reconcile

    if fmt not in ("table", "json", "csv"):
        raise CliError(f"unknown --format {fmt!r}; choose table, json or csv")
    code = run_reconcile(_engine(db), export, tolerance=tolerance, abs_tolerance=abs_tolerance, fmt=fmt,
                         resource_map=resource_map, publishers=publisher, meters=meter, since=since,
                         until=until, basis=basis, output=output, console=console, err=err)
    if code:
        raise typer.Exit(code)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0][:300] if text else type(exc).__name__
    return line.encode("utf-8", "backslashreplace").decode("utf-8")  # undecodable argv bytes, printed safely


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("foundry-telemetry")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _wants_version(argv: list[str]) -> bool:
    """`--version` works after any command too (`foundry-telemetry report --version`), not only first."""
    return "--version" in argv[: argv.index("--")] if "--" in argv else "--version" in argv


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Observability and usage accounting for Claude on Microsoft Foundry."""


def main(argv: list[str] | None = None) -> None:
    from .alerts import RuleError
    from .finance.reconcile import ReconcileError
    from .ledger.db import LedgerError
    from .pricing import PriceError
    from .reports.chargeback import ReportError
    from .reports.period import PeriodError

    expected = (CliError, PeriodError, ReportError, RuleError, PriceError, SettingsError, LedgerError,
                ReconcileError)
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        if _wants_version(args):
            console.print(f"foundry-telemetry {_version()}", markup=False, highlight=False)
            return
        result = app(args=args, prog_name="foundry-telemetry", standalone_mode=False)
        if isinstance(result, int) and result:
            sys.exit(result)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("error: aborted", markup=False)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(2)
        message = exc.format_message() if hasattr(exc, "format_message") else _one_line(exc)
        err.print(f"error: {_one_line(Exception(message))}", markup=False, highlight=False)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except expected as exc:
        err.print(f"error: {_one_line(exc)}", markup=False, highlight=False)
        sys.exit(getattr(exc, "code", 2))
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        err.print(f"error: database: {_one_line(orig)}", markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        where = _one_line(Exception(exc.filename)) if exc.filename else ""
        err.print(f"error: {exc.strerror or _one_line(exc)}{': ' + where if where else ''}",
                  markup=False, highlight=False)
        sys.exit(2)
    except UnicodeError:
        err.print("error: an argument is not valid UTF-8 text", markup=False, highlight=False)
        sys.exit(2)
    except Exception as exc:  # a bug: still one line, unless asked for the details
        if os.environ.get("FOUNDRY_TELEMETRY_DEBUG") == "1":
            raise
        err.print(f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
                  "FOUNDRY_TELEMETRY_DEBUG=1 shows the traceback", markup=False, highlight=False)
        sys.exit(70)


if __name__ == "__main__":  # pragma: no cover
    main()
