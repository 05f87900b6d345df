"""Run the gateway's event loop: in a background thread (tests, embedding) or in the foreground (the CLI).

Stateless by design: everything a request needs is in the request and the configuration, and rows go to
the shared ledger, so any number of replicas can sit behind one load balancer. A graceful shutdown (SIGTERM
or SIGINT) stops accepting, lets in-flight streams finish for `drain_timeout` seconds, closes the upstream
connections, then flushes the ledger.

The stack was chosen by measuring (bench/proxy_stacks.py, README "Gateway"): uvicorn + an ASGI app + an
aiohttp client cost ~1.8 ms of CPU per 20-chunk paced stream as a bare relay, most of it a task wake-up and
an ASGI `send` per relayed chunk; asyncio protocols with httptools on both sides do it in ~0.9 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..core import Telemetry
from ..settings import Settings
from .app import GatewayApp
from .config import GatewayError, KeyMap, Upstream
from .http1 import ClientConnection
from .status import GatewayStatus
from .upstream import Pool


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()


class Front:
    """What the connections share: the app, the upstream pool, the set of open client connections."""

    def __init__(self, app: GatewayApp, loop: asyncio.AbstractEventLoop, pool: Pool,
                 client_keepalive: float) -> None:
        self.app = app
        self.status = app.status
        self.loop = loop
        self.pool = pool
        self.client_keepalive = client_keepalive
        self.connections: set[ClientConnection] = set()
        self.draining = False


class GatewayServer:
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        telemetry: Telemetry | None = None,
        db_url: str | None = None,
        key_map: KeyMap | None = None,
        require_attribution: bool = False,
        max_connections: int = 256,
        drain_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        pool_timeout: float = 30.0,
        keepalive_timeout: float = 4.0,
        client_keepalive: float = 75.0,
    ) -> None:
        self._own_tel = telemetry is None
        self.telemetry = telemetry or Telemetry(settings=Settings.from_env(db_url=db_url))
        self.status = GatewayStatus(upstreams, ledger=self._ledger_state)
        self.app = GatewayApp(upstreams, self.telemetry.capturer, key_map=key_map,
                              require_attribution=require_attribution, status=self.status,
                              on_error=self.telemetry.health.failed)
        # `keepalive_timeout` is below the usual server idle timeouts (uvicorn's 5 s): a pooled connection the
        # upstream has already closed would fail the next POST on it, and a POST is not retried (it may bill)
        self._pool_options = {"limit": max_connections, "connect_timeout": connect_timeout,
                              "read_timeout": read_timeout, "pool_timeout": pool_timeout,
                              "keepalive": keepalive_timeout}
        self._client_keepalive = client_keepalive
        self._drain_timeout = drain_timeout
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit it: without, Nagle + delayed ACK add ~40 ms to keep-alive responses
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.bind((host, port))
            # listening from here on: a client that connects before the loop is up waits in the backlog
            # instead of being refused (the CLI prints its URL before serve_forever starts the loop)
            self._sock.listen(4096)
        except OSError as exc:
            self._sock.close()
            raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self._sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self.front: Front | None = None

    @property
    def base_url(self) -> str:
        """What a client's base URL becomes (`…/anthropic/`); `/r/NAME/anthropic/` picks a named upstream."""
        return f"http://{self.host}:{self.port}/anthropic/"

    def _ledger_state(self) -> dict[str, Any]:
        ledger = self.telemetry.ledger
        failures = self.telemetry.health.snapshot()
        if ledger is None:
            return {"state": "off", "failures": failures}
        pending = ledger.spool.pending()
        return {"state": "spooling" if pending else "ok", "written": ledger.written, "spooled": ledger.spooled,
                "spool_pending": pending, "failures": failures}

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self._stop = asyncio.Event()
        front = self.front = Front(self.app, loop, Pool(loop, **self._pool_options), self._client_keepalive)
        server = await loop.create_server(lambda: ClientConnection(front), sock=self._sock, backlog=4096)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self._drain(server, front)

    async def _drain(self, server: asyncio.AbstractServer, front: Front) -> None:
        """Stop accepting; idle connections close now, busy ones after their response (or at the deadline)."""
        self.status.draining = front.draining = True
        server.close()
        deadline = time.monotonic() + self._drain_timeout
        while True:
            for conn in list(front.connections):
                conn.close_if_idle()
            if not front.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        for conn in list(front.connections):
            if conn.transport is not None:
                conn.transport.abort()
        front.pool.close()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.telemetry.health.failed("gateway_loop", exc, None if exc else str(context.get("message"))[:200])

    def _run(self) -> None:
        loop = self._loop = new_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    def start(self) -> GatewayServer:
        self._thread = threading.Thread(target=self._run, name="foundry-telemetry-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._started.wait(0.01):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the gateway did not start")
        return self

    def serve_forever(self) -> None:
        """Until SIGTERM/SIGINT; then drain, flush the ledger, and return (exit status 0)."""
        loop = self._loop = new_loop()
        asyncio.set_event_loop(loop)

        def on_signal() -> None:
            if self._stop is not None:
                self._stop.set()

        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal)
            loop.run_until_complete(self._serve())
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            loop.close()
            self._close()

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(self._drain_timeout + 10)
        self._close()

    def _close(self) -> None:
        self._sock.close()
        if self._own_tel:
            self.telemetry.shutdown()
        else:
            self.telemetry.flush()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
