"""Gateway mode: a streaming reverse proxy in front of Foundry for clients that are not the Python SDK
(TypeScript, C#, curl, Claude Code). Each proxied Messages request is one `AttemptCapture` fed into the same
pipeline as the SDK path, so it becomes the same `UsageRecord`, span, metrics and ledger row."""

from __future__ import annotations

from typing import Any

from .config import GatewayError, KeyMap, Upstream, fingerprint, parse_upstreams

__all__ = ["GatewayApp", "GatewayError", "GatewayServer", "KeyMap", "Upstream", "fingerprint", "parse_upstreams"]


def __getattr__(name: str) -> Any:
    # the app and server pull in the SDK and OpenTelemetry (seconds); configuration errors should not wait
    if name == "GatewayApp":
        from .app import GatewayApp

        return GatewayApp
    if name == "GatewayServer":
        from .server import GatewayServer

        return GatewayServer
    raise AttributeError(name)
