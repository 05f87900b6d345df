"""Finished capture → UsageRecord. Runs on the pipeline thread; tolerant of any server response."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..record import UsageRecord
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


def _decode(body: bytes, encoding: str | None) -> bytes:
    """Undo gzip/deflate on tee'd wire bytes; a body read by httpx is already decoded and passes through."""
    encoding = (encoding or "").lower().strip()
    try:
        if encoding in ("gzip", "x-gzip") and body[:2] == b"\x1f\x8b":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error:
        return body
    return body


_MAPPING = (dict, Mapping)  # JSON gives dicts: checked first, before the (slower) ABC check


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def apply_usage(record: UsageRecord, usage: Any) -> None:
    """Fold a `usage` object in; fields present override (message_delta usage is cumulative)."""
    if not isinstance(usage, _MAPPING):
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
    creation = get("cache_creation")
    if isinstance(creation, _MAPPING):
        record.cache_creation_5m_input_tokens = _int(creation.get("ephemeral_5m_input_tokens"))
        record.cache_creation_1h_input_tokens = _int(creation.get("ephemeral_1h_input_tokens"))
    server_tools = get("server_tool_use")
    if isinstance(server_tools, _MAPPING):
        record.web_search_requests = _int(server_tools.get("web_search_requests"))


def _apply_message(record: UsageRecord, message: Any, texts: list[str] | None) -> None:
    if not isinstance(message, _MAPPING):
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


def _sse_events(body: bytes, ends: list[int], arrivals: list[int]) -> list[tuple[str | None, Any, int]]:
    """(event, data, t) of each complete SSE event, t the arrival of the chunk its last byte came in. In the
    usual shape (one `event:` line, one `data:` line) data is left as `rest` (`data:` and all) for the caller
    to cut only where it reads the payload: most events (content deltas) only matter by name and time."""
    out: list[tuple[str | None, Any, int]] = []
    append = out.append
    text_offset = 0
    ti, nt = 0, len(ends)
    last = arrivals[-1] if arrivals else 0
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        end = text_offset + len(block)
        text_offset = end + 2
        head, _, rest = block.partition(b"\n")
        if head.startswith(b"event:") and rest.startswith(b"data:") and b"\n" not in rest:
            event, data = _event_name(head[6:]), rest  # the usual shape: one event, one data line
        else:
            event = None
            data_lines = []
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    event = _event_name(line[6:])
                elif line.startswith(b"data:"):
                    data_lines.append(line[5:].strip())
            if event is None and not data_lines:
                continue
            data = _Joined(b"\n".join(data_lines))
        while ti < nt and ends[ti] < end:  # events arrive in order: one walk over the chunks in all
            ti += 1
        append((event, data, arrivals[ti] if ti < nt else last))
    return out


class _Joined(bytes):
    """The data of an event in the general shape, already joined (not a `data:` line to cut)."""


def _payload_bytes(data: bytes) -> bytes:
    return data if type(data) is _Joined else data[5:].strip()


@functools.lru_cache(maxsize=64)
def _event_name(raw: bytes) -> str:
    return raw.strip().decode("utf-8", "replace")


# the events whose payload the record needs; the others (content_block_start/stop, ping, message_stop) only
# matter by name, and content deltas only for their arrival time unless content capture is on
_PARSED_EVENTS = frozenset({"message_start", "message_delta", "error"})


def _parse_stream(record: UsageRecord, capture: AttemptCapture, body: bytes, texts: list[str] | None) -> bool:
    ends: list[int] = []
    arrivals: list[int] = []
    total = 0
    for t, chunk in capture.chunks:
        total += len(chunk)
        ends.append(total)
        arrivals.append(t)
    completed = False
    delta_times: list[int] = []
    for event, data, t in _sse_events(body, ends, arrivals):
        if event == "content_block_delta":
            delta_times.append(t)
            if texts is None:
                continue
        elif event == "message_stop":
            completed = True
            continue
        elif event not in _PARSED_EVENTS:
            continue
        data = _payload_bytes(data)
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            continue
        if not isinstance(payload, _MAPPING):
            continue
        if event == "message_start":
            _apply_message(record, payload.get("message"), texts)
        elif event == "message_delta":
            delta = payload.get("delta") or {}
            if isinstance(delta, _MAPPING) and isinstance(delta.get("stop_reason"), str):
                record.finish_reason = delta["stop_reason"]
            apply_usage(record, payload.get("usage"))
        elif event == "content_block_delta":
            delta = payload.get("delta") or {}
            if isinstance(delta, _MAPPING) and isinstance(delta.get("text"), str) and texts is not None:
                texts.append(delta["text"])
        elif event == "error":
            _apply_error(record, payload)
    record.chunk_gaps_ms = [(b - a) / 1e6 for a, b in zip(delta_times, delta_times[1:], strict=False)]
    return completed


@functools.lru_cache(maxsize=256)
def _url_parts(url: str) -> tuple[str, str | None, int, str | None]:
    """(operation, host, port, resource) of a request URL; a process talks to a handful of them."""
    parts = urlsplit(url)
    operation = "count_tokens" if parts.path.rstrip("/").endswith("count_tokens") else "chat"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return operation, parts.hostname, port, resource_from_host(parts.hostname)


_HEADERS = ("request-id", "apim-request-id", "content-encoding", "content-type")


def build_record(capture: AttemptCapture, capture_content: bool = False) -> UsageRecord:
    body = capture.body if capture.body is not None else None
    if body is None and capture.raw_body:
        try:
            parsed = json.loads(capture.raw_body)
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:
            body = None
    body = body or {}
    operation, host, port, resource = _url_parts(str(capture.url if capture.url is not None
                                                     else capture.request_url))
    headers = capture.headers(*_HEADERS)
    attribution = capture.attribution
    model = body.get("model")
    max_tokens = body.get("max_tokens")
    record = UsageRecord(
        created_at=dt.datetime.fromtimestamp(capture.wall_ns / 1e9, dt.UTC),
        operation_id=capture.operation_id,
        attempt=capture.attempt,
        operation=operation,
        server_address=host,
        server_port=port,
        resource=resource,
        deployment=model if isinstance(model, str) else None,
        stream=body.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        status_code=capture.status_code,
        request_id=headers.get("request-id"),
        apim_request_id=headers.get("apim-request-id"),
        team=attribution.team,
        project=attribution.project,
        user=attribution.user,
        tags=dict(attribution.tags) if attribution.tags else {},
    )
    end = capture.t_end or capture.t0
    record.latency_ms = (end - capture.t0) / 1e6
    if capture.t_first_delta is not None:
        record.ttft_ms = (capture.t_first_delta - capture.t0) / 1e6

    texts: list[str] | None = [] if capture_content else None
    chunks = capture.chunks
    raw = chunks[0][1] if len(chunks) == 1 else b"".join(chunk for _, chunk in chunks)
    raw = _decode(raw, headers.get("content-encoding"))
    is_sse = "text/event-stream" in headers.get("content-type", "")
    completed = False
    if is_sse and capture.status_code == 200:
        completed = _parse_stream(record, capture, raw, texts)
    elif raw:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if capture.status_code is not None and capture.status_code >= 400:
            _apply_error(record, payload)
        elif isinstance(payload, _MAPPING):
            if record.operation == "count_tokens":
                record.input_tokens = _int(payload.get("input_tokens"))
            else:
                _apply_message(record, payload, texts)
            completed = True
        elif capture.status_code == 200:
            record.error_type = "malformed_response"

    if capture.exception is not None and record.error_type is None:
        record.error_type = error_type_for_exception(capture.exception)
    elif record.error_type is None and capture.status_code is not None and capture.status_code >= 400:
        record.error_type = STATUS_ERROR_TYPES.get(capture.status_code, "api_error" if capture.status_code >= 500
                                                   else "invalid_request_error")
    elif record.error_type is None and capture.status_code == 200 and not completed:
        if is_sse:
            record.error_type = "client_closed" if capture.closed_early else "incomplete_stream"
        elif capture.closed_early and not raw:
            record.error_type = "client_closed"

    if capture_content:
        messages = body.get("messages")
        if messages is not None:
            record.prompt = json.dumps({"system": body.get("system"), "messages": messages}, default=str)[:65536]
        record.completion = "".join(texts or ())[:65536] or None
    return record
