"""`foundry-telemetry proxy`: configuration errors are one line (GatewayError); then serve until signalled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import GatewayError, KeyMap, parse_upstreams


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise GatewayError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8787")
    return host.strip("[]") or "127.0.0.1", int(port)


def run_proxy(upstreams: list[str], listen: str, db_url: str, key_map: Path | None, require_attribution: bool,
              max_connections: int, drain_timeout: float, console: Any) -> None:
    parsed = parse_upstreams(upstreams)
    host, port = parse_listen(listen)
    keys = KeyMap.load(key_map) if key_map is not None else None
    from .server import GatewayServer  # after the checks: it imports the SDK and OpenTelemetry

    server = GatewayServer(parsed, host=host, port=port, db_url=db_url, key_map=keys,
                           require_attribution=require_attribution, max_connections=max_connections,
                           drain_timeout=drain_timeout)
    names = ", ".join(f"{name} → {u.url}" for name, u in parsed.items())
    console.print(f"foundry-telemetry gateway on http://{host}:{server.port}/anthropic/ ({names}); "
                  f"/r/NAME/anthropic/ picks an upstream; GET /healthz; Ctrl-C or SIGTERM drains and stops",
                  soft_wrap=True, highlight=False, markup=False)
    server.serve_forever()
