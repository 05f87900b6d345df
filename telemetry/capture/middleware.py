"""The SDK seam: `anthropic.Middleware` runs once per HTTP attempt inside the SDK's retry loop, with the
SDK's own span current, so attempts are numbered, grouped by the call's idempotency key, and parented."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from .hooks import Capturer, is_messages_path

_POST = frozenset({"post", "POST"})  # as the SDK spells it, then as HTTP does: no `upper()` for either
_captured: dict[str, bool] = {}  # request path → captured or not: a client calls a handful of them


class TelemetryMiddleware(anthropic.Middleware):
    def __init__(self, capturer: Capturer, owner: object) -> None:
        self._capturer = capturer
        self.owner = owner  # lets `instrument` tell its own middleware from another Telemetry's

    def _begin(self, request: Any) -> Any:
        try:
            options = request.options  # what `request.method`, `.url` and `.json` read, without a property each
            method = options.method
            if method not in _POST and method.upper() != "POST":
                return None
            url = options.url
            captured = _captured.get(url)
            if captured is None:
                captured = is_messages_path(url)
                if len(_captured) < 256:
                    _captured[url] = captured
            if not captured:
                return None
            body = options.json_data
            return self._capturer.begin(
                url=url,
                operation_id=options.idempotency_key,
                attempt=request.retries_taken,
                body=body if isinstance(body, dict) else None,
            )
        except Exception:
            return None

    def handle(self, request: Any, call_next: Any) -> Any:
        capture = self._begin(request)
        try:
            response = call_next(request)
        except BaseException as exc:
            self._capturer.fail(capture, exc)
            raise
        self._observe(capture, response, is_async=False)
        return response

    async def handle_async(self, request: Any, call_next: Any) -> Any:
        capture = self._begin(request)
        try:
            response = await call_next(request)
        except BaseException as exc:
            self._capturer.fail(capture, exc)
            raise
        self._observe(capture, response, is_async=True)
        return response

    def _observe(self, capture: Any, response: Any, *, is_async: bool) -> None:
        if capture is None:
            return
        http_response = getattr(response, "http_response", None)
        if http_response is None:  # another middleware short-circuited with a value
            capture.end(closed_early=True)
            return
        self._capturer.observe(capture, http_response, httpx2, http_response.request.url, is_async=is_async)
