"""The real Azure Monitor exporters, pointed at a loopback capture server."""

from __future__ import annotations

import json

from .azure_capture import CaptureServer, run_driver


def ours(server: CaptureServer) -> list[dict]:
    return [e for e in server.of_type("RemoteDependencyData")
            if "foundry.operation_id" in e["data"]["baseData"].get("properties", {})]


def test_one_dependency_per_attempt_with_ids_and_tokens(exported):
    server, result = exported
    deps = ours(server)
    served = result["served"]
    assert len(deps) == len(served) == 4  # one retried call: 429 + 200
    by_rid = {d["data"]["baseData"]["properties"]["foundry.request_id"]: d for d in deps}
    for s in served:
        props = by_rid[s["request-id"]]["data"]["baseData"]["properties"]
        assert props["foundry.apim_request_id"] == s["apim-request-id"]
        if s["status"] == 200:
            assert int(props["gen_ai.usage.output_tokens"]) == s["usage"]["output_tokens"]
            assert int(props["gen_ai.usage.input_tokens"]) == s["usage"]["input_tokens"]
    statuses = sorted(d["data"]["baseData"]["properties"]["foundry.status_code"] for d in deps)
    assert statuses == ["200", "200", "200", "429"]
    limited = [d for d in deps if d["data"]["baseData"]["properties"]["foundry.status_code"] == "429"][0]
    assert limited["data"]["baseData"]["properties"]["foundry.error_type"] == "rate_limit_error"
    assert limited["data"]["baseData"]["success"] is False
    assert all("anthropic" in d["data"]["baseData"]["type"] for d in deps)  # from gen_ai.system, not "N/A"
    assert {d["data"]["baseData"]["properties"]["foundry.team"] for d in deps} == {"search"}


def test_dependencies_parented_under_sdk_span(exported):
    server, _ = exported
    all_deps = server.of_type("RemoteDependencyData")
    sdk = {d["data"]["baseData"]["id"]: d for d in all_deps
           if "foundry.operation_id" not in d["data"]["baseData"].get("properties", {})}
    assert len(sdk) == 3, [d["data"]["baseData"]["name"] for d in all_deps]
    for dep in ours(server):
        parent = dep["tags"]["ai.operation.parentId"]
        assert parent in sdk
        assert dep["tags"]["ai.operation.id"] == sdk[parent]["tags"]["ai.operation.id"]
    # no second span per attempt from an httpx auto-instrumentation
    assert len(all_deps) == len(ours(server)) + len(sdk)


def test_metrics_exported(exported):
    server, _ = exported
    names = {m["name"] for e in server.of_type("MetricData") for m in e["data"]["baseData"]["metrics"]}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "foundry.client.cost",
            "gen_ai.client.operation.time_to_first_chunk"} <= names


def test_no_secret_or_prompt_exported(exported):
    server, _ = exported
    blob = json.dumps(server.envelopes)
    assert "sk-test-SECRET" not in blob and "PROMPT-TEXT-MARKER" not in blob


def test_unreachable_ingestion_leaves_calls_unharmed(tmp_path):
    result = run_driver(tmp_path, "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                                  "IngestionEndpoint=http://127.0.0.1:9/")
    assert len(result["served"]) == 4 and result["events"] > 0
