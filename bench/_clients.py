"""The four clients the callgrind benches compare, over the in-process mock transport: the raw SDK and the
instrumented one (ledger only), and both again with OTel SDK providers exporting to do-nothing exporters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from overhead import NullMetricExporter, NullSpanExporter, sdk_client

from telemetry import Telemetry

Clients = dict[str, tuple[Any, Callable[[], Any]]]  # name → (client, flush)


def null_providers(export_interval_ms: int = 600_000) -> tuple[TracerProvider, MeterProvider, Callable[[], None]]:
    """OTel SDK providers as with Azure Monitor (a batch span processor, a periodic metric reader) exporting to
    do-nothing exporters, and a flush of both."""
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(NullSpanExporter()))
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(NullMetricExporter(),
                                                                     export_interval_millis=export_interval_ms)])

    def flush() -> None:
        tp.force_flush()
        mp.force_flush()

    return tp, mp, flush


def mock_clients(tmp: str) -> tuple[Clients, TracerProvider, list[Telemetry]]:
    """raw, inst, raw+otel, inst+otel; the tracer provider; the two Telemetry instances (to shut down)."""
    tp, mp, otel_flush = null_providers()
    tel = Telemetry(db_url=f"sqlite:///{tmp}/l.db", spool_dir=f"{tmp}/s")
    tel_otel = Telemetry(db_url=f"sqlite:///{tmp}/lo.db", spool_dir=f"{tmp}/so", tracer_provider=tp,
                         meter_provider=mp)
    clients: Clients = {
        "raw": (sdk_client(None, True), lambda: None),
        "inst": (tel.instrument(sdk_client(None, True)), tel.flush),
        "raw+otel": (sdk_client(tp, True), otel_flush),
        "inst+otel": (tel_otel.instrument(sdk_client(tp, True)), lambda: (tel_otel.flush(), otel_flush())),
    }
    return clients, tp, [tel, tel_otel]
