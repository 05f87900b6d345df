"""Finished capture → UsageRecord. Runs on the pipeline thread; tolerant of any server response."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import itertools
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..record import UsageRecord
from .scan import JSON_CAP, JsonScan, SseScan, loads, parse_json
from .state import AttemptCapture

STATUS_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout",
    529: "overloaded_error",
}
FOUNDRY_HOST_SUFFIXES = (".services.ai.azure.com", ".openai.azure.com", ".cognitiveservices.azure.com")


def error_type_for_exception(exc: BaseException) -> str:
    """Name an exception that ended an attempt without (or in the middle of) a response."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"APITimeoutError", "TimeoutException", "ReadTimeout", "ConnectTimeout", "PoolTimeout",
                "WriteTimeout", "TimeoutError"}:
        return "timeout"
    if names & {"APIConnectionError", "TransportError", "NetworkError", "ConnectError", "ReadError",
                "RemoteProtocolError", "WriteError", "ConnectionError", "OSError"}:
        return "connection_error"
    return type(exc).__name__


def resource_from_host(host: str | None) -> str | None:
    if not host:
        return None
    for suffix in FOUNDRY_HOST_SUFFIXES:
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host


_MAPPING = (dict, Mapping)  # JSON gives dicts: checked first, before the (slower) ABC check
def _int(value: Any) -> int:
    """A token count as the ledger keeps it: a non-negative int, else 0 (bools, floats, text, negatives)."""
    if type(value) is int:  # every real count: one type check
        return value if value >= 0 else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def apply_usage(record: UsageRecord, usage: Any) -> None:
    """Fold a `usage` object in; fields present override (message_delta usage is cumulative)."""
    if type(usage) is not dict and not isinstance(usage, Mapping):
        return
    get = usage.get
    if (value := get("input_tokens")) is not None:
        record.input_tokens = _int(value)
    if (value := get("output_tokens")) is not None:
        record.output_tokens = _int(value)
    if (value := get("cache_creation_input_tokens")) is not None:
        record.cache_creation_input_tokens = _int(value)
    if (value := get("cache_read_input_tokens")) is not None:
        record.cache_read_input_tokens = _int(value)
    if (creation := get("cache_creation")) is not None and isinstance(creation, _MAPPING):
        record.cache_creation_5m_input_tokens = _int(creation.get("ephemeral_5m_input_tokens"))
        record.cache_creation_1h_input_tokens = _int(creation.get("ephemeral_1h_input_tokens"))
    if (server_tools := get("server_tool_use")) is not None and isinstance(server_tools, _MAPPING):
        record.web_search_requests = _int(server_tools.get("web_search_requests"))


def _apply_message(record: UsageRecord, message: Any, texts: list[str] | None) -> None:
    if type(message) is not dict and not isinstance(message, Mapping):
        return
    get = message.get
    if isinstance(value := get("id"), str):
        record.response_id = value
    if isinstance(value := get("model"), str):
        record.model = value
    if isinstance(value := get("stop_reason"), str):
        record.finish_reason = value
    apply_usage(record, get("usage"))
    if texts is None:
        return
    for block in message.get("content") or ():
        if isinstance(block, _MAPPING) and isinstance(block.get("text"), str):
            texts.append(block["text"])


def _apply_error(record: UsageRecord, payload: Any) -> None:
    error = payload.get("error") if isinstance(payload, _MAPPING) else None
    if isinstance(error, _MAPPING):
        if isinstance(error.get("type"), str):
            record.error_type = error["type"]
        if isinstance(error.get("message"), str):
            record.error_message = error["message"][:500]


def _apply_stream(record: UsageRecord, scan: SseScan, texts: list[str] | None) -> bool:
    """The kept events of a scanned stream, in order; True when it reached message_stop."""
    for event, data in scan.events:
        try:
            payload = loads(data) if data else {}
        except ValueError:
            continue
        if not isinstance(payload, _MAPPING):
            continue
        if event == "message_start":
            _apply_message(record, payload.get("message"), texts)
        elif event == "message_delta":
            delta = payload.get("delta") or {}
            if isinstance(delta, _MAPPING) and isinstance(stop := delta.get("stop_reason"), str):
                record.finish_reason = stop
            apply_usage(record, payload.get("usage"))
        elif event == "content_block_delta":
            delta = payload.get("delta") or {}
            if isinstance(delta, _MAPPING) and isinstance(delta.get("text"), str) and texts is not None:
                texts.append(delta["text"])
        elif event == "error":
            _apply_error(record, payload)
    record.chunk_gaps_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(scan.delta_times)]
    return scan.completed


@functools.lru_cache(maxsize=256)
def _url_parts(url: str) -> tuple[str, str | None, int, str | None]:
    """(operation, host, port, resource) of a request URL; a process talks to a handful of them."""
    parts = urlsplit(url)
    operation = "count_tokens" if parts.path.rstrip("/").endswith("count_tokens") else "chat"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return operation, parts.hostname, port, resource_from_host(parts.hostname)


_HEADERS = ("request-id", "apim-request-id", "content-encoding", "content-type")


def _held_json(capture: AttemptCapture, content_type: str | None, encoding: str | None) -> bytes | None:
    """A response body that is not an event stream, held whole and not encoded: its bytes (what `JsonScan`
    would keep of it). None for everything else, which goes through the scanners."""
    if capture.scan is not None or encoding is not None or (
            content_type is not None and "text/event-stream" in content_type):
        return None
    chunks = capture.chunks
    raw = chunks[0][1] if len(chunks) == 1 else b"".join([chunk for _, chunk in chunks])
    return raw if len(raw) <= JSON_CAP else None


def build_record(capture: AttemptCapture, capture_content: bool = False) -> UsageRecord:
    body = capture.body
    if body is None and capture.raw_body:
        try:
            parsed = loads(capture.raw_body)
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:
            body = None
    body = body or {}
    url = capture.url
    operation, host, port, resource = _url_parts(str(url if url is not None else capture.request_url))
    headers = capture.headers(*_HEADERS)
    attribution = capture.attribution
    model = body.get("model")
    max_tokens = body.get("max_tokens")
    status = capture.status_code
    # the three fields without a default passed, the rest stored: matching 17 keywords to 40 parameters costs
    # more than the stores
    record = UsageRecord(dt.datetime.fromtimestamp(capture.wall_ns / 1e9, dt.UTC), capture.operation_id,
                         capture.attempt)
    record.operation = operation
    record.server_address = host
    record.server_port = port
    record.resource = resource
    record.deployment = model if isinstance(model, str) else None
    record.stream = body.get("stream") is True
    record.max_tokens = max_tokens if isinstance(max_tokens, int) else None
    record.status_code = status
    record.request_id = headers.get("request-id")
    record.apim_request_id = headers.get("apim-request-id")
    record.team = attribution.team
    record.project = attribution.project
    record.user = attribution.user
    if attribution.tags:
        record.tags = dict(attribution.tags)
    t0 = capture.t0
    record.latency_ms = ((capture.t_end or t0) - t0) / 1e6
    if capture.t_first_delta is not None:
        record.ttft_ms = (capture.t_first_delta - t0) / 1e6

    texts: list[str] | None = [] if capture_content else None
    content_type = headers.get("content-type")
    encoding = headers.get("content-encoding")
    raw = _held_json(capture, content_type, encoding)
    completed = False
    if raw is not None:  # the usual JSON answer, held whole as it came: what a JsonScan of it would give
        is_sse = False
        size = len(raw)
        payload = parse_json(raw)
    else:
        scan = capture.body_scan(content_type, encoding, capture_content)
        is_sse = isinstance(scan, SseScan)
        size = scan.size
        if scan.overflow:
            record.error_type = "unparsed_response"  # too big to keep whole: said, not held
        if is_sse:
            if status == 200:
                assert isinstance(scan, SseScan)
                completed = _apply_stream(record, scan, texts)
        elif size:
            assert isinstance(scan, JsonScan)
            payload = scan.payload()
    if not is_sse and size:
        if status is not None and status >= 400:
            _apply_error(record, payload)
        elif isinstance(payload, _MAPPING):
            if operation == "count_tokens":
                record.input_tokens = _int(payload.get("input_tokens"))
            else:
                _apply_message(record, payload, texts)
            completed = True
        elif status == 200 and record.error_type is None:
            record.error_type = "malformed_response"

    if capture.exception is not None and record.error_type is None:
        record.error_type = error_type_for_exception(capture.exception)
    elif record.error_type is None and status is not None and status >= 400:
        record.error_type = STATUS_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    elif record.error_type is None and status == 200 and not completed:
        if is_sse:
            record.error_type = "client_closed" if capture.closed_early else "incomplete_stream"
        elif capture.closed_early and not size:
            record.error_type = "client_closed"
    elif record.error_type is None and status is None and capture.closed_early:
        record.error_type = "client_closed"  # gone before any answer (a gateway client leaving mid-request)

    if capture_content:
        messages = body.get("messages")
        if messages is not None:
            record.prompt = json.dumps({"system": body.get("system"), "messages": messages}, default=str)[:65536]
        record.completion = "".join(texts or ())[:65536] or None
    return record
