"""OTLP/HTTP export from the standard `OTEL_EXPORTER_OTLP_*` variables, alone or beside Azure Monitor.

Set up once per process on the *global* providers, so the SDK's own `anthropic.messages.create` span and
ours reach the same backend as one trace. Beside Azure Monitor the OTLP exporters join the providers the
distro installed; alone we install SDK providers of our own; providers the app installed itself are left
alone (it owns its export). A missing extra or a bad setting is one warning, and never an exception.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
        if not parts.netloc:
            return repr(url[:80])
        port = f":{parts.port}" if parts.port else ""
        return repr(f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}")
    except ValueError:  # a port that is not a number: show the host part only
        return repr(url.rpartition("@")[2].split("?")[0][:80])


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


@dataclass
class OtlpExporters:
    """The OTLP span processor and metric reader the environment asked for (None where it did not)."""

    processor: Any = None
    reader: Any = None
    taken: bool = False  # Azure Monitor's providers carry them

    def __bool__(self) -> bool:
        return self.processor is not None or self.reader is not None

    def azure_kwargs(self) -> dict[str, list[Any]]:
        """For `configure_azure_monitor`, which adds them to the providers it installs."""
        out: dict[str, list[Any]] = {}
        if self.processor is not None:
            out["span_processors"] = [self.processor]
        if self.reader is not None:
            out["metric_readers"] = [self.reader]
        return out


def _build(p: OtlpPlan) -> OtlpExporters:
    out = OtlpExporters()
    if "traces" in p.endpoints:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        out.processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=p.endpoints["traces"]))
    if "metrics" in p.endpoints:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        out.reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=p.endpoints["metrics"]))
    return out


def otlp_exporters(failed: Any, env: Mapping[str, str] | None = None) -> OtlpExporters:
    """Once per process: the exporters for the signals the environment asks for; empty on later calls,
    when nothing is asked, or when a setting is bad. `failed(kind, exc, message)` counts and logs once."""
    global _done
    p = plan(env)
    if not p.wanted:
        return OtlpExporters()
    with _lock:
        if _done:
            return OtlpExporters()
        _done = True
    if p.problems:
        failed("otlp_config", None, "; ".join(f"{why}: OTLP {' and '.join(signals)} export off"
                                              for why, signals in p.problems.items()))
    if not p.endpoints:
        return OtlpExporters()
    try:
        return _build(p)
    except ImportError:
        failed("otlp_config", None, f"{ENDPOINT} is set but the OTLP exporter is not installed "
                                    f"({EXTRA_HINT}); OTLP export off")
    except Exception as exc:  # e.g. a malformed OTEL_EXPORTER_OTLP_HEADERS or OTEL_BSP_* value
        failed("otlp_config", exc, None)
    return OtlpExporters()


def install_otlp(exporters: OtlpExporters, failed: Any) -> bool:
    """OTLP alone (or beside an Azure Monitor set-up that did not happen): SDK providers of our own as the
    global ones. Providers the app installed itself are left alone. True when something was installed."""
    if not exporters or exporters.taken:
        return False
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        skipped: list[str] = []
        resource = Resource.create()
        if exporters.processor is not None:
            if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                provider = TracerProvider(resource=resource)
                provider.add_span_processor(exporters.processor)
                trace.set_tracer_provider(provider)
            else:
                skipped.append("tracer")
        if exporters.reader is not None:
            if type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider":
                metrics.set_meter_provider(MeterProvider(metric_readers=[exporters.reader], resource=resource))
            else:
                skipped.append("meter")
        exporters.taken = True
    except Exception as exc:  # never into the app
        failed("otlp_config", exc, None)
        return False
    if skipped:
        failed("otlp_config", None, f"the app installed its own {' and '.join(skipped)} provider; "
                                    "foundry-telemetry leaves it as it is (add the OTLP exporter there)")
    return len(skipped) < (exporters.processor is not None) + (exporters.reader is not None)


def _reset_for_tests() -> None:
    global _done
    with _lock:
        _done = False
