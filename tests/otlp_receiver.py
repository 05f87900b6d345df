"""A loopback OTLP/HTTP receiver: decodes what the real OTLP exporters post with opentelemetry-proto's
request types, and a driver runner (OTel set-up is process-global, so each run is its own process)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .azure_capture import QUIET_ENV

DRIVER = Path(__file__).with_name("otlp_driver.py")


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.paths: list[str] = []
        self.content_types: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = (self.headers.get("content-encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                outer.paths.append(self.path)
                outer.content_types.add(self.headers.get("content-type") or "")
                if self.path.endswith("/v1/traces"):
                    request, reply = ExportTraceServiceRequest(), ExportTraceServiceResponse()
                    request.ParseFromString(body)
                    outer.traces.append(request)
                elif self.path.endswith("/v1/metrics"):
                    request, reply = ExportMetricsServiceRequest(), ExportMetricsServiceResponse()
                    request.ParseFromString(body)
                    outer.metrics.append(request)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = reply.SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def spans(self) -> list[dict[str, Any]]:
        """Every span received, flattened: name, kind, scope, ids, attributes, status."""
        out = []
        for request in self.traces:
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append({"name": s.name, "kind": s.kind, "scope": ss.scope.name,
                                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                    "parent_span_id": s.parent_span_id.hex(), "status": s.status.code,
                                    "attributes": attributes(s.attributes), "resource": resource,
                                    "duration_ns": s.end_time_unix_nano - s.start_time_unix_nano})
        return out

    def metric_points(self) -> dict[str, list[dict[str, Any]]]:
        """Metric name → its data points (as dicts, attributes decoded), over every export received."""
        out: dict[str, list[dict[str, Any]]] = {}
        for request in self.metrics:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        for p in getattr(m, kind).data_points:
                            point = MessageToDict(p, preserving_proto_field_name=True)
                            point["attributes"] = attributes(p.attributes)
                            point["kind"], point["unit"], point["scope"] = kind, m.unit, sm.scope.name
                            out.setdefault(m.name, []).append(point)
        return out

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def run_driver(tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 90) -> dict[str, Any]:
    """Drive the instrumented SDK against the emulator in a fresh process with `env` added."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_")) and k != "FOUNDRY_TELEMETRY_DB_URL"}
    full = {**base, **QUIET_ENV, "FOUNDRY_TELEMETRY_DB_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
            "FOUNDRY_TELEMETRY_SPOOL_DIR": str(tmp_path / "spool"), "TMPDIR": str(tmp_path), **env}
    out = subprocess.run([sys.executable, str(DRIVER), *args], env=full, capture_output=True, text=True,
                         timeout=timeout, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    result["stderr"] = out.stderr
    return result
