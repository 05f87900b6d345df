"""Where the CPU of one instrumented call goes, stage by stage, each stage timed alone in a tight loop.

Captures come from real SDK calls over an in-process mock transport (no network), then each stage the pipeline
runs is repeated on them: so the figures are lower bounds (warm caches, no GIL hand-offs) that add up to the
per-call budget `bench/overhead.py` measures end to end. CPU is `time.process_time`, medians of 5 repeats; the
request path is given as function calls counted by cProfile (exact, unlike µs under neighbours' load).
Usage: python bench/hotpath.py [N]
"""

from __future__ import annotations

import cProfile
import datetime as dt
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

sys.path.insert(0, str(Path(__file__).parent))
from overhead import NullMetricExporter, NullSpanExporter, _create, _stream, sdk_client  # noqa: E402

from telemetry import Telemetry  # noqa: E402
from telemetry.capture.parse import build_record  # noqa: E402
from telemetry.ledger.db import ensure_schema, get_engine  # noqa: E402
from telemetry.ledger.store import LedgerStore  # noqa: E402
from telemetry.otel import OTelSink  # noqa: E402


class PassThrough(anthropic.Middleware):
    def handle(self, request: Any, call_next: Any) -> Any:
        return call_next(request)


def per_call(fn: Callable[[], Any], n: int, clock: Callable[[], float] = time.process_time) -> float:
    runs = []
    for _ in range(5):
        t = clock()
        for _ in range(n):
            fn()
        runs.append((clock() - t) / n)
    return statistics.median(runs) * 1e6


def main(n: int = 300) -> None:
    tmp = tempfile.mkdtemp()
    tel = Telemetry(db_url=f"sqlite:///{tmp}/unused.db", ledger=False)
    captures: list[Any] = []
    tel._pipeline._process = captures.append  # type: ignore[method-assign]  # keep the captures, do nothing else
    raw = sdk_client(mock=True)
    noop = raw.with_options(middleware=[PassThrough()])
    inst = tel.instrument(sdk_client(mock=True))
    rows: list[tuple[str, float]] = []
    calls: list[tuple[str, float, float, float]] = []
    for label, call in (("create", _create), ("stream", _stream)):
        for c in (raw, noop, inst):
            for _ in range(50):
                call(c)
        # the caller's thread: function calls (Python and C) per call, counted by cProfile — exact, where timing
        # a few µs out of ~1 ms on a shared 2-core machine is not
        counts = []
        for c in (raw, noop, inst):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(n):
                call(c)
            prof.disable()
            counts.append(sum(st[1] for st in pstats.Stats(prof).stats.values()) / n)  # type: ignore[attr-defined]
        calls.append((label, *counts))
    tel.flush()
    creates = [c for c in captures if c.body and not c.body.get("stream")][:50]
    streams = [c for c in captures if c.body and c.body.get("stream")][:50]
    prices = tel.prices
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(NullSpanExporter()))
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(NullMetricExporter(),
                                                                     export_interval_millis=60_000)])
    sink = OTelSink(tp, mp)
    for label, caps in (("create", creates), ("stream", streams)):
        records = [build_record(c) for c in caps]
        for r in records:
            r.cost_usd = prices.cost(r)
        it = iter(range(10**9))
        rows.append((f"pipeline, {label}: build_record (parse)", per_call(lambda caps=caps, it=it: build_record(
            caps[next(it) % len(caps)]), n)))
        rows.append((f"pipeline, {label}: PriceTable.cost", per_call(lambda rs=records, it=it: prices.cost(
            rs[next(it) % len(rs)]), n)))
        rows.append((f"pipeline, {label}: our span (SDK span + ~25 attributes)", per_call(
            lambda rs=records, cs=caps: sink._span(rs[0], cs[0]), n)))
        rows.append((f"pipeline, {label}: metrics ({'3' if label == 'create' else '4 + 1 per chunk gap'} "
                     f"histogram points)", per_call(lambda rs=records: sink._metrics(rs[0]), n)))
    url = f"sqlite:///{tmp}/ledger.db"
    ensure_schema(url)
    store = LedgerStore(get_engine(url))
    batch = 250
    records = [build_record(creates[i % len(creates)]) for i in range(batch * 12)]
    for i, r in enumerate(records):
        r.record_id, r.request_id = f"{i:032x}", f"req_{i:028x}"
        r.created_at = dt.datetime.now(dt.UTC)
    chunks = iter(records[i:i + batch] for i in range(0, len(records), batch))
    store.insert(next(chunks))
    t = time.process_time()
    done = 0
    for chunk in chunks:
        done += store.insert(chunk)
    rows.append((f"ledger (SQLite): insert + daily rollups, per row at {batch} rows a batch",
                 (time.process_time() - t) / done * 1e6))
    tel.shutdown()
    print("caller's thread, function calls per API call (cProfile counts, exact):")
    for label, r, m, i in calls:
        print(f"  {label}: raw SDK {r:.0f}; + a pass-through SDK middleware {m - r:+.0f}; "
              f"+ our capture {i - m:+.0f} (total instrumented {i / r:.3f}×)")
    print(f"{'stage':78} {'µs per call':>11}")
    for name, us in rows:
        print(f"{name:78} {us:11.1f}")
    print(f"(threads alive: {threading.active_count()}; every stage alone, warm: lower bounds)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
