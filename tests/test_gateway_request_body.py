"""Messages request bodies through the gateway: forwarded chunk by chunk as they arrive, held for the record
only up to JSON_CAP (above, scanned without `messages`, `system`, `tools`), the operation digest taken as
they pass. The record is the one a parse of the whole body gives, however the body is split; a 20 MB request
(Foundry takes up to 32 MB: base64 images and PDFs) passes in bounded memory and arrives byte for byte."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import socket
import threading
import time
import tracemalloc
from typing import Any

import httpx

from telemetry.capture.parse import build_record
from telemetry.capture.scan import JSON_CAP, REQUEST_SKIPPED, JsonScan
from telemetry.context import Attribution
from telemetry.gateway import GatewayServer, parse_upstreams
from telemetry.gateway.app import OperationDigest

from .conftest import API_KEY, rows
from .gateway_helpers import AppServer

BOUND = 3 * 1024 * 1024  # what the whole test process may allocate on top while a 20 MB request passes
ANSWER = {"id": "msg_req", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
          "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
          "usage": {"input_tokens": 5, "output_tokens": 2}}


def request_body(image_bytes: int, *, model_last: bool = True, stream: bool = False) -> bytes:
    """A Messages request as an SDK sends it with a base64 image, a system prompt and tools; escapes, unicode
    and a `model` key inside the skipped members (which must not be taken for the request's)."""
    image = base64.b64encode(b"\x89PNG" * (image_bytes // 4 + 1))[:image_bytes].decode()
    body: dict[str, Any] = {
        "system": [{"type": "text", "text": 'be "brief" \\ é {"model": "nope"}'}],
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
            {"type": "text", "text": "what is ] this }, \"model\": \"x\""}]}],
        "tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"model": {"type": "string"}}}}],
        "metadata": {"user_id": "u-1"},
        "temperature": 0.5,
    }
    head = {"model": "claude-sonnet-4-5", "max_tokens": 321, "stream": stream}
    return json.dumps({**body, **head} if model_last else {**head, **body}).encode()


def _fields(raw: bytes | None, *, capture_content: bool = False) -> dict[str, Any]:
    from telemetry.capture.state import AttemptCapture

    capture = AttemptCapture(lambda c: None, operation_id="op", attempt=0, attribution=Attribution(),
                             url="https://r.services.ai.azure.com/anthropic/v1/messages", otel_context=None,
                             raw_body=raw)
    capture.on_response(200, httpx.Headers({"content-type": "application/json"}), capture.request_url)
    capture.on_chunk(json.dumps(ANSWER).encode())
    capture.done = True
    record = build_record(capture, capture_content)
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    for timing in ("created_at", "latency_ms", "ttft_ms", "chunk_gaps_ms"):
        fields.pop(timing)
    return fields


def _held(body: bytes, size: int) -> tuple[bytes | None, int]:
    scan = JsonScan(skip=REQUEST_SKIPPED)
    most = 0
    for i in range(0, len(body), size):
        scan.feed(0, body[i:i + size])
        most = max(most, len(scan._out) if scan._scanning else scan._held)
    return scan.kept(), most


def test_request_attributes_do_not_depend_on_how_the_body_is_split():
    small = request_body(2000)
    big = request_body(JSON_CAP + 50_000, model_last=True, stream=True)
    assert len(big) > JSON_CAP
    for body in (small, big, request_body(JSON_CAP + 10, model_last=False)):
        expected = _fields(body)
        assert expected["deployment"] == "claude-sonnet-4-5" and expected["max_tokens"] == 321
        for size in (1, 7, 4096, 70_000):
            kept, most = _held(body, size)
            assert _fields(kept) == expected, (len(body), size)
            if len(body) > JSON_CAP:  # scanned: what is held is the small members, not the image
                assert most <= JSON_CAP + size and len(kept or b"") < 1000
            else:
                assert kept == body  # held whole, as before
    # not JSON, or not an object: no request attributes, as with a parse of the whole body
    for odd in (b"not json" * 200_000, b"[1, 2, 3]", b'{"model": "m", "messages": [}'):
        assert _fields(_held(odd, 4096)[0]) == _fields(odd)
    # with content capture on, a body held whole gives the prompt as before
    assert _fields(_held(small, 999)[0], capture_content=True)["prompt"] == _fields(
        small, capture_content=True)["prompt"]


class Sink:
    """An upstream that reads the request body chunk by chunk (hashing it, holding none of it) and answers
    a Messages JSON response saying what it got; or answers 413 before reading the body at all."""

    def __init__(self) -> None:
        self.got: list[tuple[int, str]] = []
        self.disconnected = threading.Event()
        self.early = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self.early:
            error = json.dumps({"type": "error", "error": {"type": "request_too_large",
                                                           "message": "too big"}}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"request-id", b"req_413"),
                                    (b"content-length", str(len(error)).encode())]})
            await send({"type": "http.response.body", "body": error})
            return
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        self.got.append((size, digest.hexdigest()))
        body = json.dumps(ANSWER).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"request-id", b"req_%d" % len(self.got)),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _head(length: int | None, extra: bytes = b"") -> bytes:
    framing = b"transfer-encoding: chunked\r\n" if length is None else b"content-length: %d\r\n" % length
    return (b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\napi-key: " + API_KEY.encode() +
            b"\r\ncontent-type: application/json\r\n" + framing + extra + b"\r\n")


def _response(s: socket.socket) -> tuple[int, bytes]:
    """One response read off a raw connection (content-length framed, as the Sink and the gateway send)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        assert more, data
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status == 100:
        return _response_rest(s, rest)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length")))
    while len(rest) < length:
        more = s.recv(65536)
        assert more
        rest += more
    return status, rest[:length]


def _response_rest(s: socket.socket, rest: bytes) -> tuple[int, bytes]:
    class Prefixed:
        def __init__(self) -> None:
            self.buf = rest

        def recv(self, n: int) -> bytes:
            if self.buf:
                out, self.buf = self.buf, b""
                return out
            return s.recv(n)

    return _response(Prefixed())  # type: ignore[arg-type]


def _send(body: bytes, port: int, *, step: int = 65536, chunked: bool = False, expect: bool = False
          ) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_head(None if chunked else len(body), b"expect: 100-continue\r\n" if expect else b""))
        if expect:
            interim = s.recv(64)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        view = memoryview(body)
        for i in range(0, len(body), step):
            piece = view[i:i + step]
            if chunked:
                s.sendall(b"%x\r\n" % len(piece))
                s.sendall(piece)
                s.sendall(b"\r\n")
            else:
                s.sendall(piece)
        if chunked:
            s.sendall(b"0\r\n\r\n")
        return _response(s)


def _peak(fn) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def test_a_20_mb_request_streams_through_in_bounded_memory_and_arrives_exactly(make_tel, sqlite_url, otel):
    big = request_body(20 * 1024 * 1024)
    small = request_body(3000, model_last=False)
    sink = Sink()
    tel = make_tel()
    with AppServer(sink) as up:
        gw = GatewayServer(parse_upstreams([f"http://127.0.0.1:{up.port}"]), port=0, telemetry=tel).start()
        try:
            assert _send(small, gw.port)[0] == 200  # warm: imports, the ledger's schema
            tel.flush()
            peak, (status, answer) = _peak(lambda: _send(big, gw.port))
            assert status == 200 and json.loads(answer) == ANSWER
            # chunked request bodies and Expect: 100-continue, small and big
            assert _send(small, gw.port, step=777, chunked=True)[0] == 200
            assert _send(big, gw.port, step=70_000, chunked=True, expect=True)[0] == 200
            assert _send(small, gw.port, expect=True)[0] == 200
        finally:
            gw.stop()
    print(f"20 MB request: tracemalloc peak {peak} bytes")
    assert peak < BOUND, peak  # the body held whole would be 20 MB (63 MB peak before this change)
    sha = {body: hashlib.sha256(body).hexdigest() for body in (small, big)}
    assert sink.got == [(len(b), sha[b]) for b in (small, big, small, big, small)]  # byte for byte
    tel.flush()
    got = rows(sqlite_url)
    assert len(got) == 5

    def op(body: bytes) -> str:
        d = OperationDigest(API_KEY)
        d.update(body)
        return d.hexdigest()

    for row, body in zip(got, (small, big, small, big, small), strict=True):
        assert (row.deployment, row.stream, row.status_code, row.error_type) == (
            "claude-sonnet-4-5", False, 200, None)
        assert (row.input_tokens, row.output_tokens) == (5, 2)
        assert row.operation_id == op(body)  # the digest over the whole body, however it came
    spans = otel.ours()
    assert len(spans) == 5 and all(span.attributes["gen_ai.request.max_tokens"] == 321 for span in spans)


def test_an_early_answer_reaches_the_client_and_a_client_gone_mid_body_closes_the_upstream(make_tel, sqlite_url):
    big = request_body(8 * 1024 * 1024)
    sink = Sink()
    tel = make_tel()
    with AppServer(sink) as up:
        gw = GatewayServer(parse_upstreams([f"http://127.0.0.1:{up.port}"]), port=0, telemetry=tel).start()
        try:
            # the upstream answers 413 without reading the body: the client sends it all and reads the 413
            sink.early = True
            status, answer = _send(big, gw.port)
            assert status == 413 and json.loads(answer)["error"]["type"] == "request_too_large"
            sink.early = False
            # the client leaves mid-body: the upstream's request is cut off, and there is one record
            with socket.create_connection(("127.0.0.1", gw.port)) as s:
                s.sendall(_head(len(big)))
                s.sendall(big[:2 * 1024 * 1024])
                time.sleep(0.2)
            assert sink.disconnected.wait(10)
            deadline = time.monotonic() + 10
            while gw.status.client_disconnects == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            # the gateway is fine after both: the next call goes through
            assert _send(request_body(100), gw.port)[0] == 200
            assert httpx.get(f"http://127.0.0.1:{gw.port}/healthz").json()["in_flight"] == 1
        finally:
            gw.stop()
    tel.flush()
    early, gone, after = rows(sqlite_url)
    assert (early.status_code, early.error_type, early.request_id) == (413, "request_too_large", "req_413")
    assert early.deployment == "claude-sonnet-4-5"  # the body's rest was read for the record, not sent on
    # no response, no model yet (it comes last in this body); ended by the caller, so kept out of error rates
    assert (gone.status_code, gone.error_type, gone.deployment) == (None, "client_closed", None)
    assert gw.status.client_disconnects == 1
    assert gone.operation_id and gone.operation_id != "pending"
    assert (after.status_code, after.deployment) == (200, "claude-sonnet-4-5")


def test_a_request_waiting_for_an_upstream_connection_holds_its_body_back(make_tel, sqlite_url):
    """The one upstream connection is busy: a 20 MB request waits for it with its client's read paused (a
    bounded part of its body held, not all of it), then goes through whole."""
    big, small = request_body(20 * 1024 * 1024), request_body(3000)
    sink = Sink()
    tel = make_tel()
    result: dict[str, Any] = {}
    with AppServer(sink) as up:
        gw = GatewayServer(parse_upstreams([f"http://127.0.0.1:{up.port}"]), port=0, telemetry=tel,
                           max_connections=1).start()
        try:
            assert _send(small, gw.port)[0] == 200
            tel.flush()
            with socket.create_connection(("127.0.0.1", gw.port)) as busy:
                busy.sendall(_head(len(small)) + small[:100])  # holds the connection: its body is still to come
                time.sleep(0.2)
                waiting = threading.Thread(target=lambda: result.update(answer=_send(big, gw.port)))
                tracemalloc.start()
                try:
                    waiting.start()
                    time.sleep(1.0)
                    assert waiting.is_alive() and len(sink.got) == 1  # still waiting for the connection
                    busy.sendall(small[100:])
                    assert _response(busy)[0] == 200
                    waiting.join(30)
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
        finally:
            gw.stop()
    assert result["answer"][0] == 200
    assert sink.got[-1] == (len(big), hashlib.sha256(big).hexdigest())
    assert peak < BOUND, peak
    tel.flush()
    assert [r.status_code for r in rows(sqlite_url)] == [200, 200, 200]
