"""The official TypeScript SDK (`@anthropic-ai/foundry-sdk`, run by Node) through the gateway: a client no one
here wrote. CI installs Node and the package (`.ci/run`, `npm ci` in tests/node) and sets
FOUNDRY_TELEMETRY_REQUIRE_NODE=1, so there a missing Node or package fails instead of skipping."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from telemetry.gateway import GatewayServer, parse_upstreams

from .conftest import API_KEY, rows

NODE_DIR = Path(__file__).parent / "node"
REQUIRE_NODE = os.environ.get("FOUNDRY_TELEMETRY_REQUIRE_NODE") == "1"


def _node() -> str:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (NODE_DIR / "node_modules" / "@anthropic-ai" / "foundry-sdk").is_dir():
        problem = "@anthropic-ai/foundry-sdk is not installed (run `npm ci` in tests/node)"
    if problem:
        if REQUIRE_NODE:
            pytest.fail(f"Node is required here but {problem}")
        pytest.skip(problem)
    return node


def test_typescript_sdk_through_the_gateway(make_tel, emulator, sqlite_url, tmp_path, otel):
    node = _node()
    tel = make_tel()
    gw = GatewayServer(parse_upstreams([f"http://127.0.0.1:{emulator.port}"]), port=0, telemetry=tel).start()
    try:
        done = subprocess.run([node, "client.mjs"], cwd=NODE_DIR, capture_output=True, text=True, timeout=90,
                              env={**os.environ, "FOUNDRY_BASE_URL": gw.base_url, "FOUNDRY_API_KEY": API_KEY})
    finally:
        gw.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    calls = {line["call"]: line for line in map(json.loads, done.stdout.splitlines())}
    assert list(calls) == ["create", "stream", "messages.stream", "error", "retried"]
    got = rows(sqlite_url)
    assert len(got) == 6  # the 429 and its retry are two attempts
    by_id = {r.request_id: r for r in got}
    served = {s["request-id"]: s["apim-request-id"] for s in emulator.emulator.served}
    for name in ("create", "messages.stream"):
        row = by_id[calls[name]["request_id"]]
        assert (row.input_tokens, row.output_tokens) == (calls[name]["input"], calls[name]["output"])
        assert row.status_code == 200 and row.error_type is None and row.cost_usd > 0
    stream = by_id[calls["stream"]["request_id"]]
    assert stream.stream and stream.output_tokens == calls["stream"]["output"] and stream.ttft_ms is not None
    assert stream.apim_request_id == calls["stream"]["apim_request_id"]
    error = by_id[calls["error"]["request_id"]]
    assert (calls["error"]["status"], calls["error"]["type"]) == (404, "not_found_error")
    assert (error.status_code, error.error_type, error.apim_request_id) == (
        404, "not_found_error", calls["error"]["apim_request_id"])
    retry = by_id[calls["retried"]["request_id"]]
    assert retry.attempt == 1 and retry.apim_request_id == calls["retried"]["apim_request_id"]
    (first,) = [r for r in got if r.operation_id == retry.operation_id and r is not retry]
    assert (first.status_code, first.error_type, first.attempt) == (429, "rate_limit_error", 0)
    assert all(served[r.request_id] == r.apim_request_id for r in got)
    assert {(r.team, r.project) for r in got} == {("node-team", "web")} and got[0].tags == {"lang": "ts"}
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert API_KEY.encode() not in stored
    assert API_KEY not in repr([dict(s.attributes) for s in otel.finished()])
