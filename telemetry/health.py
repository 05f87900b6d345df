"""Failure accounting for fail-open paths: every failure is counted, exported as the OpenTelemetry counter
`foundry.telemetry.failures` (by kind), and logged at a bounded rate — the first of a kind at once, then at
most one line a minute per kind with the count since the last line, so ongoing loss stays visible."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from . import names

log = logging.getLogger("telemetry")

LOG_EVERY_S = 60.0


class Health:
    def __init__(self, meter_provider: Any = None, *, log_every_s: float = LOG_EVERY_S) -> None:
        self._lock = threading.Lock()
        self.failures: Counter[str] = Counter()
        self.last: dict[str, str] = {}  # kind → the latest cause, one line
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._log_every = log_every_s
        self._counter: Any = None
        try:
            from opentelemetry import metrics

            meter = (meter_provider or metrics.get_meter_provider()).get_meter(names.INSTRUMENTATION_SCOPE)
            self._counter = meter.create_counter(names.METRIC_FAILURES, unit="{failure}",
                                                 description="Failures inside foundry-telemetry, by kind")
        except Exception:  # pragma: no cover - a broken meter provider must not stop start-up
            self._counter = None

    def failed(self, kind: str, exc: BaseException | None = None, message: str | None = None) -> None:
        try:
            # first line only: driver errors carry the SQL and its parameters on later lines
            text = (str(exc).strip().splitlines() or [""])[0][:300] if exc is not None else ""
            detail = message or (f"{type(exc).__name__}: {text}" if exc is not None else kind)
            now = time.monotonic()
            with self._lock:
                self.failures[kind] += 1
                self.last[kind] = detail
                self._unlogged[kind] += 1
                due = now - self._logged_at.get(kind, -1e18) >= self._log_every
                if due:
                    count, self._unlogged[kind] = self._unlogged[kind], 0
                    first = kind not in self._logged_at
                    self._logged_at[kind] = now
            if self._counter is not None:
                self._counter.add(1, {names.FOUNDRY_FAILURE_KIND: kind})
            if due:
                if first:
                    log.warning("foundry-telemetry: %s failed (%s)", kind, detail)
                else:
                    log.warning("foundry-telemetry: %s failed %d times in the last %.0f s (latest: %s)",
                                kind, count, self._log_every, detail)
        except Exception:  # pragma: no cover - accounting must never raise into the failing path
            pass

    def count(self, kind: str) -> None:
        """Count without logging (the caller has said it its own way)."""
        with self._lock:
            self.failures[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.failures)

    def why(self) -> dict[str, str]:
        """kind → the latest cause, for `tel.health` and `flush()` returning False."""
        with self._lock:
            return dict(self.last)
