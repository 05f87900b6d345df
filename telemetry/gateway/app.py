"""What the gateway decides about a request, apart from moving bytes (http1.py, upstream.py): which upstream,
which headers go on, who it is attributed to, and the capture it begins.

The decisions are made once per request, from the head, in one pass over its headers; parsing the body,
pricing and export happen on the pipeline thread, as on the SDK path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..capture.hooks import Capturer, is_messages_path
from ..context import Attribution
from .config import KeyMap, Upstream
from .status import GatewayStatus

log = logging.getLogger("telemetry.gateway")

# request headers not forwarded: hop-by-hop (RFC 9110 §7.6.1), the framing (set from the body as forwarded),
# `expect` (the gateway answers 100-continue itself) and the attribution headers
NOT_FORWARDED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                           b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
                           b"host", b"expect", b"content-length"})
ATTRIBUTION_HEADERS = {b"x-foundry-team": "team", b"x-foundry-project": "project", b"x-foundry-user": "user",
                       b"x-foundry-tags": "tags"}
KEY_HEADERS = (b"api-key", b"x-api-key")
JSON_HEADERS = b"content-type: application/json\r\n"


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def parse_tags(value: str) -> dict[str, str]:
    """`k=v,k=v`; an item without `=` is a tag with an empty value."""
    tags: dict[str, str] = {}
    for item in value.split(","):
        k, _, v = item.partition("=")
        if k.strip():
            tags[k.strip()] = v.strip()
    return tags


class OperationDigest:
    """The operation a request belongs to, without state: `idempotency-key` when the client sends one, else a
    digest of the key and the body. A client's retry sends the same key and the same bytes, so every attempt
    of one call gets the same operation_id on whichever replica it lands; two separate calls with the same
    key and the very same body share it too (they stay separate rows, each with its own `attempt` 0)."""

    __slots__ = ("_h",)

    def __init__(self, key: str | None) -> None:
        self._h = hashlib.blake2b(key.encode() if key else b"", digest_size=16, person=b"ft-operation")

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass(slots=True)
class Plan:
    """A request to forward: where, with which head, and the capture it feeds (None: not a Messages call)."""

    upstream: Upstream
    head: bytes  # the request line and headers, without framing and the final blank line
    capture: Any
    digest: OperationDigest | None
    idempotency_key: str | None
    is_head: bool


@dataclass(slots=True)
class Local:
    """A request the gateway answers itself."""

    status: int
    body: bytes


class GatewayApp:
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        capturer: Capturer,
        *,
        key_map: KeyMap | None = None,
        require_attribution: bool = False,
        status: GatewayStatus | None = None,
        on_error: Callable[..., None] | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.default = next(iter(self.upstreams.values()))
        self._capturer = capturer
        self._key_map = key_map or KeyMap()
        self._require = require_attribution
        self.status = status or GatewayStatus(self.upstreams)
        self.on_error = on_error
        self._host = {name: (u.host if u.port == (443 if u.scheme == "https" else 80)
                             else f"{u.host}:{u.port}").encode() for name, u in self.upstreams.items()}
        self._prefix = {name: u.prefix.encode() for name, u in self.upstreams.items()}

    def plan(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Plan | Local:
        path_b, _, query = target.partition(b"?")
        if path_b == b"/healthz" and method in (b"GET", b"HEAD"):
            self.status.in_flight += 1  # counts itself, as any request in flight
            try:
                return Local(*self.status.healthz())
            finally:
                self.status.in_flight -= 1
        upstream = self.default
        if path_b.startswith(b"/r/"):
            name_b, _, _ = path_b[3:].partition(b"/")
            name = name_b.decode("latin-1")
            found = self.upstreams.get(name)
            if found is None:
                return Local(404, error_body("not_found_error", f"foundry-telemetry gateway: no upstream named "
                                                                f"{name!r} (known: {', '.join(self.upstreams)})"))
            upstream = found
            path_b = path_b[3 + len(name_b):] or b"/"
        forwarded: list[bytes] = []
        found_attr: dict[str, str] = {}
        key: str | None = None
        retry = b""
        idempotency: bytes | None = None
        trace: dict[str, str] | None = None
        connection_tokens: set[bytes] = set()
        for name_raw, value in headers:
            name_b = name_raw.lower()
            if name_b in NOT_FORWARDED:
                if name_b == b"connection":
                    connection_tokens.update(t.strip().lower() for t in value.split(b","))
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
            elif name_b == b"idempotency-key":
                idempotency = value
            elif name_b in (b"traceparent", b"tracestate"):
                trace = trace or {}
                trace[name_b.decode()] = value.decode("latin-1")
            forwarded.append(name_raw)
            forwarded.append(b": ")
            forwarded.append(value)
            forwarded.append(b"\r\n")
        if connection_tokens:  # headers the client named hop-by-hop in `connection`: not forwarded either
            kept = []
            for i in range(0, len(forwarded), 4):
                if forwarded[i].lower() not in connection_tokens:
                    kept += forwarded[i:i + 4]
            forwarded = kept

        attribution = self._attribution(found_attr, key)
        if self._require and not (attribution.team or attribution.project or attribution.user):
            self.status.rejected += 1
            return Local(400, error_body(
                "invalid_request_error",
                "foundry-telemetry gateway: this request has no attribution; send an x-foundry-team header "
                "(and optionally x-foundry-project, x-foundry-user, x-foundry-tags: k=v,k=v), or call with a "
                "key listed in the gateway's key map"))

        upstream_path = self._prefix[upstream.name] + path_b + (b"?" + query if query else b"")
        head = b"".join((method, b" ", upstream_path, b" HTTP/1.1\r\nhost: ", self._host[upstream.name], b"\r\n",
                         *forwarded))
        capture = digest = None
        if method == b"POST" and is_messages_path(unquote(path_b.decode("latin-1")) if b"%" in path_b
                                                  else path_b.decode("latin-1")):
            url = upstream.url + upstream_path[len(self._prefix[upstream.name]):].decode("latin-1")
            capture = self._begin(url, retry, attribution, trace)
            if capture is not None and idempotency is None:
                digest = OperationDigest(key)
        return Plan(upstream, head, capture, digest, idempotency.decode("latin-1") if idempotency else None,
                    method == b"HEAD")

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

    def _begin(self, url: str, retry: bytes, attribution: Attribution, trace: dict[str, str] | None) -> Any:
        parent = None
        if trace is not None and "traceparent" in trace:  # the client's W3C trace context parents the span
            try:
                from opentelemetry.propagate import extract

                parent = extract(trace)
            except Exception:
                parent = None
        # the operation id is set when the capture ends (a digest of the body, updated as the body passes)
        return self._capturer.begin(url=url, operation_id="pending", attempt=int(retry) if retry.isdigit() else 0,
                                    attribution=attribution, otel_context=parent)
