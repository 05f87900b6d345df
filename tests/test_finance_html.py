"""The HTML report's finance view, rendered by the console script and checked in headless Chromium."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

from telemetry.finance import Discounts
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore

from .browser import Chromium
from .helpers import make_record
from .test_cli import XSS, cli
from .test_finance_reconcile import focus_export


@pytest.fixture
def ledger(tmp_path):
    """The last two days up to the last full hour: three teams (one named like an attack), 12 % off list, two
    resources. (The burn-down is as of the last full hour; a team busy in the last week has one, even on the 1st.)"""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(seconds=1)
    start = end - dt.timedelta(days=2)
    span = (end - start).total_seconds()
    discounts = Discounts(Decimal("0.12"))
    records = []
    for i in range(90):
        r = make_record(i, cost=f"0.{(i * 7919) % 10**8:08d}", team=["search", "support", XSS][i % 3],
                        resource=["contoso-east", "contoso-west"][i % 2])
        r.created_at = start + dt.timedelta(seconds=span * i / 90)
        r.billed_cost_usd = discounts.billed(r.cost_usd, r.resource)
        records.append(r)
    LedgerStore(get_engine(url)).insert(records)
    return url, records


def _section(dom: str, chart: str) -> str:
    start = dom.index(f'id="{chart}"')
    return dom[start:dom.index("</figure>", start)]


@pytest.mark.chromium
def test_finance_view_in_headless_chromium(ledger, tmp_path):
    chromium = Chromium(tmp_path)
    url, records = ledger
    rec = tmp_path / "rec.json"
    export = focus_export(tmp_path / "export.csv", records)
    assert cli("reconcile", str(export), "--db", url, "--format", "json", "-o", str(rec)).returncode == 0
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[[budget]]\nteam = "search"\namount = "0.5"\n')
    page = tmp_path / "r.html"
    out = cli("report", "--db", url, "--since", "7d", "--format", "html", "-o", str(page),
              "--budgets", str(budgets), "--reconciliation", str(rec))
    assert out.returncode == 0, out.stderr
    dom = chromium.dom(page)
    finance = dom[dom.index('<section id="finance">'):]
    listed = sum(r.cost_usd for r in records)
    billed = sum(r.billed_cost_usd for r in records)
    kpis = dict(re.findall(r'<span class="kpi">([^<]+)<b>([^<]+)</b>', finance))
    assert Decimal(kpis["List cost"].lstrip("$").replace(",", "")) == listed  # exact, every digit
    assert Decimal(kpis["Billed"].lstrip("$").replace(",", "")) == billed
    assert Decimal(kpis["Discount"].split()[0].lstrip("$").replace(",", "")) == listed - billed
    assert kpis["Discount"].endswith("(12.00 %)") and "E" not in kpis["Billed"]
    assert Decimal(kpis["CCUs ($0.01)"].replace(",", "")) == billed * 100
    assert _section(finance, "billed-vs-list").count('class="bar"') == 6  # list and billed for three teams
    burn = [_section(finance, f"burn-down-{i}") for i in range(3)]
    assert all('class="actual"' in b and 'class="forecast"' in b for b in burn)
    search = next(b for b in burn if "— search" in b)
    assert 'class="budget"' in search and "trailing 7-day run rate" in search and "window_spent_usd" in search
    assert sum('class="budget"' in b for b in burn) == 1  # only search has a budget
    assert _section(finance, "bill-vs-ledger").count('class="bar"') >= 2
    assert "&lt;script&gt;" in dom and "<script>alert" not in dom
    assert chromium.screenshot_colors(page, "1100,3000") > 20


def test_bad_reconciliation_or_budget_file_is_one_line(ledger, tmp_path):
    url, _ = ledger
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    for args, message in ((["--reconciliation", str(bad)], "not `reconcile --format json` output"),
                          (["--budgets", str(tmp_path / "none.toml")], "does not exist")):
        out = cli("report", "--db", url, "--format", "html", "-o", str(tmp_path / "r.html"), *args)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr
