"""The SDK shortcuts of telemetry/otel_shortcuts.py export exactly what the public OpenTelemetry API exports.

Two sinks, one with the shortcuts and one without (`shortcuts=False`: public API only), get the same records;
every exported span and metric point must match field by field (ids and timestamps excepted, which differ by
nature), under SDK set-ups the shortcuts take and set-ups they must decline (attribute-reading samplers, span
limits, processors that add events or hook span ending, view filters, delta temporality, several readers,
exemplar sampling). On an SDK release the shortcuts were not checked against, they are off and
`test_shortcuts_taken_on_this_sdk` fails to say they need re-checking.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOnExemplarFilter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry import otel_shortcuts
from telemetry.otel import OTelSink
from telemetry.record import UsageRecord

T0 = 1_764_000_000_000_000_000


def _records() -> list[UsageRecord]:
    base = dict(created_at=dt.datetime.now(dt.UTC), operation_id="op", deployment="claude-sonnet-4-5",
                model="claude-sonnet-4-5-20250929", server_address="r.services.ai.azure.com", server_port=443,
                resource="r", request_id="req_1", apim_request_id="apim-1")
    return [
        UsageRecord(attempt=0, status_code=200, input_tokens=10, output_tokens=5, cache_read_input_tokens=100,
                    cache_creation_input_tokens=30, cache_creation_5m_input_tokens=10,
                    cache_creation_1h_input_tokens=20, max_tokens=64, response_id="msg_1", finish_reason="end_turn",
                    latency_ms=812.5, cost_usd=Decimal("0.0012345"), billed_cost_usd=Decimal("0.001"),
                    team="payments", project="checkout", user="u1", **base),
        UsageRecord(attempt=0, status_code=200, stream=True, input_tokens=7, output_tokens=40, latency_ms=1500.0,
                    ttft_ms=120.0, chunk_gaps_ms=[5.0, 7.5, 0.0, 300.0, 12.25], finish_reason="max_tokens",
                    team="payments", project="checkout", **base),
        UsageRecord(attempt=1, status_code=529, error_type="overloaded_error", latency_ms=40.0, team="search",
                    **base),
        UsageRecord(attempt=2, error_type="connection_error", latency_ms=3.0, team="search", **base),
        UsageRecord(attempt=0, status_code=200, output_tokens=3, latency_ms=-1.0, ttft_ms=math.nan, **base),
        # a value the SDK cleans (an int team from an app's own usage_context): the cleaning must still run
        UsageRecord(attempt=0, status_code=200, output_tokens=1, latency_ms=20.0, team=7, **base),  # type: ignore[arg-type]
        UsageRecord(attempt=0, status_code=200, output_tokens=1, latency_ms=20.0, user=["u1", "u2"],  # type: ignore[arg-type]
                    finish_reason=object(), **base),  # type: ignore[arg-type]
        UsageRecord(attempt=0, status_code=200, output_tokens=1, latency_ms=20.0, finish_reason="end_turn",
                    project=("p", object()), **base),  # type: ignore[arg-type]
    ]


def _capture(parent: Any = None) -> Any:
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    return SimpleNamespace(wall_ns=T0, otel_context=ctx)


# --- spans -------------------------------------------------------------------------------------------------


class EventOnStart(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.add_event("started", {"k": "v"})
        span.set_attribute("on_start.added", 1)


class ReadsOnStart(SpanProcessor):
    """Reads the starting span's own attributes: must see ours there."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("seen.model", str(span.attributes.get("gen_ai.request.model")))


class EndingHook(SpanProcessor):
    def _on_ending(self, span: Any) -> None:
        span.add_event("ending")


class ReadsAttributes(sampling.Sampler):
    """Samples by an attribute, so it must see the attributes at start."""

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None, attributes: Any = None,
                      links: Any = None, trace_state: Any = None) -> sampling.SamplingResult:
        keep = bool(attributes) and attributes.get("foundry.team") != "search"
        return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE if keep else sampling.Decision.DROP,
                                       {"sampler.saw": len(attributes or {})})

    def get_description(self) -> str:
        return "ReadsAttributes"


def _azure_sampler() -> Any:
    mod = pytest.importorskip("azure.monitor.opentelemetry.exporter.export.trace._sampling")
    return mod.ApplicationInsightsSampler(1.0)


def _azure_processor() -> Any:
    mod = pytest.importorskip("azure.monitor.opentelemetry.exporter._gen_ai._processor")
    return mod._GenAIMainAgentSpanProcessor()


SETUPS: dict[str, tuple[dict[str, Any], list[Any], bool]] = {
    # name: (TracerProvider kwargs, extra processors (factories), shortcut expected)
    "default": ({}, [], True),
    "always_on": ({"sampler": sampling.ALWAYS_ON}, [], True),
    "ratio": ({"sampler": sampling.ParentBasedTraceIdRatio(1.0)}, [], True),
    "azure sampler + agent processor": ({"sampler": _azure_sampler}, [_azure_processor], True),
    "attribute-reading sampler": ({"sampler": ReadsAttributes()}, [], False),
    "parent-based, attribute-reading root": ({"sampler": sampling.ParentBased(ReadsAttributes())}, [], False),
    "attribute count limit": ({"span_limits": SpanLimits(max_span_attributes=6)}, [], True),
    "attribute length limit": ({"span_limits": SpanLimits(max_span_attribute_length=4)}, [], True),
    "event on start": ({}, [EventOnStart], False),
    "attribute-reading on_start": ({}, [ReadsOnStart], False),
    "ending hook": ({}, [EndingHook], False),
}


def _span_sinks(kwargs: dict[str, Any], extra: list[Any]) -> list[tuple[OTelSink, InMemorySpanExporter]]:
    out = []
    for shortcuts in (False, True):
        kw = {k: (v() if callable(v) and not isinstance(v, sampling.Sampler) else v) for k, v in kwargs.items()}
        tp = TracerProvider(**kw)
        for make in extra:
            tp.add_span_processor(make())
        exporter = InMemorySpanExporter()
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        out.append((OTelSink(tp, MeterProvider(), shortcuts=shortcuts), exporter))
    return out


def _span_view(s: Any) -> dict[str, Any]:
    return {
        "name": s.name, "kind": s.kind, "attributes": list(s.attributes.items()),  # order too
        "dropped_attributes": s.dropped_attributes, "events": [(e.name, dict(e.attributes), e.timestamp is not None)
                                                               for e in s.events],
        "dropped_events": s.dropped_events, "links": list(s.links), "dropped_links": s.dropped_links,
        "status": (s.status.status_code, s.status.description), "start": s.start_time, "end": s.end_time,
        "parent": s.parent.span_id if s.parent else None, "trace": s.context.trace_id if s.parent else None,
        "sampled": s.context.trace_flags.sampled, "scope": (s.instrumentation_scope.name,
                                                            s.instrumentation_scope.version),
        "resource": dict(s.resource.attributes),
    }


@pytest.mark.parametrize("setup", list(SETUPS))
def test_spans_match_public_api(setup: str) -> None:
    kwargs, extra, taken = SETUPS[setup]
    (public, public_spans), (fast, fast_spans) = _span_sinks(kwargs, extra)
    parent_tp = TracerProvider()
    parent = parent_tp.get_tracer("app").start_span("anthropic.messages.create",
                                                    attributes={"microsoft.gen_ai.main_agent.name": "planner"})
    for parent_span in (None, parent):
        for r in _records():
            for sink in (public, fast):
                sink._span(r, _capture(parent_span))
    a, b = public_spans.get_finished_spans(), fast_spans.get_finished_spans()
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert repr(_span_view(x)) == repr(_span_view(y))  # repr: a NaN attribute equals itself
    if setup == "attribute-reading sampler":
        assert len(a) < 2 * len(_records())  # the sampler did drop by attribute: it saw them on both paths
    assert (fast._span_shortcut.used > 0) is (taken and otel_shortcuts.AVAILABLE)
    assert public._span_shortcut.used == 0


def test_span_trace_ids_on_the_record() -> None:
    (_, _), (fast, spans) = _span_sinks({}, [])
    r = _records()[0]
    fast._span(r, _capture())
    (s,) = spans.get_finished_spans()
    assert (r.trace_id, r.span_id) == (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")


class Hold(SpanProcessor):
    """Keeps every finished span, as a batch processor does until it exports."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def on_end(self, span: Any) -> None:
        self.spans.append(span)


def test_queued_span_keeps_few_gc_tracked_objects() -> None:
    """Every span waiting for its batch export stays alive through young GC passes; the number of GC-tracked
    objects each keeps is what paces CPython's full passes (a structural count, not a timing)."""
    counts = {}
    for shortcuts in (False, True):
        hold = Hold()
        tp = TracerProvider()
        tp.add_span_processor(hold)
        sink = OTelSink(tp, MeterProvider(), shortcuts=shortcuts)
        r = _records()[0]
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(200):
            sink._span(r, _capture())
        gc.collect()
        counts[shortcuts] = (len(gc.get_objects()) - before) / 200
        assert len(hold.spans) == 200
    if otel_shortcuts.AVAILABLE:
        assert counts[True] <= 3.5 < 5 < counts[False]  # span, its attribute store, its context


# --- metrics -----------------------------------------------------------------------------------------------


def _meter(views: bool, exemplars: bool) -> tuple[MeterProvider, list[InMemoryMetricReader]]:
    readers = [InMemoryMetricReader(),
               InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})]
    kwargs: dict[str, Any] = {}
    if views:
        kwargs["views"] = [View(instrument_name="gen_ai.client.operation.duration", attribute_keys={"foundry.team"}),
                           View(instrument_name="gen_ai.client.*")]
    if exemplars:
        kwargs["exemplar_filter"] = AlwaysOnExemplarFilter()
    return MeterProvider(metric_readers=readers, **kwargs), readers


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                pts = []
                for p in m.data.data_points:
                    v = {"attributes": sorted(p.attributes.items(), key=repr)}
                    for f in ("count", "sum", "bucket_counts", "explicit_bounds", "min", "max", "value"):
                        if hasattr(p, f):
                            v[f] = getattr(p, f)
                    v["exemplars"] = sorted((e.value, sorted((e.filtered_attributes or {}).items(), key=repr),
                                             e.span_id, e.trace_id) for e in getattr(p, "exemplars", ()) or ())
                    pts.append(v)
                out[f"{sm.scope.name}/{m.name}/{m.unit}/{type(m.data).__name__}/"
                    f"{getattr(m.data, 'aggregation_temporality', None)}"] = sorted(pts, key=repr)
    return out


@pytest.mark.parametrize(("views", "exemplars", "in_span"), [
    (False, False, False), (True, False, False), (False, True, False),
    # recorded on a caller's thread inside its sampled span: the SDK's trace-based filter keeps exemplars
    (False, False, True), (True, True, True)])
def test_metrics_match_public_api(views: bool, exemplars: bool, in_span: bool) -> None:
    (mp_a, readers_a), (mp_b, readers_b) = _meter(views, exemplars), _meter(views, exemplars)
    public = OTelSink(TracerProvider(), mp_a, shortcuts=False)
    fast = OTelSink(TracerProvider(), mp_b)
    app = TracerProvider().get_tracer("app")
    records = _records()
    for rnd in range(3):  # collected between rounds: delta readers start afresh, cumulative ones go on
        for _ in range(rnd + 1):
            for r in records:
                if in_span:
                    with app.start_as_current_span(f"request {rnd}"):
                        public._metrics(r)
                        fast._metrics(r)
                else:
                    public._metrics(r)
                    fast._metrics(r)
        for ra, rb in zip(readers_a, readers_b, strict=True):
            pa, pb = _points(ra), _points(rb)
            assert repr(pa) == repr(pb)
            assert any("gen_ai.client.operation.duration" in k for k in pa)
            kept = sum(len(p["exemplars"]) for pts in pa.values() for p in pts)
            assert (kept > 0) is (exemplars or in_span)
    assert sum(h.used for h in fast._fast.values()) > 0 or not otel_shortcuts.AVAILABLE


def test_metric_reader_added_later_gets_the_same_points() -> None:
    """Adding a reader replaces the SDK's reader storages: the resolved aggregations must be resolved again."""
    sinks = []
    records = _records()
    for shortcuts in (False, True):
        first = InMemoryMetricReader()
        mp = MeterProvider(metric_readers=[first])
        sinks.append((OTelSink(TracerProvider(), mp, shortcuts=shortcuts), mp, first))
    for sink, _, _ in sinks:
        for r in records:
            sink._metrics(r)
    late = []
    for sink, mp, _ in sinks:
        reader = InMemoryMetricReader()
        mp.add_metric_reader(reader)
        late.append(reader)
        for r in records:
            sink._metrics(r)
    assert repr(_points(sinks[0][2])) == repr(_points(sinks[1][2]))
    assert repr(_points(late[0])) == repr(_points(late[1]))
    assert _points(late[1])  # the late reader did get points


def test_shortcuts_taken_on_this_sdk() -> None:
    """Fails on an SDK release the shortcuts were not checked against: re-check telemetry/otel_shortcuts.py
    against it (field by field), then add it to TESTED_SDK. Until then the sink uses the public API."""
    assert otel_shortcuts.AVAILABLE, (
        f"opentelemetry-sdk {otel_shortcuts.SDK_VERSION} is not one of {otel_shortcuts.TESTED_SDK}: the SDK "
        "shortcuts are off (correct, but slower); re-check them against this release")


def test_threads_record_every_point_and_span() -> None:
    """16 threads at once (the records are emitted on the callers' threads): every point and span is there."""
    import threading

    results = []
    records = _records()  # one set for both sinks: values the SDK turns into str() must be the same objects
    for shortcuts in (False, True):
        reader = InMemoryMetricReader()
        exporter = InMemorySpanExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        sink = OTelSink(tp, MeterProvider(metric_readers=[reader]), shortcuts=shortcuts)
        start = threading.Barrier(16)

        def work(sink: OTelSink = sink, records: list[UsageRecord] = records, start: Any = start) -> None:
            start.wait()
            for _ in range(25):
                for r in records:
                    sink.emit(r, _capture())

        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        points = _points(reader)
        for pts in points.values():  # float sums depend on the order of addition across threads
            for p in pts:
                p["sum"] = round(p["sum"], 9) if "sum" in p else None
                p["value"] = round(p["value"], 9) if isinstance(p.get("value"), float) else p.get("value")
        spans = sorted(repr(sorted(s.attributes.items(), key=repr)) for s in exporter.get_finished_spans())
        results.append((repr(points), spans))
    assert results[0] == results[1]
    assert len(results[1][1]) == 16 * 25 * len(records)


def test_changed_sdk_structure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an SDK release that moved things would look like: the shortcuts decline, the data stay the same."""
    monkeypatch.setattr(otel_shortcuts, "_hash_attributes", lambda attrs: ("not", "the SDK's key"))
    monkeypatch.setattr(otel_shortcuts, "_Span", type("NotTheSpan", (), {}))
    (public, public_spans), (fast, fast_spans) = _span_sinks({}, [])
    (mp_a, readers_a), (mp_b, readers_b) = _meter(False, False), _meter(False, False)
    public_m, fast_m = OTelSink(TracerProvider(), mp_a, shortcuts=False), OTelSink(TracerProvider(), mp_b)
    records = _records()
    for _ in range(3):
        for r in records:
            public._span(r, _capture())
            fast._span(r, _capture())
            public_m._metrics(r)
            fast_m._metrics(r)
    for x, y in zip(public_spans.get_finished_spans(), fast_spans.get_finished_spans(), strict=True):
        assert repr(_span_view(x)) == repr(_span_view(y))
    for ra, rb in zip(readers_a, readers_b, strict=True):
        assert repr(_points(ra)) == repr(_points(rb))
    assert fast._span_shortcut.used == 0
    assert sum(h.used for h in fast_m._fast.values()) == 0


@pytest.mark.parametrize("value", ["0", "1"])
def test_shortcuts_setting_turns_them_off_through_telemetry(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """FOUNDRY_TELEMETRY_OTEL_SHORTCUTS=0: the escape hatch, public OpenTelemetry API only, same data."""
    from telemetry import Telemetry

    monkeypatch.setenv("FOUNDRY_TELEMETRY_OTEL_SHORTCUTS", value)
    hold = Hold()
    tp = TracerProvider()
    tp.add_span_processor(hold)
    tel = Telemetry(ledger=False, tracer_provider=tp, meter_provider=MeterProvider())
    try:
        sink = tel._otel
        assert sink._shortcuts is (value == "1")
        sink._span(_records()[0], _capture())
        (span,) = hold.spans
        # the span shortcut drops the empty event list before the span ends; the public path keeps it
        assert (type(span._events) is tuple) is (value == "1" and otel_shortcuts.AVAILABLE)
        assert span.attributes["gen_ai.operation.name"] == "chat"
    finally:
        tel.shutdown()
