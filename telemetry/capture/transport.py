"""The raw REST seam: transport wrappers for callers that use httpx or httpx2 directly."""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from .hooks import Capturer, is_messages_path


def _begin(capturer: Capturer, request: Any) -> Any:
    try:
        if request.method != "POST" or not is_messages_path(request.url.path):
            return None
        retry = request.headers.get("x-stainless-retry-count")
        return capturer.begin(
            url=request.url,
            operation_id=None,
            attempt=int(retry) if retry and retry.isdigit() else 0,
            raw_body=request.content,
        )
    except Exception:
        return None


@functools.cache
def transport_classes(mod: ModuleType) -> tuple[type, type]:
    class CaptureTransport(mod.BaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self, capturer: Capturer, inner: Any = None) -> None:
            self._capturer = capturer
            self._inner = inner if inner is not None else mod.HTTPTransport()

        def handle_request(self, request: Any) -> Any:
            capture = _begin(self._capturer, request)
            try:
                response = self._inner.handle_request(request)
            except BaseException as exc:
                self._capturer.fail(capture, exc)
                raise
            self._capturer.observe(capture, response, mod, request.url, is_async=False)
            return response

        def close(self) -> None:
            self._inner.close()

    class AsyncCaptureTransport(mod.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self, capturer: Capturer, inner: Any = None) -> None:
            self._capturer = capturer
            self._inner = inner if inner is not None else mod.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            capture = _begin(self._capturer, request)
            try:
                response = await self._inner.handle_async_request(request)
            except BaseException as exc:
                self._capturer.fail(capture, exc)
                raise
            self._capturer.observe(capture, response, mod, request.url, is_async=True)
            return response

        async def aclose(self) -> None:
            await self._inner.aclose()

    return CaptureTransport, AsyncCaptureTransport
