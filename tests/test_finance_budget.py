"""Monthly budgets in `alerts check`: month-to-date billed spend and a forecast to month end, firing strictly
above their thresholds and quiet exactly at them, on seeded months."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from telemetry.alerts import RuleError, evaluate, load_rules
from telemetry.finance.budget import Budget, evaluate_budget
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore

from .finance_util import runner
from .helpers import make_record
from .test_cli import cli

NOW = "2026-11-16T00:00:00Z"  # 15 of November's 30 days gone
AT = dt.datetime(2026, 11, 16, tzinfo=dt.UTC)


@pytest.fixture
def run(capsys):
    return runner(capsys)


@pytest.fixture
def month(tmp_path) -> str:
    """November 2026: team search bills exactly $10/day on days 1-15 (list $11.3636363636 at 12 % off), team
    support $1/day, plus October traffic and a row after `NOW` that must not count."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    records = []
    for day in range(1, 16):
        for team, billed, resource in (("search", "10", "contoso-east"), ("support", "1", "contoso-west")):
            r = make_record(len(records), cost="11.3636363636" if billed == "10" else "1.1363636364",
                            team=team, resource=resource, project="ranker" if team == "search" else "helpdesk")
            r.created_at = dt.datetime(2026, 11, day, 7, 30, tzinfo=dt.UTC)
            r.billed_cost_usd = Decimal(billed)
            records.append(r)
    for day in range(20, 32):  # October: in the trailing window only when evaluating early in November
        r = make_record(len(records), team="search", resource="contoso-east", project="ranker")
        r.created_at, r.billed_cost_usd = dt.datetime(2026, 10, day, 9, tzinfo=dt.UTC), Decimal("100")
        records.append(r)
    late = make_record(len(records), team="search", resource="contoso-east")
    late.created_at, late.billed_cost_usd = AT + dt.timedelta(minutes=30), Decimal("1000")
    records.append(late)
    LedgerStore(get_engine(url)).insert(records)
    return url


def test_forecasts_are_exact_and_show_their_inputs(month):
    engine = get_engine(month)
    trailing = evaluate_budget(engine, Budget(Decimal(500), "team", "search"), AT)
    assert trailing.spent == Decimal(150)  # billed, not list; the row after NOW is not counted
    fc = trailing.forecast
    assert fc.method == "trailing" and fc.value == Decimal(300)  # 150 + $10/day × 15 days
    assert fc.inputs == {"month_to_date_usd": "150", "window_start": "2026-11-09T00:00:00+00:00",
                         "window_end": "2026-11-16T00:00:00+00:00", "window_spent_usd": "70",
                         "rate_usd_per_day": "10", "days_left": "15"}
    assert "trailing 7-day run rate" in fc.description
    linear = evaluate_budget(engine, Budget(Decimal(500), "team", "search", forecast="linear"), AT)
    assert linear.forecast.value == Decimal(300) and linear.forecast.inputs["hours_elapsed"] == "360"
    # on the 2nd, the trailing window reaches into October's $100 days: the forecast warns early
    early = evaluate_budget(engine, Budget(Decimal(500), "team", "search"), dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    assert early.spent == Decimal(10) and early.forecast.value > Decimal(500)
    assert early.forecast.inputs["window_start"].startswith("2026-10-26")
    other = evaluate_budget(engine, Budget(Decimal(20), "resource", "Contoso-West"), AT)
    assert other.spent == Decimal(15) and other.forecast.value == Decimal(30)
    everything = evaluate_budget(engine, Budget(Decimal(1000)), AT)
    assert everything.spent == Decimal(165)


@pytest.mark.parametrize(("amount", "alert_at", "fires"), [
    ("300", None, set()),                               # forecast $300 = budget: quiet
    ("299.9999999999", None, {"budget_forecast"}),     # 1e-10 below the forecast: fires
    ("300", "50", set()),                               # spent $150 = 50 % of $300: quiet
    ("299.9999999998", "50", {"budget_spent", "budget_forecast"}),  # 50 % = 149.9999999999 < 150: fires
    ("150", "100", {"budget_forecast"}),                # spent exactly 100 %: quiet on spend
    ("149.9999999999", "100", {"budget_spent", "budget_forecast"}),
])
def test_budget_rules_fire_strictly_above_their_thresholds(month, run, amount, alert_at, fires):
    args = ["alerts", "check", "--db", month, "--at", NOW, "--budget", f"team:search={amount}", "--format", "json"]
    if alert_at:
        args += ["--budget-alert-at", alert_at]
    out = run(*args)
    data = json.loads(out.stdout)
    assert {f["kind"] for f in data["firing"]} == fires, data["firing"]
    assert out.returncode == (1 if fires else 0)
    status = data["budgets"][0]
    assert status["spent_usd"] == "150" and status["forecast"]["value_usd"] == "300"


def test_rules_toml_with_budgets_per_team_project_resource(month, tmp_path, run):
    rules = tmp_path / "rules.toml"
    rules.write_text('''
[[budget]]
team = "search"
amount = "400"
alert_at_percent = [25, 50, 80]
forecast = "linear"

[[budget]]
project = "helpdesk"
amount = 30
forecast = false

[[budget]]
resource = "contoso-west"
amount = "29"
name = "west resource"
''')
    out = run("alerts", "check", "--db", month, "--at", NOW, "--rules", str(rules))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    firing = [x for x in lines if x.startswith("FIRING")]
    # search: $150 > 25 % of $400 ($100) but not 50 % ($200); forecast $300 < $400
    assert any("team search: spent $150 this month (37.50 % of $400), above 25 % = $100" in x for x in firing)
    assert not any("team search: forecast" in x for x in firing)
    assert not any("helpdesk" in x for x in firing)  # $15 of $30, no forecast rule
    assert any(x.startswith("FIRING west resource: resource contoso-west: forecast $30") for x in firing)
    # every budget shows its forecast and the inputs it came from
    assert any("linear: month-to-date × 720 h in the month / 360 h elapsed" in x and "hours_elapsed=360" in x
               for x in lines)
    assert any("trailing 7-day run rate" in x and "window_spent_usd=7" in x for x in lines)


def test_budgets_through_the_console_script(month):
    out = cli("alerts", "check", "--db", month, "--at", NOW, "--budget", "all=400", "--budget-alert-at", "40")
    assert out.returncode == 1, out.stderr
    assert "FIRING budget all Claude spend $400/month: all Claude spend: spent $165" in out.stdout
    quiet = cli("alerts", "check", "--db", month, "--at", NOW, "--budget", "all=400")
    assert quiet.returncode == 0 and "ok 1 rules quiet" in quiet.stdout and "forecast $330" in quiet.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "team=500"], "scope must be team"),
    (["--budget", "team:search"], "SCOPE:NAME=USD"),
    (["--budget", "team:search=-5"], "positive"),
    (["--budget", "team:search=5", "--budget-forecast", "magic"], "trailing, linear or false"),
    (["--budget", "team:search=5", "--at", "soon"], "--at"),
])
def test_bad_budget_flags_are_one_line(month, run, args, message):
    out = run("alerts", "check", "--db", month, *args)
    assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_bad_budget_tables(tmp_path):
    rules = tmp_path / "r.toml"
    for body, message in (('[[budget]]\nteam = "a"\nproject = "b"\namount = 1\n', "one of team"),
                          ('[[budget]]\nteam = "a"\n', "amount"),
                          ('[[budget]]\namount = 1\ncolour = "red"\n', "unknown key 'colour'"),
                          ('[[budget]]\namount = 1\nforecast_days = 0\n', "forecast_days")):
        rules.write_text(body)
        with pytest.raises(RuleError, match=message):
            load_rules(rules)


def test_evaluate_keeps_latency_rules_beside_budgets(month):
    evaluation = evaluate(get_engine(month), [], 15, AT, budgets=[Budget(Decimal(100), "team", "search")])
    assert [f.kind for f in evaluation.firing] == ["budget_spent", "budget_forecast"]
    assert evaluation.as_dict()["budgets"][0]["percent_spent"] == "150"
