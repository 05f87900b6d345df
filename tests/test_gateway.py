"""The gateway (`foundry-telemetry proxy`) in front of the emulator, driven by real clients: the Python SDK,
curl and raw HTTP. Every request is one record through the same pipeline as the SDK path."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import pytest
from anthropic import AnthropicFoundry

from telemetry.emulator import EmulatorServer
from telemetry.gateway import GatewayServer, KeyMap, parse_upstreams

from .conftest import API_KEY, MSG, fresh_pg_url, rows
from .gateway_helpers import JSON_BODY, SSE_PARTS, AppServer, RecordingEmulator, fixed_app, make_certificate
from .helpers import daily_totals


@pytest.fixture(scope="module")
def recording() -> EmulatorServer:
    with EmulatorServer(emulator=RecordingEmulator()) as server:
        yield server


@pytest.fixture
def gateway(make_tel, recording):
    made = []

    def make(*specs: str, tel=None, **kw):
        tel = tel or make_tel()
        ups = parse_upstreams(specs or [f"http://127.0.0.1:{recording.port}"])
        gw = GatewayServer(ups, port=0, telemetry=tel, **kw).start()
        gw.tel = tel
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


def sdk(base_url: str, **kw) -> AnthropicFoundry:
    return AnthropicFoundry(api_key=API_KEY, base_url=base_url, open_telemetry=False, **kw)


def test_python_sdk_calls_become_records_with_the_ids_the_client_saw(gateway, recording, sqlite_url, otel):
    gw = gateway()
    client = sdk(gw.base_url, default_headers={"x-foundry-team": "search", "x-foundry-project": "ranker",
                                               "x-foundry-user": "alice", "x-foundry-tags": "feature=sum, env=prod"})
    seen = []
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG)
    seen.append((msg._request_id, msg.usage.input_tokens, msg.usage.output_tokens))
    with client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSG, stream=True) as stream:
        for _ in stream:
            pass
        seen.append((stream.response.headers["request-id"], None, None))
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=16, messages=MSG) as helper:
        final = helper.get_final_message()
        seen.append((helper.response.headers["request-id"], final.usage.input_tokens, final.usage.output_tokens))
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=MSG)
    retried = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                                       extra_headers={"x-emulator-fault": "429;times=1"})
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="no-such-deployment", max_tokens=8, messages=MSG)
    gw.tel.flush()
    got = rows(sqlite_url)
    assert len(got) == 7  # create, stream, helper, count_tokens, 429 + its retry, 404
    by_id = {r.request_id: r for r in got}
    for rid, inp, out in seen:
        row = by_id[rid]
        assert row.status_code == 200 and row.error_type is None
        assert (row.team, row.project, row.user) == ("search", "ranker", "alice")
        assert row.tags == {"feature": "sum", "env": "prod"}
        if inp is not None:
            assert (row.input_tokens, row.output_tokens) == (inp, out) and row.cost_usd > 0
    assert [r.stream for r in got[:3]] == [False, True, True] and got[1].ttft_ms is not None
    assert got[3].operation == "count_tokens" and got[3].input_tokens == counted.input_tokens
    first, second = got[4], got[5]
    assert (first.status_code, first.error_type, first.attempt) == (429, "rate_limit_error", 0)
    assert (second.status_code, second.attempt) == (200, 1) and second.operation_id == first.operation_id
    assert second.request_id == retried.headers["request-id"]
    assert second.apim_request_id == retried.headers["apim-request-id"]
    assert len({r.operation_id for r in got}) == 6
    nf = got[6]
    assert (nf.status_code, nf.error_type) == (404, "not_found_error")
    assert nf.request_id == err.value.request_id
    assert nf.apim_request_id == err.value.response.headers["apim-request-id"]
    # served ids match the rows: the client, the ledger and the upstream agree
    served = {s["request-id"]: s["apim-request-id"] for s in recording.emulator.served}
    assert all(served[r.request_id] == r.apim_request_id for r in got)
    # attribution headers stripped before forwarding; the key forwarded
    for headers in recording.emulator.seen_headers[-7:]:
        assert not any(k.startswith("x-foundry-") for k in headers)
        assert headers["x-api-key"] == API_KEY and headers["host"] == f"127.0.0.1:{recording.port}"
    spans = otel.ours()
    assert len(spans) == 7 and {s.attributes["foundry.team"] for s in spans} == {"search"}
    assert {s.attributes["foundry.request_id"] for s in spans} == {r.request_id for r in got}


def test_multiple_upstreams_by_prefix_and_unknown_name(gateway, emulator, recording, sqlite_url):
    gw = gateway(f"http://127.0.0.1:{recording.port}", f"west=http://localhost:{emulator.port}/anthropic/")
    sdk(gw.base_url).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)
    west = sdk(f"http://127.0.0.1:{gw.port}/r/west/anthropic/").messages.create(
        model="claude-haiku-4-5", max_tokens=8, messages=MSG)
    assert west._request_id == emulator.emulator.served[-1]["request-id"]
    r = httpx.post(f"http://127.0.0.1:{gw.port}/r/nope/anthropic/v1/messages", json={})
    assert r.status_code == 404 and "no upstream named 'nope'" in r.json()["error"]["message"]
    gw.tel.flush()
    got = rows(sqlite_url)
    assert [r.resource for r in got] == ["127.0.0.1", "localhost"]
    health = httpx.get(f"http://127.0.0.1:{gw.port}/healthz").json()
    assert health["upstreams"]["default"]["state"] == "ok" and health["upstreams"]["west"]["requests"] == 1


def _curl(*args: str) -> tuple[list[str], bytes]:
    out = subprocess.run(["curl", "-sS", "-D", "-", "--no-buffer", *args], capture_output=True, check=True,
                         timeout=30).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    return head.decode().split("\r\n"), body


def _normalized(lines: list[str], body: bytes) -> tuple[list[str], bytes]:
    drop = ("request-id:", "apim-request-id:", "date:", "server:")
    keep = [line.lower() for line in lines if not line.lower().startswith(drop)]
    return keep, re.sub(rb"msg_[0-9a-f]{24}", b"msg_X", body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("stream", [False, True])
def test_curl_bytes_match_a_direct_call_and_ids_are_in_the_ledger(gateway, recording, sqlite_url, stream):
    gw = gateway()
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 40, "messages": MSG, "stream": stream})
    args = ["-H", f"api-key: {API_KEY}", "-H", "content-type: application/json", "-d", body]
    direct = _curl(f"http://127.0.0.1:{recording.port}/anthropic/v1/messages", *args)
    proxied = _curl(f"{gw.base_url}v1/messages", "-H", "x-foundry-team: curlers", *args)
    assert _normalized(*proxied) == _normalized(*direct)
    ids = dict(line.lower().split(": ", 1) for line in proxied[0][1:])
    gw.tel.flush()
    (row,) = rows(sqlite_url)
    assert (row.request_id, row.apim_request_id) == (ids["request-id"], ids["apim-request-id"])
    assert row.team == "curlers" and row.stream is stream and row.output_tokens > 0 and row.error_type is None


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_bytes_and_headers_pass_through_exactly(make_tel, sqlite_url, tmp_path, monkeypatch, scheme):
    """Byte for byte as a direct call; over an HTTPS upstream too (Foundry's), with a self-signed certificate
    trusted through SSL_CERT_FILE, as an operator adds a corporate CA (the gateway's TLS context verifies)."""
    tls = make_certificate(tmp_path) if scheme == "https" else None
    if tls:
        monkeypatch.setenv("SSL_CERT_FILE", tls[0])
    host = "localhost" if tls else "127.0.0.1"
    tel = make_tel()
    with AppServer(fixed_app, tls=tls) as up:
        gw = GatewayServer(parse_upstreams([f"{scheme}://{host}:{up.port}"]), port=0, telemetry=tel).start()
        try:
            for stream in (False, True):
                got = []
                for base in (f"{scheme}://{host}:{up.port}/anthropic/", gw.base_url):
                    with httpx.stream("POST", base + "v1/messages", headers={"accept-encoding": "gzip"},
                                      verify=tls[0] if tls else True,
                                      json={"model": "claude-sonnet-4-5", "messages": [], "stream": stream}) as r:
                        got.append((r.status_code, r.headers.raw, b"".join(r.iter_raw())))
                assert got[0] == got[1]
            assert got[1][2] == b"".join(SSE_PARTS)
        finally:
            gw.stop()
    tel.flush()
    json_row, sse_row = rows(sqlite_url)
    assert (json_row.input_tokens, json_row.output_tokens, json_row.request_id) == (11, 4, "req_fixed")
    assert (sse_row.input_tokens, sse_row.output_tokens, sse_row.error_type) == (7, 3, None)
    assert JSON_BODY[:2] == b"\x1f\x8b"  # the gzip'd body went through undecoded, and was parsed


def test_keys_never_reach_db_spans_or_logs(gateway, sqlite_url, tmp_path, otel, caplog):
    caplog.set_level(logging.DEBUG)
    gw = gateway()
    sdk(gw.base_url).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    token = "bearer-SECRET-token-" + "x" * 20
    for headers in ({"authorization": f"Bearer {token}"}, {"api-key": API_KEY, "x-emulator-fault": "500"}):
        httpx.post(f"{gw.base_url}v1/messages", headers=headers,
                   json={"model": "claude-haiku-4-5", "max_tokens": 8, "messages": MSG, "stream": True})
    gw.tel.flush()
    assert len(rows(sqlite_url)) == 3
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    span_text = repr([dict(s.attributes) for s in otel.finished()])
    # the gateway's own logs (this process also holds the client, whose debug logs show its own key)
    logs = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records
                     if r.name.startswith(("telemetry", "uvicorn")) or r.threadName == "foundry-telemetry-gateway")
    for secret in (API_KEY, token):
        assert secret.encode() not in stored and secret not in span_text and secret not in logs
        assert hashlib.sha256(secret.encode()).hexdigest() not in span_text


def test_client_disconnect_mid_stream_closes_upstream_and_keeps_one_record(gateway, sqlite_url):
    gw = gateway()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": MSG, "stream": True}
    t0 = time.monotonic()
    with httpx.stream("POST", f"{gw.base_url}v1/messages", json=body,
                      headers={"api-key": API_KEY, "x-emulator-fault": "slow;delay_ms=3000"}) as r:
        first = next(r.iter_raw())
        assert first.startswith(b"event: message_start")
    # the client is gone; the gateway must notice now, not when the upstream's 3 s delay ends
    deadline = time.monotonic() + 10
    while gw.status.client_disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    gw.tel.flush()
    (row,) = rows(sqlite_url)
    assert (row.status_code, row.error_type, row.stream) == (200, "client_closed", True)
    assert row.input_tokens > 0 and row.latency_ms < 2500 and time.monotonic() - t0 < 2.5
    assert httpx.get(f"http://127.0.0.1:{gw.port}/healthz").json()["in_flight"] == 1  # the health check itself


def test_upstream_errors_pass_through_as_sent(gateway, recording, sqlite_url):
    gw = gateway()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": MSG}
    for fault in ("529", "500", "403"):
        direct = httpx.post(f"http://127.0.0.1:{recording.port}/anthropic/v1/messages", json=body,
                            headers={"api-key": "k", "x-emulator-fault": fault})
        proxied = httpx.post(f"{gw.base_url}v1/messages", json=body, headers={"api-key": "k",
                                                                             "x-emulator-fault": fault})
        assert proxied.status_code == direct.status_code and proxied.json() == direct.json()
    # a stream the upstream breaks off mid-way reaches the client broken off, and is recorded as such
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
            "POST", f"{gw.base_url}v1/messages", json={**body, "stream": True, "max_tokens": 64},
            headers={"api-key": "k", "x-emulator-fault": "drop"}) as r:
        for _ in r.iter_raw():
            pass
    gw.tel.flush()
    got = rows(sqlite_url)
    assert [(r.status_code, r.error_type) for r in got] == [
        (529, "overloaded_error"), (500, "api_error"), (403, "permission_error"), (200, "connection_error")]
    assert gw.tel.health.snapshot().get("gateway_upstream_aborted") == 1


def test_unreachable_upstream_is_a_502_and_a_record(gateway, sqlite_url):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = gateway(f"http://127.0.0.1:{port}")
    with pytest.raises(anthropic.InternalServerError) as err:
        sdk(gw.base_url, max_retries=1).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    assert err.value.status_code == 502 and "unreachable" in str(err.value)
    gw.tel.flush()
    got = rows(sqlite_url)
    assert [(r.status_code, r.error_type, r.attempt) for r in got] == [(None, "connection_error", 0),
                                                                       (None, "connection_error", 1)]
    assert got[0].operation_id == got[1].operation_id
    health = httpx.get(f"http://127.0.0.1:{gw.port}/healthz").json()
    assert health["status"] == "degraded" and health["upstreams"]["default"]["state"] == "failing"


def test_other_paths_pass_through_untouched_and_unrecorded(gateway, recording, sqlite_url):
    gw = gateway()
    for path in ("v1/models", "v1/messages/batches?limit=2"):
        direct = httpx.get(f"http://127.0.0.1:{recording.port}/anthropic/{path}")
        proxied = httpx.get(f"{gw.base_url}{path}")
        assert (proxied.status_code, proxied.json()["error"]) == (direct.status_code, direct.json()["error"])
    gw.tel.flush()
    assert gw.tel.processed == 0


def test_key_map_attribution_and_require_attribution(gateway, recording, sqlite_url, tmp_path):
    fp = hashlib.sha256(API_KEY.encode()).hexdigest()
    key_map = tmp_path / "keys.toml"
    key_map.write_text(f'[keys.{fp}]\nteam = "payments"\nproject = "fraud"\ntags = {{ cc = "42" }}\n')
    gw = gateway(key_map=KeyMap.load(key_map), require_attribution=True)
    sdk(gw.base_url).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    # headers fill what the key map leaves open; the key map wins where it speaks
    sdk(gw.base_url, default_headers={"x-foundry-team": "other", "x-foundry-user": "bob"}).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    served_before = len(recording.emulator.served)
    unknown = AnthropicFoundry(api_key="some-other-key", base_url=gw.base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as err:
        unknown.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    assert "no attribution" in err.value.message and "x-foundry-team" in err.value.message
    assert len(recording.emulator.served) == served_before  # never forwarded
    unknown.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                            extra_headers={"x-foundry-project": "adhoc"})
    gw.tel.flush()
    got = rows(sqlite_url)
    assert [(r.team, r.project, r.user, r.tags) for r in got] == [
        ("payments", "fraud", None, {"cc": "42"}), ("payments", "fraud", "bob", {"cc": "42"}),
        (None, "adhoc", None, {})]
    assert httpx.get(f"http://127.0.0.1:{gw.port}/healthz").json()["rejected_unattributed"] == 1


def test_bad_key_map_is_one_line(tmp_path):
    from telemetry.gateway import GatewayError

    bad = tmp_path / "k.toml"
    bad.write_text('[keys.nothex]\nteam = "x"\n')
    with pytest.raises(GatewayError, match="not a SHA-256"):
        KeyMap.load(bad)
    bad.write_text("team = [")
    with pytest.raises(GatewayError, match="not valid TOML"):
        KeyMap.load(bad)


@pytest.mark.postgres
def test_200_concurrent_streams_through_two_replicas_share_one_pg_ledger(make_tel, recording, tmp_path):
    url = fresh_pg_url()
    ups = parse_upstreams([f"http://127.0.0.1:{recording.port}"])
    from telemetry.ledger.db import ensure_schema

    ensure_schema(url)  # as `foundry-telemetry db upgrade` does once before the replicas start
    tels = [make_tel(db_url=url, spool_dir=str(tmp_path / f"spool{i}")) for i in range(2)]
    gws = [GatewayServer(ups, port=0, telemetry=t, max_connections=64).start() for t in tels]
    body = {"model": "claude-haiku-4-5", "max_tokens": 24, "messages": MSG, "stream": True}

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, bytes]:
        async with client.stream("POST", f"{gws[i % 2].base_url}v1/messages", json=body,
                                 headers={"api-key": API_KEY, "x-foundry-team": f"t{i % 4}"}) as r:
            data = b"".join([c async for c in r.aiter_raw()])
            return r.headers["request-id"], data

    async def run() -> list[tuple[str, bytes]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    try:
        results = asyncio.run(run())
    finally:
        for gw in gws:
            gw.stop()
    assert all(data.rstrip().endswith(b'{"type":"message_stop"}') for _, data in results)
    got = rows(url)
    assert len(got) == 200 and {r.request_id for r in got} == {rid for rid, _ in results}
    assert all(r.error_type is None and r.output_tokens > 0 for r in got)
    assert daily_totals(url)["requests"] == 200


def test_cli_proxy_drains_streams_on_sigterm_and_flushes(emulator, tmp_path):
    db = tmp_path / "cli.db"
    exe = Path(sys.executable).with_name("foundry-telemetry")
    proc = subprocess.Popen([str(exe), "proxy", "--upstream", f"http://127.0.0.1:{emulator.port}",
                             "--listen", "127.0.0.1:0", "--db", f"sqlite:///{db}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "400"})
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/anthropic/", line).group(1))
        body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": MSG, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/anthropic/v1/messages", json=body,
                          headers={"api-key": API_KEY, "x-emulator-fault": "slow;delay_ms=700"}) as r:
            chunks = r.iter_raw()
            first = next(chunks)
            proc.send_signal(signal.SIGTERM)  # mid-stream: the stream still completes
            rest = b"".join(chunks)
        assert (first + rest).rstrip().endswith(b'{"type":"message_stop"}')
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read()
    (row,) = rows(f"sqlite:///{db}")
    assert row.error_type is None and row.output_tokens > 0 and row.stream


def test_cli_proxy_bad_input_is_one_line(tmp_path):
    exe = Path(sys.executable).with_name("foundry-telemetry")
    for args in (["--upstream", "a=http://x", "--upstream", "a=http://y"],
                 ["--upstream", "http://x", "--key-map", str(tmp_path / "missing.toml")]):
        done = subprocess.run([str(exe), "proxy", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, args


def test_upstream_timeout_is_a_504_and_a_timeout_record(gateway, sqlite_url):
    gw = gateway(read_timeout=0.3)
    r = httpx.post(f"{gw.base_url}v1/messages", headers={"api-key": "k", "x-emulator-fault": "slow;delay_ms=2000"},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": MSG}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    gw.tel.flush()
    (row,) = rows(sqlite_url)
    assert (row.status_code, row.error_type) == (None, "timeout")


def test_upstream_connections_are_bounded(gateway, recording, sqlite_url):
    gw = gateway(max_connections=2)
    deadline = time.monotonic() + 5
    while recording.emulator.active and time.monotonic() < deadline:  # another test's slow call may linger
        time.sleep(0.05)
    recording.emulator.max_active = 0
    body = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": MSG}

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [client.post(f"{gw.base_url}v1/messages", json=body,
                                 headers={"api-key": "k", "x-emulator-fault": "slow;delay_ms=150"}) for _ in range(8)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(run()) == [200] * 8
    assert recording.emulator.max_active == 2  # the other six waited for a connection
    gw.tel.flush()
    assert len(rows(sqlite_url)) == 8


def test_client_trace_context_parents_the_span(gateway, otel):
    gw = gateway()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    httpx.post(f"{gw.base_url}v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 8, "messages": MSG},
               headers={"api-key": "k", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    gw.tel.flush()
    (span,) = otel.ours()
    assert f"{span.context.trace_id:032x}" == trace_id and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
