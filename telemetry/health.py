"""Failure accounting for fail-open paths: every failure is counted, and logged once per kind."""

from __future__ import annotations

import logging
import threading
from collections import Counter

log = logging.getLogger("telemetry")


class Health:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: Counter[str] = Counter()

    def failed(self, kind: str, exc: BaseException | None = None, message: str | None = None) -> None:
        with self._lock:
            self.failures[kind] += 1
            first = self.failures[kind] == 1
        if first:
            # first line only: driver errors carry the SQL and its parameters on later lines
            text = (str(exc).strip().splitlines() or [""])[0][:300] if exc else ""
            detail = message or (f"{type(exc).__name__}: {text}" if exc else "")
            log.warning("foundry-telemetry: %s failed (%s); counting further failures silently", kind, detail)

    def count(self, kind: str) -> None:
        """Count without logging (the caller has said it its own way)."""
        with self._lock:
            self.failures[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.failures)
