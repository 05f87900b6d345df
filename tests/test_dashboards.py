"""Dashboards as code: generated JSON is current, references only real queries, and every
customDimensions key and metric name the KQL uses is one the instrumentation exports."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

DASH = Path(__file__).parent.parent / "dashboards"
build = runpy.run_path(str(DASH / "build.py"))
KQL = {p.stem: p.read_text() for p in (DASH / "kql").glob("*.kql")}
DIM = re.compile(r'customDimensions\["([^"]+)"\]')
METRIC = re.compile(r'name\s*==\s*"([^"]+)"')


def test_generated_files_are_current():
    for name, text in build["render"]().items():
        assert (DASH / name).read_text() == text, f"dashboards/{name} is stale: run python dashboards/build.py"


def test_json_parses_and_references_existing_queries():
    workbook = json.loads((DASH / "workbook.json").read_text())
    queries = [i["content"]["query"] for i in workbook["items"] if i["type"] == 3]
    assert len(queries) >= 6 and all(q.strip() in {k.strip() for k in KQL.values()} for q in queries)
    arm = json.loads((DASH / "workbook.arm.json").read_text())
    assert json.loads(arm["resources"][0]["properties"]["serializedData"]) == workbook
    alerts = json.loads((DASH / "alerts.json").read_text())
    rules = [r for r in alerts["resources"] if r["type"] == "Microsoft.Insights/scheduledQueryRules"]
    assert {r["name"].split("'")[-2] for r in rules} >= {"foundry-latency-p95", "foundry-error-rate"}
    for rule in rules:
        for criterion in rule["properties"]["criteria"]["allOf"]:
            assert criterion["query"].strip() in {k.strip() for k in KQL.values()}
            assert criterion["metricMeasureColumn"] in criterion["query"]
            for param in re.findall(r"parameters\('([^']+)'\)", criterion["threshold"]):
                assert param in alerts["parameters"]
    titles = " ".join(i["content"].get("title", "") for i in workbook["items"] if i["type"] == 3).lower()
    for want in ("cost by team", "tokens by deployment", "p95", "error", "429", "slowest"):
        assert want in titles


def test_kql_uses_only_exported_names(exported):
    server, _ = exported
    span_keys: set[str] = set()
    for env in server.of_type("RemoteDependencyData"):
        span_keys |= set(env["data"]["baseData"].get("properties", {}))
    metric_names: set[str] = set()
    metric_keys: set[str] = set()
    for env in server.of_type("MetricData"):
        for m in env["data"]["baseData"]["metrics"]:
            metric_names.add(m["name"])
        metric_keys |= set(env["data"]["baseData"].get("properties", {}))
    assert "foundry.operation_id" in span_keys and "gen_ai.client.token.usage" in metric_names
    for name, query in KQL.items():
        table = query.split("\n// ")[-1]
        keys = set(DIM.findall(query))
        if "customMetrics" in query:
            assert keys <= metric_keys, (name, keys - metric_keys)
            assert set(METRIC.findall(query)) <= metric_names, (name, set(METRIC.findall(query)) - metric_names)
        else:
            assert keys <= span_keys, (name, keys - span_keys)
        assert table


def test_consistency_check_catches_a_rename(exported):
    server, _ = exported
    span_keys = {k for env in server.of_type("RemoteDependencyData")
                 for k in env["data"]["baseData"].get("properties", {})}
    renamed = KQL["slowest_calls"].replace('"foundry.request_id"', '"foundry.requestId"')
    assert not set(DIM.findall(renamed)) <= span_keys


def _alert_rules() -> list[dict]:
    alerts = json.loads((DASH / "alerts.json").read_text())
    return [r for r in alerts["resources"] if r["type"] == "Microsoft.Insights/scheduledQueryRules"]


def test_azure_rules_cover_the_cli_rate_rules_on_a_ga_api():
    from telemetry.alerts import KINDS

    rules = _alert_rules()
    assert {r["apiVersion"] for r in rules} == {"2023-12-01"}  # GA: no -preview
    assert all(r["kind"] == "LogAlert" for r in rules)
    measures = {c["metricMeasureColumn"] for r in rules for c in r["properties"]["criteria"]["allOf"]}
    rate_kinds = {k for k in KINDS if k.endswith("_rate")}
    assert rate_kinds == {"error_rate", "server_error_rate", "rate_limit_rate", "auth_error_rate"}
    assert rate_kinds | {"p95_ms"} <= measures  # every CLI rate rule also runs Azure-side
    for column in rate_kinds:
        assert re.search(rf"\b{column} = ", KQL["alert_error_rate"]), column


LIST = re.compile(r'error_type\s+!?in\s+\(([^)]*)\)')


def _lists(query: str) -> list[set[str]]:
    return [set(re.findall(r'"([^"]+)"', m)) for m in LIST.findall(query)]


def test_kql_counts_caller_ended_apart_like_the_cli():
    from telemetry.record import CALLER_ENDED
    from telemetry.reports.stats import AUTH_ERRORS

    for name, query in KQL.items():
        if "countif(isnotempty(error_type)" in query or re.search(r"\berrors = countif", query):
            assert set(CALLER_ENDED) in _lists(query), f"{name} counts caller-ended attempts as errors"
    alert = KQL["alert_error_rate"]
    assert set(CALLER_ENDED) in _lists(alert) and set(AUTH_ERRORS) in _lists(alert)
    assert "not(by_caller)" in alert and "caller_ended = countif(by_caller)" in alert
    assert set(CALLER_ENDED) in _lists(KQL["caller_ended_by_deployment"])
    workbook = json.loads((DASH / "workbook.json").read_text())
    titles = [i["content"]["title"] for i in workbook["items"] if i["type"] == 3]
    assert any("closed by the caller" in t for t in titles)
