"""Byte-stream tees: the caller reads the same bytes, the capture sees them pass.

One factory builds the four classes (httpx / httpx2, sync / async), since `httpx2.Response` checks
`isinstance(stream, httpx2.SyncByteStream)`. The capture ends on exhaustion, error, close, task
cancellation, or garbage collection, whichever comes first.
"""

from __future__ import annotations

import functools
import weakref
from types import ModuleType
from typing import Any

from .state import AttemptCapture

# tees whose stream has not ended yet; `end_open_streams` finishes them at shutdown (as a finalizer would at exit)
_open: weakref.WeakSet[Any] = weakref.WeakSet()


def end_open_streams() -> None:
    """Finish the captures of streams still open (the process is exiting): their partial usage is kept."""
    for tee in list(_open):
        tee._capture.end(closed_early=True)


@functools.cache
def tee_classes(mod: ModuleType) -> tuple[type, type]:
    class SyncTee(mod.SyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any, capture: AttemptCapture) -> None:
            self._inner = inner
            self._capture = capture
            _open.add(self)

        def __del__(self) -> None:  # garbage collected unread: cheaper than a weakref.finalize per call
            self._capture.end(closed_early=True)

        def __iter__(self):  # type: ignore[no-untyped-def]
            capture = self._capture
            try:
                for chunk in self._inner:
                    capture.on_chunk(chunk)
                    yield chunk
            except GeneratorExit:
                capture.end(closed_early=True)
                raise
            except BaseException as exc:
                capture.end(exception=exc)
                raise
            capture.end(exhausted=True)

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._capture.end(closed_early=True)

    class AsyncTee(mod.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any, capture: AttemptCapture) -> None:
            self._inner = inner
            self._capture = capture
            _open.add(self)

        def __del__(self) -> None:  # garbage collected unread: cheaper than a weakref.finalize per call
            self._capture.end(closed_early=True)

        async def __aiter__(self):  # type: ignore[no-untyped-def]
            capture = self._capture
            try:
                async for chunk in self._inner:
                    capture.on_chunk(chunk)
                    yield chunk
            except GeneratorExit:
                capture.end(closed_early=True)
                raise
            except BaseException as exc:  # CancelledError included
                capture.end(exception=exc)
                raise
            capture.end(exhausted=True)

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._capture.end(closed_early=True)

    return SyncTee, AsyncTee


def attach(response: Any, mod: ModuleType, capture: AttemptCapture, url: Any, *, is_async: bool) -> None:
    """Route `response`'s bytes through the capture, or finish it now if the body is already read."""
    capture.on_response(response.status_code, response.headers, url)
    if response.is_stream_consumed:
        capture.on_chunk(response.content)
        capture.end(exhausted=True)
        return
    sync_tee, async_tee = tee_classes(mod)
    response.stream = (async_tee if is_async else sync_tee)(response.stream, capture)
