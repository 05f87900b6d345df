"""The instrumented client against the emulator, through the public API."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from decimal import Decimal

import anthropic
import httpx
import pytest
from anthropic import AnthropicFoundry, AsyncAnthropicFoundry

from telemetry import Telemetry, usage_context

from .conftest import API_KEY, MSG, rows, sdk_kwargs


def served(emulator, n=1):
    return emulator.emulator.served[-n:]


def test_instrument_returns_same_class_and_leaves_original(tel, raw_client):
    client = tel.instrument(raw_client)
    assert type(client) is AnthropicFoundry
    assert client is not raw_client and raw_client.middleware == ()
    assert tel.instrument(client) is client  # idempotent


def test_sync_create_one_record_with_served_ids(client, tel, emulator, sqlite_url, otel):
    with usage_context(team="search", project="ranker", user="alice", tags={"feature": "summarize"}):
        msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG)
    tel.flush()
    (row,) = rows(sqlite_url)
    s = served(emulator)[0]
    assert row.request_id == s["request-id"] and row.apim_request_id == s["apim-request-id"]
    assert row.deployment == "claude-sonnet-4-5" and row.model == "claude-sonnet-4-5-20250929"
    assert (row.input_tokens, row.output_tokens) == (msg.usage.input_tokens, msg.usage.output_tokens)
    assert row.status_code == 200 and row.error_type is None and row.stream is False
    assert (row.team, row.project, row.user, row.tags) == ("search", "ranker", "alice", {"feature": "summarize"})
    assert row.operation == "chat" and row.attempt == 0 and row.latency_ms > 0 and row.ttft_ms is None
    expected = (Decimal(msg.usage.input_tokens) * 3 + Decimal(msg.usage.output_tokens) * 15) / 1_000_000
    assert row.cost_usd == expected
    (span,) = otel.ours()
    assert row.trace_id == f"{span.context.trace_id:032x}" and row.span_id == f"{span.context.span_id:016x}"


async def test_async_create(aclient, tel, emulator, sqlite_url):
    msg = await aclient.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSG)
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.request_id == served(emulator)[0]["request-id"]
    assert row.output_tokens == msg.usage.output_tokens and row.model == msg.model


def test_stream_true_usage_and_ttft(client, tel, emulator, sqlite_url):
    stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG, stream=True,
                                    extra_headers={"x-emulator-fault": "slow;delay_ms=80"})
    events = list(stream)
    tel.flush()
    (row,) = rows(sqlite_url)
    delta = [e for e in events if e.type == "message_delta"][0]
    assert row.stream is True and row.error_type is None
    assert row.output_tokens == delta.usage.output_tokens
    assert row.input_tokens == served(emulator)[0]["usage"]["input_tokens"]
    assert row.ttft_ms is not None and 80 <= row.ttft_ms <= row.latency_ms


def test_messages_stream_helper(client, tel, sqlite_url):
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MSG) as stream:
        final = stream.get_final_message()
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.output_tokens == final.usage.output_tokens and row.response_id == final.id
    assert row.finish_reason == final.stop_reason


async def test_async_stream_helper(aclient, tel, sqlite_url):
    async with aclient.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MSG) as stream:
        final = await stream.get_final_message()
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.output_tokens == final.usage.output_tokens and row.error_type is None


def test_stream_closed_early_keeps_partial_usage(client, tel, sqlite_url):
    stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=MSG, stream=True)
    for event in stream:
        if event.type == "content_block_delta":
            break
    stream.close()
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type == "client_closed" and row.input_tokens > 0 and row.status_code == 200


def test_stream_abandoned_is_finished_by_gc(client, tel, sqlite_url):
    stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=MSG, stream=True)
    next(iter(stream))
    del stream
    gc.collect()
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type == "client_closed" and row.input_tokens > 0


def test_stream_cut_without_message_stop(client, tel, sqlite_url):
    events = list(client.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=MSG, stream=True,
                                         extra_headers={"x-emulator-fault": "cut"}))
    assert events and events[-1].type != "message_stop"  # the SDK raises nothing
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type == "incomplete_stream" and row.input_tokens > 0


def test_stream_error_event(client, tel, sqlite_url):
    with pytest.raises(anthropic.APIStatusError):
        list(client.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=MSG, stream=True,
                                    extra_headers={"x-emulator-fault": "error-event"}))
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type == "overloaded_error" and row.status_code == 200 and row.input_tokens > 0


def test_stream_dropped_connection(client, tel, sqlite_url):
    with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises, we raise the same
        list(client.with_options(max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=200, messages=MSG, stream=True,
            extra_headers={"x-emulator-fault": "drop"}))
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type in ("connection_error", "incomplete_stream")


def test_429_retried_gives_two_records_one_operation(client, tel, emulator, sqlite_url, otel):
    client.messages.create(model="claude-sonnet-4-5", max_tokens=32, messages=MSG,
                           extra_headers={"x-emulator-fault": "429;times=1"})
    tel.flush()
    first, second = rows(sqlite_url)
    ids = [s["request-id"] for s in served(emulator, 1)]
    assert first.status_code == 429 and first.error_type == "rate_limit_error" and first.attempt == 0
    assert second.status_code == 200 and second.attempt == 1 and second.request_id == ids[0]
    assert first.operation_id == second.operation_id and first.request_id != second.request_id
    assert first.cost_usd == 0
    spans = otel.ours()
    sdk_span = [s for s in otel.finished() if s.name.startswith("anthropic.")][0]
    assert len(spans) == 2 and {s.parent.span_id for s in spans} == {sdk_span.context.span_id}


@pytest.mark.parametrize(("fault", "status", "error_type", "exc", "attempts"), [
    ("403", 403, "permission_error", anthropic.PermissionDeniedError, 1),
    ("500", 500, "api_error", anthropic.InternalServerError, 3),
    ("529", 529, "overloaded_error", anthropic.APIStatusError, 3),
    ("429", 429, "rate_limit_error", anthropic.RateLimitError, 3),
])
def test_error_classes(client, tel, sqlite_url, fault, status, error_type, exc, attempts):
    with pytest.raises(exc):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                               extra_headers={"x-emulator-fault": fault})
    tel.flush()
    got = rows(sqlite_url)
    assert len(got) == attempts and len({r.operation_id for r in got}) == 1
    assert all(r.status_code == status and r.error_type == error_type for r in got)
    assert sorted(r.attempt for r in got) == list(range(attempts))


def test_auth_and_not_found(tel, emulator, otel, sqlite_url):
    bad = tel.instrument(AnthropicFoundry(**sdk_kwargs(emulator, otel, api_key="")))
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    good = tel.instrument(AnthropicFoundry(**sdk_kwargs(emulator, otel)))
    with pytest.raises(anthropic.NotFoundError, match="Deployment not found"):
        good.messages.create(model="no-such-deployment", max_tokens=8, messages=MSG)
    tel.flush()
    auth, missing = rows(sqlite_url)
    assert (auth.status_code, auth.error_type) == (401, "authentication_error")
    assert (missing.status_code, missing.error_type) == (404, "not_found_error")


def test_connection_error_and_timeout(tel, otel, sqlite_url):
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url="http://127.0.0.1:9/anthropic/",
                                             max_retries=1))
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    tel.flush()
    got = rows(sqlite_url)
    assert [r.error_type for r in got] == ["connection_error", "connection_error"]
    assert [r.attempt for r in got] == [0, 1] and got[0].status_code is None


def test_timeout_classified(client, tel, sqlite_url):
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.05, max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
            extra_headers={"x-emulator-fault": "slow;delay_ms=400"})
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type == "timeout"


def test_malformed_response_same_behaviour(client, raw_client, tel, sqlite_url):
    def outcome(c):
        try:
            return c.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                     extra_headers={"x-emulator-fault": "malformed"})
        except Exception as exc:
            return type(exc)

    assert outcome(client) == outcome(raw_client)
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type == "malformed_response"


def test_count_tokens(client, tel, sqlite_url):
    result = client.messages.count_tokens(model="claude-sonnet-4-5", messages=MSG)
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.operation == "count_tokens" and row.input_tokens == result.input_tokens


def test_results_identical_with_and_without_instrumentation(client, raw_client):
    def strip(m):
        d = m.model_dump()
        d.pop("id")
        return d

    a = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG)
    b = raw_client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG)
    assert strip(a) == strip(b)
    ev_a = [e.type for e in client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MSG,
                                                   stream=True)]
    ev_b = [e.type for e in raw_client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MSG,
                                                       stream=True)]
    assert ev_a == ev_b
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    assert raw.headers["request-id"].startswith("req_")


def test_cache_tokens_recorded_apart(client, tel, sqlite_url, otel):
    system = [{"type": "text", "text": "You are a careful analyst. " * 200,
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    client.messages.create(model="claude-sonnet-4-5", max_tokens=16, system=system, messages=MSG)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=16, system=system, messages=MSG)
    tel.flush()
    write, read = rows(sqlite_url)
    assert write.cache_creation_1h_input_tokens == write.cache_creation_input_tokens > 1000
    assert read.cache_read_input_tokens == write.cache_creation_input_tokens and read.cache_creation_input_tokens == 0
    m = Decimal(1_000_000)
    assert write.cost_usd == (write.input_tokens * Decimal(3) + write.cache_creation_1h_input_tokens * Decimal(6)
                              + write.output_tokens * Decimal(15)) / m
    span = otel.ours()[1]
    assert span.attributes["gen_ai.usage.input_tokens"] == read.input_tokens + read.cache_read_input_tokens
    cache = {p.attributes["foundry.cache.kind"]: p.value for p in otel.points("foundry.client.cache_tokens")}
    assert cache == {"write_1h": write.cache_creation_1h_input_tokens, "read": read.cache_read_input_tokens}
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == read.cache_read_input_tokens


def test_usage_context_threads_and_tasks(client, aclient, tel, sqlite_url):
    def work(team):
        with usage_context(team=team):
            client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)

    with usage_context(project="shared", tags={"a": "1"}):
        with usage_context(team="outer", tags={"b": "2"}):
            threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        async def task(team):
            with usage_context(team=team):
                await aclient.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)

        async def main():
            await asyncio.gather(task("x"), task("y"))

        asyncio.run(main())
    tel.flush()
    got = rows(sqlite_url)
    assert sorted(r.team for r in got) == ["t0", "t1", "t2", "x", "y"]
    assert {r.project for r in got if r.team in ("x", "y")} == {"shared"}


def test_nested_context_merges_tags():
    from telemetry.context import current_attribution

    with usage_context(team="a", tags={"x": "1"}), usage_context(project="p", tags={"y": "2"}):
        attr = current_attribution()
    assert (attr.team, attr.project, dict(attr.tags)) == ("a", "p", {"x": "1", "y": "2"})


def test_raw_httpx_client(tel, emulator, sqlite_url):
    body = {"model": "batchy", "max_tokens": 16, "messages": MSG}
    with tel.httpx_client(base_url=emulator.base_url) as http:
        r = http.post("v1/messages", json=body, headers={"api-key": API_KEY, "anthropic-version": "2023-06-01"})
        http.get("v1/models", headers={"api-key": API_KEY})  # not captured
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.request_id == r.headers["request-id"] and row.deployment == "batchy"
    assert row.output_tokens == r.json()["usage"]["output_tokens"]


async def test_raw_async_httpx_stream(tel, emulator, sqlite_url):
    body = {"model": "batchy", "max_tokens": 16, "messages": MSG, "stream": True}
    async with (tel.async_httpx_client(base_url=emulator.base_url) as http,
                http.stream("POST", "v1/messages", json=body, headers={"x-api-key": API_KEY}) as r):
        text = "".join([chunk async for chunk in r.aiter_text()])
    tel.flush()
    (row,) = rows(sqlite_url)
    assert "message_stop" in text and row.stream and row.error_type is None and row.output_tokens > 0


def test_httpx2_client_in_sdk(tel, emulator, otel, sqlite_url):
    client = AnthropicFoundry(**sdk_kwargs(emulator, otel), http_client=tel.httpx2_client())
    client.messages.create(model="batchy", max_tokens=8, messages=MSG)
    tel.flush()
    assert len(rows(sqlite_url)) == 1


def test_fail_open_when_sinks_and_export_break(make_tel, emulator, otel, raw_client, caplog):
    class Broken:
        def write(self, record):
            raise RuntimeError("sink down")

        def flush(self, timeout=None):
            raise RuntimeError("flush down")

        def close(self, timeout=None):
            raise RuntimeError("close down")

    tel = make_tel(sinks=[Broken()], db_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    tel._otel.emit = lambda *a: (_ for _ in ()).throw(RuntimeError("exporter down"))  # noqa: SLF001
    client = tel.instrument(raw_client)
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        for _ in range(3):
            msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
            assert msg.content
        tel.flush(5)
    failures = tel.health.snapshot()
    assert failures["sink_Broken"] == 3
    assert sum(1 for r in caplog.records if "sink_Broken" in r.getMessage()) == 1  # logged once


def test_secrets_and_content_never_recorded(client, tel, sqlite_url, otel, caplog, tmp_path):
    with caplog.at_level(logging.DEBUG, logger="telemetry"):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=MSG)
        tel.flush()
    (row,) = rows(sqlite_url)
    dump = repr(row.__dict__) + repr([dict(s.attributes) for s in otel.finished()]) + caplog.text
    dump += (tmp_path / "ledger.db").read_bytes().decode("latin-1")
    assert API_KEY not in dump and "quarterly" not in dump
    assert row.prompt is None and row.completion is None


def test_content_captured_when_enabled(make_tel, raw_client, sqlite_url, otel):
    tel = make_tel(capture_content=True)
    msg = tel.instrument(raw_client).messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=MSG)
    tel.flush()
    (row,) = rows(sqlite_url)
    assert "quarterly" in row.prompt and row.completion == msg.content[0].text
    assert otel.ours()[0].attributes["foundry.completion"] == msg.content[0].text


def test_bearer_token_auth(tel, emulator, otel, sqlite_url):
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOi-secret-token"
    client = tel.instrument(AsyncAnthropicFoundry(base_url=emulator.base_url, azure_ad_token_provider=lambda: token,
                                                  open_telemetry={"tracer_provider": otel.tracer_provider}))
    asyncio.run(client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG))
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.status_code == 200
    assert token not in repr([dict(s.attributes) for s in otel.finished()])


def test_plain_anthropic_client_on_foundry_url(tel, emulator, otel, sqlite_url):
    client = tel.instrument(anthropic.Anthropic(api_key=API_KEY, base_url=emulator.base_url.rstrip("/")))
    client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.request_id and row.resource == "127.0.0.1"


def test_resource_from_foundry_host():
    from telemetry.capture.parse import resource_from_host

    assert resource_from_host("contoso-ai.services.ai.azure.com") == "contoso-ai"


def test_gzip_stream_is_decoded(tel, sqlite_url):
    import gzip

    sse = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"claude-haiku-4-5",'
           b'"usage":{"input_tokens":7,"output_tokens":1}}}\n\nevent: message_delta\ndata: {"type":"message_delta",'
           b'"delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}\n\nevent: message_stop\ndata: {}\n\n')

    def handler(request):
        return httpx.Response(200, stream=httpx.ByteStream(gzip.compress(sse)), headers={
            "content-encoding": "gzip", "content-type": "text/event-stream", "request-id": "req_gz"})

    with tel.httpx_client(transport=httpx.MockTransport(handler)) as http:
        http.post("https://r.services.ai.azure.com/anthropic/v1/messages",
                  json={"model": "claude-haiku-4-5", "stream": True, "messages": []}).read()
    tel.flush()
    (row,) = rows(sqlite_url)
    assert (row.input_tokens, row.output_tokens, row.resource, row.error_type) == (7, 5, "r", None)


def test_metrics_points(client, tel, otel):
    client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=MSG)
    list(client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG, stream=True))
    tel.flush()
    tokens = otel.points("gen_ai.client.token.usage")
    assert {p.attributes["gen_ai.token.type"] for p in tokens} == {"input", "output"}
    assert all("foundry.request_id" not in p.attributes for p in tokens)
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.count == 2
    assert otel.points("gen_ai.client.operation.time_to_first_chunk")[0].count == 1
    assert otel.points("gen_ai.client.operation.time_per_output_chunk")[0].count >= 1
    (cost,) = otel.points("foundry.client.cost")
    assert cost.value > 0


def test_span_attributes(client, tel, otel, emulator):
    with usage_context(team="search", project="ranker"):
        client.messages.create(model="my-claude", max_tokens=16, messages=MSG)
    tel.flush()
    (span,) = otel.ours()
    a = span.attributes
    s = served(emulator)[0]
    assert span.name == "chat my-claude" and span.kind.name == "CLIENT"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.system"] == "anthropic" and a["gen_ai.request.model"] == "my-claude"
    assert a["gen_ai.response.model"] == "claude-sonnet-4-5-20250929" and a["gen_ai.request.max_tokens"] == 16
    assert a["foundry.request_id"] == s["request-id"] and a["foundry.apim_request_id"] == s["apim-request-id"]
    assert a["http.response.status_code"] == 200 and a["foundry.status_code"] == 200
    assert a["server.address"] == "127.0.0.1" and a["foundry.team"] == "search" and a["foundry.project"] == "ranker"
    assert a["gen_ai.response.finish_reasons"] == ("end_turn",) or a["gen_ai.response.finish_reasons"] == (
        "max_tokens",)
    assert Decimal(a["foundry.cost_usd"]) > 0
    sdk = [s for s in otel.finished() if s.name.startswith("anthropic.")][0]
    assert span.parent.span_id == sdk.context.span_id and span.context.trace_id == sdk.context.trace_id


def test_error_span_status(client, tel, otel):
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                               extra_headers={"x-emulator-fault": "403"})
    tel.flush()
    (span,) = otel.ours()
    assert span.status.status_code.name == "ERROR" and span.attributes["error.type"] == "permission_error"
    (d,) = otel.points("gen_ai.client.operation.duration")
    assert d.attributes["error.type"] == "permission_error"


def test_records_do_not_depend_on_sampling(make_tel, emulator, sqlite_url):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    tp = TracerProvider(sampler=ALWAYS_OFF)
    tel = Telemetry(db_url=sqlite_url, tracer_provider=tp, batch_interval_s=0.05)
    try:
        client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url,
                                                 open_telemetry={"tracer_provider": tp}))
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
        tel.flush()
    finally:
        tel.shutdown()
    (row,) = rows(sqlite_url)
    assert row.output_tokens > 0 and row.cost_usd > 0


async def test_async_stream_task_cancelled(aclient, tel, sqlite_url):
    started = asyncio.Event()

    async def consume():
        stream = await aclient.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG, stream=True,
                                               extra_headers={"x-emulator-fault": "slow;delay_ms=3000"})
        async for _event in stream:
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)  # message_start arrived; now waiting on the slow first token
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.error_type == "cancelled" and row.input_tokens > 0 and row.output_tokens <= 1
