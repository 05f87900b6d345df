"""Start-up work stays out of traffic: the ledger's schema is checked (and created) when `Telemetry(...)` starts,
before any call, and a ledger already at head is recognised without importing Alembic."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, inspect, text

from telemetry import Telemetry
from telemetry.ledger.db import ensure_schema, head_revisions, upgrade


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _wait_for_schema(url: str, timeout: float = 20.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tables = _tables(url)
        if {"usage_records", "alembic_version"} <= tables:
            return tables
        time.sleep(0.05)
    return _tables(url)


def test_schema_is_created_at_start_not_on_first_batch(tmp_path):
    urls = [f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"]
    # two at once: their writer threads upgrade concurrently, which Alembic's module-level context cannot share
    tels = [Telemetry(db_url=url, spool_dir=f"{tmp_path}/spool-{i}") for i, url in enumerate(urls)]
    try:
        for url in urls:
            assert {"usage_records", "usage_daily", "alembic_version"} <= _wait_for_schema(url)
        assert all(tel.processed == 0 for tel in tels)  # no call was made: the schema did not wait for one
        assert all(not tel.health.snapshot() for tel in tels)
    finally:
        for tel in tels:
            tel.shutdown()


def test_current_ledger_is_checked_without_alembic(tmp_path):
    url = f"sqlite:///{tmp_path}/current.db"
    upgrade(url)
    code = ("import sys; from telemetry.ledger.db import ensure_schema; ensure_schema(sys.argv[1]); "
            "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_ledger_behind_head_is_still_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    (head,) = head_revisions()
    upgrade(url, "0001")
    assert "usage_daily_latency" not in _tables(url)
    ensure_schema(url)
    assert "usage_daily_latency" in _tables(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head
    engine.dispose()


@pytest.mark.postgres
def test_replicas_upgrading_one_fresh_postgres_ledger_at_once_all_succeed():
    """N processes (gateway replicas, app workers) start together on an empty database: one runs the
    migrations, the others wait on the advisory lock and find the schema at head — none fails."""
    from .conftest import fresh_pg_url

    url = fresh_pg_url()
    script = ("import sys, time; from telemetry.ledger.db import upgrade; "
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); upgrade(sys.argv[1]); print('ok')")
    start_at = time.time() + 3.0  # the imports done, all four upgrade in the same instant
    procs = [subprocess.Popen([sys.executable, "-c", script, url, str(start_at)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-500:] for _, err in results]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            versions = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()
    assert versions == set(head_revisions())
