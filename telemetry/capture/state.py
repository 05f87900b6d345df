"""The capture state machine. Runs on the caller's request path, so it only timestamps and keeps
references (to the body, the response headers, the URL); parsing, pricing and export happen on the
pipeline thread. A response body is held only up to `HOLD_BYTES`: past that, the chunks held so far are
scanned (scan.py) and let go, so a long stream costs the capture its usage events, not its length."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.context import Context

from ..context import Attribution
from .scan import HOLD_BYTES, JsonScan, SseScan

log = logging.getLogger("telemetry")

_DELTA = b"content_block_delta"


@functools.lru_cache(maxsize=16)
def _header_names(names: tuple[str, ...]) -> dict[bytes, str]:
    return {name.encode("ascii"): name for name in names}


@functools.cache
def _httpx_headers(cls: type) -> bool:
    """httpx's or httpx2's own `Headers` (not a subclass): its entries can be read as they are stored."""
    package = cls.__module__.partition(".")[0]
    return package in ("httpx", "httpx2") and getattr(sys.modules.get(package), "Headers", None) is cls


def _headers_from_list(headers: Any, names: tuple[str, ...]) -> dict[str, str]:
    """What the raw-pairs way below gives, from the (raw key, lower-case key, value) entries httpx stores:
    no list of pairs built, no key lower-cased again (a Foundry response carries ~20 headers)."""
    out: dict[str, str] = {}
    wanted = _header_names(names)
    explicit = headers._encoding  # None until `encoding` is set or first read
    for _, key, value in headers._list:
        name = wanted.get(key)
        if name is not None:
            if explicit is not None:
                text = value.decode(explicit)
            elif value.isascii():  # what the guessed encoding (ascii, utf-8 or latin-1) makes of it, without
                text = value.decode("ascii")  # the guess: it decodes every header of the response to choose
            else:
                text = value.decode(headers.encoding)
            out[name] = f"{out[name]}, {text}" if name in out else text  # as `Headers.get` joins them
    return out


class AttemptCapture:
    """One HTTP attempt, from request to end. Every method is total: it never raises into the caller."""

    __slots__ = (
        "_submit", "operation_id", "attempt", "request_url", "wall_ns", "t0", "attribution", "otel_context",
        "body", "raw_body", "status_code", "response_headers", "url", "t_headers", "t_first_delta", "t_end",
        "chunks", "exception", "closed_early", "exhausted", "done", "_tail", "held", "scan", "keep_text",
    )

    def __init__(
        self,
        submit: Callable[[AttemptCapture], None],
        *,
        operation_id: str,
        attempt: int,
        url: Any,
        attribution: Attribution,
        otel_context: Context | None,
        body: Mapping[str, Any] | None = None,
        raw_body: bytes | None = None,
        keep_text: bool = False,
    ) -> None:
        self._submit = submit
        self.operation_id = operation_id
        self.attempt = attempt
        self.request_url = url
        self.wall_ns = time.time_ns()  # epoch, for created_at and the span's start
        self.t0 = time.perf_counter_ns()
        self.attribution = attribution
        self.otel_context = otel_context
        self.body = body  # the SDK's JSON body (middleware path)
        self.raw_body = raw_body  # the encoded body (transport path)
        self.status_code: int | None = None
        self.response_headers: Any = None
        self.url: Any = None
        self.t_headers: int | None = None
        self.t_first_delta: int | None = None
        self.t_end: int | None = None
        self.chunks: list[tuple[int, bytes]] = []
        self.exception: BaseException | None = None
        self.closed_early = False
        self.exhausted = False
        self.done = False
        self._tail = b""
        self.held = 0  # bytes in `chunks`
        self.scan: SseScan | JsonScan | None = None  # set once the body outgrew HOLD_BYTES
        self.keep_text = keep_text  # content capture is on: an SSE scan keeps the text deltas too

    def on_response(self, status_code: int, headers: Any, url: Any = None) -> None:
        self.t_headers = time.perf_counter_ns()
        self.status_code = status_code
        self.response_headers = headers  # read on the pipeline thread; response headers carry no auth
        self.url = url

    def header(self, name: str) -> str | None:
        """For the pipeline thread: one response header, or None."""
        try:
            value = self.response_headers.get(name) if self.response_headers is not None else None
        except Exception:  # a strange header mapping must not lose the record
            return None
        return value if isinstance(value, str) else None

    def headers(self, *names: str) -> dict[str, str]:
        """For the pipeline thread: several response headers (lower-case names) in one pass over them."""
        out: dict[str, str] = {}
        headers = self.response_headers
        if headers is None:
            return out
        if _httpx_headers(type(headers)):
            try:
                return _headers_from_list(headers, names)
            except Exception:  # a changed httpx: the public way below
                out = {}
        try:
            raw = getattr(headers, "raw", None) if hasattr(headers, "multi_items") else None
            if not isinstance(raw, list):
                return {name: v for name in names if isinstance(v := headers.get(name), str)}
            # httpx / httpx2: the raw byte pairs, and only the wanted values decoded (as `multi_items` would)
            wanted = _header_names(names)
            encoding = None
            for key, value in raw:
                name = wanted.get(key.lower())
                if name is not None:
                    encoding = encoding or headers.encoding
                    text = value.decode(encoding)
                    out[name] = f"{out[name]}, {text}" if name in out else text  # as `Headers.get` joins them
        except Exception:  # a strange header mapping must not lose the record
            return {}
        return out

    def on_chunk(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.chunks.append((now, data))
        if self.t_first_delta is None:
            if _DELTA in data or _DELTA in self._tail + data[:32]:
                self.t_first_delta = now
            else:
                self._tail = data[-32:]
        self.held += len(data)
        if self.held > HOLD_BYTES:
            self._compact()

    def _compact(self) -> None:
        """Scan what is held and let it go: memory stays bounded however long the body is."""
        try:
            if self.scan is None:
                self.scan = new_scan(self.header("content-type"), self.header("content-encoding"), self.keep_text)
            self.scan.feed_many(self.chunks)
        except Exception:  # never into the caller: the record says the body could not be parsed
            log.debug("foundry-telemetry: response scan failed", exc_info=True)
            self.scan = JsonScan()
            self.scan.overflow = True
        self.chunks = []
        self.held = 0

    def body_scan(self, content_type: str | None, encoding: str | None, capture_content: bool = False
                  ) -> SseScan | JsonScan:
        """For the pipeline thread: the whole body scanned (what was still held is fed in now)."""
        scan = self.scan or new_scan(content_type, encoding, capture_content or self.keep_text)
        scan.feed_many(self.chunks)
        scan.finish()
        return scan

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


def new_scan(content_type: str | None, encoding: str | None, keep_text: bool) -> SseScan | JsonScan:
    if content_type is not None and "text/event-stream" in content_type:
        return SseScan(encoding, keep_text)
    return JsonScan(encoding)
