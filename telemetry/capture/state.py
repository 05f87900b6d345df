"""The capture state machine. Runs on the caller's request path, so it only timestamps and keeps
references; parsing, pricing and export happen on the pipeline thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context

from ..context import Attribution

log = logging.getLogger("telemetry")

_DELTA = b"content_block_delta"
_KEPT_HEADERS = ("request-id", "apim-request-id", "content-encoding", "content-type")


@dataclass(slots=True)
class AttemptStart:
    """What is known when the attempt starts."""

    operation_id: str
    attempt: int
    url: str
    wall_ns: int  # epoch ns, for span start and created_at
    t0: int  # perf_counter_ns
    attribution: Attribution
    otel_context: Context | None
    body: Mapping[str, Any] | None = None  # the SDK's JSON body (middleware path)
    raw_body: bytes | None = None  # the encoded body (transport path)


@dataclass(slots=True)
class AttemptCapture:
    """One HTTP attempt, from request to end. Every method is total: it never raises."""

    start: AttemptStart
    _submit: Callable[[AttemptCapture], None]
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    t_headers: int | None = None
    t_first_delta: int | None = None
    t_end: int | None = None
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    exception: BaseException | None = None
    closed_early: bool = False
    exhausted: bool = False
    done: bool = False
    _tail: bytes = b""

    def on_response(self, status_code: int, headers: Mapping[str, str], url: str | None = None) -> None:
        self.t_headers = time.perf_counter_ns()
        self.status_code = status_code
        self.url = url
        try:
            # keep only what we use (these are response headers: no auth ever passes here)
            get = headers.get
            self.headers = {k: v for k in _KEPT_HEADERS if (v := get(k)) is not None}
        except Exception:  # a strange header mapping must not break the call
            self.headers = {}

    def on_chunk(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.chunks.append((now, data))
        if self.t_first_delta is None and (_DELTA in data or _DELTA in self._tail + data[:32]):
            self.t_first_delta = now
        self._tail = data[-32:]

    def end(self, *, exception: BaseException | None = None, closed_early: bool = False,
            exhausted: bool = False) -> None:
        """Finish once; later calls (close after exhaustion, GC after close) are no-ops."""
        if self.done:
            return
        self.done = True
        self.t_end = time.perf_counter_ns()
        self.exception = exception
        self.closed_early = closed_early
        self.exhausted = exhausted
        try:
            self._submit(self)
        except Exception:  # pragma: no cover - the pipeline's submit is itself total
            log.exception("foundry-telemetry: could not hand over a capture")
