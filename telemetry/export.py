"""OTLP/HTTP export from the standard `OTEL_EXPORTER_OTLP_*` variables, alone or beside Azure Monitor.

Set up once per process on the *global* providers, so the SDK's own `anthropic.messages.create` span and
ours reach the same backend as one trace. Beside Azure Monitor the OTLP exporters join the providers the
distro installed; alone we install SDK providers of our own; providers the app installed itself are left
alone (it owns its export). A missing extra or a bad setting is one warning, and never an exception.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("telemetry")

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
SIGNALS = {"traces": "v1/traces", "metrics": "v1/metrics"}
SUPPORTED_PROTOCOL = "http/protobuf"
EXTRA_HINT = "pip install 'foundry-telemetry[otlp]'"

_lock = threading.Lock()
_done = False


@dataclass
class OtlpPlan:
    """Which signals go where, and why a signal that was asked for does not."""

    endpoints: dict[str, str] = field(default_factory=dict)  # signal → full URL
    problems: dict[str, list[str]] = field(default_factory=dict)  # reason → signals it turned off

    @property
    def wanted(self) -> bool:
        return bool(self.endpoints or self.problems)


def _shown(url: str) -> str:
    """A URL fit for a log line: no user info, query or fragment (they can hold credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return repr(url[:80])
    return repr(f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else url[:80])


def _valid(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # e.g. a port that is not a number
        return False


def plan(env: Mapping[str, str] | None = None) -> OtlpPlan:
    """Endpoints per signal as the OTLP exporter specification resolves them: the signal-specific
    variable is used as is; the generic one gets `/v1/{signal}` appended."""
    env = os.environ if env is None else env
    out = OtlpPlan()
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return out
    base = env.get(ENDPOINT, "").strip()
    for signal, path in SIGNALS.items():
        specific_var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        specific = env.get(specific_var, "").strip()
        var, url = (specific_var, specific) if specific else (ENDPOINT, f"{base.rstrip('/')}/{path}")
        if not specific and not base:
            continue
        protocol_var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
        protocol = (env.get(protocol_var) or env.get(PROTOCOL) or SUPPORTED_PROTOCOL).strip()
        if not _valid(specific or base):
            problem = f"{var}={_shown(specific or base)} is not an http(s) URL"
        elif protocol != SUPPORTED_PROTOCOL:
            problem = f"OTLP protocol {protocol!r} is not supported (only {SUPPORTED_PROTOCOL})"
        else:
            out.endpoints[signal] = url
            continue
        out.problems.setdefault(problem, []).append(signal)
    return out


def _exporters(p: OtlpPlan) -> tuple[Any, Any]:
    """(span processor or None, metric reader or None) for the planned signals."""
    processor = reader = None
    if "traces" in p.endpoints:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=p.endpoints["traces"]))
    if "metrics" in p.endpoints:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=p.endpoints["metrics"]))
    return processor, reader


def _install(processor: Any, reader: Any, join_existing: bool) -> list[str]:
    """Put the exporters on the global providers; returns what could not be done."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    skipped: list[str] = []
    resource = Resource.create()
    if processor is not None:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider) and join_existing:
            current.add_span_processor(processor)
        elif isinstance(current, trace.ProxyTracerProvider):
            # flushed and shut down by Telemetry.shutdown (at exit, after the pipeline drained), not by the
            # SDK's own exit hook, which would run first and drop the last spans
            provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            provider.add_span_processor(processor)
            trace.set_tracer_provider(provider)
        else:
            skipped.append("traces")
    if reader is not None:
        current_meter = metrics.get_meter_provider()
        if isinstance(current_meter, MeterProvider) and join_existing and hasattr(current_meter,
                                                                                   "add_metric_reader"):
            current_meter.add_metric_reader(reader)
        elif type(current_meter).__name__ == "_ProxyMeterProvider":
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader], resource=resource,
                                                     shutdown_on_exit=False))
        else:
            skipped.append("metrics")
    return skipped


def ensure_otlp_export(failed: Any, *, join_existing: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """Once per process: OTLP exporters for the signals the environment asks for. `join_existing`: the
    global providers are ours (Azure Monitor set them up), so the OTLP exporters join them.
    `failed(kind, exc, message)` counts and logs a failure once. True when an exporter was installed."""
    global _done
    p = plan(env)
    if not p.wanted:
        return False
    with _lock:
        if _done:
            return False
        _done = True
        if p.problems:
            failed("otlp_config", None, "; ".join(f"{why}: OTLP {' and '.join(signals)} export off"
                                                  for why, signals in p.problems.items()))
        if not p.endpoints:
            return False
        try:
            processor, reader = _exporters(p)
        except ImportError:
            failed("otlp_config", None, f"{ENDPOINT} is set but the OTLP exporter is not installed "
                                        f"({EXTRA_HINT}); OTLP export off")
            return False
        except Exception as exc:  # e.g. a malformed OTEL_EXPORTER_OTLP_HEADERS or OTEL_BSP_* value
            failed("otlp_config", exc, None)
            return False
        try:
            skipped = _install(processor, reader, join_existing)
        except Exception as exc:  # never into the app
            failed("otlp_config", exc, None)
            return False
        if skipped:
            failed("otlp_config", None, f"the app installed its own {' and '.join(skipped)} provider; "
                                        "foundry-telemetry leaves it as it is (add an OTLP exporter there)")
        return len(skipped) < len(p.endpoints)


def _reset_for_tests() -> None:
    global _done
    with _lock:
        _done = False
