"""The chargeback report carries billed USD, discount and CCUs exactly (to 1e-10), from usage_hourly, through the
CLI in JSON, CSV and the table — and past retention, since purge keeps the hourly totals."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from telemetry.finance import billed_cost
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore
from telemetry.numbers import money

from .finance_util import runner
from .helpers import make_record

SCRIPT = str(Path(sys.executable).with_name("foundry-telemetry"))
BASE = dt.datetime(2026, 11, 3, 10, 0, tzinfo=dt.UTC)
WINDOW = ("--since", "2026-11-01", "--until", "2026-11-30")
DISCOUNTS = {"contoso-east": Decimal("0.12"), "contoso-west": Decimal(0)}
FORMULA_TEAM = "=HYPERLINK(\"x\")"


def _seed(url: str, discounts: dict[str, Decimal]) -> list:
    """Odd list costs, so the per-row half-even rounding of the billed cost matters; two days, three teams."""
    upgrade(url)
    records = []
    for i in range(24):
        resource = ("contoso-east", "contoso-west")[i % 2]
        cost = Decimal(f"0.{1234567891 + i * 7777777:010d}")
        r = make_record(i, cost=str(cost), resource=resource, team=("search", "ads", FORMULA_TEAM)[i % 3],
                        user=f"user-{i % 4}", created_at=BASE + dt.timedelta(hours=i * 2),
                        billed_cost_usd=billed_cost(cost, discounts[resource]))
        records.append(r)
    LedgerStore(get_engine(url)).insert(records)
    return records


def _expected(records: list, key=lambda r: r.team) -> dict[str, tuple[Decimal, Decimal]]:
    out: dict[str, list[Decimal]] = {}
    for r in records:
        sums = out.setdefault(key(r), [Decimal(0), Decimal(0)])
        sums[0] += r.cost_usd
        sums[1] += r.billed_cost_usd
    return {k: (v[0], v[1]) for k, v in out.items()}


def _check(row: dict, list_usd: Decimal, billed: Decimal) -> None:
    assert Decimal(row["cost_usd"]) == list_usd
    assert Decimal(row["billed_usd"]) == billed
    assert Decimal(row["discount_usd"]) == list_usd - billed
    assert Decimal(row["ccus"]) == billed * 100 == billed / Decimal("0.01")
    assert not any("E" in str(row[k]) for k in ("cost_usd", "billed_usd", "discount_usd", "ccus"))


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_json_and_csv_have_exact_billed_discount_and_ccus_per_team(db_url, capsys):
    records = _seed(db_url, DISCOUNTS)
    cli = runner(capsys)
    expected = _expected(records)
    assert any(lst != billed for lst, billed in expected.values())  # the 12 % discount shows
    assert any(r.billed_cost_usd != r.cost_usd * Decimal("0.88") for r in records if r.resource == "contoso-east")

    out = cli("report", "--db", db_url, *WINDOW, "--by", "team", "--format", "json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert {r["team"] for r in body["rows"]} == set(expected)
    for row in body["rows"]:
        _check(row, *expected[row["team"]])
    _check(body["total"], sum(r.cost_usd for r in records), sum(r.billed_cost_usd for r in records))

    out = cli("report", "--db", db_url, *WINDOW, "--by", "team", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0])[-3:] == ["billed_usd", "discount_usd", "ccus"]
    for row in rows[:-1]:
        team = row["team"][1:] if row["team"].startswith("'=") else row["team"]
        _check(row, *expected[team])
    assert "'" + FORMULA_TEAM in {r["team"] for r in rows}  # formula neutralised, still
    _check(rows[-1], sum(r.cost_usd for r in records), sum(r.billed_cost_usd for r in records))


def test_day_model_and_month_keys_are_exact_and_survive_purge(sqlite_url, capsys):
    records = _seed(sqlite_url, DISCOUNTS)
    cli = runner(capsys)
    by_day = _expected(records, key=lambda r: r.created_at.date().isoformat())
    assert len(by_day) == 3

    def day_rows() -> dict:
        out = cli("report", "--db", sqlite_url, *WINDOW, "--by", "day,team", "--format", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    before = day_rows()
    per_day: dict[str, list[Decimal]] = {}
    for row in before["rows"]:
        assert row["billed_usd"] is not None
        per_day.setdefault(row["day"], []).append(Decimal(row["billed_usd"]))
    assert {d: sum(v) for d, v in per_day.items()} == {d: b for d, (_, b) in by_day.items()}

    assert cli("purge", "--db", sqlite_url, "--older-than-days", "1").returncode == 0
    assert day_rows()["rows"] == before["rows"]  # usage_hourly and usage_daily outlive the rows

    out = cli("report", "--db", sqlite_url, *WINDOW, "--by", "month,model", "--format", "json")
    total = json.loads(out.stdout)["total"]
    _check(json.loads(out.stdout)["rows"][0], sum(r.cost_usd for r in records), sum(r.billed_cost_usd for r in records))
    assert total["billed_usd"] == json.loads(out.stdout)["rows"][0]["billed_usd"]


def test_user_key_with_a_discount_is_left_empty_with_a_note(sqlite_url, capsys):
    records = _seed(sqlite_url, DISCOUNTS)
    cli = runner(capsys)
    out = cli("report", "--db", sqlite_url, *WINDOW, "--by", "user", "--format", "json")
    body = json.loads(out.stdout)
    assert all(r["billed_usd"] is None and r["ccus"] is None and r["discount_usd"] is None for r in body["rows"])
    assert any("per user are left empty" in n for n in body["notes"])
    _check(body["total"], sum(r.cost_usd for r in records), sum(r.billed_cost_usd for r in records))
    out = cli("report", "--db", sqlite_url, *WINDOW, "--by", "user", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert all(r["billed_usd"] == "" and r["ccus"] == "" for r in rows[:-1]) and rows[-1]["billed_usd"] != ""


def test_no_discount_ledger_bills_at_list_and_keeps_the_table(sqlite_url, capsys):
    records = _seed(sqlite_url, {"contoso-east": Decimal(0), "contoso-west": Decimal(0)})
    cli = runner(capsys)
    for by in ("team", "user,tag:k"):
        body = json.loads(cli("report", "--db", sqlite_url, *WINDOW, "--by", by, "--format", "json").stdout)
        for row in [*body["rows"], body["total"]]:
            _check(row, Decimal(row["cost_usd"]), Decimal(row["cost_usd"]))
            assert row["discount_usd"] == "0"
        assert Decimal(body["total"]["cost_usd"]) == sum(r.cost_usd for r in records)
        assert not any("left empty" in n for n in body["notes"])
    out = _table(sqlite_url, 120)
    assert "billed USD" not in out and "CCUs" not in out and "cache rd" in out


def _table(url: str, width: int) -> str:
    env = {**os.environ, "COLUMNS": str(width)}
    out = subprocess.run([SCRIPT, "report", "--db", url, *WINDOW, "--by", "team"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= width and "…" not in out.stdout
    return out.stdout


def test_table_shows_billed_discount_and_ccus_at_120_columns(sqlite_url):
    records = _seed(sqlite_url, DISCOUNTS)
    out = _table(sqlite_url, 120)
    billed = sum(r.billed_cost_usd for r in records)
    listed = sum(r.cost_usd for r in records)
    assert "billed USD" in out and "discount" in out and "CCUs" in out, out
    words = out.split()
    assert money(billed) in words and money(listed - billed) in words and money(billed * 100, 4, "") in words
