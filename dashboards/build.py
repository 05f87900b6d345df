"""Generate the Azure Workbook and the scheduled-query alert rules from kql/*.kql.

The KQL files are the single source: the workbook and the ARM templates embed them verbatim, and
`tests/test_dashboards.py` fails when a committed JSON file differs from what this script writes.
Run: python dashboards/build.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KQL = HERE / "kql"
SCHEMA = "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json"
SCHEDULED_QUERY_API = "2023-12-01"  # the newest GA (stable) Microsoft.Insights/scheduledQueryRules version

# (file, title, visualization, chart settings)
PANELS = [
    ("cost_by_team", "Cost by team (USD/day)", "barchart"),
    ("tokens_by_deployment", "Tokens by deployment", "timechart"),
    ("latency_percentiles", "Latency p50 / p95 / p99 by deployment (ms)", "table"),
    ("errors_by_type", "Error rate by error type", "piechart"),
    ("caller_ended_by_deployment", "Streams closed by the caller (not errors)", "timechart"),
    ("rate_limit_rate", "429 rate by deployment", "timechart"),
    ("slowest_calls", "Slowest calls (with request-ids for support)", "table"),
]

ALERTS = [
    {
        "name": "foundry-latency-p95", "query": "alert_latency_p95", "measure": "p95_ms",
        "threshold": "p95ThresholdMs", "dimension": "deployment", "severity": 2,
        "description": "p95 latency of Claude calls on a Foundry deployment is above the threshold",
    },
    {
        "name": "foundry-error-rate", "query": "alert_error_rate", "measure": "error_rate",
        "threshold": "errorRateThreshold", "dimension": "deployment", "severity": 1,
        "description": "Share of failed Claude calls on a Foundry deployment is above the threshold "
                       "(streams the caller closed are not failures)",
    },
    {
        "name": "foundry-server-error-rate", "query": "alert_error_rate", "measure": "server_error_rate",
        "threshold": "serverErrorRateThreshold", "dimension": "deployment", "severity": 1,
        "description": "Share of 5xx answers on a Foundry deployment is above the threshold",
    },
    {
        "name": "foundry-auth-error-rate", "query": "alert_error_rate", "measure": "auth_error_rate",
        "threshold": "authErrorRateThreshold", "dimension": "deployment", "severity": 1,
        "description": "Share of 401/403 answers (key or role trouble) on a Foundry deployment is above the threshold",
    },
    {
        "name": "foundry-rate-limit-rate", "query": "alert_error_rate", "measure": "rate_limit_rate",
        "threshold": "rateLimitRateThreshold", "dimension": "deployment", "severity": 2,
        "description": "Share of 429 answers on a Foundry deployment is above the threshold",
    },
    {
        "name": "foundry-cost-per-window", "query": "cost_rate", "measure": "cost_usd",
        "threshold": "costPerWindowUsd", "dimension": None, "severity": 3,
        "description": "Spend on Claude in the evaluation window is above the budget",
    },
]


def kql(name: str) -> str:
    return (KQL / f"{name}.kql").read_text("utf-8").strip() + "\n"


def workbook() -> dict[str, Any]:
    items: list[dict[str, Any]] = [{
        "type": 1, "name": "title",
        "content": {"json": "## Claude on Foundry\nCost, tokens, latency and errors from foundry-telemetry. "
                            "Queries live in `dashboards/kql/`."},
    }, {
        "type": 9, "name": "parameters",
        "content": {"version": "KqlParameterItem/1.0", "parameters": [{
            "id": "time-range", "version": "KqlParameterItem/1.0", "name": "TimeRange", "type": 4,
            "isRequired": True, "value": {"durationMs": 86400000},
            "typeSettings": {"selectableValues": [{"durationMs": d} for d in
                                                  (3600000, 14400000, 86400000, 604800000, 2592000000)]},
        }], "style": "pills", "queryType": 0, "resourceType": "microsoft.insights/components"},
    }]
    for name, title, visualization in PANELS:
        items.append({
            "type": 3, "name": name,
            "content": {
                "version": "KqlItem/1.0", "query": kql(name), "size": 0, "title": title,
                "timeContextFromParameter": "TimeRange", "queryType": 0,
                "resourceType": "microsoft.insights/components", "visualization": visualization,
            },
        })
    return {"version": "Notebook/1.0", "items": items, "isLocked": False, "fallbackResourceIds": [],
            "$schema": SCHEMA}


def workbook_arm() -> dict[str, Any]:
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "appInsightsResourceId": {"type": "string", "metadata": {"description": "Application Insights id"}},
            "workbookName": {"type": "string", "defaultValue": "[newGuid()]"},
            "displayName": {"type": "string", "defaultValue": "Claude on Foundry"},
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
        },
        "resources": [{
            "type": "Microsoft.Insights/workbooks", "apiVersion": "2022-04-01",
            "name": "[parameters('workbookName')]", "location": "[parameters('location')]", "kind": "shared",
            "properties": {
                "displayName": "[parameters('displayName')]", "category": "workbook",
                "sourceId": "[parameters('appInsightsResourceId')]",
                "serializedData": json.dumps(workbook(), separators=(",", ":")),
            },
        }],
    }


def alerts_arm() -> dict[str, Any]:
    resources = []
    for alert in ALERTS:
        criterion: dict[str, Any] = {
            "query": kql(alert["query"]), "timeAggregation": "Maximum", "metricMeasureColumn": alert["measure"],
            "operator": "GreaterThan",
            # ARM has no decimal parameter type: fractional thresholds travel as strings, json() makes numbers
            "threshold": (f"[parameters('{alert['threshold']}')]" if alert["threshold"] == "p95ThresholdMs"
                          else f"[json(parameters('{alert['threshold']}'))]"),
            "failingPeriods": {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1},
        }
        if alert["dimension"]:
            criterion["dimensions"] = [{"name": alert["dimension"], "operator": "Include", "values": ["*"]}]
        resources.append({
            "type": "Microsoft.Insights/scheduledQueryRules", "apiVersion": SCHEDULED_QUERY_API,
            "name": f"[concat(parameters('namePrefix'), '{alert['name']}')]", "location": "[parameters('location')]",
            "kind": "LogAlert",
            "properties": {
                "description": alert["description"], "severity": alert["severity"], "enabled": True,
                "scopes": ["[parameters('appInsightsResourceId')]"],
                "evaluationFrequency": "[parameters('evaluationFrequency')]",
                "windowSize": "[parameters('windowSize')]",
                "criteria": {"allOf": [criterion]},
                "actions": {"actionGroups": "[if(empty(parameters('actionGroupId')), json('[]'), "
                                            "createArray(parameters('actionGroupId')))]"},
                "autoMitigate": True,
            },
        })
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "appInsightsResourceId": {"type": "string"},
            "actionGroupId": {"type": "string", "defaultValue": ""},
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
            "namePrefix": {"type": "string", "defaultValue": ""},
            "evaluationFrequency": {"type": "string", "defaultValue": "PT5M"},
            "windowSize": {"type": "string", "defaultValue": "PT15M"},
            "p95ThresholdMs": {"type": "int", "defaultValue": 10000},
            "errorRateThreshold": {"type": "string", "defaultValue": "0.05",
                                   "metadata": {"description": "fraction of failed attempts, 0-1"}},
            "serverErrorRateThreshold": {"type": "string", "defaultValue": "0.02",
                                         "metadata": {"description": "fraction of 5xx attempts, 0-1"}},
            "authErrorRateThreshold": {"type": "string", "defaultValue": "0.01",
                                       "metadata": {"description": "fraction of 401/403 attempts, 0-1"}},
            "rateLimitRateThreshold": {"type": "string", "defaultValue": "0.10"},
            "costPerWindowUsd": {"type": "string", "defaultValue": "25"},
        },
        "resources": resources,
    }


def budgets_arm() -> dict[str, Any]:
    """Cost Management budget on the Foundry resources (actual and forecast notifications, on the bill itself)
    plus one scheduled-query rule per team budget on the spans' billed cost (a 24-hour run-rate forecast)."""
    groups = "[if(empty(parameters('actionGroupId')), json('[]'), createArray(parameters('actionGroupId')))]"

    def notification(kind: str, percent: str) -> dict[str, Any]:
        return {"enabled": True, "operator": "GreaterThan", "threshold": f"[parameters('{percent}')]",
                "thresholdType": kind, "contactEmails": "[parameters('contactEmails')]", "contactGroups": groups,
                "locale": "en-us"}

    team = "parameters('teamBudgets')[copyIndex()]"
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "budgetName": {"type": "string", "defaultValue": "claude-on-foundry"},
            "monthlyBudgetUsd": {"type": "int", "metadata": {"description": "billed USD per month, all resources"}},
            "startDate": {"type": "string", "metadata": {"description": "first day of a month, YYYY-MM-01"}},
            "foundryResourceIds": {"type": "array", "metadata": {"description": "ids of the Foundry resources"}},
            "contactEmails": {"type": "array", "defaultValue": []},
            "actionGroupId": {"type": "string", "defaultValue": ""},
            "actualPercent": {"type": "int", "defaultValue": 80, "metadata": {"description": "spent above X %"}},
            "actualPercentFinal": {"type": "int", "defaultValue": 100},
            "forecastPercent": {"type": "int", "defaultValue": 100,
                                "metadata": {"description": "Cost Management forecast above X % of the budget"}},
            "appInsightsResourceId": {"type": "string", "defaultValue": ""},
            "teamBudgets": {"type": "array", "defaultValue": [],
                            "metadata": {"description": "[{\"team\": \"search\", \"monthlyUsd\": 500}, …]"}},
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
            "namePrefix": {"type": "string", "defaultValue": ""},
        },
        "resources": [{
            "type": "Microsoft.Consumption/budgets", "apiVersion": "2023-05-01",
            "name": "[parameters('budgetName')]",
            "properties": {
                "category": "Cost", "amount": "[parameters('monthlyBudgetUsd')]", "timeGrain": "Monthly",
                "timePeriod": {"startDate": "[parameters('startDate')]"},
                "filter": {"dimensions": {"name": "ResourceId", "operator": "In",
                                          "values": "[parameters('foundryResourceIds')]"}},
                "notifications": {
                    "actual-above-percent": notification("Actual", "actualPercent"),
                    "actual-above-final-percent": notification("Actual", "actualPercentFinal"),
                    "forecast-above-percent": notification("Forecasted", "forecastPercent"),
                },
            },
        }, {
            "type": "Microsoft.Insights/scheduledQueryRules", "apiVersion": SCHEDULED_QUERY_API,
            "condition": "[not(empty(parameters('appInsightsResourceId')))]",
            "copy": {"name": "teamBudgets", "count": "[length(parameters('teamBudgets'))]"},
            "name": f"[concat(parameters('namePrefix'), 'foundry-budget-', {team}.team)]",
            "location": "[parameters('location')]",
            "properties": {
                "description": f"[concat('Team ', {team}.team, ': the month at the last 24 h billed rate is above "
                               f"its budget of USD ', string({team}.monthlyUsd))]",
                "severity": 2, "enabled": True, "scopes": ["[parameters('appInsightsResourceId')]"],
                "evaluationFrequency": "PT1H", "windowSize": "P1D",
                "criteria": {"allOf": [{
                    "query": kql("budget_team_forecast"), "timeAggregation": "Maximum",
                    "metricMeasureColumn": "forecast_usd", "operator": "GreaterThan",
                    "threshold": f"[{team}.monthlyUsd]",
                    "dimensions": [{"name": "team", "operator": "Include", "values": [f"[{team}.team]"]}],
                    "failingPeriods": {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1},
                }]},
                "actions": {"actionGroups": groups},
                "autoMitigate": True,
            },
        }],
    }


OUTPUTS = {"workbook.json": workbook, "workbook.arm.json": workbook_arm, "alerts.json": alerts_arm,
           "budgets.json": budgets_arm}


def render() -> dict[str, str]:
    return {name: json.dumps(fn(), indent=2) + "\n" for name, fn in OUTPUTS.items()}


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote dashboards/{name}", file=sys.stderr)
