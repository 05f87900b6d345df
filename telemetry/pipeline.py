"""The hand-off between the request path and everything slow: a bounded queue and one worker thread
that turns captures into records, prices them, and feeds the sinks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from .capture.parse import build_record
from .capture.state import AttemptCapture
from .finance.discount import Discounts, billed_cost
from .handoff import Handoff
from .health import Health
from .pricing import PriceTable
from .record import UsageRecord


class RecordSink(Protocol):
    def write(self, record: UsageRecord) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def close(self, timeout: float | None = None) -> None: ...


class Pipeline:
    def __init__(
        self,
        prices: PriceTable,
        sinks: Sequence[RecordSink],
        health: Health,
        *,
        emit: Callable[[UsageRecord, AttemptCapture], None] | None = None,
        capture_content: bool = False,
        queue_size: int = 10_000,
        discounts: Discounts | None = None,
    ) -> None:
        self._prices = prices
        self._discounts = discounts or Discounts()
        self._sinks = list(sinks)
        self._emit = emit
        self._health = health
        self._capture_content = capture_content
        # wake for a batch, not per call: each wake-up is a thread switch and a GIL hand-off the caller pays for
        self._queue: Handoff[AttemptCapture | threading.Event | None] = Handoff(queue_size, wake_at=256)
        self._lock = threading.Lock()  # one record at a time, worker or inline
        self._thread = threading.Thread(target=self._run, name="foundry-telemetry-pipeline", daemon=True)
        self._thread.start()
        self._closed = False
        self.processed = 0

    def submit(self, capture: AttemptCapture) -> None:
        """Called on the request path; O(1), never raises, never blocks."""
        try:
            if self._closed:  # a stream finished after shutdown: still record it
                self._process(capture)
                return
            if not self._queue.put(capture):
                # never drop: finish it here, on the caller's thread, rather than lose it
                self._health.failed("pipeline_queue_full", message="queue full; processing inline")
                self._process(capture)
        except Exception as exc:  # pragma: no cover
            self._health.failed("pipeline_submit", exc)

    def _run(self) -> None:
        stop = False
        while not stop:
            self._queue.wait(0.1)
            for item in self._queue.drain():  # everything drained is processed, even after the stop marker
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    item.set()
                else:
                    self._process(item)

    def _process(self, capture: AttemptCapture) -> None:
        with self._lock:
            try:
                record = build_record(capture, self._capture_content)
                record.record_id = uuid.uuid4().hex
            except Exception as exc:
                self._health.failed("parse", exc)
                return
            try:
                record.cost_usd = self._prices.cost(record)
                record.discount = self._discounts.for_resource(record.resource)
                record.billed_cost_usd = billed_cost(record.cost_usd, record.discount)
            except Exception as exc:
                self._health.failed("pricing", exc)
            if self._emit is not None:
                try:
                    self._emit(record, capture)
                except Exception as exc:
                    self._health.failed("otel_export", exc)
            for sink in self._sinks:
                try:
                    sink.write(record)
                except Exception as exc:
                    self._health.failed(f"sink_{type(sink).__name__}", exc)
            self.processed += 1

    def flush(self, timeout: float | None = 30.0) -> bool:
        done = threading.Event()
        if not self._thread.is_alive():
            return True
        self._queue.put_urgent(done)
        ok = done.wait(timeout)
        for sink in self._sinks:
            try:
                ok = sink.flush(timeout) and ok
            except Exception as exc:
                self._health.failed(f"sink_flush_{type(sink).__name__}", exc)
                ok = False
        return ok

    def close(self, timeout: float | None = 30.0) -> None:
        self.flush(timeout)
        self._closed = True
        if self._thread.is_alive():
            self._queue.put_urgent(None)
            self._thread.join(timeout)
        for sink in self._sinks:
            try:
                sink.close(timeout)
            except Exception as exc:
                self._health.failed(f"sink_close_{type(sink).__name__}", exc)
