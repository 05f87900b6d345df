"""The hand-off between the request path and everything slow: a bounded queue and one worker thread
that turns captures into records, prices them, and feeds the sinks."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .capture.parse import build_record
from .capture.state import AttemptCapture
from .finance.discount import Discounts, billed_cost
from .handoff import Handoff
from .health import Health
from .pricing import PriceTable
from .record import UsageRecord

# how often the worker looks for captures when fewer than a batch are waiting: the journal (and so what a
# SIGKILL can lose) is never further behind the calls than this
POLL_S = 0.005
# this many empty polls in a row (20 ms) and the worker sleeps until the next capture wakes it: each poll is a
# timed wait (~50 µs CPU on this machine) plus a cold start of the code that follows, so at a few calls a second
# 40 empty polls (0.2 s) after every call cost more than the call's own processing; from ~50 calls a second on
# the worker stays awake and the callers never pay for waking it (bench/threads.py --paced)
IDLE_AFTER_POLLS = 4
# token counts beyond this are not a real response (and would overflow the ledger's integer columns)
MAX_TOKENS_VALUE = 10**12
_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_creation_5m_input_tokens",
                 "cache_creation_1h_input_tokens", "cache_read_input_tokens", "web_search_requests")
_HOLD_S = 0.001  # longest stretch of records processed without offering the GIL to the request threads
# Catching the journal up. The pipeline thread needs the GIL to journal, and a caller that keeps it (CPU-bound
# between calls, or on a path that lets go of it only for moments, which CPython's hand-off loses to a holder
# that re-takes it at once) can starve that thread for seconds: measured 0.03–1.8 s median behind over an
# in-process transport, so a SIGKILL lost that much where issue 8 allows the last 10 ms. So when a call ends
# and the oldest capture still waiting is older than `catch_up_after_ms` (setting `journal_catch_up_ms`, 7),
# the caller wakes the pipeline and blocks (letting go of the GIL for real) until the pipeline has journaled
# a hand-off, for at most CATCH_UP_WAIT_S. While the pipeline keeps up this costs one comparison per call
CATCH_UP_WAIT_S = 0.003
# after a wait that timed out (the ledger thread held the GIL meanwhile, or the pipeline blocked on a slow
# disk), callers do not wait again for this long, doubled after each timeout in a row up to the most: a stuck
# pipeline costs callers at most 3 ms a second
CATCH_UP_BACKOFF_NS = (10_000_000, 1_000_000_000)
# a wait in vain is counted (health `pipeline_behind`); from the third in a row (the pipeline has not run for
# 40 ms or more: a stall, not a GC pass or a ledger batch) it is also a failure: exported, logged at a bounded rate
CATCH_UP_STALL_AFTER = 3


def _yield_gil() -> None:
    time.sleep(0)


def _urandom_id() -> str:
    return os.urandom(16).hex()  # as uuid4().hex: 128 random bits


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
        catch_up_after_ms: int | None = None,
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
        self._drained = [hook for sink in self._sinks if callable(hook := getattr(sink, "drained", None))]
        self.catch_up_after_ns = catch_up_after_ms * 1_000_000 if catch_up_after_ms else None  # None: never wait
        self._reported = (0, 0)  # (timeouts, stalls) the worker has reported (callers only count them)
        self._in_a_row = 0  # catch-up waits in vain since the last one that was not
        self._caught_up = threading.Event()  # set by the worker after each hand-off is journaled
        self._holding_since: int | None = None  # t_end of the oldest capture the worker holds unjournaled
        self._no_catch_up_until = 0
        self.catch_ups = 0  # waits callers did for the journal (and `catch_up_timeouts` of them that timed out)
        self.catch_up_timeouts = 0
        self.catch_up_stalls = 0  # timeouts that came CATCH_UP_STALL_AFTER or more in a row
        self._thread = threading.Thread(target=self._run, name="foundry-telemetry-pipeline", daemon=True)
        self._closed = False
        self.processed = 0
        # how the worker shares the GIL with the request threads: instance attributes, so that two pipelines in
        # one process can differ and bench/tail.py can A/B them block by block (the defaults are what ships)
        self.hold_s = _HOLD_S
        self.yield_gil: Callable[[], None] = _yield_gil
        self.new_id: Callable[[], str] = _urandom_id
        self._thread.start()

    def submit(self, capture: AttemptCapture) -> None:
        """Called on the request path; O(1), never raises, never blocks."""
        try:
            if self._closed:  # a stream finished after shutdown: still record it
                self._process(capture)
                return
            queue = self._queue
            if not queue.put(capture):
                # never drop: finish it here, on the caller's thread, rather than lose it
                self._health.failed("pipeline_queue_full", message="queue full; processing inline")
                self._process(capture)
                return
            limit = self.catch_up_after_ns
            if limit is not None:
                since = self._holding_since
                if since is None:
                    since = getattr(queue.oldest(), "t_end", None)
                end = capture.t_end
                if since is not None and end is not None and end - since > limit:
                    self._catch_up(end)
        except Exception as exc:  # pragma: no cover
            self._health.failed("pipeline_submit", exc)

    def _catch_up(self, now_ns: int) -> None:
        """The journal is behind: wake the worker and wait (GIL released) until it has journaled a hand-off."""
        if now_ns < self._no_catch_up_until or not self._thread.is_alive():
            return
        self.catch_ups += 1
        done = self._caught_up
        done.clear()
        self._queue.wake()
        if done.wait(CATCH_UP_WAIT_S):
            self._in_a_row = 0
        else:
            self._in_a_row += 1  # counted here, reported by the worker: no logging (I/O) on the caller's thread
            self.catch_up_stalls += self._in_a_row >= CATCH_UP_STALL_AFTER
            self.catch_up_timeouts += 1
            first, most = CATCH_UP_BACKOFF_NS
            self._no_catch_up_until = now_ns + min(first << min(self._in_a_row - 1, 30), most)

    def _report_timeouts(self) -> None:
        timeouts, stalls = self.catch_up_timeouts, self.catch_up_stalls
        new_stalls = stalls - self._reported[1]
        for _ in range(timeouts - self._reported[0] - new_stalls):
            self._health.count("pipeline_behind")
        for _ in range(new_stalls):  # each counted and exported; logged at a bounded rate
            self._health.failed("pipeline_behind", message="the journal is behind the calls: the pipeline thread "
                                f"has not run through {CATCH_UP_STALL_AFTER} catch-up waits in a row, so a SIGKILL "
                                "now loses more than the last few milliseconds of calls")
        self._reported = (timeouts, stalls)

    def _run(self) -> None:
        stop = False
        empty = 0
        clock = time.perf_counter
        while not stop:
            try:
                if empty >= IDLE_AFTER_POLLS:
                    self._queue.sleep(1.0)
                else:
                    self._queue.wait(POLL_S)
                items = self._queue.drain()
                empty = 0 if items else empty + 1
                hold, yield_gil = self.hold_s, self.yield_gil
                held = clock()
                for i, item in enumerate(items):  # everything drained is processed, even after the stop marker
                    if item is None:
                        stop = True
                    elif isinstance(item, threading.Event):
                        item.set()
                    else:
                        self._process(item)
                        if clock() - held > hold and i + 1 < len(items):
                            # hand the GIL back: a caller whose socket just became readable then waits ~1 ms
                            # for it, not the interpreter's 5 ms switch interval; yielding every ~1 ms (not
                            # every record) keeps the pipeline ahead of CPU-bound callers. What is processed
                            # goes to the journal first, and callers see how old the rest is
                            self._journaled()
                            self._holding_since = getattr(items[i + 1], "t_end", None)
                            self._caught_up.set()
                            yield_gil()
                            held = clock()
                self._holding_since = None
                if items:
                    self._journaled()
                    self._caught_up.set()
                if self.catch_up_timeouts != self._reported[0]:
                    self._report_timeouts()
            except Exception as exc:  # never die: count it, say it, go on
                self._holding_since = None
                self._health.failed("pipeline_loop", exc)

    def _journaled(self) -> None:
        for hook in self._drained:
            hook()

    def _process(self, capture: AttemptCapture) -> None:
        with self._lock:
            record = self._build(capture)
            record.record_id = self.new_id()
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

    def _build(self, capture: AttemptCapture) -> UsageRecord:
        """A record for every attempt: a response that cannot be parsed still gives what is known."""
        try:
            record = build_record(capture, self._capture_content)
        except Exception as exc:  # RecursionError on deep JSON, odd types, ...
            self._health.failed("parse", exc)
            return unparsed_record(capture)
        for name in _TOKEN_FIELDS:
            if getattr(record, name) > MAX_TOKENS_VALUE:
                self._health.failed("parse", message=f"{name} out of range in a response")
                setattr(record, name, 0)
                record.error_type = record.error_type or "unparsed_response"
        return record

    def flush(self, timeout: float | None = 30.0) -> bool:
        done = threading.Event()
        if not self._thread.is_alive():
            if not self._closed:
                self._health.failed("pipeline_thread", message="the pipeline thread is not running")
            ok = self._closed
        else:
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


def _safe(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except Exception:
        return default


def unparsed_record(capture: AttemptCapture) -> UsageRecord:
    """What is known without the body: ids, status, timing, attribution; `error_type = unparsed_response`."""
    attribution = _safe(lambda: capture.attribution)
    record = UsageRecord(
        created_at=_safe(lambda: dt.datetime.fromtimestamp(capture.wall_ns / 1e9, dt.UTC)) or dt.datetime.now(dt.UTC),
        operation_id=_safe(lambda: str(capture.operation_id)) or uuid.uuid4().hex,
        attempt=_safe(lambda: int(capture.attempt), 0),
        error_type="unparsed_response",
        tags=_safe(lambda: {str(k): str(v) for k, v in dict(attribution.tags).items()}, {}),
    )
    record.status_code = _safe(lambda: int(capture.status_code) if capture.status_code is not None else None)
    record.request_id = _safe(lambda: capture.header("request-id"))
    record.apim_request_id = _safe(lambda: capture.header("apim-request-id"))
    record.latency_ms = _safe(lambda: ((capture.t_end or capture.t0) - capture.t0) / 1e6)
    record.team = _safe(lambda: attribution.team)
    record.project = _safe(lambda: attribution.project)
    record.user = _safe(lambda: attribution.user)
    model = _safe(lambda: (capture.body or {}).get("model"))
    record.deployment = model if isinstance(model, str) else None
    url = _safe(lambda: str(capture.url if capture.url is not None else capture.request_url)) or ""
    record.operation = "count_tokens" if "count_tokens" in url else "chat"
    return record
