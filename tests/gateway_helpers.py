"""Servers the gateway tests put behind or beside the gateway."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import pytest
import uvicorn
from starlette.requests import Request

from telemetry.emulator.app import Emulator

SSE_PARTS = [b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_fixed\",\"model\":",
             b"\"claude-sonnet-4-5-20250929\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
             b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
             b"\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
             b"{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
             b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"]
JSON_BODY = gzip.compress(json.dumps({"id": "msg_fixed", "type": "message", "model": "claude-sonnet-4-5-20250929",
                                      "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
                                      "usage": {"input_tokens": 11, "output_tokens": 4}}).encode(), mtime=0)


class RecordingEmulator(Emulator):
    """The emulator, keeping the headers each Messages request arrived with."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen_headers: list[dict[str, str]] = []
        self.active = 0
        self.max_active = 0

    async def messages(self, request: Request) -> Any:
        self.seen_headers.append(dict(request.headers))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await super().messages(request)
        finally:
            self.active -= 1


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


class AppServer:
    """Any ASGI app on loopback with uvicorn, headers untouched (no server/date header)."""

    def __init__(self, app: Any, tls: tuple[str, str] | None = None) -> None:
        """`tls`: (certfile, keyfile) to serve HTTPS, as Foundry does."""
        self._sock = socket.socket()
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, server_header=False,
                                date_header=False, ssl_certfile=tls[0] if tls else None,
                                ssl_keyfile=tls[1] if tls else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> AppServer:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()


def big_sse(deltas: int, per_send: int = 200, text: str = "lorem ipsum dolor sit amet, ") -> list[bytes]:
    """A long stream as Foundry sends it: message_start, `deltas` text deltas sent `per_send` to a chunk
    (the last chunk splitting an event), message_delta, message_stop."""
    def sse(event: str, data: dict) -> bytes:
        return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    start = sse("message_start", {"type": "message_start", "message": {
        "id": "msg_big", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [], "stop_reason": None, "usage": {"input_tokens": 21, "output_tokens": 1,
                                                       "cache_read_input_tokens": 5}}})
    delta = sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": text}})
    parts = [start + sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})]
    for i in range(0, deltas, per_send):
        parts.append(delta * min(per_send, deltas - i))
    end = sse("content_block_stop", {"type": "content_block_stop", "index": 0}) + sse("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": deltas}}) + sse("message_stop", {"type": "message_stop"})
    parts[-1] += end[:10]  # an event split across two chunks
    parts.append(end[10:])
    return parts


def big_json(text_bytes: int) -> bytes:
    """A non-streamed message whose content is `text_bytes` long, with escapes, nested blocks and a
    tool_use input holding a `usage` key of its own (which must not be taken for the message's)."""
    text = ("quote \" and \\ backslash, é, \n newline; " * (text_bytes // 40 + 1))[:text_bytes]
    return json.dumps({"id": "msg_bigjson", "type": "message", "role": "assistant",
                       "model": "claude-sonnet-4-5-20250929",
                       "content": [{"type": "text", "text": text},
                                   {"type": "tool_use", "id": "tu_1", "name": "t",
                                    "input": {"usage": {"input_tokens": 999}, "deep": [[{"a": "}]"}]]}}],
                       "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": {"input_tokens": 33, "output_tokens": 44, "cache_creation_input_tokens": 2}}
                      ).encode()


def canned_app(sse_parts: list[bytes], json_body: bytes, ids: list[tuple[bytes, bytes]],
               json_headers: tuple[tuple[bytes, bytes], ...] = ()) -> Any:
    """An upstream serving `sse_parts` chunk by chunk for stream requests and `json_body` (64 KiB a send)
    otherwise, with the `ids` headers on both and `json_headers` on the JSON answer."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if json.loads(body or b"{}").get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), *ids]})
            for part in sse_parts:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), *json_headers,
                                (b"content-length", str(len(json_body)).encode()), *ids]})
        for i in range(0, len(json_body), 65536):
            await send({"type": "http.response.body", "body": json_body[i:i + 65536],
                        "more_body": i + 65536 < len(json_body)})

    return app


def big_app(sse_parts: list[bytes], json_body: bytes) -> Any:
    return canned_app(sse_parts, json_body, [(b"request-id", b"req_big"), (b"apim-request-id", b"apim-big")])


# fixed bytes, so a proxied response can be compared with a direct one byte for byte: a gzip'd JSON message
# with odd headers, and an SSE stream sent in chunks that split events
fixed_app = canned_app(SSE_PARTS, JSON_BODY, [
    (b"request-id", b"req_fixed"), (b"apim-request-id", b"apim-fixed"), (b"X-Odd-Case", b"A, b ;c"),
    (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")], ((b"content-encoding", b"gzip"),))


def make_certificate(folder: Any) -> tuple[str, str]:
    """A self-signed certificate for localhost in `folder`: (certfile, keyfile)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)
