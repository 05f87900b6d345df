"""Start captures and attach them to responses; shared by the SDK middleware and the transports."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from opentelemetry.context import Context, get_current

from ..context import Attribution, _current
from .state import AttemptCapture
from .streams import attach

log = logging.getLogger("telemetry")

CAPTURED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
_attribution = _current.get  # `current_attribution()`, without its frame


def is_messages_path(path: str) -> bool:
    return path.rstrip("/").endswith(CAPTURED_PATHS)


class Capturer:
    """Begins attempts and hands finished ones to `submit` (the pipeline). Never raises into the caller."""

    def __init__(self, submit: Callable[[AttemptCapture], None], on_error: Callable[[str, BaseException], None],
                 *, keep_text: bool = False):
        self._submit = submit
        self._on_error = on_error
        self._keep_text = keep_text  # content capture is on: long streams keep their text as they are scanned

    def begin(
        self,
        *,
        url: Any,
        operation_id: str | None,
        attempt: int,
        body: Mapping[str, Any] | None = None,
        raw_body: bytes | None = None,
        attribution: Attribution | None = None,
        otel_context: Context | None = None,
    ) -> AttemptCapture | None:
        """`attribution` and `otel_context` default to the caller's `usage_context` and current context; the
        gateway, which has neither in context, passes what the request's headers say."""
        try:
            return AttemptCapture(
                self._submit,
                operation_id=operation_id or uuid.uuid4().hex,
                attempt=attempt,
                url=url,
                attribution=attribution if attribution is not None else _attribution(),
                otel_context=otel_context if otel_context is not None else get_current(),
                body=body,
                raw_body=raw_body,
                keep_text=self._keep_text,
            )
        except Exception as exc:
            self._on_error("capture_begin", exc)
            return None

    def observe(self, capture: AttemptCapture | None, response: Any, mod: ModuleType, url: Any,
                *, is_async: bool) -> None:
        if capture is None:
            return
        try:
            attach(response, mod, capture, url, is_async=is_async)
        except Exception as exc:
            self._on_error("capture_attach", exc)
            capture.end(exception=exc)

    @staticmethod
    def fail(capture: AttemptCapture | None, exc: BaseException) -> None:
        if capture is not None:
            capture.end(exception=exc)
