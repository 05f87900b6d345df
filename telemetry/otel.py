"""OpenTelemetry sink: one CLIENT span per attempt and the GenAI metrics; Azure Monitor set-up.

Spans are created on the pipeline thread with the attempt's own start/end times and the caller's context
(the SDK's `anthropic.messages.create` span) as parent, so the request path pays nothing for them.
Metrics never depend on sampling: they are recorded for every record, sampled span or not.
Span attributes and histogram points take the checked SDK shortcuts of `otel_shortcuts` where they apply.
"""

from __future__ import annotations

import logging
import os
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import names as n
from .capture.state import AttemptCapture
from .otel_shortcuts import HistogramShortcut, SpanShortcut
from .record import UsageRecord

log = logging.getLogger("telemetry")

try:
    VERSION = version("foundry-telemetry")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0"


def configure_azure_monitor_export(connection_string: str, otlp: Any = None) -> None:
    """Send traces, metrics and logs to Application Insights, keeping every span; `otlp`
    (telemetry.export.OtlpExporters) rides on the same providers.

    The distro would otherwise instrument httpx/httpx2 (a second span per attempt) and sample by rate
    (dropping spans that support lookups need).
    """
    from azure.monitor.opentelemetry import configure_azure_monitor

    kwargs: dict[str, Any] = {
        "connection_string": connection_string,
        "instrumentation_options": {"httpx": {"enabled": False}, "httpx2": {"enabled": False}},
        "enable_live_metrics": False,
    }
    if not os.environ.get("OTEL_TRACES_SAMPLER"):
        kwargs["sampling_ratio"] = 1.0
    if otlp:
        kwargs.update(otlp.azure_kwargs())
    configure_azure_monitor(**kwargs)
    if otlp:
        otlp.taken = True


_STATUSES: dict[str, Status] = {}  # one per error type (a few dozen): immutable, shared by the spans


def _error_status(error_type: str) -> Status:
    status = _STATUSES.get(error_type)
    if status is None:
        status = Status(StatusCode.ERROR, error_type)
        if len(_STATUSES) < 256:
            _STATUSES[error_type] = status
    return status


_TUPLE_KEYS = (n.RESPONSE_FINISH_REASONS,)  # the span attributes whose values are tuples
_MAX_KEYS = 4096  # attribute sets cached; past that (a cardinality leak elsewhere) they are built per record


class _Totals:
    """Cumulative counter values per attribute set, read by the SDK only when it collects.

    Counters are sums, so an observable counter reporting these totals exports the same points as one `add`
    per record, without the SDK's per-measurement work (attribute cleaning, hashing, locking) on each record.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[Any, ...], list[Any]] = {}  # attribute items -> [attributes, total]

    def add(self, attrs: dict[str, Any], value: Any) -> None:
        key = tuple(attrs.items())
        with self._lock:
            slot = self._values.get(key)
            if slot is None:
                self._values[key] = [attrs, value]
            else:
                slot[1] += value

    def observe(self, _options: Any = None) -> list[Observation]:
        with self._lock:
            # token counts stay integers (as `Counter.add(int)` exported them); Decimal money becomes a float
            return [Observation(total if isinstance(total, int) else float(total), attrs)
                    for attrs, total in self._values.values()]


class _MetricKey:
    """The attribute sets one low-cardinality key needs, built once and reused for every record with it."""

    __slots__ = ("base", "input", "output", "counted", "cache", "cached")

    def __init__(self, base: dict[str, Any], cached: bool) -> None:
        self.base = base
        self.cached = cached  # kept in the sink's cache: its dicts live on, and histogram shortcuts may key on them
        self.input = {**base, **n.TOKEN_HISTOGRAMS["input"][1]}  # gen_ai.token.type, unless the newest names
        self.output = {**base, **n.TOKEN_HISTOGRAMS["output"][1]}
        self.counted = {**base, **n.TOKEN_COUNTER_ATTRIBUTES}  # the newest conventions' token counters
        self.cache = {kind: {**base, n.FOUNDRY_CACHE_KIND: kind} for kind in ("read", "write_5m", "write_1h")}


class OTelSink:
    """`shortcuts=False` keeps to the public OpenTelemetry API only (the tests compare both paths)."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None, shortcuts: bool = True) -> None:
        self._tracer = trace.get_tracer(n.INSTRUMENTATION_SCOPE, VERSION, tracer_provider=tracer_provider)
        self._span_shortcut = SpanShortcut(self._tracer, shortcuts)
        self._shortcuts = shortcuts
        meter = metrics.get_meter(n.INSTRUMENTATION_SCOPE, VERSION, meter_provider=meter_provider)
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._keys: dict[tuple[Any, ...], _MetricKey] = {}
        by_name = {name: meter.create_histogram(
            name, unit="{token}", description="Tokens used per attempt",
            explicit_bucket_boundaries_advisory=list(n.TOKEN_BUCKETS)) for name, _ in n.TOKEN_HISTOGRAMS.values()}
        self._tokens_in = by_name[n.TOKEN_HISTOGRAMS["input"][0]]
        self._tokens_out = by_name[n.TOKEN_HISTOGRAMS["output"][0]]
        self._usage = {kind: meter.create_counter(name, unit="{token}", description="Tokens used, summed")
                       for kind, name in n.TOKEN_COUNTERS.items()}
        self._duration = meter.create_histogram(
            n.METRIC_DURATION, unit="s", description="Duration of one HTTP attempt",
            explicit_bucket_boundaries_advisory=list(n.DURATION_BUCKETS))
        self._ttfc = meter.create_histogram(
            n.METRIC_TTFC, unit="s", description="Time to the first streamed content chunk",
            explicit_bucket_boundaries_advisory=list(n.DURATION_BUCKETS))
        self._tpoc = meter.create_histogram(
            n.METRIC_TPOC, unit="s", description="Time between streamed content chunks",
            explicit_bucket_boundaries_advisory=list(n.DURATION_BUCKETS))
        self._fast = {name: HistogramShortcut(h, shortcuts) for name, h in (
            ("in", self._tokens_in), ("out", self._tokens_out), ("duration", self._duration), ("ttfc", self._ttfc),
            ("tpoc", self._tpoc))}
        # record(value, attrs) per histogram: [0] through the shortcut, [1] the public API (attribute sets not cached)
        self._record = {name: (f.record, f.histogram.record) for name, f in self._fast.items()}
        self._cost = _Totals()
        self._cache = _Totals()
        meter.create_observable_counter(n.METRIC_COST, callbacks=[self._cost.observe], unit="USD",
                                        description="Cost of the attempts")
        meter.create_observable_counter(n.METRIC_CACHE_TOKENS, callbacks=[self._cache.observe], unit="{token}",
                                        description="Prompt-cache tokens by kind")

    def emit(self, record: UsageRecord, capture: AttemptCapture) -> None:
        if self._tracing():
            self._span(record, capture)
        self._metrics(record)

    def _tracing(self) -> bool:
        """False while no tracer provider is installed: the span (and its ~25 attributes) would be discarded."""
        provider = self._tracer_provider or trace.get_tracer_provider()
        return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)

    def _span(self, record: UsageRecord, capture: AttemptCapture) -> None:
        start_ns = capture.wall_ns
        end_ns = start_ns + int((record.latency_ms or 0) * 1e6)
        attrs = span_attributes(record)
        # nothing reads them while the span starts (sampler, processors): one store after, uncleaned when clean
        shortcut = self._span_shortcut.active()
        span = self._tracer.start_span(
            f"{record.operation} {record.deployment or 'unknown'}",
            context=capture.otel_context,
            kind=SpanKind.CLIENT,
            start_time=start_ns,
            attributes=None if shortcut else attrs,
        )
        if shortcut and span.is_recording() and not self._span_shortcut.fill(span, attrs, _TUPLE_KEYS):
            span.set_attributes(attrs)
        ctx = span.get_span_context()
        if ctx.is_valid:
            record.trace_id = f"{ctx.trace_id:032x}"
            record.span_id = f"{ctx.span_id:016x}"
        if record.error_type:
            span.set_status(_error_status(record.error_type))
        span.end(end_time=end_ns)

    def _key(self, r: UsageRecord) -> _MetricKey:
        key = (r.operation, r.deployment, r.model, r.server_address, r.error_type, r.team, r.project)
        cached = self._keys.get(key)
        if cached is None:
            keep = len(self._keys) < _MAX_KEYS
            cached = _MetricKey(metric_attributes(r), keep)
            if keep:
                self._keys[key] = cached
        return cached

    def _metrics(self, record: UsageRecord) -> None:
        k = self._key(record)
        attrs = k.base
        side = 0 if k.cached and self._shortcuts else 1  # cached sets live on: their aggregations resolved once
        rec = self._record
        if record.status_code == 200 or record.total_input_tokens or record.output_tokens:
            rec["in"][side](record.total_input_tokens, k.input)
            rec["out"][side](record.output_tokens, k.output)
            if self._usage:
                self._usage_counters(record, k.counted)
        rec["duration"][side]((record.latency_ms or 0) / 1000, attrs)
        if record.ttft_ms is not None:
            rec["ttfc"][side](record.ttft_ms / 1000, attrs)
        if record.chunk_gaps_ms:
            if side == 0:
                self._fast["tpoc"].record_each(record.chunk_gaps_ms, 1000, attrs)
            else:
                record_gap = rec["tpoc"][1]
                for gap in record.chunk_gaps_ms:
                    record_gap(gap / 1000, attrs)
        if record.cost_usd is not None:
            self._cost.add(attrs, record.cost_usd)  # summed exactly (Decimal), a float only when exported
        for kind, value in (("read", record.cache_read_input_tokens),
                            ("write_5m", record.cache_creation_5m_input_tokens
                             or max(record.cache_creation_input_tokens - record.cache_creation_1h_input_tokens, 0)),
                            ("write_1h", record.cache_creation_1h_input_tokens)):
            if value:
                self._cache.add(k.cache[kind], value)

    def _usage_counters(self, record: UsageRecord, counted: dict[str, Any]) -> None:
        """The newest conventions' token counters (opt-in): totals that add up across attempts."""
        for kind, value in (("input", record.total_input_tokens), ("output", record.output_tokens),
                            ("cache_read", record.cache_read_input_tokens),
                            ("cache_write", record.cache_creation_input_tokens)):
            self._usage[kind].add(value, counted)

    def flush(self, timeout_ms: int = 10_000) -> None:
        for provider in (self._tracer_provider or trace.get_tracer_provider(),
                         self._meter_provider or metrics.get_meter_provider()):
            force = getattr(provider, "force_flush", None)
            if force is not None:
                try:
                    force(timeout_ms)
                except Exception:
                    log.warning("foundry-telemetry: telemetry export flush failed", exc_info=True)


def span_attributes(r: UsageRecord) -> dict[str, Any]:
    """One dict, built in place; values already in the types the SDK keeps (tuples, not lists)."""
    attrs: dict[str, Any] = {
        n.OPERATION_NAME: r.operation,
        n.PROVIDER_NAME: n.PROVIDER,
        n.SYSTEM: n.PROVIDER,
        n.REQUEST_STREAM: r.stream,
        n.FOUNDRY_OPERATION_ID: r.operation_id,
        n.FOUNDRY_ATTEMPT: r.attempt,
        n.USAGE_INPUT_TOKENS: r.total_input_tokens,
        n.USAGE_OUTPUT_TOKENS: r.output_tokens,
        n.USAGE_CACHE_CREATION_INPUT_TOKENS: r.cache_creation_input_tokens,
        n.USAGE_CACHE_READ_INPUT_TOKENS: r.cache_read_input_tokens,
    }
    if r.deployment is not None:
        attrs[n.REQUEST_MODEL] = attrs[n.FOUNDRY_DEPLOYMENT] = r.deployment
    if r.max_tokens is not None:
        attrs[n.REQUEST_MAX_TOKENS] = r.max_tokens
    if r.model is not None:
        attrs[n.RESPONSE_MODEL] = r.model
    if r.response_id is not None:
        attrs[n.RESPONSE_ID] = r.response_id
    if r.finish_reason:
        attrs[n.RESPONSE_FINISH_REASONS] = (r.finish_reason,)
    if r.ttft_ms is not None:
        attrs[n.RESPONSE_TIME_TO_FIRST_CHUNK] = r.ttft_ms / 1000
    if r.server_address is not None:
        attrs[n.SERVER_ADDRESS] = r.server_address
    if r.server_port is not None:
        attrs[n.SERVER_PORT] = r.server_port
    if r.status_code is not None:
        attrs[n.HTTP_STATUS_CODE] = attrs[n.FOUNDRY_STATUS_CODE] = r.status_code
    if r.error_type is not None:
        attrs[n.ERROR_TYPE] = attrs[n.FOUNDRY_ERROR_TYPE] = r.error_type
    for name, value in ((n.FOUNDRY_REQUEST_ID, r.request_id), (n.FOUNDRY_APIM_REQUEST_ID, r.apim_request_id),
                        (n.FOUNDRY_RESOURCE, r.resource), (n.FOUNDRY_TEAM, r.team), (n.FOUNDRY_PROJECT, r.project),
                        (n.FOUNDRY_USER, r.user), (n.FOUNDRY_PROMPT, r.prompt),
                        (n.FOUNDRY_COMPLETION, r.completion)):
        if value is not None:
            attrs[name] = value
    if r.cost_usd is not None:
        attrs[n.FOUNDRY_COST_USD] = format(r.cost_usd, "f")
    if r.billed_cost_usd is not None:
        attrs[n.FOUNDRY_BILLED_COST_USD] = format(r.billed_cost_usd, "f")
    return attrs


def metric_attributes(r: UsageRecord) -> dict[str, Any]:
    """Low-cardinality only: never request ids or users."""
    attrs: dict[str, Any] = {n.OPERATION_NAME: r.operation, n.PROVIDER_NAME: n.PROVIDER}
    optional = {
        n.REQUEST_MODEL: r.deployment,
        n.RESPONSE_MODEL: r.model,
        n.SERVER_ADDRESS: r.server_address,
        n.ERROR_TYPE: r.error_type,
        n.FOUNDRY_TEAM: r.team,
        n.FOUNDRY_PROJECT: r.project,
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    return attrs
