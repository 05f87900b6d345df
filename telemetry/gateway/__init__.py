"""Gateway mode: a streaming reverse proxy in front of Foundry for clients that are not the Python SDK
(TypeScript, C#, curl, Claude Code). Each proxied Messages request is one `AttemptCapture` fed into the same
pipeline as the SDK path, so it becomes the same `UsageRecord`, span, metrics and ledger row."""

from .app import GatewayApp
from .config import GatewayError, KeyMap, Upstream, parse_upstreams
from .server import GatewayServer

__all__ = ["GatewayApp", "GatewayError", "GatewayServer", "KeyMap", "Upstream", "parse_upstreams"]
