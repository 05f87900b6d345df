"""A/B of the OpenTelemetry sink alone: our span and our metric points, public API vs the SDK shortcuts.

Records come from real SDK calls over the in-process mock transport (as bench/hotpath.py). Both sinks record
into the same kind of providers (a BatchSpanProcessor and a periodic reader, both exporting to nothing), and
blocks of each are alternated, order rotated per round, so the neighbours' load hits both alike. Printed per
stage: CPU µs per call (process_time, GC off inside a block), median and min over rounds for each side and the
median of the per-round deltas; then the GC-tracked objects a finished span keeps alive while it waits for its
batch export (what paces CPython's full GC passes with OTel on).

`--calls-e2e N` (0 to skip) then runs whole instrumented calls (the SDK, its own span, our capture, pipeline and
sink; ledger off) over the mock transport, the pipeline's emit switched between the two sinks block by block and
raw SDK blocks in the same rotation: CPU per call over raw, and CPU in full GC passes per call apart.

`--baseline FILE` takes the "before" side from another version of telemetry/otel.py (e.g. `git show
main:telemetry/otel.py > /tmp/otel_main.py`), loaded inside this package; otherwise it is this sink with
`shortcuts=False` (public API only).
Usage: python bench/otel_sink.py [--rounds R] [--calls N] [--calls-e2e N] [--baseline FILE]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

sys.path.insert(0, str(Path(__file__).parent))
from overhead import FULL_GC, NullMetricExporter, NullSpanExporter, _create, _stream, sdk_client  # noqa: E402

from telemetry import Telemetry, usage_context  # noqa: E402
from telemetry.capture.parse import build_record  # noqa: E402
from telemetry.otel import OTelSink  # noqa: E402


def captures() -> dict[str, tuple[list[Any], list[Any]]]:
    tmp = tempfile.mkdtemp()
    tel = Telemetry(db_url=f"sqlite:///{tmp}/unused.db", ledger=False)
    caps: list[Any] = []
    tel._pipeline._process = caps.append  # type: ignore[method-assign]  # keep the captures, do nothing else
    client = tel.instrument(sdk_client(mock=True))
    with usage_context(team="payments", project="checkout", user="u1"):
        for _ in range(10):
            _create(client)
            _stream(client)
    tel.flush()
    out = {}
    for label, stream in (("create", False), ("stream", True)):
        cs = [c for c in caps if c.body and bool(c.body.get("stream")) == stream][:10]
        rs = [build_record(c) for c in cs]
        for r in rs:
            r.cost_usd = tel.prices.cost(r)
        out[label] = (rs, cs)
    tel.shutdown()
    return out


def providers(queue: int) -> tuple[TracerProvider, MeterProvider]:
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(NullSpanExporter(), max_queue_size=queue, max_export_batch_size=queue,
                                             schedule_delay_millis=3_600_000))
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(NullMetricExporter(),
                                                                     export_interval_millis=3_600_000)])
    return tp, mp


def sink_class(baseline: str | None) -> type:
    if baseline is None:
        return OTelSink
    spec = importlib.util.spec_from_file_location("telemetry._otel_baseline", baseline)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OTelSink  # type: ignore[no-any-return]


def block(fn: Callable[[], Any], n: int) -> float:
    """CPU per call of `fn` alone: no GC pass inside the block (their share is measured apart, by survivors)."""
    gc.collect()
    gc.disable()
    try:
        t = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t) / n * 1e6
    finally:
        gc.enable()


def tracked_per_span(sink: Any, record: Any, capture: Any, n: int = 1000) -> float:
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(n):
        sink._span(record, capture)
    gc.collect()
    return (len(gc.get_objects()) - before) / n


def end_to_end(before_cls: type, baseline: str | None, rounds: int, n: int) -> None:
    survivors(before_cls, baseline, n)
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(NullSpanExporter()))  # as shipped: 2048 queued, export each 5 s / 512
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(NullMetricExporter(),
                                                                     export_interval_millis=60_000)])
    tmp = tempfile.mkdtemp()
    tel = Telemetry(db_url=f"sqlite:///{tmp}/unused.db", ledger=False, tracer_provider=tp, meter_provider=mp)
    sinks = {"before": before_cls(tp, mp) if baseline else OTelSink(tp, mp, shortcuts=False),
             "after": OTelSink(tp, mp)}
    raw = sdk_client(tp, mock=True)
    inst = tel.instrument(sdk_client(tp, mock=True))
    pipeline: Any = tel._pipeline

    def run(side: str, call: Callable[[Any], Any]) -> tuple[float, float]:
        if side != "raw":
            pipeline._emit = sinks[side].emit
        client = raw if side == "raw" else inst
        gc0, c0 = FULL_GC.cpu, time.process_time()
        for _ in range(n):
            call(client)
        tel.flush()
        tp.force_flush()
        return (time.process_time() - c0) / n * 1e6, (FULL_GC.cpu - gc0) / n * 1e6

    for label, call in (("create", _create), ("stream", _stream)):
        for side in ("raw", "before", "after"):
            run(side, call)
        cpu: dict[str, list[float]] = {"raw": [], "before": [], "after": []}
        full: dict[str, list[float]] = {"raw": [], "before": [], "after": []}
        for rnd in range(rounds):
            order = ["raw", "before", "after"]
            order = order[rnd % 3:] + order[:rnd % 3]
            for side in order:
                c, g = run(side, call)
                cpu[side].append(c)
                full[side].append(g)
        print(f"end to end, {label}: raw SDK {statistics.median(cpu['raw']):.0f} µs CPU per call (median of {rounds})")
        for side in ("before", "after"):
            d = [x - y for x, y in zip(cpu[side], cpu["raw"], strict=True)]
            dg = [x - y for x, y in zip([c - g for c, g in zip(cpu[side], full[side], strict=True)],
                                        [c - g for c, g in zip(cpu["raw"], full["raw"], strict=True)], strict=True)]
            print(f"  {side:6}: over raw {statistics.median(d):+6.0f} µs median (min {min(d):+.0f}); without full GC "
                  f"{statistics.median(dg):+6.0f} µs; full GC {statistics.mean(full[side]):5.0f} µs per call "
                  f"(raw {statistics.mean(full['raw']):.0f})")
    tel.shutdown()
    tp.shutdown()


def survivors(before_cls: type, baseline: str | None, n: int) -> None:
    """GC-tracked objects alive per whole call while its spans wait for export (none exported here): what
    reaches the old generation and paces full passes. Exact counts, not timings."""
    class Hold(SpanProcessor):  # a batch processor that never gets to export (flushes export nothing either)
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def on_end(self, span: Any) -> None:
            self.spans.append(span)

    out = {}
    for side in ("raw", "before", "after"):
        tp = TracerProvider()
        tp.add_span_processor(Hold())
        mp = MeterProvider()
        tmp = tempfile.mkdtemp()
        tel = Telemetry(db_url=f"sqlite:///{tmp}/unused.db", ledger=False, tracer_provider=tp, meter_provider=mp)
        if side != "raw":
            sink = before_cls(tp, mp) if side == "before" and baseline else OTelSink(tp, mp, shortcuts=side == "after")
            tel._pipeline._emit = sink.emit  # type: ignore[attr-defined]
        client = sdk_client(tp, mock=True) if side == "raw" else tel.instrument(sdk_client(tp, mock=True))
        for _ in range(20):
            _create(client)
        tel.flush()
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(n):
            _create(client)
        tel.flush()
        gc.collect()
        out[side] = (len(gc.get_objects()) - before) / n
        tel.shutdown()
        tp.shutdown()
    print("GC-tracked objects alive per create call while its spans wait for export: "
          + ", ".join(f"{k} {v:.1f}" for k, v in out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--calls-e2e", type=int, default=0, help="calls per end-to-end block (0: none)")
    ap.add_argument("--baseline", help="another telemetry/otel.py as the 'before' side")
    args = ap.parse_args()
    if args.calls_e2e:
        end_to_end(sink_class(args.baseline), args.baseline, args.rounds, args.calls_e2e)
        return
    data = captures()
    before_cls = sink_class(args.baseline)
    sides: dict[str, Any] = {}
    for side in ("before", "after"):
        tp, mp = providers(queue=args.rounds * args.calls * 4 + 10_000)  # spans stay queued: no export in a block
        sink = before_cls(tp, mp) if side == "before" else OTelSink(tp, mp)
        if side == "before" and args.baseline is None:
            sink = OTelSink(tp, mp, shortcuts=False)
        sides[side] = (sink, tp)
    stages: dict[str, Callable[[Any], Callable[[], Any]]] = {}
    for label in ("create", "stream"):
        rs, cs = data[label]
        stages[f"span, {label}"] = lambda s, r=rs[0], c=cs[0]: (lambda: s._span(r, c))
        stages[f"metrics, {label} ({3 if label == 'create' else 3 + len(rs[0].chunk_gaps_ms)} histogram points)"] = (
            lambda s, r=rs[0]: (lambda: s._metrics(r)))
    results = {(stage, side): [] for stage in stages for side in sides}
    for make in stages.values():  # warm-up, and the first point of each attribute set
        for sink, _ in sides.values():
            block(make(sink), 50)
    for rnd in range(args.rounds):
        order = list(sides.items()) if rnd % 2 == 0 else list(sides.items())[::-1]
        for stage, make in stages.items():
            for side, (sink, _) in order:
                results[stage, side].append(block(make(sink), args.calls))
    print(f"{'stage (µs per call, CPU)':58} {'before med/min':>15} {'after med/min':>15} {'Δ median':>9}")
    for stage in stages:
        b, a = results[stage, "before"], results[stage, "after"]
        delta = statistics.median(x - y for x, y in zip(a, b, strict=True))
        print(f"{stage:58} {statistics.median(b):7.1f}/{min(b):<7.1f} {statistics.median(a):7.1f}/{min(a):<7.1f} "
              f"{delta:+9.1f}")
    rs, cs = data["create"]
    for side, (sink, _) in sides.items():
        print(f"GC-tracked objects kept per queued span, {side}: {tracked_per_span(sink, rs[0], cs[0]):.1f}")
    for _, tp in sides.values():
        tp.shutdown()


if __name__ == "__main__":
    main()
