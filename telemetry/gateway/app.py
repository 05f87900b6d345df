"""The gateway's ASGI app: forwards every request to its upstream byte for byte, and feeds the Messages
requests through the capture state machine (`Capturer` → `AttemptCapture` → pipeline) like the SDK path.

Request path work is kept to what forwarding needs: header filtering, one body read for captured requests
(parsing happens on the pipeline thread), and handing each response chunk to the capture as it is relayed.
Responses are relayed chunk by chunk as they arrive; nothing is buffered beyond what the capture keeps for
usage parsing.

The upstream client is aiohttp: measured here (bench/proxy.py, README), an httpx `AsyncClient` call costs
~8 ms back to back on loopback against ~0.8 ms for aiohttp, which alone breaks the ≤ 1 ms added-latency
target. aiohttp is asked to add nothing: no default headers, no decompression, no redirects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from ..capture.hooks import Capturer, is_messages_path
from ..context import Attribution, usage_context
from .config import KeyMap, Upstream
from .status import GatewayStatus

log = logging.getLogger("telemetry.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# RFC 9110 §7.6.1 hop-by-hop headers, plus Host (set from the upstream URL)
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade"})
ATTRIBUTION_HEADERS = {b"x-foundry-team": "team", b"x-foundry-project": "project", b"x-foundry-user": "user",
                       b"x-foundry-tags": "tags"}
KEY_HEADERS = (b"api-key", b"x-api-key")
JSON_HEADERS = [(b"content-type", b"application/json")]
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
RESPONSE_HOP_BY_HOP = HOP_BY_HOP | {b"content-length"}


class UpstreamAborted(Exception):
    """The upstream broke off a response already under way; raising it makes the server drop the client's
    connection, so the client sees the same truncation it would have seen calling Foundry directly."""


def _error_body(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def parse_tags(value: str) -> dict[str, str]:
    """`k=v,k=v`; an item without `=` is a tag with an empty value."""
    tags: dict[str, str] = {}
    for item in value.split(","):
        k, _, v = item.partition("=")
        if k.strip():
            tags[k.strip()] = v.strip()
    return tags


class Operations:
    """Links a client's retries (x-stainless-retry-count > 0) to the operation of its first attempt, by the
    key fingerprint and the body digest. Soft state: a retry that lands on another replica starts its own."""

    def __init__(self, size: int = 10_000) -> None:
        self._ops: OrderedDict[bytes, str] = OrderedDict()
        self._size = size

    def operation_id(self, key: str | None, body: bytes, attempt: int) -> str:
        h = hashlib.blake2b(body, digest_size=16)
        if key:
            h.update(key.encode())
        digest = h.digest()
        if attempt > 0 and (op := self._ops.get(digest)) is not None:
            self._ops.move_to_end(digest)
            return op
        op = uuid.uuid4().hex
        self._ops[digest] = op
        if len(self._ops) > self._size:
            self._ops.popitem(last=False)
        return op


class GatewayApp:
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        capturer: Capturer,
        *,
        key_map: KeyMap | None = None,
        require_attribution: bool = False,
        max_connections: int = 256,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        pool_timeout: float = 30.0,
        keepalive_timeout: float = 4.0,
        status: GatewayStatus | None = None,
        on_error: Callable[..., None] | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.default = next(iter(self.upstreams.values()))
        self._capturer = capturer
        self._key_map = key_map or KeyMap()
        self._require = require_attribution
        self.status = status or GatewayStatus(self.upstreams)
        self._ops = Operations()
        self._on_error = on_error
        self.max_connections = max_connections
        # below the usual server idle timeouts (uvicorn's 5 s): a pooled connection the upstream has already
        # closed would fail the next POST on it, and a POST is not retried (it may have been billed)
        self._keepalive = keepalive_timeout
        # `connect` bounds the wait for a free connection too (aiohttp counts the pool wait in it)
        self._timeout = aiohttp.ClientTimeout(total=None, connect=pool_timeout + connect_timeout,
                                              sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the server's event loop
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=self._keepalive, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  auto_decompress=False, skip_auto_headers=SKIP_AUTO_HEADERS,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- ASGI ----------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.status.in_flight += 1
            try:
                await self._http(scope, receive, send)
            finally:
                self.status.in_flight -= 1
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _respond(self, send: Send, status: int, body: bytes, headers: list | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": (headers or JSON_HEADERS) + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz" and method in ("GET", "HEAD"):
            code, body = self.status.healthz()
            await self._respond(send, code, body)
            return
        raw_path: bytes = scope.get("raw_path") or path.encode()
        upstream = self.default
        if path.startswith("/r/"):
            name, _, _ = path[3:].partition("/")
            found = self.upstreams.get(name)
            if found is None:
                await self._respond(send, 404, _error_body(
                    "not_found_error", f"foundry-telemetry gateway: no upstream named {name!r} "
                                       f"(known: {', '.join(self.upstreams)})"))
                return
            upstream = found
            raw_path = raw_path[3 + len(name.encode()):] or b"/"
            path = path[3 + len(name):] or "/"

        headers: list[tuple[str, str]] = []
        found_attr: dict[str, str] = {}
        key: str | None = None
        retry = b""
        connection_tokens: frozenset[bytes] = frozenset()
        traceparent = False
        for name_b, value in scope["headers"]:
            if name_b in HOP_BY_HOP or name_b == b"host":
                if name_b == b"connection":
                    connection_tokens = frozenset(t.strip().lower() for t in value.split(b","))
                continue
            field = ATTRIBUTION_HEADERS.get(name_b)
            if field is not None:
                found_attr[field] = value.decode("latin-1").strip()
                continue
            if name_b in KEY_HEADERS:
                key = key or value.decode("latin-1").strip()
            elif name_b == b"authorization" and value[:7].lower() == b"bearer ":
                key = key or value[7:].decode("latin-1").strip()
            elif name_b == b"x-stainless-retry-count":
                retry = value
            elif name_b == b"traceparent":
                traceparent = True
            headers.append((name_b.decode("latin-1"), value.decode("latin-1")))
        if connection_tokens:
            headers = [(k, v) for k, v in headers if k.encode("latin-1") not in connection_tokens]

        attribution = self._attribution(found_attr, key)
        if self._require and not (attribution.team or attribution.project or attribution.user):
            self.status.rejected += 1
            await self._respond(send, 400, _error_body(
                "invalid_request_error",
                "foundry-telemetry gateway: this request has no attribution; send an x-foundry-team header "
                "(and optionally x-foundry-project, x-foundry-user, x-foundry-tags: k=v,k=v), or call with a "
                "key listed in the gateway's key map"))
            return

        query: bytes = scope.get("query_string") or b""
        target = upstream.url + (raw_path + (b"?" + query if query else b"")).decode("latin-1")
        url = URL(target, encoded=True)
        captured = method == "POST" and is_messages_path(path)
        capture = None
        if captured:
            body = await _read_body(receive)
            attempt = int(retry) if retry.isdigit() else 0
            op = self._ops.operation_id(key, body, attempt)
            capture = self._begin(target, op, attempt, body, attribution, scope["headers"] if traceparent else None)
            data: Any = body
        elif method in ("GET", "HEAD", "OPTIONS", "DELETE") and not _has_body(scope["headers"]):
            data = None
        else:
            data = _stream_body(receive)

        stat = self.status.upstream(upstream.name)
        try:
            response = await self.session.request(method, url, headers=headers, data=data, allow_redirects=False,
                                                  compress=None, chunked=None)
        except BaseException as exc:
            failure = _no_answer(exc)
            if capture is not None:
                capture.end(exception=failure)
            if failure is exc:  # cancelled (shutdown) or not ours to answer
                raise
            stat.failed(failure)
            status, kind, text = _FAILURES[type(failure)]
            await self._respond(send, status, _error_body(kind, f"foundry-telemetry gateway: upstream "
                                                                f"{upstream.name} {text}"))
            return
        try:
            stat.answered(response.status)
            if capture is not None:
                capture.on_response(response.status, response.headers, target)
            await self._relay(response, receive, send, capture)
        finally:
            response.release()

    def _attribution(self, found: dict[str, str], key: str | None) -> Attribution:
        """Headers give it; a key in the key map overrides the fields it sets (a team's key is its identity)."""
        mapped = self._key_map.get(key)
        if not found and mapped is None:
            return Attribution()
        tags = parse_tags(found["tags"]) if found.get("tags") else {}
        if mapped is None:
            return Attribution(found.get("team") or None, found.get("project") or None,
                               found.get("user") or None, tags)
        return Attribution(mapped.team or found.get("team") or None, mapped.project or found.get("project") or None,
                           mapped.user or found.get("user") or None, {**tags, **mapped.tags})

    def _begin(self, url: str, op: str, attempt: int, body: bytes, attribution: Attribution,
               headers: list | None) -> Any:
        token = None
        if headers is not None:  # the client's W3C trace context becomes the span's parent
            try:
                from opentelemetry import context as otel_context
                from opentelemetry.propagate import extract

                carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers
                           if k in (b"traceparent", b"tracestate")}
                token = otel_context.attach(extract(carrier))
            except Exception:
                token = None
        try:
            with usage_context(team=attribution.team, project=attribution.project, user=attribution.user,
                               tags=attribution.tags):
                return self._capturer.begin(url=url, operation_id=op, attempt=attempt, raw_body=body)
        finally:
            if token is not None:
                from opentelemetry import context as otel_context

                otel_context.detach(token)

    async def _relay(self, response: aiohttp.ClientResponse, receive: Receive, send: Send, capture: Any) -> None:
        length = response.headers.get("content-length")
        chunked = "chunked" in response.headers.get("transfer-encoding", "").lower()
        drop = RESPONSE_HOP_BY_HOP if chunked else HOP_BY_HOP  # both at once is malformed: chunked wins
        headers = [(k, v) for k, v in response.raw_headers if k.lower() not in drop]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        on_chunk = capture.on_chunk if capture is not None else None
        if length is not None and not chunked:
            # one chunk behind: the capture ends (at the upstream's end of body, known from content-length,
            # so this waits for nothing) before the client holds the whole response and can move on
            last = b""
            try:
                async for chunk in response.content.iter_any():
                    if on_chunk is not None:
                        on_chunk(chunk)
                    if last:
                        await send({"type": "http.response.body", "body": last, "more_body": True})
                    last = chunk
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if capture is not None:
                    capture.end(exception=_no_answer(exc))
                raise self._aborted(exc) from exc
            if capture is not None:
                capture.end(exhausted=True)
            await send({"type": "http.response.body", "body": last, "more_body": False})
            return
        # a stream: relay it here while one task watches for the client going away; if it does, that task
        # cancels this one, so the upstream read stops at once (one task per stream, not two and a wait)
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.ensure_future(_disconnected(receive))
        left: list[bool] = []

        def on_gone(fut: asyncio.Future) -> None:
            if not fut.cancelled():
                left.append(True)
                task.cancel()

        gone.add_done_callback(on_gone)
        try:
            await _pump(response, send, capture)
        except asyncio.CancelledError:
            if not left or task.uncancel() > 0:  # cancelled by the server, not by the client leaving
                raise
            if capture is not None:
                capture.end(closed_early=True)
            self.status.client_disconnects += 1
            response.close()  # not back to the pool: the upstream stream is cut here
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._aborted(exc) from exc
        finally:
            gone.remove_done_callback(on_gone)
            gone.cancel()

    def _aborted(self, exc: BaseException) -> UpstreamAborted:
        self.status.upstream_aborts += 1
        if self._on_error is not None:
            self._on_error("gateway_upstream_aborted", exc)
        return UpstreamAborted(type(exc).__name__)


_FAILURES: dict[type, tuple[int, str, str]] = {
    TimeoutError: (504, "timeout_error", "timed out"),
    ConnectionError: (502, "api_error", "unreachable"),
}


def _no_answer(exc: BaseException) -> BaseException:
    """aiohttp's errors as the builtin kinds the record's error_type is named from (timeout / connection)."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return TimeoutError(f"{type(exc).__name__}: {str(exc)[:200]}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ConnectionError(f"{type(exc).__name__}: {str(exc)[:200]}")
    return exc


async def _pump(response: aiohttp.ClientResponse, send: Send, capture: Any) -> None:
    on_chunk = capture.on_chunk if capture is not None else None
    try:
        async for chunk in response.content.iter_any():
            if on_chunk is not None:
                on_chunk(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if capture is not None:
            capture.end(exception=_no_answer(exc))
        raise
    if capture is not None:
        capture.end(exhausted=True)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _stream_body(receive: Receive) -> Any:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if body := message.get("body"):
            yield body
        if not message.get("more_body"):
            return


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k == b"transfer-encoding" or (k == b"content-length" and v.strip() != b"0") for k, v in headers)
