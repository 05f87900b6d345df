"""`foundry-telemetry reconcile`: Cost Management exports (FOCUS and cost details) against the ledger, per
day × resource, through the console script. Exports are generated here from the seeded records themselves."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from telemetry.finance import Discounts
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore

from .finance_util import runner
from .helpers import make_record
from .test_cli import cli


@pytest.fixture
def run(capsys):
    return runner(capsys)


FIXTURES = Path(__file__).parent / "fixtures"
SUB = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ai-rg/providers/"
FOCUS_HEADER = ["BilledCost", "BillingCurrency", "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart",
                "ConsumedQuantity", "ConsumedUnit", "EffectiveCost", "PublisherName", "ResourceId", "ResourceName",
                "Tags", "x_SkuMeterName"]
DETAILS_HEADER = ["SubscriptionName", "Date", "MeterCategory", "MeterName", "Quantity", "CostInBillingCurrency",
                  "ResourceId", "ResourceName", "PublisherName", "ChargeType", "BillingCurrencyCode"]
DAYS = [dt.date(2026, 11, 3), dt.date(2026, 11, 4), dt.date(2026, 11, 5)]


def _seed(url: str, resources: tuple[str, ...] = ("contoso-east", "contoso-west")) -> list:
    upgrade(url)
    discounts = Discounts(Decimal("0.12"))
    records = []
    for i in range(60):
        day = DAYS[i % 3]
        r = make_record(i, cost=f"0.{(i * 7919) % 10**10:010d}", resource=resources[i % len(resources)])
        r.created_at = dt.datetime.combine(day, dt.time(i % 24, 13), dt.UTC)
        r.billed_cost_usd = discounts.billed(r.cost_usd, r.resource)
        records.append(r)
    LedgerStore(get_engine(url)).insert(records)
    return records


def _hourly(records: list) -> dict[tuple[dt.datetime, str], Decimal]:
    """What Azure meters: billed USD per hour and resource."""
    out: dict[tuple[dt.datetime, str], Decimal] = {}
    for r in records:
        key = (r.created_at.replace(minute=0), r.resource)
        out[key] = out.get(key, Decimal(0)) + r.billed_cost_usd
    return out


def focus_export(path: Path, records: list, *, adjust=None, extra: list[dict] = ()) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, FOCUS_HEADER)
        w.writeheader()
        for (hour, resource), billed in sorted(_hourly(records).items()):
            if adjust:
                billed = adjust(hour.date(), resource, billed)
            w.writerow({"BilledCost": billed, "BillingCurrency": "USD", "ChargeCategory": "Usage",
                        "ChargePeriodStart": hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "ChargePeriodEnd": (hour + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "ConsumedQuantity": billed * 100, "ConsumedUnit": "1 CCU", "EffectiveCost": billed,
                        "PublisherName": "Anthropic, PBC",
                        "ResourceId": f"{SUB}Microsoft.CognitiveServices/accounts/{resource}",
                        "ResourceName": resource, "Tags": '{"a":"b,c"}', "x_SkuMeterName": "Claude Consumption Unit"})
        for row in extra:
            w.writerow(row)
    return path


def cost_details_export(path: Path, records: list, *, extra: list[dict] = ()) -> Path:
    daily: dict[tuple[dt.date, str], Decimal] = {}
    for (hour, resource), billed in _hourly(records).items():
        daily[(hour.date(), resource)] = daily.get((hour.date(), resource), Decimal(0)) + billed
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, DETAILS_HEADER)
        w.writeheader()
        for (day, resource), billed in sorted(daily.items()):
            w.writerow({"SubscriptionName": "Production", "Date": day.strftime("%m/%d/%Y"),
                        "MeterCategory": "Claude", "MeterName": "Claude Consumption Unit", "Quantity": billed * 100,
                        "CostInBillingCurrency": f"{billed:E}" if resource.endswith("west") else billed,
                        "ResourceId": f"{SUB}Microsoft.CognitiveServices/accounts/{resource}".upper(),
                        "ResourceName": resource, "PublisherName": "Anthropic", "ChargeType": "Usage",
                        "BillingCurrencyCode": "USD"})
        for row in extra:
            w.writerow(row)
    return path


OTHER_FOCUS = {"BilledCost": "99.5", "BillingCurrency": "USD", "ChargeCategory": "Usage",
               "ChargePeriodStart": "2026-11-04T00:00:00Z", "ChargePeriodEnd": "2026-11-05T00:00:00Z",
               "ConsumedQuantity": "24", "ConsumedUnit": "1 Hour", "EffectiveCost": "99.5",
               "PublisherName": "Microsoft", "ResourceId": f"{SUB}Microsoft.Compute/virtualMachines/contoso-east",
               "ResourceName": "contoso-east", "Tags": "", "x_SkuMeterName": "D4s v5"}


@pytest.fixture
def seeded(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    return url, _seed(url)


def test_focus_export_agrees_exactly(seeded, tmp_path):
    url, records = seeded
    export = focus_export(tmp_path / "focus.csv", records, extra=[OTHER_FOCUS])  # other publisher: ignored
    out = cli("reconcile", str(export), "--db", url, "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] and data["export"]["format"] == "focus" and data["export"]["ignored_rows"] == 1
    assert len(data["lines"]) == 6 and all(x["status"] == "ok" for x in data["lines"])
    total = sum(r.billed_cost_usd for r in records)
    assert Decimal(data["totals"]["billed_usd"]) == Decimal(data["totals"]["ledger_usd"]) == total
    line = data["lines"][0]
    assert Decimal(line["bill_ccus"]) == Decimal(line["ledger_ccus"]) == Decimal(line["ledger_usd"]) * 100
    assert "E" not in out.stdout.replace("EXPORT", "")  # plain notation only
    table = cli("reconcile", str(export), "--db", url)
    assert table.returncode == 0 and "agrees" in table.stdout and "contoso-east" in table.stdout
    export.write_text(export.read_text() + "2026-11-03,x\n")
    bad = cli("reconcile", str(export), "--db", url)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert f"line {export.read_text().count(chr(10))}: 2 fields" in bad.stderr, bad.stderr  # the last line


def test_cost_details_export_agrees_exactly(seeded, tmp_path, run):
    url, records = seeded
    other = {"SubscriptionName": "Production", "Date": "11/04/2026", "MeterCategory": "Virtual Machines",
             "MeterName": "D4s v5", "Quantity": "24", "CostInBillingCurrency": "3.06", "ResourceId": "/x/web-01",
             "ResourceName": "web-01", "PublisherName": "Microsoft", "ChargeType": "Usage",
             "BillingCurrencyCode": "USD"}
    export = cost_details_export(tmp_path / "details.csv", records, extra=[other])
    out = run("reconcile", str(export), "--db", url, "--format", "csv")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert {r["resource"] for r in rows} == {"contoso-east", "contoso-west"}  # ResourceId compared in any case
    assert all(Decimal(r["difference_usd"]) == 0 for r in rows)


def test_one_day_off_by_one_percent_fails_naming_day_and_resource(seeded, tmp_path, run):
    url, records = seeded

    def off(day, resource, billed):
        return billed * Decimal("1.01") if (day, resource) == (DAYS[1], "contoso-west") else billed

    export = focus_export(tmp_path / "focus.csv", records, adjust=off)
    out = run("reconcile", str(export), "--db", url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2026-11-04 contoso-west (differs)" in out.stdout
    data = json.loads(run("reconcile", str(export), "--db", url, "--format", "json").stdout)
    bad = [x for x in data["lines"] if x["status"] != "ok"]
    assert [(x["day"], x["resource"]) for x in bad] == [("2026-11-04", "contoso-west")]
    assert Decimal(bad[0]["percent"]) == Decimal("0.9901")  # of the bill: 1 / 1.01
    # a 1 % tolerance lets it through; the default 0.5 % does not
    assert run("reconcile", str(export), "--db", url, "--tolerance", "0.01").returncode == 0


def test_tolerance_is_inclusive_at_the_threshold(seeded, tmp_path, run):
    url, records = seeded
    total = sum(r.billed_cost_usd for r in records
                if r.created_at.date() == DAYS[0] and r.resource == "contoso-east")
    # that day's bill as one row of twice the ledger: |bill − ledger| is exactly 50 % of the bill
    bill = total * 2
    rows = [r for r in records if not (r.created_at.date() == DAYS[0] and r.resource == "contoso-east")]
    extra = [{**OTHER_FOCUS, "PublisherName": "Anthropic", "x_SkuMeterName": "Claude Consumption Unit",
              "ChargePeriodStart": "2026-11-03T00:00:00Z", "BilledCost": str(bill),
              "ResourceId": f"{SUB}Microsoft.CognitiveServices/accounts/contoso-east"}]
    export = focus_export(tmp_path / "f.csv", rows, extra=extra)
    assert run("reconcile", str(export), "--db", url, "--tolerance", "0.5").returncode == 0  # diff = 50 % of bill
    assert run("reconcile", str(export), "--db", url, "--tolerance", "0.4999999").returncode == 1


def test_resource_the_ledger_never_saw_and_days_missing_on_either_side(seeded, tmp_path, run):
    url, records = seeded
    unseen = {**OTHER_FOCUS, "PublisherName": "Anthropic, PBC", "x_SkuMeterName": "Claude Consumption Unit",
              "ResourceId": f"{SUB}Microsoft.CognitiveServices/accounts/shadow-it", "ResourceName": "shadow-it",
              "BilledCost": "4.2"}
    kept = [r for r in records if r.created_at.date() != DAYS[2] or r.resource != "contoso-east"]
    export = focus_export(tmp_path / "f.csv", kept, extra=[unseen])
    out = run("reconcile", str(export), "--db", url)
    assert out.returncode == 1
    assert "on the bill, not in the ledger: 2026-11-04 shadow-it" in out.stdout
    assert "in the ledger, not on the bill: 2026-11-05 contoso-east" in out.stdout
    data = json.loads(run("reconcile", str(export), "--db", url, "--format", "json").stdout)
    assert data["bill_only"] == ["2026-11-04 shadow-it"] and data["ledger_only"] == ["2026-11-05 contoso-east"]


def test_resource_map_for_gateways_and_custom_domains(tmp_path, run):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    records = _seed(url, ("llm.contoso.com", "contoso-west"))
    renamed = []
    for r in records:
        c = make_record(0, resource=r.resource.replace("llm.contoso.com", "contoso-east"))
        c.created_at, c.billed_cost_usd = r.created_at, r.billed_cost_usd
        renamed.append(c)
    export = focus_export(tmp_path / "f.csv", renamed)
    assert run("reconcile", str(export), "--db", url).returncode == 1
    mapping = tmp_path / "map.toml"
    mapping.write_text('[resources]\n"LLM.contoso.com" = "contoso-east"\n')
    out = run("reconcile", str(export), "--db", url, "--resource-map", str(mapping))
    assert out.returncode == 0, out.stdout


def test_publisher_and_meter_filters(seeded, tmp_path, run):
    url, records = seeded
    export = focus_export(tmp_path / "f.csv", records)
    text = export.read_text().replace("Anthropic, PBC", "Contoso Reseller").replace("Claude Consumption Unit", "CU")
    export.write_text(text)
    assert run("reconcile", str(export), "--db", url).returncode == 1  # nothing kept: every ledger day unbilled
    assert run("reconcile", str(export), "--db", url, "--publisher", "contoso reseller").returncode == 0
    assert run("reconcile", str(export), "--db", url, "--meter", "cu").returncode == 0


@pytest.mark.parametrize(("fmt", "basis"), [("focus", "cost"), ("details", "cost"), ("focus", "ccus")])
def test_hand_written_fixtures_shaped_like_real_exports(tmp_path, fmt, basis, run):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    upgrade(url)
    seed = [("2026-11-03T09:10:00", "contoso-east", "1.0345"), ("2026-11-03T17:40:00", "contoso-east", "0.2"),
            ("2026-11-03T11:00:00", "contoso-west", "0.5"), ("2026-11-04T02:00:00", "contoso-east", "0.21")]
    records = []
    for i, (when, resource, billed) in enumerate(seed):
        r = make_record(i, cost=str(Decimal(billed) / Decimal("0.88")), resource=resource)
        r.created_at = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
        r.billed_cost_usd = Decimal(billed)
        records.append(r)
    LedgerStore(get_engine(url)).insert(records)
    name = "focus_export.csv" if fmt == "focus" else "cost_details_export.csv"
    out = run("reconcile", str(FIXTURES / name), "--db", url, "--format", "json", "--basis", basis)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["export"]["claude_rows"] == 3 and data["export"]["ignored_rows"] == 1
    assert data["export"]["non_usage_rows"] == (1 if fmt == "focus" else 0)  # the tax line
    assert Decimal(data["totals"]["billed_usd"]) == Decimal("1.9445")


@pytest.mark.parametrize(("content", "message"), [
    ("", "line 1: the export is empty"),
    ("a,b,c\n1,2,3\n", "line 1: not a Cost Management export"),
    ("Date,CostInBillingCurrency,ResourceId,PublisherName\n11/03/2026,1.0,/x/r,Anthropic\n"
     "11/03/2026,one,/x/r,Anthropic\n", "line 3: cost 'one'"),
    ("Date,CostInBillingCurrency,ResourceId,PublisherName\n11/03/2026,1.0,/x/r,Anthropic\n2026-13-45,1,/x/r,Anthropic\n",
     "line 3: '2026-13-45' is not a date"),
    ("Date,CostInBillingCurrency,ResourceId,PublisherName\n11/03/2026,1.0,/x/r\n", "line 2: 3 fields"),
    ('Date,CostInBillingCurrency,ResourceId,PublisherName\n11/03/2026,1.0,"/x/r,Anthropic\n', "line 2"),
])
def test_malformed_export_is_one_line_naming_the_line(seeded, tmp_path, content, message, run):
    url, _ = seeded
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    out = run("reconcile", str(bad), "--db", url)
    assert out.returncode == 2, out.stdout
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


def test_bad_options_and_currency(seeded, tmp_path, run):
    url, records = seeded
    export = focus_export(tmp_path / "f.csv", records)
    for args, message in ((["--tolerance", "x"], "--tolerance"), (["--format", "xml"], "--format"),
                          (["--resource-map", str(tmp_path / "nope.toml")], "does not exist"),
                          (["--since", "yesterday"], "--since")):
        out = run("reconcile", str(export), "--db", url, *args)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    export.write_text(export.read_text().replace(",USD,", ",EUR,"))
    out = run("reconcile", str(export), "--db", url)
    assert out.returncode == 2 and "--basis ccus" in out.stderr
    assert run("reconcile", str(export), "--db", url, "--basis", "ccus").returncode == 0


def test_large_export_streams_with_progress(tmp_path):
    """Read line by line: progress is reported as the file is read, and the totals equal a direct sum."""
    from telemetry.finance.reconcile import read_export

    path = tmp_path / "big.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(FOCUS_HEADER)
        for i in range(45_000):
            w.writerow([f"0.{i % 97:02d}", "USD", "Usage", "", f"2026-11-{1 + i % 30:02d}T00:00:00Z", i % 97, "1 CCU",
                        "0", "Anthropic, PBC" if i % 5 else "Microsoft", f"{SUB}accounts/r{i % 3}", f"r{i % 3}", "",
                        "Claude Consumption Unit" if i % 5 else "D4s v5"])
    seen: list[int] = []
    totals = read_export(path, progress=seen.append)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == path.stat().st_size  # ASCII: chars = bytes
    assert totals.lines == 45_000 and totals.claude_rows == 36_000 and totals.ignored_rows == 9_000
    expected = sum(Decimal(f"0.{i % 97:02d}") for i in range(45_000) if i % 5)
    assert sum(totals.cost.values()) == expected
    assert len(totals.cost) == len({(i % 30, i % 3) for i in range(45_000) if i % 5})


def test_reconcile_and_budgets_on_both_backends(db_url, tmp_path, run):
    from telemetry.finance.budget import Budget, evaluate_budget

    records = _seed(db_url)
    export = focus_export(tmp_path / "f.csv", records)
    out = run("reconcile", str(export), "--db", db_url, "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert Decimal(json.loads(out.stdout)["totals"]["ledger_usd"]) == sum(r.billed_cost_usd for r in records)
    status = evaluate_budget(get_engine(db_url), Budget(Decimal(1), "resource", "contoso-west"),
                             dt.datetime(2026, 11, 6, tzinfo=dt.UTC))
    assert status.spent == sum(r.billed_cost_usd for r in records if r.resource == "contoso-west")
