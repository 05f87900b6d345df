"""Attribution for usage rows: who called, for what. Carried by contextvars so it follows threads' copies
of the context and asyncio tasks."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Attribution:
    team: str | None = None
    project: str | None = None
    user: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


EMPTY = Attribution()
_current: contextvars.ContextVar[Attribution] = contextvars.ContextVar("foundry_usage_context", default=EMPTY)


def current_attribution() -> Attribution:
    return _current.get()


@contextmanager
def usage_context(
    *,
    team: str | None = None,
    project: str | None = None,
    user: str | None = None,
    tags: Mapping[str, object] | None = None,
) -> Iterator[Attribution]:
    """Attribute every call inside the block; inner values override, tags merge."""
    outer = _current.get()
    merged = Attribution(
        team=team if team is not None else outer.team,
        project=project if project is not None else outer.project,
        user=user if user is not None else outer.user,
        tags={**outer.tags, **{str(k): str(v) for k, v in (tags or {}).items()}},
    )
    token = _current.set(merged)
    try:
        yield merged
    finally:
        _current.reset(token)
