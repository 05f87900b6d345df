"""The CLI with hostile input: every command's options fuzzed (huge, negative, empty, malformed), never a
traceback; read commands never create or alter a database; `--version` and `-h` everywhere.

Run in-process through `telemetry.cli.main` (the console script's entry point) so that hundreds of cases stay
fast; a few subprocess runs in test_cli.py cover the installed script itself."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from telemetry.cli import app, main
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore

from .conftest import fresh_pg_url
from .helpers import make_record


def invoke(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, out: str, err: str, code_expected: int | None = 2) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert code != 0 and (code_expected is None or code == code_expected), (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'ledger.db'}"
    upgrade(url)
    records = []
    for i in range(12):
        r = make_record(i, days_ago=i * 0.5, cost="0.01")
        r.team = ("search", "support")[i % 2]
        records.append(r)
    LedgerStore(get_engine(url)).insert(records)
    return url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FOUNDRY_TELEMETRY_DB_URL", "FOUNDRY_TELEMETRY_RETENTION_DAYS", "FOUNDRY_TELEMETRY_PRICES",
                "FOUNDRY_TELEMETRY_DEPLOYMENTS", "FOUNDRY_TELEMETRY_CAPTURE_CONTENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "100")


HUGE_INT = "9" * 40
INVALID = [  # each must be refused: exit 2, one line
    ("report", "--since", "99999999d"), ("report", "--since", HUGE_INT + "d"), ("report", "--since", "-1d"),
    ("report", "--since", "2026-12-01garbage"), ("report", "--since", "20261201"), ("report", "--since", "x" * 5000),
    ("report", "--until", "9999-99-99"), ("report", "--since", "9999-12-31"), ("report", "--since", "1e9d"),
    ("report", "--since", "\udcff\udcfe"), ("report", "--by", ""), ("report", "--by", ","), ("report", "--by", " , "),
    ("report", "--by", "tag:"), ("report", "--by", "team,nope"), ("report", "--by", "x" * 3000),
    ("report", "--format", ""), ("report", "--format", "XML"), ("report", "-o", "/nonexistent/dir/r.csv"),
    ("report", "--no-such-flag"), ("report", "--since"),
    ("lookup", ""), ("lookup", "   "), ("lookup", "\udcff\udcfe\udcfd\udcfc"), ("lookup", "req_0", "--format", ""),
    ("lookup", "req_0", "--format", "yaml"),
    ("purge", "--older-than-days", "999999"), ("purge", "--older-than-days", HUGE_INT),
    ("purge", "--older-than-days", "-1"), ("purge", "--older-than-days", "0"), ("purge", "--older-than-days", ""),
    ("purge", "--older-than-days", "1e3"), ("purge", "--older-than-days", "many"),
    ("alerts", "check", "--window", "999999999999", "--p95-ms", "1"),
    ("alerts", "check", "--window", HUGE_INT, "--p95-ms", "1"), ("alerts", "check", "--window", "0", "--p95-ms", "1"),
    ("alerts", "check", "--window", "-5", "--p95-ms", "1"), ("alerts", "check", "--window", "", "--p95-ms", "1"),
    ("alerts", "check", "--window", "1.5", "--p95-ms", "1"), ("alerts", "check", "--p95-ms", "nan"),
    ("alerts", "check", "--p95-ms", "inf"), ("alerts", "check", "--p95-ms", "-1"), ("alerts", "check", "--p95-ms", ""),
    ("alerts", "check", "--error-rate", "-0.1"), ("alerts", "check", "--error-rate", "nan"),
    ("alerts", "check", "--error-rate", "7"), ("alerts", "check", "--cost-per-hour", "inf"),
    ("alerts", "check", "--cost-per-hour", "1e400"), ("alerts", "check", "--p95-ms", "1", "--min-requests", "0"),
    ("alerts", "check", "--p95-ms", "1", "--min-requests", HUGE_INT), ("alerts", "check"),
    ("alerts", "check", "--p95-ms", "1", "--format", ""), ("alerts", "check", "--rules", "/nonexistent/rules.toml"),
    ("alerts", "nope"), ("db", "nope"), ("nope",),
]


@pytest.mark.parametrize("args", INVALID, ids=lambda a: " ".join(a)[:60])
def test_invalid_input_is_one_line_exit_2(capsys, ledger, args):
    assert_one_line_error(*invoke(capsys, *args, "--db", ledger))


@pytest.mark.parametrize("db", ["", "   ", "notaurl", "mysql://u:secret@h/db", "sqlite:////nonexistent/dir/x.db",
                                "postgresql://nobody:secret@127.0.0.1:9/none", "sqlite:///" + "x" * 5000])
@pytest.mark.parametrize("command", [("report",), ("lookup", "req_1"), ("purge", "--dry-run"),
                                     ("alerts", "check", "--p95-ms", "1"), ("db", "upgrade"), ("demo", "-n", "1")])
def test_bad_db_is_one_line_and_hides_passwords(capsys, command, db):
    code, out, err = invoke(capsys, *command, "--db", db)
    assert_one_line_error(code, out, err)
    assert "secret" not in err
    assert not Path("/nonexistent").exists()


def test_bad_inputs_elsewhere(capsys, ledger, tmp_path, monkeypatch):
    (tmp_path / "rules.toml").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "empty.toml").write_text("")
    for args in [("alerts", "check", "--rules", str(tmp_path / "rules.toml")),
                 ("alerts", "check", "--rules", str(tmp_path / "empty.toml")),
                 ("alerts", "check", "--rules", str(tmp_path)),
                 ("report", "--format", "csv", "-o", str(tmp_path)),  # a folder, not a file
                 ("demo", "--requests", "0"), ("demo", "--requests", "-1"), ("demo", "--requests", HUGE_INT),
                 ("demo", "--requests", ""), ("demo", "--html", "/nonexistent/r.html"),
                 ("emulator", "--port", "-1"), ("emulator", "--port", "70000"), ("emulator", "--port", ""),
                 ("emulator", "--host", "")]:
        assert_one_line_error(*invoke(capsys, *args, "--db", ledger))
    monkeypatch.setenv("FOUNDRY_TELEMETRY_RETENTION_DAYS", "thirty")
    assert_one_line_error(*invoke(capsys, "purge", "--db", ledger))
    monkeypatch.setenv("FOUNDRY_TELEMETRY_RETENTION_DAYS", "99999999")
    assert_one_line_error(*invoke(capsys, "purge", "--db", ledger))
    monkeypatch.delenv("FOUNDRY_TELEMETRY_RETENTION_DAYS")
    for var, value in [("FOUNDRY_TELEMETRY_PRICES", str(tmp_path / "missing.toml")),
                       ("FOUNDRY_TELEMETRY_DEPLOYMENTS", "no-equals-sign"),
                       ("FOUNDRY_TELEMETRY_CAPTURE_CONTENT", "maybe"), ("FOUNDRY_TELEMETRY_DB_URL", "notaurl")]:
        monkeypatch.setenv(var, value)
        assert_one_line_error(*invoke(capsys, "demo", "-n", "1"))  # refused before any traffic
        monkeypatch.delenv(var)
    assert not (tmp_path / "report.html").exists()


ODD_BUT_VALID = [  # may succeed or say "not found", never crash
    ("report", "--since", "0001-01-01"), ("report", "--until", "9999-12-31"), ("report", "--since", "36600d"),
    ("report", "--since", "2026-12-01T10:00:00+05:00"), ("report", "--by", "TEAM, team ,tag:feature"),
    ("report", "--since", "0d", "--format", "json"), ("report", "--by", "day,month,user", "--format", "csv"),
    ("lookup", "%"), ("lookup", "req_%"), ("lookup", "____"), ("lookup", "\\\\\\\\"), ("lookup", "x" * 5000),
    ("purge", "--older-than-days", "36600", "--dry-run"), ("purge", "--older-than-days", "1", "--dry-run"),
    ("alerts", "check", "--window", "527040", "--p95-ms", "0"), ("alerts", "check", "--error-rate", "0"),
    ("alerts", "check", "--p95-ms", "1e300", "--min-requests", "1000000000000", "--format", "json"),
]


@pytest.mark.parametrize("args", ODD_BUT_VALID, ids=lambda a: " ".join(a)[:60])
def test_odd_but_valid_input_never_crashes(capsys, ledger, args):
    code, out, err = invoke(capsys, *args, "--db", ledger)
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert code in (0, 1), (code, err)
    if code == 1 and args[0] == "lookup":
        assert_one_line_error(code, out, err, code_expected=1)


def _commands() -> list[tuple[str, ...]]:
    import typer

    found: list[tuple[str, ...]] = [()]

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            found.append((*path, name))
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def test_version_and_short_help_everywhere(capsys):
    commands = _commands()
    assert ("report",) in commands and ("alerts", "check") in commands and ("db", "upgrade") in commands
    for path in commands:
        code, out, err = invoke(capsys, *path, "--version")
        assert code == 0 and out.startswith("foundry-telemetry ") and not err, (path, out, err)
        code, out, err = invoke(capsys, *path, "-h")
        assert code == 0 and "Usage:" in out and "Traceback" not in out + err, (path, out, err)


# -- never write to a database it did not create -------------------------------------------------------

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """Another application's SQLite file (rollback journal, as most apps leave it)."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO customers (name) VALUES (?)", [("ada",), ("grace",)])
    conn.close()
    return path


READERS = [("report",), ("report", "--format", "csv"), ("lookup", "req_1"), ("purge",), ("purge", "--dry-run"),
           ("alerts", "check", "--p95-ms", "1")]


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a))
def test_read_commands_leave_another_apps_sqlite_file_untouched(capsys, foreign, args):
    before = _digest(foreign)
    code, out, err = invoke(capsys, *args, "--db", f"sqlite:///{foreign}")
    assert_one_line_error(code, out, err)
    assert "no usage ledger" in err and "nothing was changed" in err
    assert _digest(foreign) == before
    assert sorted(p.name for p in foreign.parent.iterdir()) == ["app.db"]  # no -wal, -shm, journal or spool


@pytest.mark.parametrize("content", [b"", b"not a database at all\n" * 10])
def test_read_commands_on_empty_or_non_sqlite_files(capsys, tmp_path, content):
    path = tmp_path / "odd.db"
    path.write_bytes(content)
    code, out, err = invoke(capsys, "report", "--db", f"sqlite:///{path}")
    assert_one_line_error(code, out, err)
    assert path.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["odd.db"]


def test_old_ledger_is_not_upgraded_by_a_read_command(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    before = _digest(tmp_path / "old.db")
    code, out, err = invoke(capsys, "report", "--db", url)
    assert_one_line_error(code, out, err)
    assert "revision 0001" in err and "db upgrade" in err and _digest(tmp_path / "old.db") == before
    code, out, err = invoke(capsys, "db", "upgrade", "--db", url)
    assert code == 0, err
    assert invoke(capsys, "report", "--db", url)[0] == 0


def test_db_upgrade_creates_a_file_but_not_folders(capsys, tmp_path):
    missing = tmp_path / "a" / "b" / "ledger.db"
    assert_one_line_error(*invoke(capsys, "db", "upgrade", "--db", f"sqlite:///{missing}"))
    assert not (tmp_path / "a").exists()
    code, out, err = invoke(capsys, "db", "upgrade", "--db", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert code == 0 and (tmp_path / "ledger.db").is_file(), err
    code, out, err = invoke(capsys, "report", "--db", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert code == 0 and "TOTAL" in out, err


@pytest.mark.postgres
def test_read_commands_leave_a_postgres_database_without_ledger_untouched(capsys):
    from sqlalchemy import create_engine, inspect, text

    url = fresh_pg_url()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id int)"))
    for args in READERS:
        code, out, err = invoke(capsys, *args, "--db", url)
        assert_one_line_error(code, out, err)
        assert "no usage ledger" in err
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == ["customers"]
    engine.dispose()
    get_engine(url).dispose()
