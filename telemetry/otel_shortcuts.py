"""Shortcuts into the OpenTelemetry SDK for what we record on every attempt, each checked and self-disabling.

The public API re-does per record what is the same for every record with the same key: it cleans and copies a
span's ~30 attributes one by one, and for every histogram point cleans, copies, sorts and hashes its attribute
set to find the aggregation it goes to (~15 µs a point). These shortcuts reach the SDK objects the public path
would reach, and hand them exactly what it would hand them:

- spans: attributes already in the SDK's clean types go straight into the span's attribute store, the empty
  event and link lists are dropped before the span ends, and the store's lock is shared (each of these is a
  GC-tracked object every span waiting for its batch export keeps alive, and their number paces the full GC),
  and the span context's trace flags are one shared object per value (its context is rebuilt equal);
- histograms: a point goes straight to the SDK aggregations its attribute set resolved to (resolved once,
  through the SDK's own cleaning and hashing, after a first point recorded through the public `record()`),
  with the exemplar filter asked as the SDK asks it (the current context: an empty one is falsy to the SDK).

Every shortcut first checks the SDK objects are the types and shape it was written for (the SDK's own
`Tracer`, `_Span`, `BoundedAttributes`, a sampler known not to read attributes, span processors known not to
read a starting span's attributes nor to hook span ending; the SDK's `_Histogram`, a synchronous measurement
consumer, one of the SDK's own exemplar filters) and the SDK release (`TESTED_SDK`), and
otherwise uses the public API: an SDK upgrade that changes them falls back, never records wrong.
tests/test_otel_shortcuts.py proves both paths export the same data.
"""

from __future__ import annotations

import math
import threading
from importlib.metadata import version
from time import time_ns
from typing import Any

from opentelemetry.context import Context, get_current
from opentelemetry.trace import SpanContext, TraceFlags

# the SDK releases these shortcuts were checked against, field by field (a new one: re-check, then add it; until
# then the public API, and tests/test_otel_shortcuts.py fails to say so)
TESTED_SDK = ("1.45",)
SDK_VERSION = ""

try:  # the SDK's private structure, as of opentelemetry-sdk 1.45 (checked again at every use)
    from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    from opentelemetry.sdk.metrics._internal.exemplar.exemplar_filter import (
        AlwaysOffExemplarFilter,
        AlwaysOnExemplarFilter,
        TraceBasedExemplarFilter,
    )
    from opentelemetry.sdk.metrics._internal.instrument import _Histogram
    from opentelemetry.sdk.metrics._internal.measurement import Measurement
    from opentelemetry.sdk.metrics._internal.measurement_consumer import SynchronousMeasurementConsumer
    from opentelemetry.sdk.trace import (
        ConcurrentMultiSpanProcessor,
        SpanProcessor,
        SynchronousMultiSpanProcessor,
        _Span,
    )
    from opentelemetry.sdk.trace import Tracer as _SdkTracer
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.util import BoundedList

    SDK_VERSION = version("opentelemetry-sdk")
    AVAILABLE = SDK_VERSION.startswith(tuple(v + "." for v in TESTED_SDK))
    _KNOWN_EXEMPLAR_FILTERS = frozenset({TraceBasedExemplarFilter, AlwaysOffExemplarFilter, AlwaysOnExemplarFilter})
    _NO_HOOKS = frozenset({BatchSpanProcessor, SimpleSpanProcessor})  # their `on_start`, `_on_ending`: `pass`
except Exception:  # pragma: no cover - another SDK layout: the public API everywhere
    AVAILABLE = False

_NO_CONTEXT = Context()
_CLEAN = frozenset({str, int, float, bool})  # values the SDK's cleaning returns unchanged
# samplers whose decision does not read the span's attributes (so they may be set after the sampler ran);
# matched by exact type, a subclass may override `should_sample`
_ATTRIBUTE_BLIND_SAMPLERS = frozenset({
    ("opentelemetry.sdk.trace.sampling", "StaticSampler"),
    ("opentelemetry.sdk.trace.sampling", "TraceIdRatioBased"),
    ("opentelemetry.sdk.trace.sampling", "ParentBasedTraceIdRatio"),
    ("opentelemetry.sdk.trace.sampling", "ParentBased"),
    ("azure.monitor.opentelemetry.exporter.export.trace._sampling", "ApplicationInsightsSampler"),
    ("azure.monitor.opentelemetry.exporter.export.trace._rate_limited_sampling", "RateLimitedSampler"),
})
# span processors whose `on_start` reads the parent span only (it may set attributes: they land after ours,
# as before); matched by exact type
_PARENT_READING_PROCESSORS = frozenset({
    ("azure.monitor.opentelemetry.exporter._gen_ai._processor", "_GenAIMainAgentSpanProcessor"),
})
_FLAGS: dict[int, Any] = {}  # trace flags value -> one TraceFlags (an int with a __dict__: GC-tracked) for all
_SHARED_LOCK = threading.Lock()  # for finished spans' attribute stores, which nothing may write any more


_CLEAN_OR_TUPLE = _CLEAN | {tuple}


def _all_clean(attrs: dict[str, Any], tuple_keys: tuple[str, ...]) -> bool:
    """Every value is one the SDK's cleaning keeps as it is: a str, int, float or bool, or (under one of
    `tuple_keys`, where the caller puts sequences) a tuple of those. Counted in C, not looped in Python."""
    types = list(map(type, attrs.values()))
    if not _CLEAN_OR_TUPLE.issuperset(types):
        return False
    tuples = types.count(tuple)
    if not tuples:
        return True
    seen = 0
    for key in tuple_keys:
        value = attrs.get(key)
        if type(value) is tuple:
            if not _CLEAN.issuperset(map(type, value)):
                return False
            seen += 1
    return seen == tuples


def _processor_known(processor: Any) -> bool:
    """Its `on_start` reads nothing of the new span's own attributes, its `_on_ending` does nothing."""
    cls = type(processor)
    if cls in _NO_HOOKS:
        return True
    on_start_ok = (getattr(cls, "on_start", None) is SpanProcessor.on_start
                   or (cls.__module__, cls.__qualname__) in _PARENT_READING_PROCESSORS)
    return on_start_ok and getattr(cls, "_on_ending", None) is SpanProcessor._on_ending


def _sampler_blind(sampler: Any) -> bool:
    cls = type(sampler)
    if (cls.__module__, cls.__qualname__) not in _ATTRIBUTE_BLIND_SAMPLERS:
        return False
    if cls.__name__.startswith("ParentBased"):
        return all(_sampler_blind(getattr(sampler, name, None)) for name in (
            "_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled",
            "_local_parent_not_sampled"))
    return True


class SpanShortcut:
    """Decides, per tracer, whether a span's attributes may skip the SDK's per-attribute cleaning."""

    def __init__(self, tracer: Any, enabled: bool = True) -> None:
        self._tracer = tracer
        self._enabled = enabled and AVAILABLE and type(tracer) is _SdkTracer
        self._sampler: Any = None
        self._sampler_ok = False
        self._processors: Any = None
        self._processors_ok = False
        self.used = 0  # spans that took the shortcut (tests check it is taken where it should be)

    def active(self) -> bool:
        """True when `start_span` may be called without attributes and `fill` will put them in: the sampler
        and the span processors' `on_start` do not read the new span's attributes, and no processor does
        anything when a span ends but before it is readable (`_on_ending`)."""
        if not self._enabled:
            return False
        sampler = self._tracer.sampler
        if sampler is not self._sampler:
            self._sampler, self._sampler_ok = sampler, _sampler_blind(sampler)
        return self._sampler_ok and self._processors_known()

    def _processors_known(self) -> bool:
        multi = self._tracer.span_processor
        if type(multi) not in (SynchronousMultiSpanProcessor, ConcurrentMultiSpanProcessor):
            return False
        processors = getattr(multi, "_span_processors", None)
        if processors is not self._processors:
            self._processors = processors
            self._processors_ok = isinstance(processors, tuple) and all(map(_processor_known, processors))
        return self._processors_ok

    def fill(self, span: Any, attrs: dict[str, Any], tuple_keys: tuple[str, ...] = ()) -> bool:
        """Put `attrs` into a span started without them, as `start_span(attributes=attrs)` would have.

        False (nothing done) when the span is not the SDK's: the caller then sets them the public way.
        """
        try:
            return self._fill(span, attrs, tuple_keys)
        except Exception:  # never: the checks below are for this; the public path then sets them again
            return False

    def _fill(self, span: Any, attrs: dict[str, Any], tuple_keys: tuple[str, ...]) -> bool:
        if type(span) is not _Span:
            return False
        store = span._attributes
        if type(store) is not BoundedAttributes or type(getattr(store, "_dict", None)) is not dict:
            return False
        given = store._dict  # what the sampler added (it saw no attributes of ours)
        merged = {**attrs, **given} if given else attrs  # a sampler's own keys win and come last, as before
        if (store.maxlen is None or len(merged) <= store.maxlen) and store.max_value_len is None and _all_clean(
                attrs, tuple_keys):
            store._dict = merged
        else:  # limits or odd values: the SDK's own cleaning, on what start_span would have given it
            store._dict = {}
            store.dropped = 0
            store._set_items(merged)
        if (type(span._events) is BoundedList and type(span._links) is BoundedList and not span._events
                and not span._links and self._processors_known()):
            span._events = span._links = ()  # read back as `tuple(...)`, dropped counts 0 as before
            store._lock = _SHARED_LOCK
        ctx = span._context
        if type(ctx) is SpanContext and type(ctx.trace_flags) is TraceFlags:
            flags = _FLAGS.setdefault(int(ctx.trace_flags), ctx.trace_flags)
            if flags is not ctx.trace_flags:  # an equal context whose flags object is shared, not one per span
                span._context = SpanContext(ctx.trace_id, ctx.span_id, ctx.is_remote, flags, ctx.trace_state)
        self.used += 1
        return True


class _Resolved:
    """The SDK aggregations one (histogram, attribute set) records into, for one set of metric readers."""

    __slots__ = ("attrs", "cleaned", "histogram", "storages", "aggregations", "exemplar_filter")

    def __init__(self, attrs: dict[str, Any], cleaned: Any, histogram: Any, storages: Any,
                 aggregations: tuple[Any, ...]) -> None:
        self.attrs = attrs  # kept alive, so its id() stays its own
        self.cleaned = cleaned  # as the public path's Measurement holds them (what an exemplar filter is shown)
        self.histogram = histogram
        self.storages = storages
        self.aggregations = aggregations
        self.exemplar_filter = histogram._measurement_consumer._sdk_config.exemplar_filter


class HistogramShortcut:
    """`histogram.record(value, attrs)` for attribute sets resolved once to the SDK's aggregations.

    `attrs` must be a dict that is never mutated (the sink's cached attribute sets): it is cached by identity.
    """

    def __init__(self, histogram: Any, enabled: bool = True, max_sets: int = 4096) -> None:
        self.histogram = histogram
        self._enabled = enabled and AVAILABLE
        self._resolved: dict[int, _Resolved] = {}
        self._lock = threading.Lock()
        self._max_sets = max_sets
        self.used = 0  # points that took the shortcut (approximate under threads; tests check it is taken)

    def _entry(self, attrs: dict[str, Any]) -> _Resolved | None:
        entry = self._resolved.get(id(attrs))
        if (entry is None or entry.attrs is not attrs
                or entry.histogram._measurement_consumer._reader_storages is not entry.storages
                or not entry.histogram._is_enabled()):
            return None
        return entry

    @staticmethod
    def _aggregate(entry: _Resolved, value: float, attrs: dict[str, Any]) -> None:
        """What the SDK's record() and its measurement consumer do with a valid point, past the attribute
        cleaning and hashing: the context (an empty one is falsy, so the current one, as the SDK takes it),
        the exemplar filter's decision, then every aggregation of the point's attribute set."""
        t = time_ns()
        context = get_current()  # the SDK's `context or get_current()`: our empty `_NO_CONTEXT` is falsy
        sample = entry.exemplar_filter.should_sample(value, t, entry.cleaned, context)
        # a point an exemplar may keep carries its attributes (cleaned as on the public path); else nothing reads them
        m = Measurement(value, t, entry.histogram, context, attrs if sample else None)
        for aggregation in entry.aggregations:
            aggregation.aggregate(m, sample)

    def record(self, value: float, attrs: dict[str, Any]) -> None:
        entry = self._entry(attrs)
        # NaN, infinities and negatives fail `0 <= value < inf`: the public path warns and drops them
        if entry is not None and 0 <= value < math.inf:
            self._aggregate(entry, value, attrs)
            self.used += 1
            return
        self.histogram.record(value, attrs, _NO_CONTEXT)  # the SDK creates the aggregations on a first point
        if entry is None and self._enabled and 0 <= value < math.inf:
            self._resolve(attrs)

    def record_each(self, values: list[float], divisor: float, attrs: dict[str, Any]) -> None:
        """`record(v / divisor, attrs)` for every value (a stream's chunk gaps): the checks once for all."""
        entry = self._entry(attrs)
        if entry is None:
            for v in values:
                self.record(v / divisor, attrs)
            return
        inf = math.inf
        for v in values:
            value = v / divisor
            if 0 <= value < inf:
                self._aggregate(entry, value, attrs)
                self.used += 1
            else:
                self.histogram.record(value, attrs, _NO_CONTEXT)

    def _target(self) -> Any:
        """The SDK histogram behind the instrument (a proxy's real instrument once there is one), or None."""
        h = self.histogram
        if type(h) is not _Histogram:
            h = getattr(h, "_real_instrument", None)
            if type(h) is not _Histogram:
                return None
        consumer = getattr(h, "_measurement_consumer", None)
        if type(consumer) is not SynchronousMeasurementConsumer:
            return None
        config = getattr(consumer, "_sdk_config", None)
        if type(getattr(config, "exemplar_filter", None)) not in _KNOWN_EXEMPLAR_FILTERS:
            return None  # one of an app's own might keep state or read more than the SDK's own
        return h

    def _resolve(self, attrs: dict[str, Any]) -> None:
        """Find the aggregations the public path just recorded `attrs` into, by the SDK's own cleaning, view
        filtering and hashing; any surprise leaves this attribute set on the public path."""
        try:
            h = self._target()
            if h is None or len(self._resolved) >= self._max_sets:
                return
            storages = h._measurement_consumer._reader_storages
            cleaned = _clean_attribute_value(attrs, None)
            found = []
            for storage in storages.values():
                for match in storage._instrument_view_instrument_matches[h]:
                    keys = match._view._attribute_keys
                    a = dict(cleaned) if keys is None else {k: v for k, v in cleaned.items() if k in keys}
                    found.append(match._attributes_aggregation[_hash_attributes(a)])
        except Exception:  # not the structure this was written for: this histogram keeps to the public path
            self._enabled = False
            return
        with self._lock:
            if len(self._resolved) < self._max_sets:
                self._resolved[id(attrs)] = _Resolved(attrs, cleaned, h, storages, tuple(found))
