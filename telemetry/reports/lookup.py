"""Support lookup: one attempt by `request-id` or `apim-request-id` (or a unique prefix of either)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from ..ledger.models import UsageRecordRow
from ..numbers import plain


class Ambiguous(LookupError):
    """A prefix of more than one call: `count` is exact, `matches` a few of them to show."""

    def __init__(self, matches: list[UsageRecordRow], count: int | None = None) -> None:
        self.count = len(matches) if count is None else count
        super().__init__(f"{self.count} rows match")
        self.matches = matches


def find(engine: Engine, ident: str) -> UsageRecordRow | None:
    ident = ident.strip()
    t = UsageRecordRow
    with Session(engine) as session:
        # one index at a time: on a day-partitioned table an OR probes every partition's two indexes
        for column in (t.request_id, t.apim_request_id):
            exact = session.scalars(select(t).where(column == ident).limit(1)).first()
            if exact is not None:
                return exact
        if len(ident) < 4:
            return None
        pattern = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = or_(t.request_id.like(pattern, escape="\\"), t.apim_request_id.like(pattern, escape="\\"))
        matches = session.scalars(select(t).where(where).limit(5)).all()
        if len(matches) > 1:
            count = session.scalar(select(func.count()).select_from(t).where(where)) or len(matches)
            raise Ambiguous(list(matches), count)
    return matches[0] if matches else None


def kql(row: UsageRecordRow) -> str:
    start = row.created_at - dt.timedelta(minutes=10)
    end = row.created_at + dt.timedelta(minutes=10)
    key, value = (("foundry.request_id", row.request_id) if row.request_id
                  else ("foundry.apim_request_id", row.apim_request_id))
    return (
        "dependencies\n"
        f"| where timestamp between (datetime({start:%Y-%m-%dT%H:%M:%SZ}) .. datetime({end:%Y-%m-%dT%H:%M:%SZ}))\n"
        f'| where tostring(customDimensions["{key}"]) == "{value}"\n'
        "| project timestamp, name, duration, success, operation_Id, customDimensions"
    )


def as_dict(row: UsageRecordRow) -> dict[str, Any]:
    return {
        "request_id": row.request_id,
        "apim_request_id": row.apim_request_id,
        "time": row.created_at.isoformat(),
        "resource": row.resource,
        "deployment": row.deployment,
        "model": row.model,
        "operation": row.operation,
        "stream": row.stream,
        "status_code": row.status_code,
        "error_type": row.error_type,
        "error_message": row.error_message,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_creation_input_tokens": row.cache_creation_input_tokens,
        "cache_creation_5m_input_tokens": row.cache_creation_5m_input_tokens,
        "cache_creation_1h_input_tokens": row.cache_creation_1h_input_tokens,
        "cache_read_input_tokens": row.cache_read_input_tokens,
        "cost_usd": plain(row.cost_usd),  # None: unpriced
        "latency_ms": round(row.latency_ms, 3) if row.latency_ms is not None else None,
        "ttft_ms": round(row.ttft_ms, 3) if row.ttft_ms is not None else None,
        "team": row.team,
        "project": row.project,
        "user": row.user,
        "tags": row.tags,
        "operation_id": row.operation_id,
        "attempt": row.attempt,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "kql": kql(row),
    }
