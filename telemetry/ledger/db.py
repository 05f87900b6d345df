"""One engine per process and URL; schema upgrades through Alembic."""

from __future__ import annotations

import ast
import datetime as dt
import functools
import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_upgrade_lock = threading.Lock()
_UPGRADE_LOCK_KEY = 0x466F756E64727954  # "FoundryT": the advisory lock every ledger upgrade takes on PostgreSQL
_upgraded: set[str] = set()


class LedgerError(RuntimeError):
    """A ledger that cannot be opened or upgraded; the message is one line."""


def migrations_dir() -> Path:
    """Inside the wheel (`telemetry/_migrations`) or the checkout's top-level `migrations/`."""
    from ..resources import ResourceMissing
    from ..resources import migrations_dir as find

    try:
        return find()
    except ResourceMissing as exc:
        raise LedgerError(str(exc)) from None


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here, the driver we install."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LedgerError(f"{url!r} is not a database URL (e.g. sqlite:///usage.db)") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def get_engine(url: str) -> Engine:
    url = normalize_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _make_engine(url)
            _engines[url] = engine
        return engine


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            connect_args: dict[str, object] = {"check_same_thread": False}
            if "timeout" not in parsed.query:  # `?timeout=` in the URL sets the busy timeout
                connect_args["timeout"] = 30
            engine = create_engine(url, connect_args=connect_args)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
                dbapi_conn.isolation_level = None  # SQLAlchemy, not pysqlite, says when to BEGIN
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            @event.listens_for(engine, "begin")
            def _begin(conn):  # type: ignore[no-untyped-def]
                # take the write lock up front: read-then-write transactions never deadlock on upgrade
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            return engine
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    except (ArgumentError, ImportError) as exc:
        raise LedgerError(f"cannot open {parsed.render_as_string()}: {exc}") from None


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    cfg = alembic_config(url)
    # Alembic's `context` and `op` are module-level proxies: two ledgers upgrading at once in one process
    # (writer threads start together) would run each other's migrations
    with _upgrade_lock, get_engine(url).begin() as conn:
        if conn.dialect.name == "postgresql":
            # and across processes (replicas starting together): one upgrades, the others wait, then find the
            # schema at head; the lock ends with this transaction. SQLite: BEGIN IMMEDIATE already serialises
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    if revision == "head":
        _upgraded.add(normalize_url(url))


def head_revisions() -> frozenset[str]:
    """The head revision ids of migrations/versions, read from the files' `revision` / `down_revision` lines
    without importing Alembic or running the revision modules."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        values = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision") and node.value:
                values[target.id] = ast.literal_eval(node.value)
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str):
            raise LedgerError(f"{path.name}: no revision id")
        revisions.add(revision)
        parents.update([down] if isinstance(down, str) else (down or ()))
    return frozenset(revisions - parents)


def _is_current(url: str) -> bool:
    """True when `alembic_version` holds exactly the head revisions: one SELECT, no Alembic import."""
    try:
        heads = head_revisions()
        with get_engine(url).connect() as conn:
            current = frozenset(conn.scalars(text("SELECT version_num FROM alembic_version")))
    except Exception:  # no table yet, unreadable files, …: let Alembic decide
        return False
    return bool(heads) and current == heads


LEDGER_TABLES = ("usage_records", "usage_daily")


@functools.cache
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or ""


def _sqlite_tables(path: str) -> tuple[set[str], str | None]:
    """Table names and the Alembic revision of a SQLite file, read without changing one byte of it
    (our engine would switch it to WAL mode: only for a file that is already a ledger)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open {path}: {exc}") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return tables, revision
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a ledger ({exc})") from None
    finally:
        conn.close()


def check_schema(url: str) -> None:
    """For commands that read (or prune) a ledger: it must exist at this version. Never creates or alters
    anything; a database without the ledger tables is left exactly as it was."""
    from sqlalchemy import inspect

    url = normalize_url(url)
    parsed = make_url(url)
    shown = parsed.render_as_string()
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise LedgerError(f"no ledger at {parsed.database} (run some traffic, or `foundry-telemetry db upgrade`)")
        tables, revision = _sqlite_tables(parsed.database)
    else:
        with get_engine(url).connect() as conn:
            tables = set(inspect(conn).get_table_names())
            revision = None
            if "alembic_version" in tables:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    missing = [t for t in LEDGER_TABLES if t not in tables]
    if missing:
        raise LedgerError(f"{shown} has no usage ledger (no {missing[0]} table); nothing was changed. "
                          "Point --db at a ledger, or create one with `foundry-telemetry db upgrade`")
    head = head_revision()
    if revision != head:
        raise LedgerError(f"the ledger at {shown} is at revision {revision or 'none'}, this version needs {head}: "
                          "run `foundry-telemetry db upgrade`")
    _upgraded.add(url)


def ensure_schema(url: str) -> None:
    """Upgrade once per process. When the ledger is already at head this costs one SELECT: Alembic is not even
    imported (importing and running it holds the GIL for ~100 ms, which callers would feel mid-traffic)."""
    key = normalize_url(url)
    if key in _upgraded:
        return
    if _is_current(url):
        _upgraded.add(key)
        return
    upgrade(url)


def ensure_partitions(engine: Engine, days: set[dt.date], known: set[dt.date]) -> None:
    """PostgreSQL: one partition per UTC day, created on demand (and ahead by `create_partitions_ahead`)."""
    missing = sorted(days - known)
    if not missing:
        return
    with engine.begin() as conn:
        for day in missing:
            conn.execute(text(partition_ddl(day)))
            known.add(day)


def partition_name(day: dt.date) -> str:
    return f"usage_records_{day:%Y%m%d}"


def partition_ddl(day: dt.date) -> str:
    nxt = day + dt.timedelta(days=1)
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF usage_records "
            f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') TO ('{nxt.isoformat()} 00:00:00+00')")
