"""UsageRecord: the one plain type everything after capture works on."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

# Attempts the caller ended on purpose (a stream closed before its end, a cancelled task): what the service
# did was fine, so error rates, alerts and daily error counts leave them out and count them apart.
CALLER_ENDED = frozenset({"client_closed", "cancelled"})


def is_service_error(error_type: str | None, status_code: int | None) -> bool:
    """An attempt that failed on the service's side (or on the way): any 4xx/5xx, or an error type that is
    not one the caller chose (`CALLER_ENDED`)."""
    return (status_code or 0) >= 400 or (error_type is not None and error_type not in CALLER_ENDED)


@dataclass(slots=True)
class UsageRecord:
    created_at: dt.datetime  # UTC, request start
    operation_id: str
    attempt: int
    operation: str = "chat"  # chat | count_tokens | other
    request_id: str | None = None
    apim_request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    resource: str | None = None
    server_address: str | None = None
    server_port: int | None = None
    deployment: str | None = None
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    status_code: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    response_id: str | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    web_search_requests: int = 0
    cost_usd: Decimal | None = None  # at list price
    billed_cost_usd: Decimal | None = None  # after the contractual discount (telemetry.finance)
    discount: Decimal | None = None  # the discount in force for this row's resource when it was priced
    latency_ms: float | None = None
    ttft_ms: float | None = None
    chunk_gaps_ms: list[float] = field(default_factory=list)
    team: str | None = None
    project: str | None = None
    user: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    prompt: str | None = None
    completion: str | None = None
    record_id: str = ""  # the ledger's primary key, fixed before the first write so replays dedupe

    @property
    def total_input_tokens(self) -> int:
        """Input as the GenAI convention counts it: uncached + cache read + cache creation."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
