"""Prices through the public surface: the real SDK against the emulator, the ledger on both backends, and the
`prices`, `prices check`, `reprice`, `report` and `lookup` commands as users run them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.models import COST_SCALE, UsageDailyRow
from telemetry.ledger.store import LedgerStore
from telemetry.pricing import load_price_table
from telemetry.record import UsageRecord

from .conftest import MSG, rows
from .helpers import make_record
from .test_cli import cli

FIXTURE = Path(__file__).parent / "fixtures" / "litellm_prices.json"
EXPONENT = re.compile(r"\d[eE][+-]?\d")
UTC = dt.UTC


def daily(url: str) -> dict[str, int]:
    t = UsageDailyRow.__table__
    names = ("requests", "input_tokens", "cost_e10", "unpriced", "count_tokens_requests", "count_tokens_input_tokens")
    with get_engine(url).connect() as conn:
        got = conn.execute(select(*(func.coalesce(func.sum(t.c[n]), 0) for n in names))).one()
    return dict(zip(names, (int(v) for v in got), strict=True))


def row_sums(url: str) -> tuple[int, int]:
    """(sum of cost in 1e-10 units, NULL count) over the raw rows."""
    got = rows(url)
    return (sum(int(r.cost_usd.scaleb(COST_SCALE)) for r in got if r.cost_usd is not None),
            sum(r.cost_usd is None for r in got))


# -- the real SDK against the emulator --------------------------------------------------------------------

def test_count_tokens_through_the_sdk_costs_zero_and_leaves_billed_totals_alone(client, tel, sqlite_url):
    msg = client.messages.create(model="claude-opus-4-1", max_tokens=16, messages=MSG)
    counted = [client.messages.count_tokens(model="claude-opus-4-1", messages=MSG) for _ in range(2)]
    tel.flush()
    got = rows(sqlite_url)
    chat = [r for r in got if r.operation == "chat"]
    free = [r for r in got if r.operation == "count_tokens"]
    assert len(chat) == 1 and len(free) == 2
    assert all(r.cost_usd == 0 and r.cost_usd is not None and r.input_tokens > 0 for r in free)
    expected = (Decimal(msg.usage.input_tokens) * 15 + Decimal(msg.usage.output_tokens) * 75) / 1_000_000
    assert chat[0].cost_usd == expected
    totals = daily(sqlite_url)
    assert totals["requests"] == 1 and totals["input_tokens"] == msg.usage.input_tokens
    assert totals["count_tokens_requests"] == 2
    assert totals["count_tokens_input_tokens"] == sum(c.input_tokens for c in counted)
    assert Decimal(totals["cost_e10"]).scaleb(-COST_SCALE) == expected
    out = cli("report", "--db", sqlite_url, "--format", "json")
    total = json.loads(out.stdout)["total"]
    assert total["requests"] == 1 and total["count_tokens_requests"] == 2 and Decimal(total["cost_usd"]) == expected
    assert any("count_tokens" in n for n in json.loads(out.stdout)["notes"])


def test_unknown_answered_model_behind_known_deployment_is_null(make_tel, emulator, otel, sqlite_url, caplog):
    from anthropic import AnthropicFoundry

    from .conftest import sdk_kwargs

    tel = make_tel(deployments="claude-haiku-4-5=claude-haiku-4-5")
    client = tel.instrument(AnthropicFoundry(**sdk_kwargs(emulator, otel)))
    saved = emulator.emulator.deployments["claude-haiku-4-5"]
    emulator.emulator.deployments["claude-haiku-4-5"] = "claude-haiku-9-9-20270101"
    try:
        client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=MSG)
    finally:
        emulator.emulator.deployments["claude-haiku-4-5"] = saved
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.deployment == "claude-haiku-4-5" and row.model == "claude-haiku-9-9-20270101"
    assert row.input_tokens > 0 and row.cost_usd is None
    assert daily(sqlite_url)["unpriced"] == 1
    out = cli("report", "--db", sqlite_url, "--format", "csv")
    (line, total) = list(csv.DictReader(io.StringIO(out.stdout)))
    assert total["unpriced"] == "1" and total["cost_usd"] == "0"


# -- storage ----------------------------------------------------------------------------------------------

def test_cost_stored_exactly_on_both_backends(db_url):
    upgrade(db_url)
    exact = Decimal("12345678.1234567891")
    LedgerStore(get_engine(db_url)).insert([make_record(1, cost=str(exact)), make_record(2, cost="2.5E-7")])
    got = sorted(rows(db_url), key=lambda r: r.request_id)
    assert got[0].cost_usd == exact and got[1].cost_usd == Decimal("0.00000025")
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as con:
            texts = sorted(v for (v,) in con.execute("select cost_usd from usage_records"))
        assert texts == ["0.00000025", "12345678.1234567891"]  # text, never a float on the way


# -- reprice ----------------------------------------------------------------------------------------------

def _rec(i: int, when: dt.datetime, model: str | None, cost: str | None, **fields: object) -> UsageRecord:
    r = make_record(i, cost=cost, **fields)
    r.created_at, r.model = when, model
    r.deployment = fields.get("deployment", model or "claude-haiku-4-5")  # type: ignore[assignment]
    return r


@pytest.fixture
def mispriced(db_url: str) -> tuple[str, list[UsageRecord]]:
    """Rows written by an older table: Sonnet 5.5 reads at 0.20 after the cut, count_tokens billed as input,
    an unknown model priced by its deployment name, a Haiku 5.5 row left unpriced."""
    upgrade(db_url)
    early = dt.datetime(2026, 10, 6, 23, 30, tzinfo=UTC)
    late = dt.datetime(2026, 10, 20, 8, tzinfo=UTC)
    now = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    read = {"input_tokens": 1000, "cache_read_input_tokens": 1_000_000, "output_tokens": 100}
    records = [
        _rec(1, early, "claude-sonnet-5-5", "0.2030000000", **read),  # right (0.20 before the cut)
        _rec(2, late, "claude-sonnet-5-5", "0.2030000000", **read),  # wrong: 0.10 from 2026-10-07
        _rec(3, late + dt.timedelta(minutes=1), "claude-sonnet-5-5", "0.2030000000", **read, team="=cmd()"),
        _rec(4, now, None, "0.3000120000", deployment="claude-opus-4-1", input_tokens=100_004, output_tokens=0,
             operation="count_tokens"),  # billed as input by the old table
        _rec(5, now, "claude-haiku-9-9", "0.0000150000", deployment="claude-haiku-4-5", input_tokens=10,
             output_tokens=1),  # guessed from the deployment name
        _rec(6, now, "claude-haiku-5-5", None, input_tokens=50_000, output_tokens=1000),  # was unpriced
    ]
    LedgerStore(get_engine(db_url)).insert(records)
    return db_url, records


def test_reprice_fixes_rows_and_daily_totals_exactly_and_twice_is_once(mispriced):
    url, records = mispriced
    table = load_price_table()
    before_rows = row_sums(url)
    assert (daily(url)["cost_e10"], daily(url)["unpriced"]) == before_rows

    dry = cli("reprice", "--since", "2026-09-01", "--dry-run", "--db", url)
    assert dry.returncode == 0, dry.stderr
    assert "would change 5" in dry.stdout and row_sums(url) == before_rows  # nothing written

    first = cli("reprice", "--since", "2026-09-01", "--db", url)
    assert first.returncode == 0, first.stderr
    got = {r.request_id: r for r in rows(url)}
    for r in records:
        assert got[r.request_id].cost_usd == table.cost(r), r.request_id
    assert got["req_2"].cost_usd == Decimal("0.103") and got["req_1"].cost_usd == Decimal("0.203")
    assert got["req_4"].cost_usd == 0 and got["req_5"].cost_usd is None
    after_rows = row_sums(url)
    assert (daily(url)["cost_e10"], daily(url)["unpriced"]) == after_rows  # totals equal the rows, exactly
    before_usd = Decimal(before_rows[0]).scaleb(-COST_SCALE)
    after_usd = Decimal(after_rows[0]).scaleb(-COST_SCALE)
    assert f"before: ${before_usd.normalize():f} (1 unpriced)" in first.stdout
    assert f"after:  ${after_usd.normalize():f} (1 unpriced)" in first.stdout
    assert "changed 5" in first.stdout and not EXPONENT.search(first.stdout)

    totals = daily(url)
    second = cli("reprice", "--since", "2026-09-01", "--db", url)
    assert second.returncode == 0 and "changed 0" in second.stdout
    assert daily(url) == totals and row_sums(url) == after_rows


def test_reprice_bad_input_is_one_line(tmp_path, mispriced):
    url, _ = mispriced
    out = cli("reprice", "--since", "someday", "--db", url)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "someday" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."claude-x"]\ncache_raed = "1"\n')
    out = cli("reprice", "--since", "2026-09-01", "--prices", str(bad), "--db", url)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "cache_raed" in out.stderr
    assert "Traceback" not in out.stderr


# -- plain numbers, unpriced beside every cost, CSV formulas ----------------------------------------------

def test_csv_json_html_lookup_never_show_an_exponent(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    records = [make_record(1, cost="2.5E-7", team="=HYPERLINK(\"http://evil\",\"x\")"),
               make_record(2, cost="0E-10", team="+cmd"), make_record(3, cost="1E-10", team="@SUM(A1)"),
               make_record(4, cost=None, team="-2+3")]
    LedgerStore(get_engine(url)).insert(records)
    outputs = {}
    for fmt in ("csv", "json", "html", "table"):
        out = cli("report", "--db", url, "--format", fmt)
        assert out.returncode == 0, out.stderr
        outputs[fmt] = out.stdout
    for ident, fmt in (("req_1", "json"), ("req_2", "json"), ("req_1", "table")):
        out = cli("lookup", ident, "--db", url, "--format", fmt)
        assert out.returncode == 0, out.stderr
        outputs[f"lookup {ident} {fmt}"] = out.stdout
    for name, text in outputs.items():
        assert not EXPONENT.search(text), (name, EXPONENT.search(text))
    assert json.loads(outputs["lookup req_1 json"])["cost_usd"] == "0.00000025"
    assert json.loads(outputs["lookup req_2 json"])["cost_usd"] == "0"
    body = json.loads(outputs["json"])
    assert body["total"]["cost_usd"] == "0.0000002501" and body["total"]["unpriced"] == 1
    teams = [r["team"] for r in csv.DictReader(io.StringIO(outputs["csv"]))][:-1]
    assert sorted(teams) == sorted(["'=HYPERLINK(\"http://evil\",\"x\")", "'+cmd", "'@SUM(A1)", "'-2+3"])
    assert "unpriced" in outputs["table"] and "unpriced" in outputs["html"]


def test_report_warns_about_traffic_to_a_retired_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    retired = make_record(1, model="claude-haiku-4-5-20251001")  # retired on Foundry 2026-11-15
    current = make_record(2, model="claude-sonnet-5-5")
    LedgerStore(get_engine(url)).insert([retired, current])
    out = cli("report", "--db", url, "--format", "json")
    notes = json.loads(out.stdout)["notes"]
    assert any("claude-haiku-4-5" in n and "2026-11-15" in n for n in notes), notes
    assert not any("sonnet-5-5" in n for n in notes)
    table = cli("report", "--db", url)
    assert "retirement" in table.stdout


# -- prices and prices check ------------------------------------------------------------------------------

def test_prices_lists_every_rate_plainly():
    out = cli("prices", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    models = {m["model"]: m for m in doc["models"]}
    sonnet = models["claude-sonnet-5-5"]["rates"]
    assert [(p["effective"], p["cache_read"]) for p in sonnet] == [(None, "0.2"), ("2026-10-07", "0.1")]
    haiku = models["claude-haiku-5-5"]["rates"][0]
    assert haiku["tier"]["above_prompt_tokens"] == 100_000 and haiku["tier"]["cache_read"] == "0.05"
    assert models["claude-sonnet-4-5"]["retirement"] == "2026-11-30"
    assert all(p["source"] and p["checked"] for m in doc["models"] for p in m["rates"])
    assert not EXPONENT.search(out.stdout)
    table = cli("prices")
    assert table.returncode == 0 and "claude-opus-5-5-fast" in table.stdout and "2026-10-07" in table.stdout


def test_prices_check_against_litellm_fixture(tmp_path):
    out = cli("prices", "check", str(FIXTURE))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no mismatches" in out.stdout
    assert "missing in file: claude-3-haiku" in out.stdout
    assert "missing in table: claude-fable-5-2" in out.stdout

    data = json.loads(FIXTURE.read_text())
    data["claude-sonnet-5-5"]["cache_read_input_token_cost"] = 2e-07  # the old rate
    del data["claude-haiku-5-5"]["cache_read_input_token_cost_above_100k_tokens"]
    data["claude-haiku-5-5"]["output_cost_per_token_above_100k_tokens"] = 3e-06
    data["azure_ai/claude-sonnet-4-5"]["deprecation_date"] = "2026-12-31"
    changed = tmp_path / "model_prices_and_context_window.json"
    changed.write_text(json.dumps(data))
    out = cli("prices", "check", str(changed), "--format", "json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    found = {(m["model"], m["field"], m["table"], m["file"]) for m in result["mismatches"]}
    assert found == {("claude-sonnet-5-5", "cache_read", "0.1", "0.2"),
                     ("claude-haiku-5-5", "above 100000: output", "2.5", "3"),
                     ("claude-sonnet-4-5", "retirement", "2026-11-30", "2026-12-31")}
    assert {(m["model"], m["field"]) for m in result["missing_fields"]} == {
        ("claude-haiku-5-5", "above 100000: cache_read")}
    assert result["compared"]["claude-sonnet-4-5"] == "azure_ai/claude-sonnet-4-5"  # Foundry's entry wins

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = cli("prices", "check", str(bad))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not valid JSON" in out.stderr


def test_reprice_while_writers_run_keeps_totals_equal_to_rows(mispriced):
    import threading

    from telemetry.pricing.reprice import reprice

    url, _ = mispriced
    engine = get_engine(url)
    table = load_price_table()
    store = LedgerStore(engine)
    late = dt.datetime(2026, 10, 21, 9, tzinfo=UTC)
    read = {"input_tokens": 1000, "cache_read_input_tokens": 1_000_000, "output_tokens": 100}
    written: list[int] = []

    def writer() -> None:
        for batch in range(12):
            recs = [_rec(1000 + batch * 10 + k, late + dt.timedelta(seconds=batch * 10 + k), "claude-sonnet-5-5",
                         "0.2030000000", **read) for k in range(10)]
            written.append(store.insert(recs))

    thread = threading.Thread(target=writer)
    thread.start()
    results = [reprice(engine, table, dt.date(2026, 9, 1), dt.date(2026, 12, 31), batch_size=7) for _ in range(3)]
    thread.join()
    assert sum(written) == 120 and results[0].changed >= 5
    assert (daily(url)["cost_e10"], daily(url)["unpriced"]) == row_sums(url)  # never a drift while both ran
    reprice(engine, table, dt.date(2026, 9, 1), dt.date(2026, 12, 31), batch_size=50)
    assert all(r.cost_usd == Decimal("0.103") for r in rows(url) if int(r.request_id[4:]) >= 1000)
    assert (daily(url)["cost_e10"], daily(url)["unpriced"]) == row_sums(url)
    again = reprice(engine, table, dt.date(2026, 9, 1), dt.date(2026, 12, 31))
    assert again.changed == 0 and again.rows == 126


def test_revision_0003_adds_count_tokens_columns_to_existing_totals(db_url):
    from sqlalchemy import inspect, text

    upgrade(db_url, "0002")
    engine = get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text('INSERT INTO usage_daily (day, team, project, "user", deployment, model, tags, requests, '
                          "errors, rate_limited, server_errors, input_tokens, output_tokens, "
                          "cache_creation_input_tokens, cache_creation_5m_input_tokens, "
                          "cache_creation_1h_input_tokens, cache_read_input_tokens, cost_e10, unpriced, "
                          "latency_ms_sum) VALUES ('2026-11-30', 't', '', '', 'd', 'm', '', 3, 0, 0, 0, 30, 3, "
                          "0, 0, 0, 0, 123, 0, 1.5)"))
    upgrade(db_url)
    columns = {c["name"] for c in inspect(engine).get_columns("usage_daily")}
    assert {"count_tokens_requests", "count_tokens_input_tokens"} <= columns
    assert daily(db_url) == {"requests": 3, "input_tokens": 30, "cost_e10": 123, "unpriced": 0,
                             "count_tokens_requests": 0, "count_tokens_input_tokens": 0}


def test_revision_0003_moves_old_count_tokens_rows_out_of_billed_totals(db_url):
    """Rows the older writer ledgered as billed input: the upgrade makes them free and counts them apart."""
    from sqlalchemy import insert, text

    from telemetry.ledger.db import ensure_partitions
    from telemetry.ledger.models import UsageRecordRow
    from telemetry.ledger.store import RECORD_COLUMNS, tags_key

    upgrade(db_url, "0002")
    engine = get_engine(db_url)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    if db_url.startswith("postgresql"):
        ensure_partitions(engine, {now.date()}, set())
    old_rows = [make_record(1, cost="0.3000120000", operation="count_tokens", input_tokens=100_004, output_tokens=0,
                            model=None, deployment="claude-opus-4-1"),
                make_record(2, cost="0.0001", deployment="claude-opus-4-1")]
    for r in old_rows:
        r.created_at = now
    key = {"day": now.date(), "team": "search", "project": "ranker", "user": "", "tags": tags_key({"k": "v"}),
           "deployment": "claude-opus-4-1"}
    with engine.begin() as conn:
        conn.execute(insert(UsageRecordRow.__table__),
                     [{c: getattr(r, "record_id" if c == "id" else c) for c in RECORD_COLUMNS
                       if c not in ("billed_cost_usd", "discount")}  # added by revision 0004
                      for r in old_rows])
        sql = ('INSERT INTO usage_daily (day, team, project, "user", deployment, model, tags, requests, errors, '
               "rate_limited, server_errors, input_tokens, output_tokens, cache_creation_input_tokens, "
               "cache_creation_5m_input_tokens, cache_creation_1h_input_tokens, cache_read_input_tokens, cost_e10, "
               "unpriced, latency_ms_sum) VALUES (:day, :team, :project, :user, :deployment, :model, :tags, 1, 0, "
               "0, 0, :inp, :out, 0, 0, 0, 0, :cost, 0, 12.5)")
        conn.execute(text(sql), {**key, "model": "", "inp": 100_004, "out": 0, "cost": 3_000_120_000})
        conn.execute(text(sql), {**key, "model": old_rows[1].model, "inp": old_rows[1].input_tokens, "out": 5,
                                 "cost": 1_000_000})
    upgrade(db_url)
    got = {r.request_id: r for r in rows(db_url)}
    assert got["req_1"].cost_usd == 0 and got["req_2"].cost_usd == Decimal("0.0001")
    assert daily(db_url) == {"requests": 1, "input_tokens": old_rows[1].input_tokens, "cost_e10": 1_000_000,
                             "unpriced": 0, "count_tokens_requests": 1, "count_tokens_input_tokens": 100_004}
    assert (daily(db_url)["cost_e10"], daily(db_url)["unpriced"]) == row_sums(db_url)
