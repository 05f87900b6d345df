"""A loopback stand-in for Application Insights ingestion: collects the envelopes the real exporter posts."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class CaptureServer:
    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip" or body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                try:
                    items = json.loads(body)
                except ValueError:
                    items = [json.loads(line) for line in body.splitlines() if line.strip()]
                if self.path.rstrip("/").endswith("v2.1/track"):
                    outer.envelopes.extend(items if isinstance(items, list) else [items])
                reply = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def connection_string(self) -> str:
        return ("InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                f"IngestionEndpoint=http://127.0.0.1:{self.port}/")

    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e.get("data", {}).get("baseType") == base_type]

    def __enter__(self) -> CaptureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()


QUIET_ENV = {
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
}


DRIVER = Path(__file__).with_name("azure_driver.py")


def run_driver(tmp_path: Path, connection_string: str) -> dict:
    """Drive the instrumented SDK in a fresh process with the connection string set."""
    env = {**os.environ, **QUIET_ENV, "APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string,
           "FOUNDRY_TELEMETRY_DB_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, str(DRIVER)], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)
