"""foundry-telemetry: usage accounting and observability for Claude on Microsoft Foundry."""

from .context import usage_context
from .core import Telemetry

__all__ = ["Telemetry", "usage_context"]
