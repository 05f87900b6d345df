"""OTLP/HTTP export through the real exporters to a loopback receiver that decodes the protobuf payloads:
alone, beside Azure Monitor, per signal, with the newest GenAI names, and every way it can be set wrong."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from anthropic import AnthropicFoundry
from opentelemetry import metrics, trace

from telemetry import Telemetry, export
from telemetry.export import plan

from .azure_capture import CaptureServer
from .conftest import MSG, rows, sdk_kwargs
from .otlp_receiver import OtlpReceiver, run_driver

CLIENT = 3  # SPAN_KIND_CLIENT in OTLP
STATUS_ERROR = 2
LATEST = {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"}


@pytest.fixture(scope="module")
def otlp_alone(tmp_path_factory: pytest.TempPathFactory) -> tuple[OtlpReceiver, dict[str, Any]]:
    """OTEL_EXPORTER_OTLP_ENDPOINT only, default names."""
    with OtlpReceiver() as receiver:
        result = run_driver(tmp_path_factory.mktemp("otlp"), {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                                              "OTEL_SERVICE_NAME": "ranker-svc"})
    return receiver, result


@pytest.fixture(scope="module")
def otlp_beside_azure(tmp_path_factory: pytest.TempPathFactory) -> tuple[OtlpReceiver, CaptureServer, dict]:
    """Azure Monitor + OTLP metrics at a signal-specific URL + OTLP traces to a dead port, newest names."""
    with OtlpReceiver() as receiver, CaptureServer() as azure:
        result = run_driver(tmp_path_factory.mktemp("otlp-azure"), {
            **LATEST, "APPLICATIONINSIGHTS_CONNECTION_STRING": azure.connection_string(),
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{receiver.url}/custom/v1/metrics",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2",
        })
    return receiver, azure, result


def ours(spans: list[dict]) -> list[dict]:
    return [s for s in spans if s["scope"] == "foundry-telemetry"]


def total_input(usage: dict) -> int:
    return usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"]


def test_spans_arrive_with_gen_ai_and_foundry_attributes(otlp_alone):
    receiver, result = otlp_alone
    assert receiver.content_types == {"application/x-protobuf"}
    served = result["served"]
    assert len(served) == 5 and result["rows"] == 5 and result["health"] == {}
    assert "Traceback" not in result["stderr"] and "WARNING" not in result["stderr"], result["stderr"][-2000:]
    spans = ours(receiver.spans())
    assert len(spans) == len(served)  # one CLIENT span per attempt, the retried 429 included
    by_rid = {s["attributes"]["foundry.request_id"]: s for s in spans}
    for s in served:
        span = by_rid[s["request-id"]]
        a = span["attributes"]
        assert span["kind"] == CLIENT and span["name"] == f"chat {a['foundry.deployment']}"
        assert span["resource"]["service.name"] == "ranker-svc"
        assert a["foundry.apim_request_id"] == s["apim-request-id"] and a["foundry.status_code"] == s["status"]
        assert a["gen_ai.provider.name"] == "anthropic" and a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == a["foundry.deployment"] == s.get("deployment", "claude-haiku-4-5")
        assert a["foundry.team"] == "search" and a["foundry.project"] == "ranker"
        assert a["server.address"] == "127.0.0.1" and a["http.response.status_code"] == s["status"]
        if s["status"] == 200:
            u = s["usage"]
            assert a["gen_ai.usage.input_tokens"] == total_input(u)
            assert a["gen_ai.usage.output_tokens"] == u["output_tokens"]
            assert a["gen_ai.usage.cache_creation.input_tokens"] == u["cache_creation_input_tokens"]
            assert a["gen_ai.usage.cache_read.input_tokens"] == u["cache_read_input_tokens"]
            assert "gen_ai.usage.cache_write.input_tokens" not in a  # default names unless opted in
            assert a["gen_ai.response.model"] == s["model"] and "foundry.cost_usd" in a
        else:
            assert span["status"] == STATUS_ERROR and a["error.type"] == a["foundry.error_type"] == "rate_limit_error"
    first = by_rid[served[0]["request-id"]]["attributes"]
    assert first["gen_ai.usage.cache_creation.input_tokens"] > 0  # the cached system prompt was written


def test_spans_are_children_of_the_sdk_span(otlp_alone):
    receiver, _ = otlp_alone
    spans = receiver.spans()
    sdk = {s["span_id"]: s for s in spans if s["name"] == "anthropic.messages.create"}
    assert len(sdk) == 4  # four calls, one of them retried
    for span in ours(spans):
        assert span["parent_span_id"] in sdk and span["trace_id"] == sdk[span["parent_span_id"]]["trace_id"]


def test_metrics_arrive(otlp_alone):
    receiver, result = otlp_alone
    points = receiver.metric_points()
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "foundry.client.cost",
            "gen_ai.client.operation.time_to_first_chunk", "foundry.client.cache_tokens"} <= set(points)
    assert not any(name.startswith("gen_ai.client.inference.") for name in points)
    last = {}  # cumulative temporality: the last export holds the totals
    for p in points["gen_ai.client.token.usage"]:
        last[tuple(sorted(p["attributes"].items()))] = p
    by_type = {"input": 0, "output": 0}
    for p in last.values():
        assert p["kind"] == "histogram" and p["unit"] == "{token}"
        by_type[p["attributes"]["gen_ai.token.type"]] += int(p["sum"])
    ok = [s for s in result["served"] if s["status"] == 200]
    assert by_type == {"input": sum(total_input(s["usage"]) for s in ok),
                       "output": sum(s["usage"]["output_tokens"] for s in ok)}
    for name, series in points.items():
        for p in series:  # low cardinality: never request ids or users on metrics
            assert not {"foundry.request_id", "foundry.user", "foundry.operation_id"} & set(p["attributes"]), name


def test_no_secret_or_prompt_exported(otlp_alone):
    receiver, _ = otlp_alone
    blob = b"".join(r.SerializeToString() for r in [*receiver.traces, *receiver.metrics])
    assert blob and b"sk-test-SECRET" not in blob and b"PROMPT-TEXT-MARKER" not in blob


def test_beside_azure_monitor_per_signal_with_latest_names(otlp_beside_azure):
    receiver, azure, result = otlp_beside_azure
    assert result["rows"] == 5 and len(result["served"]) == 5  # the dead traces endpoint harmed nothing
    assert set(receiver.paths) == {"/custom/v1/metrics"}  # the signal-specific URL is used as is; no traces
    deps = [e["data"]["baseData"]["properties"] for e in azure.of_type("RemoteDependencyData")
            if "foundry.operation_id" in e["data"]["baseData"].get("properties", {})]
    assert len(deps) == 5  # Azure Monitor still gets every span
    written = [d for d in deps if int(d.get("gen_ai.usage.cache_write.input_tokens", 0)) > 0]
    assert written and not any("gen_ai.usage.cache_creation.input_tokens" in d for d in deps)

    points = receiver.metric_points()
    assert "gen_ai.client.token.usage" not in points
    ok = [s for s in result["served"] if s["status"] == 200]

    def total(name: str) -> int:
        last = {tuple(sorted(p["attributes"].items())): p for p in points[name]}
        return sum(int(p.get("as_int", p.get("sum", 0))) for p in last.values())

    for name, kind in (("gen_ai.client.inference.operation.input_tokens", "histogram"),
                       ("gen_ai.client.inference.usage.input_tokens", "sum"),
                       ("gen_ai.client.inference.usage.cache_write.input_tokens", "sum")):
        assert {p["kind"] for p in points[name]} == {kind}, name
    for p in points["gen_ai.client.inference.usage.input_tokens"]:
        assert p["attributes"]["gen_ai.token.modality"] == "unknown" and "gen_ai.token.type" not in p["attributes"]
    assert total("gen_ai.client.inference.operation.input_tokens") == sum(total_input(s["usage"]) for s in ok)
    assert total("gen_ai.client.inference.usage.input_tokens") == sum(total_input(s["usage"]) for s in ok)
    assert total("gen_ai.client.inference.usage.output_tokens") == sum(s["usage"]["output_tokens"] for s in ok)
    assert total("gen_ai.client.inference.usage.cache_write.input_tokens") == sum(
        s["usage"]["cache_creation_input_tokens"] for s in ok) > 0
    assert total("gen_ai.client.inference.usage.cache_read.input_tokens") == sum(
        s["usage"]["cache_read_input_tokens"] for s in ok) > 0
    azure_metrics = {m["name"] for e in azure.of_type("MetricData") for m in e["data"]["baseData"]["metrics"]}
    assert "gen_ai.client.inference.usage.input_tokens" in azure_metrics
    assert "gen_ai.client.token.usage" not in azure_metrics


def test_exit_hook_delivers_everything_without_flush(tmp_path):
    """An app that never calls flush()/shutdown(): our exit hook must run before the SDK providers' own
    (atexit is last-in-first-out), or the last spans would meet a shut-down exporter."""
    with OtlpReceiver() as receiver, CaptureServer() as azure:
        result = run_driver(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                       "APPLICATIONINSIGHTS_CONNECTION_STRING": azure.connection_string()},
                            "--exit-flushes")
    served = {s["request-id"] for s in result["served"]}
    assert {s["attributes"]["foundry.request_id"] for s in ours(receiver.spans())} == served
    assert {e["data"]["baseData"]["properties"]["foundry.request_id"] for e in azure.of_type("RemoteDependencyData")
            if "foundry.request_id" in e["data"]["baseData"].get("properties", {})} == served
    duration = receiver.metric_points()["gen_ai.client.operation.duration"]
    assert max(int(p["count"]) for p in duration) >= 1
    assert rows(f"sqlite:///{tmp_path / 'ledger.db'}") and len(rows(f"sqlite:///{tmp_path / 'ledger.db'}")) == 5


@pytest.mark.parametrize(("env", "endpoints", "problem"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
     {"traces": "http://c:4318/v1/traces", "metrics": "http://c:4318/v1/metrics"}, None),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/x"}, {"traces": "https://c/x"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m/v1/m"},
     {"traces": "http://c:4318/v1/traces", "metrics": "http://m/v1/m"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, {}, "is not an http(s) URL"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:99999"}, {}, "is not an http(s) URL"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, {}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, {}, None),
    ({}, {}, None),
])
def test_endpoint_resolution(env, endpoints, problem):
    p = plan(env)
    assert p.endpoints == endpoints
    assert (problem is None) == (not p.problems)
    if problem:
        assert all(problem in why for why in p.problems)


@pytest.fixture
def fresh_otlp(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """OTLP set-up not yet done in this process; the global providers stay untouched by these tests."""
    monkeypatch.setattr(export, "_done", False)
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"


def _call_through(tmp_path, emulator, otel, **kwargs) -> tuple[Telemetry, list]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    tel = Telemetry(db_url=url, spool_dir=str(tmp_path / "spool"), batch_interval_s=0.05, **kwargs)
    try:
        client = tel.instrument(AnthropicFoundry(**sdk_kwargs(emulator, otel)))
        client.messages.create(model="claude-sonnet-5", max_tokens=16, messages=MSG)
        tel.flush()
    finally:
        tel.shutdown()
    return tel, rows(url)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "telemetry"]


@pytest.mark.parametrize(("env", "says"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT='localhost:4318' is not"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://c/v1/traces"}, "OTLP traces export off"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "OTLP protocol 'grpc' is not supported"),
])
def test_bad_setting_is_one_warning_and_the_call_succeeds(fresh_otlp, tmp_path, emulator, otel, caplog, env, says):
    for key, value in env.items():
        fresh_otlp.setenv(key, value)
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        tel, landed = _call_through(tmp_path, emulator, otel)
    assert len(landed) == 1 and landed[0].status_code == 200
    warned = _warnings(caplog)
    assert len(warned) == 1 and says in warned[0] and "\n" not in warned[0]
    assert tel.health.snapshot() == {"otlp_config": 1}


def test_urls_in_warnings_lose_their_credentials():
    p = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://user:hunter2@c:21/p?token=abc"})
    (why,) = p.problems
    assert "hunter2" not in why and "token" not in why and "ftp://c:21/p" in why


def test_missing_extra_is_one_warning(fresh_otlp, tmp_path, emulator, otel, caplog):
    fresh_otlp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    fresh_otlp.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        _, landed = _call_through(tmp_path, emulator, otel)
        (tmp_path / "again").mkdir()
        _call_through(tmp_path / "again", emulator, otel)  # a second Telemetry: no second warning
    assert len(landed) == 1
    warned = _warnings(caplog)
    assert len(warned) == 1 and "foundry-telemetry[otlp]" in warned[0]


def test_callers_own_providers_win(fresh_otlp, tmp_path, emulator, otel, caplog):
    fresh_otlp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        _, landed = _call_through(tmp_path, emulator, otel, tracer_provider=otel.tracer_provider,
                                  meter_provider=otel.meter_provider)
    assert len(landed) == 1 and len(otel.ours()) == 1 and not _warnings(caplog)
    assert export._done is False  # not even looked at

