"""Counters are observed from per-attribute-set totals (no SDK measurement per record): the exported points
must be the sums a per-record `add` would have given, cache kinds apart, token counts as integers."""

from __future__ import annotations

import json

import httpx2
from anthropic import AnthropicFoundry

from telemetry import Telemetry, usage_context

USAGE = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
         "cache_creation_input_tokens": 30,
         "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20}}


def _handler(request):  # type: ignore[no-untyped-def]
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "usage": USAGE}
    return httpx2.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def test_counters_sum_per_attribute_set(tmp_path, otel):
    tel = Telemetry(db_url=f"sqlite:///{tmp_path}/l.db", ledger=False, tracer_provider=otel.tracer_provider,
                    meter_provider=otel.meter_provider)
    try:
        client = tel.instrument(AnthropicFoundry(api_key="k", base_url="http://127.0.0.1:9/anthropic/",
                                                 http_client=httpx2.Client(transport=httpx2.MockTransport(_handler))))
        for team, calls in (("a", 3), ("b", 2)):
            with usage_context(team=team):
                for _ in range(calls):
                    client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[
                        {"role": "user", "content": "hi"}])
        assert tel.flush()
        one = tel.prices.cost(_record())
    finally:
        tel.shutdown()
    cache = {(p.attributes["foundry.team"], p.attributes["foundry.cache.kind"]): p.value
             for p in otel.points("foundry.client.cache_tokens")}
    assert cache == {("a", "read"): 300, ("a", "write_5m"): 30, ("a", "write_1h"): 60,
                     ("b", "read"): 200, ("b", "write_5m"): 20, ("b", "write_1h"): 40}
    assert all(isinstance(v, int) for v in cache.values())
    cost = {p.attributes["foundry.team"]: p.value for p in otel.points("foundry.client.cost")}
    assert cost == {"a": float(one * 3), "b": float(one * 2)}  # summed exactly, converted once
    assert {p.attributes["foundry.team"]: p.count for p in otel.points("gen_ai.client.operation.duration")} == {
        "a": 3, "b": 2}


def _record():  # type: ignore[no-untyped-def]
    import datetime as dt

    from telemetry.capture.parse import apply_usage
    from telemetry.record import UsageRecord

    r = UsageRecord(created_at=dt.datetime.now(dt.UTC), operation_id="o", attempt=0, deployment="claude-sonnet-4-5",
                    model="claude-sonnet-4-5", status_code=200)
    apply_usage(r, USAGE)
    return r
