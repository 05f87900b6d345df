"""Run the gateway with uvicorn: in a background thread (tests, embedding) or in the foreground (the CLI).

Stateless by design: everything a request needs is in the request and the configuration, and rows go to
the shared ledger, so any number of replicas can sit behind one load balancer. A graceful shutdown (SIGTERM
or SIGINT) stops accepting, lets in-flight streams finish for `drain_timeout` seconds, closes the upstream
connections, then flushes the ledger.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import uvicorn

from ..core import Telemetry
from ..settings import Settings
from .app import GatewayApp, UpstreamAborted
from .config import GatewayError, KeyMap, Upstream
from .status import GatewayStatus


class _DropAborted(logging.Filter):
    """uvicorn logs a traceback for an app that raises mid-response; an upstream that broke off is counted
    (and logged once) by the app instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UpstreamAborted)


_DROP_ABORTED = _DropAborted()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, status: GatewayStatus) -> None:
        super().__init__(config)
        self._status = status

    async def shutdown(self, sockets: Any = None) -> None:
        self._status.draining = True
        await super().shutdown(sockets)


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
        **app_options: Any,
    ) -> None:
        self._own_tel = telemetry is None
        self.telemetry = telemetry or Telemetry(settings=Settings.from_env(db_url=db_url))
        self.status = GatewayStatus(upstreams, ledger=self._ledger_state)
        self.app = GatewayApp(upstreams, self.telemetry.capturer, key_map=key_map,
                              require_attribution=require_attribution, max_connections=max_connections,
                              status=self.status, on_error=self.telemetry.health.failed, **app_options)
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit it: without, Nagle + delayed ACK add ~40 ms to keep-alive responses
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.bind((host, port))
            # listening from here on: a client that connects before uvicorn's loop is up waits in the backlog
            # instead of being refused (the CLI prints its URL before serve_forever starts the loop)
            self._sock.listen(4096)
        except OSError as exc:
            self._sock.close()
            raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="on", log_level="warning", access_log=False,
                                server_header=False, date_header=False, backlog=4096,
                                timeout_graceful_shutdown=drain_timeout, timeout_keep_alive=75)
        logging.getLogger("uvicorn.error").addFilter(_DROP_ABORTED)  # the same object: added once
        self._server = _Server(config, self.status)
        self._thread: threading.Thread | None = None

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

    def start(self) -> GatewayServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="foundry-telemetry-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Until SIGTERM/SIGINT; then drain, flush the ledger, and return (exit status 0).

        uvicorn handles the signal and re-raises it once it has stopped; the handler set here receives
        that, so the flush below runs and the process does not die by the signal halfway through it.
        """
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
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
