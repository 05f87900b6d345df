"""Long responses are scanned as they pass, never held whole: through the gateway and through the SDK path's
transport (one capture state machine for both), memory stays bounded while a 9 MB stream or a 6 MB JSON body
goes by, and the record is the one a parse of the whole body gives."""

from __future__ import annotations

import dataclasses
import gzip
import json
import tracemalloc
import zlib

import httpx

from telemetry.capture.parse import build_record
from telemetry.capture.scan import HOLD_BYTES, JSON_CAP
from telemetry.context import Attribution
from telemetry.gateway import GatewayServer, parse_upstreams

from .conftest import rows
from .gateway_helpers import AppServer, big_app, big_json, big_sse

DELTAS = 20_000  # ~9 MB of SSE (each delta's arrival time is kept: 8 bytes, and a gap in the record)
JSON_TEXT = 6 * 1024 * 1024
BOUND = 3 * 1024 * 1024  # what the whole test process may allocate on top while one such response passes
STREAM = {"model": "claude-sonnet-4-5", "max_tokens": DELTAS, "messages": [], "stream": True}
CREATE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": []}


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _call(client: httpx.Client, url: str, body: dict, expect: int) -> None:
    with client.stream("POST", url, json=body, headers={"api-key": "k"}) as r:
        got = sum(len(chunk) for chunk in r.iter_raw())
    assert r.status_code == 200 and got == expect


def test_long_stream_and_big_json_in_bounded_memory_on_both_paths(make_tel, sqlite_url):
    parts, body = big_sse(DELTAS, text="lorem ipsum dolor sit amet, " * 12), big_json(JSON_TEXT)
    sse_len = sum(map(len, parts))
    assert sse_len > 8_000_000 and len(body) > JSON_CAP * 5
    tel = make_tel()
    peaks = {}
    with AppServer(big_app(parts, body)) as up:
        gw = GatewayServer(parse_upstreams([f"http://127.0.0.1:{up.port}"]), port=0, telemetry=tel).start()
        try:
            with httpx.Client(timeout=60) as plain, tel.httpx_client(timeout=60) as instrumented:
                url = f"{gw.base_url}v1/messages"
                direct = f"http://127.0.0.1:{up.port}/anthropic/v1/messages"
                peaks["gateway sse"] = _peak(lambda: _call(plain, url, STREAM, sse_len))
                peaks["gateway json"] = _peak(lambda: _call(plain, url, CREATE, len(body)))
                peaks["sdk path sse"] = _peak(lambda: _call(instrumented, direct, STREAM, sse_len))
                peaks["sdk path json"] = _peak(lambda: _call(instrumented, direct, CREATE, len(body)))
        finally:
            gw.stop()
    assert all(peak < BOUND for peak in peaks.values()), peaks  # a body held whole would be 6–9 MB
    tel.flush()
    got = rows(sqlite_url)
    assert len(got) == 4
    for row in got[0::2]:  # the streams, through the gateway and through the transport: the same record
        assert (row.response_id, row.model, row.finish_reason, row.error_type) == (
            "msg_big", "claude-sonnet-4-5-20250929", "max_tokens", None)
        assert (row.input_tokens, row.output_tokens, row.cache_read_input_tokens) == (21, DELTAS, 5)
        assert row.stream and row.ttft_ms is not None and row.request_id == "req_big"
    for row in got[1::2]:  # the JSON bodies, scanned past JSON_CAP: usage found, the tool's `usage` not taken
        assert (row.response_id, row.finish_reason, row.error_type) == ("msg_bigjson", "end_turn", None)
        assert (row.input_tokens, row.output_tokens, row.cache_creation_input_tokens) == (33, 44, 2)
        assert row.cost_usd > 0


def _record(tel, chunks: list[bytes], headers: dict[str, str]):
    capture = tel.capturer.begin(url="https://r.services.ai.azure.com/anthropic/v1/messages", operation_id="op",
                                 attempt=0, attribution=Attribution(), raw_body=b'{"stream": true}')
    capture.on_response(200, httpx.Headers(headers), capture.request_url)
    most = 0
    for chunk in chunks:
        capture.on_chunk(chunk)
        most = max(most, capture.held)
    capture.done = True  # built here, not handed to the pipeline
    record = build_record(capture)
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    for timing in ("created_at", "latency_ms", "ttft_ms", "chunk_gaps_ms"):
        fields.pop(timing)
    return fields, len(record.chunk_gaps_ms), most


def test_records_do_not_depend_on_how_the_body_is_chunked_or_encoded(make_tel):
    tel = make_tel()
    whole = b"".join(big_sse(1500, per_send=1500))  # ~220 KB: scanned past HOLD_BYTES in most splits
    sse = {"content-type": "text/event-stream"}
    expected, gaps, _ = _record(tel, [whole], sse)
    assert expected["output_tokens"] == 1500 and gaps == 1499 and expected["error_type"] is None
    for size in (1, 7, 4096, 70_000):
        pieces = [whole[i:i + size] for i in range(0, len(whole), size)]
        got, got_gaps, most = _record(tel, pieces, sse)
        assert (got, got_gaps) == (expected, gaps), size
        assert most <= HOLD_BYTES + size
    crlf = whole.replace(b"\n", b"\r\n")
    assert _record(tel, [crlf[i:i + 999] for i in range(0, len(crlf), 999)], sse)[:2] == (expected, gaps)
    zipped = gzip.compress(whole)
    pieces = [zipped[i:i + 5000] for i in range(0, len(zipped), 5000)]
    assert _record(tel, pieces, {**sse, "content-encoding": "gzip"})[:2] == (expected, gaps)

    body = big_json(2 * JSON_CAP)
    plain = {"content-type": "application/json"}
    scanned, _, most = _record(tel, [body[i:i + 3333] for i in range(0, len(body), 3333)], plain)
    assert most <= HOLD_BYTES + 3333
    small = json.loads(body)
    small["content"] = [{"type": "text", "text": "short"}]
    parsed, _, _ = _record(tel, [json.dumps(small).encode()], plain)
    assert scanned == parsed  # all but the content, which the record does not keep
    deflated = zlib.compress(body)
    assert _record(tel, [deflated[i:i + 8192] for i in range(0, len(deflated), 8192)],
                   {**plain, "content-encoding": "deflate"})[0] == parsed


def test_a_slow_client_pauses_the_upstream_and_its_connection_is_reused(make_tel, sqlite_url):
    """Back-pressure: while a client does not read, the gateway stops reading the upstream (its buffers stay
    bounded, not the 9 MB the upstream has to send), and the connection goes back to the pool readable."""
    import socket
    import time

    parts = big_sse(DELTAS, text="lorem ipsum dolor sit amet, " * 12)
    tel = make_tel()
    body = json.dumps(STREAM).encode()
    request = (b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\napi-key: k\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
    with AppServer(big_app(parts, big_json(100))) as up:
        gw = GatewayServer(parse_upstreams([f"http://127.0.0.1:{up.port}"]), port=0, telemetry=tel,
                           max_connections=1).start()
        try:
            def slow() -> int:
                with socket.create_connection(("127.0.0.1", gw.port)) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                    s.sendall(request)
                    time.sleep(1.0)  # not reading: the kernel's buffers fill, then the gateway's
                    got, data = 0, b""
                    while not data.endswith(b"0\r\n\r\n"):
                        data = s.recv(65536)
                        assert data
                        got += len(data)
                    return got

            warm = httpx.post(f"{gw.base_url}v1/messages", json=CREATE, headers={"api-key": "k"}, timeout=10)
            assert warm.status_code == 200
            tel.flush()  # the ledger's first batch (its imports, the schema) before the measurement
            peak = _peak(slow)
            # the one upstream connection (max_connections=1) serves the next call: it was not left paused
            t0 = time.monotonic()
            r = httpx.post(f"{gw.base_url}v1/messages", json=CREATE, headers={"api-key": "k"}, timeout=10)
            assert r.status_code == 200 and time.monotonic() - t0 < 5
        finally:
            gw.stop()
    assert peak < BOUND, peak
    tel.flush()
    _, stream_row, json_row = rows(sqlite_url)
    assert (stream_row.output_tokens, stream_row.error_type) == (DELTAS, None) and json_row.output_tokens == 44
