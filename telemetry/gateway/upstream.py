"""The gateway's upstream side: a bounded pool of keep-alive HTTP/1.1 connections to the Foundry resources,
each an asyncio protocol with httptools' C parser.

Response bytes are relayed to the client as they arrive, framing included (chunked stays chunked, a
content-length body keeps its length): only the head is rewritten (hop-by-hop headers dropped). The parser
runs over the same bytes to find the body for the capture and the response's end, so a connection goes back
to the pool the moment its response is complete. No task, future or coroutine per chunk: each read is one
callback that parses, hands the body to the capture and writes to the client.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httptools

from .config import Upstream

if TYPE_CHECKING:
    from .http1 import Exchange

# RFC 9110 §7.6.1; transfer-encoding and content-length stay: the body's framing is relayed unchanged
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"upgrade"})


class RawHeaders:
    """Response headers as received, parsed only when the pipeline thread first asks (`get`, `multi_items`,
    as on `httpx.Headers`): the event loop never splits a header it does not need."""

    __slots__ = ("_head", "_items")

    def __init__(self, head: bytes) -> None:
        self._head = head
        self._items: list[tuple[str, str]] | None = None

    def multi_items(self) -> list[tuple[str, str]]:
        if self._items is None:
            items = []
            for line in self._head.split(b"\r\n")[1:]:
                name, sep, value = line.partition(b":")
                if sep:
                    items.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
            self._items = items
        return self._items

    def get(self, name: str, default: str | None = None) -> str | None:
        values = [v for k, v in self.multi_items() if k == name]
        return ", ".join(values) if values else default

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.multi_items())


_HOP_LINE = re.compile(rb"\r\n(?:connection|keep-alive|proxy-connection|proxy-authenticate|proxy-authorization|te|"
                       rb"upgrade)[ \t]*:", re.IGNORECASE)
_FRAMING = re.compile(rb"\r\n(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)


def client_head(head: bytes) -> tuple[bytes, bool]:
    """The upstream's response head as the client gets it (hop-by-hop headers out, everything else in the
    order and case sent), and whether the body is delimited by the connection closing."""
    if b"\r\n\r\n" in head and _HOP_LINE.search(head) is None:  # the usual case: nothing to take out
        status = head[9:12]
        no_body = status[:1] == b"1" or status in (b"204", b"304")
        return head, not no_body and _FRAMING.search(head) is None
    lines = head.split(b"\r\n")
    drop = HOP_BY_HOP
    framed = False
    for line in lines[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name == b"connection":
            drop = drop | {t.strip().lower() for t in line.partition(b":")[2].split(b",")}
        elif name in (b"content-length", b"transfer-encoding"):
            framed = True
    kept = [lines[0]]
    kept += [line for line in lines[1:] if line and line.partition(b":")[0].strip().lower() not in drop]
    status = lines[0][9:12]
    no_body = status[:1] == b"1" or status in (b"204", b"304")
    return b"\r\n".join(kept) + b"\r\n\r\n", not framed and not no_body


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; serves one exchange at a time."""

    def __init__(self, pool: Pool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._head: bytes = b""
        self._head_done = False
        self._cut = 0
        self._client_head = b""
        self._capturing = False
        self._body: list[bytes] = []  # body pieces of the current read, for the capture
        self._complete = False
        self.reusable = True
        self.closed = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.paused = False  # reading paused: the client reads more slowly than the upstream sends

    # -- asyncio ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes on an idle connection: nothing a client could be owed; the connection is spoiled
            self.reusable = False
            self.close()
            return
        self._last_read = self.pool.loop.time()
        try:
            if self._head_done:
                self.parser.feed_data(data)  # on_body collects the body for the capture
                out = data
            else:
                self._head = buf = self._head + data if self._head else data
                self.parser.feed_data(data)  # on_headers_complete hands the head over, then on_body the body
                if not self._head_done:
                    return
                self._head = b""
                out = self._client_head + buf[self._cut:] if len(buf) > self._cut else self._client_head
                self._client_head = b""
        except httptools.HttpParserError as exc:
            self.reusable = False
            self.exchange = None
            self.close()
            ex.upstream_failed(ConnectionError(f"malformed response: {str(exc)[:200]}"), self)
            return
        body = self._body
        if body:  # one capture call per read, however many chunks of the chunked framing it held
            assert ex.capture is not None
            ex.capture.on_chunk(body[0] if len(body) == 1 else b"".join(body))
            body.clear()
        ex.relay(out, self._complete)  # the head (rewritten) and the bytes as received, in one write
        if self._complete:
            self._done()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_pause()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_resume()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._cancel_timers()
        self.pool.lost(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            if self._head_done and ex.close_delimited and not self._complete:
                ex.response_done(self)  # a body that ends with the connection: this is its end
            else:
                ex.upstream_failed(ConnectionError(
                    "the upstream closed the connection" + (f": {exc}" if exc else "")), self)

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._head_done = True
        if not self.parser.should_keep_alive():
            self.reusable = False
        buf = self._head
        end = buf.find(b"\r\n\r\n")
        self._cut = end + 4 if end >= 0 else buf.find(b"\n\n") + 2
        ex = self.exchange
        if ex is not None:
            self._client_head = ex.response_head(self.parser.get_status_code(), buf[:self._cut], self)
            self._capturing = ex.capture is not None

    def on_body(self, body: bytes) -> None:
        if self._capturing:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- used by the exchange -----------------------------------------------------------------------
    def send(self, exchange: Exchange, data: bytes) -> None:
        """Start an exchange on this connection with the request head (and whatever body is at hand)."""
        self.exchange = exchange
        self._head = b""
        self._head_done = False
        self._capturing = False
        self._complete = False
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self._last_read = self.pool.loop.time()
        self._timer = self.pool.loop.call_at(self._last_read + self.pool.read_timeout, self._check_read)
        assert self.transport is not None
        if exchange.client.write_paused:
            self.pause()
        elif self.paused:
            self.resume()
        self.transport.write(data)

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self._last_read = self.pool.loop.time()  # the read timeout counts from here, not from the pause
            self.transport.resume_reading()

    def progress(self) -> None:
        """Request body bytes went out: the read timeout counts from here (the upstream answers after them)."""
        self._last_read = self.pool.loop.time()

    def head_only(self) -> None:
        """A HEAD response: complete at its head whatever it says about a body (so not reused after)."""
        self.reusable = False
        self._complete = True

    def _check_read(self) -> None:
        if self.exchange is None:
            return
        now = self.pool.loop.time()
        due = self._last_read + self.pool.read_timeout
        if now < due or self.paused:  # a paused read is the client's slowness, not the upstream's
            due = max(due, now + self.pool.read_timeout) if self.paused else due
            self._timer = self.pool.loop.call_at(due, self._check_read)
            return
        ex, self.exchange = self.exchange, None
        self.reusable = False
        self.close()
        ex.upstream_failed(TimeoutError(f"no bytes from the upstream for {self.pool.read_timeout:g} s"), self)

    def _done(self) -> None:
        ex, self.exchange = self.exchange, None
        self._cancel_timers()
        if ex is not None:
            ex.response_done(self)

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def idle(self) -> None:
        self._idle_handle = self.pool.loop.call_later(self.pool.keepalive, self.close)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection now (a client that left mid-stream): never back to the pool."""
        self.reusable = False
        self.exchange = None
        self._cancel_timers()
        if self.transport is not None and not self.closed:
            self.transport.abort()


class Pool:
    """At most `limit` upstream connections in all; a request beyond waits (up to `pool_timeout`) for one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, limit: int, connect_timeout: float,
                 read_timeout: float, pool_timeout: float, keepalive: float) -> None:
        self.loop = loop
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.keepalive = keepalive
        self.total = 0
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._waiting: collections.deque[tuple[Upstream, Exchange, asyncio.TimerHandle]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def acquire(self, upstream: Upstream, exchange: Exchange) -> None:
        """Calls `exchange.connected(conn)` now or later, or `exchange.upstream_failed(exc, None)`."""
        idle = self._idle.get(upstream.name)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                exchange.connected(conn)
                return
        if self.total < self.limit:
            self.total += 1
            self.loop.create_task(self._connect(upstream, exchange))
            return
        timer = self.loop.call_later(self.pool_timeout, self._wait_expired, exchange)
        self._waiting.append((upstream, exchange, timer))

    def _wait_expired(self, exchange: Exchange) -> None:
        for item in self._waiting:
            if item[1] is exchange:
                self._waiting.remove(item)
                exchange.upstream_failed(TimeoutError(
                    f"no free upstream connection within {self.pool_timeout:g} s"), None)
                return

    def forget(self, exchange: Exchange) -> None:
        """The client left while its request waited for a connection."""
        for item in self._waiting:
            if item[1] is exchange:
                self._waiting.remove(item)
                item[2].cancel()
                return

    async def _connect(self, upstream: Upstream, exchange: Exchange) -> None:
        try:
            ssl_ctx = None
            if upstream.scheme == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                ssl_ctx = self._ssl
            _, conn = await asyncio.wait_for(self.loop.create_connection(
                lambda: UpstreamConnection(self, upstream), upstream.host, upstream.port, ssl=ssl_ctx,
                server_hostname=upstream.host if ssl_ctx else None), self.connect_timeout)
        except Exception as exc:  # OSError, TimeoutError, ssl errors: no answer from this upstream
            self.total -= 1
            self._next()
            exchange.upstream_failed(exc if isinstance(exc, TimeoutError | OSError) else ConnectionError(
                f"{type(exc).__name__}: {str(exc)[:200]}"), None)
            return
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if exchange.finished:  # the client left while we connected: keep the connection for the next one
            self.release(conn)
            return
        exchange.connected(conn)

    def release(self, conn: UpstreamConnection) -> None:
        """A connection whose exchange is over: to a waiting request, to the idle list, or closed."""
        if conn.closed:
            return
        if not conn.reusable or self._closed:
            conn.close()
            return
        for item in self._waiting:
            if item[0].name == conn.upstream.name:
                self._waiting.remove(item)
                item[2].cancel()
                item[1].connected(conn)
                return
        if self._waiting:  # requests wait for another upstream: give them this connection's slot
            conn.close()
            return
        conn.resume()  # paused by the last write of a slow client's response: idle, it must see an EOF
        self._idle.setdefault(conn.upstream.name, []).append(conn)
        conn.idle()

    def lost(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side): its slot is free."""
        self.total -= 1
        idle = self._idle.get(conn.upstream.name)
        if idle and conn in idle:
            idle.remove(conn)
        self._next()

    def _next(self) -> None:
        if self._waiting and self.total < self.limit and not self._closed:
            upstream, exchange, timer = self._waiting.popleft()
            timer.cancel()
            self.total += 1
            self.loop.create_task(self._connect(upstream, exchange))

    def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in list(conns):
                conn.close()
        self._idle.clear()

    def stats(self) -> dict[str, Any]:
        return {"open": self.total, "idle": sum(len(v) for v in self._idle.values()), "waiting": len(self._waiting)}
