"""Servers the gateway tests put behind or beside the gateway."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from typing import Any

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


async def fixed_app(scope: dict, receive: Any, send: Any) -> None:
    """Fixed bytes, so a proxied response can be compared with a direct one byte for byte: a gzip'd JSON
    message with odd headers, and an SSE stream sent in chunks that split events."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    ids = [(b"request-id", b"req_fixed"), (b"apim-request-id", b"apim-fixed"), (b"X-Odd-Case", b"A, b ;c"),
           (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    if json.loads(body or b"{}").get("stream"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), *ids]})
        for part in SSE_PARTS:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-encoding", b"gzip"),
                            (b"content-length", str(len(JSON_BODY)).encode()), *ids]})
    await send({"type": "http.response.body", "body": JSON_BODY})


class AppServer:
    """Any ASGI app on loopback with uvicorn, headers untouched (no server/date header)."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, server_header=False,
                                date_header=False)
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
