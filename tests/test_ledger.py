"""The ledger on SQLite and PostgreSQL: schema, idempotency, outages, SIGTERM, retention."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from anthropic import AnthropicFoundry
from sqlalchemy.engine import make_url

from telemetry import Telemetry
from telemetry.health import Health
from telemetry.ledger.db import alembic_config, get_engine, upgrade
from telemetry.ledger.retention import purge
from telemetry.ledger.spool import Spool
from telemetry.ledger.store import LedgerStore
from telemetry.ledger.writer import LedgerWriter
from telemetry.settings import Settings

from .conftest import API_KEY, MSG, rows
from .helpers import daily_totals, make_record
from .tcp_proxy import TcpProxy


def test_migrations_match_models(db_url):
    from alembic import command

    upgrade(db_url)
    command.check(alembic_config(db_url))  # raises when the models and the revisions differ


def test_rows_equal_served_ids(db_url, emulator, otel, tmp_path):
    tel = Telemetry(db_url=db_url, spool_dir=str(tmp_path / "spool"), batch_interval_s=0.05,
                    tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url))
    before = len(emulator.emulator.served)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=MSG)
    client.messages.create(model="my-claude", max_tokens=16, messages=MSG,
                           extra_headers={"x-emulator-fault": "429;times=1"})
    list(client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=MSG, stream=True))
    tel.shutdown()
    served = emulator.emulator.served[before:]
    got = rows(db_url)
    assert sorted(r.request_id for r in got) == sorted(s["request-id"] for s in served)
    assert sorted(r.apim_request_id for r in got) == sorted(s["apim-request-id"] for s in served)
    assert all(isinstance(r.cost_usd, Decimal) for r in got)
    assert daily_totals(db_url)["requests"] == 4


def test_replay_twice_counts_once(db_url, tmp_path):
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    records = [make_record(i) for i in range(5)] + [make_record(99, request_id=None)]
    spool.append(records)
    spool.append(records)  # the same rows again, e.g. a crash after insert, before unlink
    settings = Settings(db_url=db_url, spool_dir=str(spool_dir), batch_interval_s=0.05)
    writer = LedgerWriter(settings, Health())
    assert writer.flush(30)
    writer.close()
    assert spool.pending() == 0
    assert len(rows(db_url)) == 6
    totals = daily_totals(db_url)
    assert totals["requests"] == 6 and totals["cost_e10"] == 6 * 123_000_000
    # and a third time through the store directly
    assert LedgerStore(get_engine(db_url)).insert(records) == 0
    assert daily_totals(db_url) == totals


def test_duplicate_request_id_in_one_batch(db_url):
    upgrade(db_url)
    a, b = make_record(1), make_record(2)
    b.request_id = a.request_id
    b.created_at = a.created_at
    assert LedgerStore(get_engine(db_url)).insert([a, b]) == 1


class Outage:
    """Takes the database away for real: SQLite locked by another process, PostgreSQL's TCP path cut."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        parsed = make_url(url)
        self.kind = parsed.get_backend_name()
        if self.kind == "sqlite":
            self.path = parsed.database
            self.url = f"sqlite:///{self.path}?timeout=0.2"
            self.lock: sqlite3.Connection | None = None
        else:
            self.proxy = TcpProxy(parsed.host, parsed.port)
            self.url = parsed.set(host="127.0.0.1", port=self.proxy.port).render_as_string(hide_password=False)

    def down(self) -> None:
        if self.kind == "sqlite":
            self.lock = sqlite3.connect(self.path, isolation_level=None)
            self.lock.execute("BEGIN EXCLUSIVE")
        else:
            self.proxy.down()

    def up(self) -> None:
        if self.kind == "sqlite":
            self.lock.execute("ROLLBACK")
            self.lock.close()
        else:
            self.proxy.up()


def test_database_outage_spools_then_replays(db_url, emulator, otel, tmp_path):
    upgrade(db_url)
    outage = Outage(db_url, tmp_path)
    tel = Telemetry(db_url=outage.url, spool_dir=str(tmp_path / "spool"), batch_interval_s=0.05,
                    tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url))
    before = len(emulator.emulator.served)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    assert tel.flush(30)
    outage.down()
    for _ in range(5):
        assert client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG).content
    assert tel.flush(30)
    assert tel.ledger.spool.pending() >= 1 and tel.health.snapshot().get("ledger_write", 0) >= 1
    outage.up()
    deadline = time.monotonic() + 30
    while tel.ledger.spool.pending() and time.monotonic() < deadline:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
        tel.flush(30)
        time.sleep(0.3)
    tel.shutdown()
    served = [s["request-id"] for s in emulator.emulator.served[before:]]
    got = [r.request_id for r in rows(db_url)]
    assert sorted(got) == sorted(served) and len(set(got)) == len(got)
    assert daily_totals(db_url)["requests"] == len(served)


SIGTERM_DRIVER = r"""
import sys, time
from anthropic import AnthropicFoundry
from telemetry import Telemetry
from telemetry.emulator import EmulatorServer
with EmulatorServer() as emu:
    tel = Telemetry.from_env(batch_interval_s=600, batch_size=100000)
    client = tel.instrument(AnthropicFoundry(api_key="k", base_url=emu.base_url))
    for _ in range(25):
        client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    print("ready", flush=True)
    time.sleep(120)
"""


def test_sigterm_loses_nothing(db_url, tmp_path):
    upgrade(db_url)
    env = {**os.environ, "FOUNDRY_TELEMETRY_DB_URL": db_url, "FOUNDRY_TELEMETRY_SPOOL_DIR": str(tmp_path / "sp")}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert rows(db_url) == []  # still queued: batches wait for 600 s
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == -signal.SIGTERM
    assert len(rows(db_url)) == 25


EXIT_DRIVER = SIGTERM_DRIVER.replace('print("ready", flush=True)\n    time.sleep(120)', "pass  # no flush, no shutdown")


def test_interpreter_exit_flushes(db_url, tmp_path):
    upgrade(db_url)
    env = {**os.environ, "FOUNDRY_TELEMETRY_DB_URL": db_url, "FOUNDRY_TELEMETRY_SPOOL_DIR": str(tmp_path / "sp")}
    assert subprocess.run([sys.executable, "-c", EXIT_DRIVER], env=env, timeout=120).returncode == 0
    assert len(rows(db_url)) == 25


def test_purge_keeps_29_days_drops_31_and_daily_totals(db_url):
    upgrade(db_url)
    store = LedgerStore(get_engine(db_url))
    store.insert([make_record(1, days_ago=29), make_record(2, days_ago=31), make_record(3, days_ago=45),
                  make_record(4)])
    before = daily_totals(db_url)
    dry = purge(get_engine(db_url), 30, dry_run=True)
    assert dry.rows == 2 and len(rows(db_url)) == 4
    result = purge(get_engine(db_url), 30)
    assert result.rows == 2
    assert sorted(r.request_id for r in rows(db_url)) == ["req_1", "req_4"]
    assert daily_totals(db_url) == before


def test_postgres_is_partitioned_by_day(tmp_path):
    from .conftest import fresh_pg_url

    url = fresh_pg_url()
    upgrade(url)
    store = LedgerStore(get_engine(url))
    store.insert([make_record(1, days_ago=40), make_record(2)])
    from telemetry.ledger.retention import pg_partitions

    parts = pg_partitions(get_engine(url))
    today = dt.datetime.now(dt.UTC).date()
    assert today in parts and today + dt.timedelta(days=7) in parts  # created ahead
    assert (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).date() in parts  # created on demand
    result = purge(get_engine(url), 30)
    assert any(p.endswith(f"{(dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).date():%Y%m%d}")
               for p in result.partitions)
    assert [r.request_id for r in rows(url)] == ["req_2"]


test_postgres_is_partitioned_by_day = pytest.mark.postgres(test_postgres_is_partitioned_by_day)


def test_sqlite_default_ledger_upgrades_itself(tmp_path, emulator, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tel = Telemetry.from_env(batch_interval_s=0.05)
    assert tel.settings.db_url == "sqlite:///foundry-usage.db"
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url))
    client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)
    tel.shutdown()
    assert (tmp_path / "foundry-usage.db").exists()
    assert len(rows("sqlite:///foundry-usage.db")) == 1


def test_full_queue_spills_to_spool_not_dropped(db_url, tmp_path):
    upgrade(db_url)
    settings = Settings(db_url=db_url, spool_dir=str(tmp_path / "spool"), queue_size=2, batch_interval_s=0.05)
    writer = LedgerWriter(settings, Health(), start=False)
    for i in range(5):
        writer.write(make_record(i))
    assert writer.spool.pending() == 3
    writer._thread.start()  # noqa: SLF001
    writer.flush(30)
    writer.close()
    assert len(rows(db_url)) == 5


def test_database_and_disk_both_down_is_counted_not_raised(emulator, otel, tmp_path, caplog):
    import logging

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool folder should be")
    tel = Telemetry(db_url="postgresql+psycopg://nobody@127.0.0.1:9/none", spool_dir=str(blocker / "spool"),
                    batch_interval_s=0.05, tracer_provider=otel.tracer_provider,
                    meter_provider=otel.meter_provider)
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url))
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        for _ in range(3):
            assert client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG).content
        tel.flush(10)
    failures = tel.health.snapshot()
    tel.shutdown(5)
    assert failures.get("ledger_connect", 0) >= 1 and failures.get("spool_write", 0) >= 1
    assert API_KEY not in caplog.text


def test_oversized_server_strings_are_cut_not_fatal(db_url):
    upgrade(db_url)
    r = make_record(1)
    r.model = "claude-" + "x" * 500
    r.request_id = "req_" + "y" * 500
    r.error_type = "e" * 200
    assert LedgerStore(get_engine(db_url)).insert([r]) == 1
    (row,) = rows(db_url)
    assert len(row.model) == 128 and row.model.startswith("claude-xxx") and len(row.request_id) == 128


def test_refused_rows_are_set_aside_and_do_not_block_the_spool(db_url, tmp_path):
    upgrade(db_url)
    spool = Spool(tmp_path / "spool")
    good = [make_record(i) for i in range(3)]
    bad = make_record(9)
    bad.attempt = 2**70  # beyond any integer column: the database refuses this one row
    spool.append([good[0], bad, good[1]])
    spool.append([good[2]])
    writer = LedgerWriter(Settings(db_url=db_url, spool_dir=str(tmp_path / "spool"), batch_interval_s=0.05),
                          Health())
    assert writer.flush(30)
    writer.close()
    assert sorted(r.request_id for r in rows(db_url)) == ["req_0", "req_1", "req_2"]
    assert spool.pending() == 0
    (kept,) = (tmp_path / "spool" / "rejected").glob("*.jsonl")
    assert '"request_id":"req_9"' in kept.read_text()
    assert writer.health.snapshot()["ledger_rejected"] == 1


def test_stream_finished_after_shutdown_is_spooled_then_replayed(emulator, otel, tmp_path):
    url = f"sqlite:///{tmp_path / 'late.db'}"
    spool_dir = str(tmp_path / "spool")
    tel = Telemetry(db_url=url, spool_dir=spool_dir, batch_interval_s=0.05,
                    tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url))
    stream = client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=MSG, stream=True)
    tel.shutdown()
    events = list(stream)  # the caller keeps reading after telemetry shut down
    assert events[-1].type == "message_stop"
    assert Spool(Path(spool_dir)).pending() == 1
    later = Telemetry(db_url=url, spool_dir=spool_dir, batch_interval_s=0.05)
    later.flush()
    later.shutdown()
    (row,) = rows(url)
    assert row.output_tokens > 0 and row.error_type is None
