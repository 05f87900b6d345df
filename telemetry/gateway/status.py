"""What `GET /healthz` reports: the ledger (written, spooled, failures) and each upstream's last outcome.

Upstreams are not probed: their state is what the last real requests saw, so a health check costs nothing
upstream. The code is 200 while serving (the ledger failing is "degraded": rows go to the spool, requests
still pass) and 503 while draining, so a load balancer stops sending new work during a graceful shutdown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Upstream


@dataclass
class UpstreamStatus:
    url: str
    requests: int = 0
    errors: int = 0  # no answer at all: connect failure, timeout, reset
    last_status: int | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def answered(self, status: int) -> None:
        self.requests += 1
        self.last_status = status
        if status < 500:
            self.last_ok_at = time.time()

    def failed(self, exc: BaseException) -> None:
        self.requests += 1
        self.errors += 1
        self.last_error = type(exc).__name__
        self.last_error_at = time.time()

    @property
    def state(self) -> str:
        if self.last_error_at is None and self.last_ok_at is None:
            return "unknown" if self.last_status is None else "failing"
        if self.last_error_at is not None and (self.last_ok_at is None or self.last_error_at > self.last_ok_at):
            return "failing"
        if self.last_status is not None and self.last_status >= 500:
            return "failing"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "state": self.state, "requests": self.requests, "errors": self.errors,
                "last_status": self.last_status, "last_error": self.last_error}


@dataclass
class GatewayStatus:
    upstreams_cfg: Mapping[str, Upstream]
    ledger: Callable[[], dict[str, Any]] | None = None
    in_flight: int = 0
    rejected: int = 0
    client_disconnects: int = 0
    upstream_aborts: int = 0
    draining: bool = False
    _upstreams: dict[str, UpstreamStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._upstreams = {name: UpstreamStatus(u.url) for name, u in self.upstreams_cfg.items()}

    def upstream(self, name: str) -> UpstreamStatus:
        return self._upstreams[name]

    def healthz(self) -> tuple[int, bytes]:
        try:
            ledger = self.ledger() if self.ledger is not None else {"state": "off"}
        except Exception as exc:  # health must answer even when the ledger cannot be asked
            ledger = {"state": "unknown", "error": type(exc).__name__}
        upstreams = {name: s.as_dict() for name, s in self._upstreams.items()}
        degraded = ledger.get("state") not in ("ok", "off") or any(
            u["state"] == "failing" for u in upstreams.values())
        body = {"status": "draining" if self.draining else "degraded" if degraded else "ok",
                "in_flight": self.in_flight, "rejected_unattributed": self.rejected,
                "client_disconnects": self.client_disconnects,
                "upstream_aborts": self.upstream_aborts, "ledger": ledger, "upstreams": upstreams}
        return (503 if self.draining else 200), json.dumps(body).encode()
