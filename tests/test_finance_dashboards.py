"""dashboards/budgets.json: the budgets as Azure resources parse, reference only parameters they declare and
queries that exist in dashboards/kql/, and notify on both spend and forecast."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASH = Path(__file__).parent.parent / "dashboards"
KQL = {p.stem: p.read_text().strip() for p in (DASH / "kql").glob("*.kql")}


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_budgets_template_parses_and_references_only_what_exists():
    arm = json.loads((DASH / "budgets.json").read_text())
    declared = set(arm["parameters"])
    used = {m for s in _strings(arm["resources"]) for m in re.findall(r"parameters\('([^']+)'\)", s)}
    assert used <= declared, used - declared
    by_type = {}
    for r in arm["resources"]:
        by_type.setdefault(r["type"], []).append(r)
    budget = by_type["Microsoft.Consumption/budgets"][0]["properties"]
    assert budget["timeGrain"] == "Monthly" and budget["category"] == "Cost"
    assert budget["filter"]["dimensions"]["name"] == "ResourceId"
    kinds = {n["thresholdType"] for n in budget["notifications"].values()}
    assert kinds == {"Actual", "Forecasted"}
    for n in budget["notifications"].values():
        assert n["operator"] == "GreaterThan" and re.fullmatch(r"\[parameters\('\w+'\)\]", n["threshold"])
    rules = by_type["Microsoft.Insights/scheduledQueryRules"]
    assert rules and all("copy" in r for r in rules)
    for rule in rules:
        assert rule["copy"]["count"] == "[length(parameters('teamBudgets'))]"
        for criterion in rule["properties"]["criteria"]["allOf"]:
            assert criterion["query"].strip() in KQL.values()
            assert criterion["metricMeasureColumn"] in criterion["query"]
            for dim in criterion["dimensions"]:
                assert re.search(rf"\bby {dim['name']}\b", criterion["query"])
            assert "copyIndex()" in criterion["threshold"]


def test_team_budget_query_reads_billed_cost_per_team():
    query = KQL["budget_team_forecast"]
    assert 'customDimensions["foundry.billed_cost_usd"]' in query and "forecast_usd" in query
    assert "dayofmonth(endofmonth(now()))" in query


def test_readme_documents_one_deployment_command():
    text = (DASH / "README.md").read_text()
    assert "az deployment group create" in text and "--template-file dashboards/budgets.json" in text
