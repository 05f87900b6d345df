"""The fast paths of record building give exactly what the general paths give.

`build_record` reads the usual response the short way (a JSON body held whole parsed straight from its bytes,
SSE events classified by their first line, httpx's header entries read as stored, `loads` on the C scanner);
anything unusual takes the general way. Each test runs both ways on the same input and compares everything.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from typing import Any

import httpx
import httpx2
import pytest
from anthropic import AnthropicFoundry

from telemetry.capture import scan as scan_module
from telemetry.capture import streams
from telemetry.capture.parse import build_record, loads
from telemetry.capture.scan import SseScan
from telemetry.capture.state import AttemptCapture
from telemetry.context import Attribution

from .conftest import rows

URL = "https://r.services.ai.azure.com/anthropic/v1/messages"
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
           "content": [{"type": "text", "text": "hé"}], "stop_reason": "end_turn",
           "usage": {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 3,
                     "cache_creation_input_tokens": 5,
                     "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 3},
                     "server_tool_use": {"web_search_requests": 1}}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())


USUAL_SSE = b"".join([
    _event("message_start", {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}}),
    _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
    b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
    *[_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": w}}) for w in ("a", "b\n", "c")],
    _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                             "usage": {"output_tokens": 9}}),
    _event("message_stop", {"type": "message_stop"}),
])
ODD_SSE = [  # shapes the short way must hand to the general one
    USUAL_SSE.replace(b"\n", b"\r\n"),
    USUAL_SSE.replace(b"event: ", b"event:"),
    USUAL_SSE.replace(b"event: message_delta\ndata: ", b"event: message_delta\ndata: \ndata: "),
    USUAL_SSE.replace(b"event: content_block_start\n", b"event: content_block_start\nevent: message_delta\n"),
    USUAL_SSE.replace(b"event: message_stop\ndata: {\"type\": \"message_stop\"}", b"event: message_stop"),
    USUAL_SSE.replace(b"event: content_block_delta\n", b"data: {}\nevent: content_block_delta\n", 1),
    USUAL_SSE.replace(b"\n\nevent: content_block_delta", b"\n\n\nevent: content_block_delta", 1),
    b": comment\n\n" + USUAL_SSE + b"event: error\ndata: {\"type\": \"error\"}",  # no closing blank line
    b"event: content_block_delta\n\nevent: content_block_delta\ndata: x\n\n" + USUAL_SSE[:300],
    b"event: error\ndata: {\"error\": {\"type\": \"overloaded_error\", \"message\": \"busy\"}}\n\n",
    b"\n\n\n\n" + USUAL_SSE,
]


def _chunkings(body: bytes) -> list[list[bytes]]:
    events = [e + b"\n\n" for e in body.split(b"\n\n")[:-1]]
    rest = body[sum(map(len, events)):]
    out = [[body], events + ([rest] if rest else []), [body[i:i + 7] for i in range(0, len(body), 7)],
           [body[:1], body[1:-1], body[-1:]]]
    return [c for c in out if b"".join(c) == body]


def _general_sse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event the general way (`SseScan._block`), as before the short way existed."""
    monkeypatch.setattr(scan_module, "_USUAL_HEADS", {})
    monkeypatch.setattr(scan_module, "_USUAL_HEADS_TEXT", {})
    monkeypatch.setattr(scan_module, "_DELTA_LINE", b"\x00never")


def _scan(chunks: list[bytes], keep_text: bool, one_call: bool) -> tuple[Any, ...]:
    scan = SseScan(None, keep_text)
    timed = [(i * 1000, c) for i, c in enumerate(chunks)]
    if one_call:
        scan.feed_many(timed)
    else:
        for t, c in timed:
            scan.feed(t, c)
    scan.finish()
    return scan.events, list(scan.delta_times), scan.completed, scan.overflow, scan.size


@pytest.mark.parametrize("keep_text", [False, True])
def test_sse_short_way_gives_what_the_general_way_gives(monkeypatch, keep_text):
    cases = [(body, chunks) for body in [USUAL_SSE, *ODD_SSE] for chunks in _chunkings(body)]
    fast = [(_scan(chunks, keep_text, True), _scan(chunks, keep_text, False)) for _, chunks in cases]
    _general_sse(monkeypatch)
    for (body, chunks), (many, one_by_one) in zip(cases, fast, strict=True):
        general = _scan(chunks, keep_text, False)
        assert many == general == one_by_one, (body[:80], len(chunks))
    assert fast[0][0][1] == [0, 0, 0] and fast[0][0][2]  # the usual stream: three deltas, message_stop seen


JSON_LIKE = ["1", "[]", '{"a": 1}', ' {"a": 1}', '{"a": 1} ', '{"a": 1}\n', '{"a": 1}\x0b', '{"a": 1} x',
             '{"a": "\\ud800"}', '"\u00e9"', "{", "", " ", "nul", "NaN", "1e400", '{"a": 1}{"b": 2}',
             "[" * 100_000 + "]" * 100_000]


@pytest.mark.parametrize("text", JSON_LIKE, ids=range(len(JSON_LIKE)))
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"])
def test_loads_is_json_loads(text, encoding):
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        pytest.skip("not encodable")

    def outcome(fn):
        try:
            return "ok", fn(data)
        except (ValueError, RecursionError) as exc:
            return "error", type(exc)

    assert outcome(loads) == outcome(json.loads)


def _capture(chunks: list[bytes], headers: Any, status: int | None = 200, url: str = URL,
             closed_early: bool = False) -> AttemptCapture:
    capture = AttemptCapture(lambda c: None, operation_id="op", attempt=1, url=url, otel_context=None,
                             attribution=Attribution(team="t", tags={"k": "v"}),
                             body={"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": False})
    if status is not None:
        capture.on_response(status, headers, url)
    for chunk in chunks:
        capture.on_chunk(chunk)
    capture.end(closed_early=closed_early)
    return capture


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


BODIES = [json.dumps(MESSAGE).encode(), json.dumps(MESSAGE, indent=1).encode() + b"\n", b"", b"null", b"[1]",
          b"not json", b'{"error": {"type": "overloaded_error", "message": "busy"}}', b'{"input_tokens": 41}',
          "\ufeff{}".encode(), json.dumps(MESSAGE).encode("utf-16"), b'{"usage": {"input_tokens": -3, '
          b'"output_tokens": true, "cache_read_input_tokens": 2.5, "cache_creation": null}}']


@pytest.mark.parametrize("status", [200, 400, 529])
@pytest.mark.parametrize("url", [URL, URL + "/count_tokens"])
def test_json_short_way_gives_what_the_scanner_gives(status, url):
    for body in BODIES:
        for chunks in ([body], [body[:5], body[5:]], []):
            for closed_early in (False, True):
                got = []
                for extra in ({}, {"content-encoding": "identity"}):  # identity: through JsonScan
                    headers = httpx.Headers({"content-type": "application/json", "request-id": "req_1", **extra})
                    got.append(_fields(build_record(_capture(chunks, headers, status, url, closed_early))))
                for fields in got:
                    for timing in ("created_at", "latency_ms"):
                        fields.pop(timing)
                assert got[0] == got[1], (body[:40], len(chunks), closed_early)
    record = build_record(_capture([BODIES[0]], httpx.Headers({"content-type": "application/json"})))
    assert (record.input_tokens, record.output_tokens, record.cache_creation_1h_input_tokens,
            record.web_search_requests, record.response_id, record.error_type) == (12, 7, 3, 1, "msg_1", None)


@pytest.mark.parametrize("mod", [httpx, httpx2])
def test_headers_from_httpx_entries_as_from_raw_pairs(mod):
    class Other(mod.Headers):  # not httpx's own class: read the public way
        pass

    pairs = [("Request-Id", "req_1"), ("content-TYPE", "text/event-stream"), ("request-id", "req_2"),
             ("apim-request-id", "é".encode("latin-1")), ("x-other", "1")]
    names = ("request-id", "apim-request-id", "content-type", "content-encoding")
    for encoding in (None, "latin-1"):
        got = []
        for cls in (mod.Headers, Other):
            headers = cls([(k, v) for k, v in pairs], encoding=encoding)
            got.append(_capture([], headers).headers(*names))
        assert got[0] == got[1]
        assert got[0]["request-id"] == "req_1, req_2" and "content-encoding" not in got[0]


def test_open_streams_tracked_until_they_end_or_go(make_tel, sqlite_url):
    sse = USUAL_SSE

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream", "request-id": "req_open"},
                               content=iter([e + b"\n\n" for e in sse.split(b"\n\n")[:-1]]))

    tel = make_tel()
    client = tel.instrument(AnthropicFoundry(api_key="k", base_url="http://127.0.0.1:9/anthropic/", max_retries=0,
                                             http_client=httpx2.Client(transport=httpx2.MockTransport(handler))))
    stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=8, stream=True,
                                    messages=[{"role": "user", "content": "hi"}])
    next(iter(stream))  # message_start read, the rest not
    live = [ref() for ref in streams._open]
    assert any(tee is not None and tee._capture.request_url.endswith("/v1/messages") and not tee._capture.done
               for tee in live)
    del live
    streams.end_open_streams()  # as at exit
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.request_id == "req_open" and row.error_type == "client_closed" and row.input_tokens == 12
    del stream
    gc.collect()
    assert all(ref() is not None for ref in streams._open)  # a reference whose tee went discarded itself
