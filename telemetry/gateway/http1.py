"""The gateway's client side: HTTP/1.1 on an asyncio protocol with httptools' C parser, and the exchange that
joins one client request to one upstream connection.

Everything runs in protocol callbacks on the event loop: no task or coroutine per request or per chunk
(measured in bench/proxy.py and the README: a task and an ASGI `send` per relayed chunk cost more than the
rest of the gateway together). Back-pressure both ways: a client that reads slowly pauses the upstream read,
an upstream that takes the request body slowly (or a connection still to come) pauses the client read.

Request bodies, Messages calls' too, go on chunk by chunk as they arrive: a Messages call's is fed on the
way to a `JsonScan` (held whole up to `JSON_CAP`, above kept without its prompt, system prompt and tools:
what request-attribute parsing needs) and to its operation digest, both read when its capture ends.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
from typing import TYPE_CHECKING, Any

import httptools

from ..capture.scan import REQUEST_SKIPPED, JsonScan
from .app import Local, Plan, error_body
from .upstream import RawHeaders, UpstreamConnection, client_head

if TYPE_CHECKING:
    from .server import Front

log = logging.getLogger("telemetry.gateway")

_FAILURES: dict[type, tuple[int, str, str]] = {
    TimeoutError: (504, "timeout_error", "timed out"),
    ConnectionError: (502, "api_error", "unreachable"),
}
PENDING_BYTES = 256 * 1024  # request bytes held for a connection still to come before the client read pauses
DRAIN_SECONDS = 30.0  # how long the rest of a request body answered early is read (and dropped) at most


def local_response(status: int, body: bytes, *, keep_alive: bool, head_only: bool = False) -> bytes:
    reason = http.HTTPStatus(status).phrase.encode()
    return b"".join((b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status, reason, len(body)), b"" if keep_alive else b"connection: close\r\n", b"\r\n",
        b"" if head_only else body))


def no_answer(exc: BaseException) -> BaseException:
    """Errors as the builtin kinds the record's error_type is named from (timeout / connection)."""
    if isinstance(exc, TimeoutError):
        return exc
    if isinstance(exc, OSError):
        return ConnectionError(f"{type(exc).__name__}: {str(exc)[:200]}")
    return exc


class Exchange:
    """One request and its response. Every path ends in exactly one `capture.end` and one `_finish`."""

    __slots__ = ("client", "front", "method", "keep_alive", "chunked", "plan", "local", "capture", "conn",
                 "_pending", "_pending_size", "_held_back", "_request", "_draining", "_after", "request_complete",
                 "head_sent", "finished", "close_delimited", "status", "_counted")

    def __init__(self, client: ClientConnection, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool) -> None:
        self.client = client
        self.front = client.front
        self.method = method
        self.keep_alive = keep_alive
        self.conn: UpstreamConnection | None = None
        self._pending: list[bytes] = []  # request bytes waiting for an upstream connection
        self._pending_size = 0
        self._held_back = False  # the client read is paused until the upstream connection comes
        self._request: JsonScan | None = None  # a captured request's body as the record needs it
        self._draining: asyncio.TimerHandle | None = None  # answered early: the rest of the body is read, not sent
        self._after: tuple[dict[str, Any], bytes, bool] | None = None  # (capture end, answer, close) once read
        self.request_complete = False
        self.head_sent = False
        self.finished = False
        self.close_delimited = False
        self.status = 0
        self._counted = False
        self.chunked = False
        length: bytes | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif lower == b"content-length":
                length = value.strip()
        planned = self.front.app.plan(method, target, headers)
        self.local: Local | None = None
        self.plan: Plan | None = None
        self.capture: Any = None
        if isinstance(planned, Local):
            self.local = planned
            return
        self.plan = planned
        self.capture = planned.capture
        if self.capture is not None:
            self._request = JsonScan(skip=REQUEST_SKIPPED)
        framing = (b"transfer-encoding: chunked\r\n" if self.chunked
                   else b"content-length: %s\r\n" % length if length is not None else b"")
        self._pending.append(planned.head + framing + b"\r\n")

    # -- driven by the client connection ------------------------------------------------------------
    def go(self) -> None:
        if self.local is not None:
            if self.request_complete:
                self._answer_local()
            return
        assert self.plan is not None
        if not self._counted:
            self.front.status.in_flight += 1
            self._counted = True
        self.front.pool.acquire(self.plan.upstream, self)

    def request_body(self, chunk: bytes) -> None:
        if self.local is not None or self.finished:
            return
        request = self._request
        if request is not None:
            try:
                request.feed(0, chunk)
            except Exception:  # never into the caller: the record goes without request attributes
                request.overflow = True
                self._request = None
            digest = self.plan.digest if self.plan is not None else None
            if digest is not None:
                digest.update(chunk)
        if self._draining is not None:
            return
        data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.chunked else chunk
        conn = self.conn
        if conn is not None and self._pending is None:
            assert conn.transport is not None
            conn.transport.write(data)
            conn.progress()
        else:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > PENDING_BYTES and not self._held_back:
                self._held_back = True
                self.client.pause_reading()

    def request_done(self) -> None:
        self.request_complete = True
        if self.local is not None:
            if self.client.exchange is self:
                self._answer_local()
            return
        if self._draining is not None:  # the rest of a body answered early has been read: the exchange ends
            self._drained()
            return
        if self.chunked and not self.finished:
            self.request_body_end()

    def _end_capture(self, **how: Any) -> None:
        """The capture's end: the request attributes and the operation id from the body as far as it came."""
        capture = self.capture
        if capture is None or capture.done:
            return
        request, self._request = self._request, None
        try:
            if request is not None:
                capture.raw_body = request.kept()
            plan = self.plan
            assert plan is not None
            capture.operation_id = plan.idempotency_key or (plan.digest.hexdigest() if plan.digest else
                                                            capture.operation_id)
        except Exception:  # pragma: no cover - never into the caller
            log.debug("foundry-telemetry: request body not kept", exc_info=True)
        capture.end(**how)

    def request_body_end(self) -> None:
        if self.conn is not None and self._pending is None:
            assert self.conn.transport is not None
            self.conn.transport.write(b"0\r\n\r\n")
        else:
            self._pending.append(b"0\r\n\r\n")

    # -- driven by the pool and the upstream connection ---------------------------------------------
    def connected(self, conn: UpstreamConnection) -> None:
        if self.finished:
            self.front.pool.release(conn)
            return
        self.conn = conn
        pending, self._pending = self._pending, None  # type: ignore[assignment]
        if self._held_back:  # before the send, which pauses the client again if the upstream is slow to take it
            self._held_back = False
            self.client.resume_reading()
        conn.send(self, pending[0] if len(pending) == 1 else b"".join(pending))

    def response_head(self, status: int, head: bytes, conn: UpstreamConnection) -> bytes:
        """The head as the client gets it (written with the first body bytes, in one write)."""
        self.status = status
        assert self.plan is not None
        self.front.status.upstream(self.plan.upstream.name).answered(status)
        out, self.close_delimited = client_head(head)
        if self.plan.is_head:
            conn.head_only()
            self.close_delimited = False
        if self.capture is not None:
            self.capture.on_response(status, RawHeaders(head), self.capture.request_url)
        self.head_sent = True
        return out

    def relay(self, data: bytes, complete: bool) -> None:
        if complete and self.capture is not None and self.request_complete:
            self._end_capture(exhausted=True)  # before the client holds the last byte and can move on
        self.client.write(data)

    def response_done(self, conn: UpstreamConnection) -> None:
        if self.finished:
            return
        if not self.request_complete:
            conn.reusable = False  # the upstream answered before the body was sent: the connection is spoiled
            self.keep_alive = False
            self.front.pool.release(conn)
            self.conn = None
            self._drain({"exhausted": True}, b"", close=True)
            return
        self._end_capture(exhausted=True)  # (a close-delimited body: relay did not see its end)
        self.front.pool.release(conn)
        self._finish(close=self.close_delimited or not self.keep_alive)

    def _drain(self, how: dict[str, Any], answer: bytes, *, close: bool) -> None:
        """Answered before the request body was all read: read the rest (not sent on, still fed to the record's
        request attributes and operation digest, as for a request read whole), then end the capture, write
        `answer` and finish. The client reads the answer after sending its body, not a reset mid-send."""
        self.conn = None
        self._pending, self._pending_size, self._held_back = [], 0, False
        self._after = (how, answer, close)
        self._draining = self.front.loop.call_later(DRAIN_SECONDS, self._drained)
        self.client.resume_reading()

    def _drained(self) -> None:
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
        after, self._after = self._after, None
        if self.finished or after is None:
            return
        how, answer, close = after
        self._end_capture(**how)
        if answer:
            self.client.write(answer)
        self._finish(close=close or not self.request_complete)

    def upstream_failed(self, exc: BaseException, conn: UpstreamConnection | None) -> None:
        if self.finished:
            return
        failure = no_answer(exc)
        assert self.plan is not None
        if conn is not None:
            conn.abort()
        if not self.head_sent and not self.request_complete and self.capture is not None:
            self.front.status.upstream(self.plan.upstream.name).failed(failure)
            status, kind, text = _FAILURES.get(type(failure), (502, "api_error", "unreachable"))
            body = error_body(kind, f"foundry-telemetry gateway: upstream {self.plan.upstream.name} {text}")
            self._drain({"exception": failure}, local_response(status, body, keep_alive=self.keep_alive),
                        close=not self.keep_alive)
            return
        self._end_capture(exception=failure)
        if self.head_sent:  # broken off mid-response: the client sees the same truncation
            self.front.status.upstream_aborts += 1
            if self.front.app.on_error is not None:
                self.front.app.on_error("gateway_upstream_aborted", failure)
            self._finish(close=True, abort=True)
            return
        self.front.status.upstream(self.plan.upstream.name).failed(failure)
        status, kind, text = _FAILURES.get(type(failure), (502, "api_error", "unreachable"))
        body = error_body(kind, f"foundry-telemetry gateway: upstream {self.plan.upstream.name} {text}")
        keep = self.keep_alive and self.request_complete
        self.client.write(local_response(status, body, keep_alive=keep))
        self._finish(close=not keep)

    def client_pause(self) -> None:
        self.client.pause_reading()

    def client_resume(self) -> None:
        self.client.resume_reading()

    def client_gone(self) -> None:
        """The client closed its connection before the response ended: cut the upstream stream, keep the record."""
        if self.finished:
            return
        if self._draining is not None:  # answered: the client left while the rest of its body was read
            self._drained()
            return
        self._end_capture(closed_early=True)
        self.front.status.client_disconnects += 1
        if self.conn is not None:
            self.conn.abort()
        elif self.plan is not None:
            self.front.pool.forget(self)
        self._finish(close=True)

    def _answer_local(self) -> None:
        assert self.local is not None
        self.client.write(local_response(self.local.status, self.local.body, keep_alive=self.keep_alive,
                                         head_only=self.method == b"HEAD"))
        self.finished = True
        self.client.exchange_done(self, close=not self.keep_alive)

    def _finish(self, *, close: bool, abort: bool = False) -> None:
        self.finished = True
        self.conn = None
        if self._counted:
            self._counted = False
            self.front.status.in_flight -= 1
        self.client.exchange_done(self, close=close, abort=abort)


class ClientConnection(asyncio.Protocol):
    """One client connection: requests in order (pipelined ones wait their turn), keep-alive between them."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None  # the one whose response is being written
        self._parsing: Exchange | None = None  # the one whose request is being read
        self._start: Exchange | None = None  # to go on once this read is parsed (its body so far with its head)
        self._queued: collections.deque[Exchange] = collections.deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._idle: asyncio.TimerHandle | None = None
        self._paused = False  # our reading paused (a pipelined request waits, or the upstream is slow to take)
        self.write_paused = False  # the client reads slowly: upstream reads for it are paused
        self.closed = False

    # -- asyncio ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.front.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._start = None
            self._reject(501, "not_implemented", "foundry-telemetry gateway: protocol upgrades are not supported")
        except httptools.HttpParserCallbackError as exc:
            self._start = None
            cause = exc.__context__ or exc
            if self.front.app.on_error is not None:
                self.front.app.on_error("gateway_internal", cause)
            self._reject(500, "api_error", "foundry-telemetry gateway: internal error")
        except httptools.HttpParserError:
            self._start = None
            self._reject(400, "invalid_request_error", "foundry-telemetry gateway: malformed HTTP request")
        start, self._start = self._start, None
        if start is not None and not start.finished:  # after the parse: the head and the body read with it go
            start.go()                                  # out in one write (a small request: one segment)

    def eof_received(self) -> bool | None:
        return None  # the client is gone: close (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        for ex in (self.exchange, *self._queued):
            if ex is not None:
                ex.client_gone()
        if self._parsing is not None and self._parsing is not self.exchange:
            self._parsing.client_gone()
        self.exchange = self._parsing = None
        self._queued.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        conn = self.exchange.conn if self.exchange is not None else None
        if conn is not None:
            conn.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self.exchange.conn if self.exchange is not None else None
        if conn is not None:
            conn.resume()

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []  # the idle timer runs on until the head is complete: a dribbling client is closed

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        parser = self.parser
        keep_alive = parser.should_keep_alive() and not self.front.draining
        headers = self._headers
        ex = Exchange(self, parser.get_method(), self._url, headers, keep_alive)
        self._parsing = ex
        for name, value in headers:
            if name.lower() == b"expect" and value.strip().lower() == b"100-continue":
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.exchange is None:
            self.exchange = ex
            self._start = ex
        else:  # pipelined behind a response still being written: read no further until its turn
            self._queued.append(ex)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.request_body(body)

    def on_message_complete(self) -> None:
        ex, self._parsing = self._parsing, None
        if ex is not None:
            ex.request_done()

    # -- used by the exchange -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def exchange_done(self, ex: Exchange, *, close: bool, abort: bool = False) -> None:
        if ex is not self.exchange:
            if ex in self._queued:
                self._queued.remove(ex)
            return
        self.exchange = None
        if close or self.front.draining:
            self._close(abort=abort)
            return
        if self._queued:
            nxt = self._queued.popleft()
            self.exchange = nxt
            if not self._queued:
                self.resume_reading()
            nxt.go()
            return
        self.resume_reading()  # paused for an upstream that took the request body slowly: that is over
        if self._parsing is None:
            self._arm_idle()

    def _arm_idle(self) -> None:
        self._idle = self.front.loop.call_later(self.front.client_keepalive, self._close)

    def _reject(self, status: int, kind: str, message: str) -> None:
        if self.exchange is None or not self.exchange.head_sent:
            self.write(local_response(status, error_body(kind, message), keep_alive=False))
        if self.exchange is not None:
            self.exchange.client_gone()
        self._close()

    def idle(self) -> bool:
        return self.exchange is None and self._parsing is None

    def _close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def close_if_idle(self) -> None:
        if self.idle():
            self._close()
