"""foundry-telemetry: usage accounting and observability for Claude on Microsoft Foundry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import usage_context

if TYPE_CHECKING:
    from .core import Telemetry

__all__ = ["Telemetry", "usage_context"]


def __getattr__(name: str) -> Any:
    # `import anthropic` costs ~2 s; the CLI's report/lookup/alerts commands never need it
    if name == "Telemetry":
        from .core import Telemetry

        return Telemetry
    raise AttributeError(name)
