"""Per-deployment latency percentiles and error rates over raw rows in a time window (alerts, HTML)."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Engine, func, select

from ..ledger.models import LATENCY_BUCKETS_MS, UsageDailyLatencyRow, UsageDailyRow, UsageRecordRow
from ..record import CALLER_ENDED, is_service_error

AUTH_ERRORS = {"authentication_error", "permission_error"}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class DeploymentStats:
    deployment: str
    requests: int = 0
    errors: int = 0
    server_errors: int = 0
    rate_limited: int = 0
    auth_errors: int = 0
    caller_ended: int = 0  # client_closed / cancelled: counted apart, not errors
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0  # attempts with tokens but no price: their cost is not in cost_usd
    count_tokens: int = 0  # free token-counting attempts (in `requests`, never billed)
    latencies: list[float] = field(default_factory=list)
    error_types: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def p(self, q: float) -> float | None:
        return percentile(self.latencies, q)

    def rate(self, count: int) -> float:
        return count / self.requests if self.requests else 0.0


def deployment_stats(engine: Engine, start: dt.datetime, end: dt.datetime) -> dict[str, DeploymentStats]:
    t = UsageRecordRow.__table__
    stmt = (select(t.c.deployment, t.c.latency_ms, t.c.status_code, t.c.error_type, t.c.cost_usd, t.c.operation)
            .where(t.c.created_at >= start, t.c.created_at < end))
    out: dict[str, DeploymentStats] = {}
    with engine.connect() as conn:
        for deployment, latency, status, error_type, cost, operation in conn.execute(stmt):
            name = deployment or "(none)"
            s = out.get(name) or out.setdefault(name, DeploymentStats(name))
            s.requests += 1
            status = status or 0
            if is_service_error(error_type, status):
                s.errors += 1
                s.error_types[error_type or str(status)] += 1
            elif error_type in CALLER_ENDED:
                s.caller_ended += 1
            s.server_errors += status >= 500
            s.rate_limited += status == 429
            s.auth_errors += status in (401, 403) or error_type in AUTH_ERRORS
            if latency is not None:
                s.latencies.append(float(latency))
            s.count_tokens += operation == "count_tokens"
            if cost is not None:
                s.cost_usd += Decimal(cost)
            else:
                s.unpriced += 1
    for s in out.values():
        s.latencies.sort()
    return out


@dataclass
class DailyDeploymentStats:
    """Per deployment over whole days, from the rollups: survives retention, exact counts,
    latency percentiles from the histogram (interpolated inside a bucket)."""

    deployment: str
    requests: int = 0
    errors: int = 0
    histogram: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p(self, q: float) -> float | None:
        total = sum(self.histogram.values())
        if not total:
            return None
        target = q * total
        seen = 0
        for bucket in sorted(self.histogram):
            n = self.histogram[bucket]
            if seen + n >= target:
                low = LATENCY_BUCKETS_MS[bucket - 1] if bucket > 0 else 0.0
                if bucket >= len(LATENCY_BUCKETS_MS):
                    return float(low)  # above the last bound: say at least that
                high = LATENCY_BUCKETS_MS[bucket]
                return low + (high - low) * (target - seen) / n
            seen += n
        return None


def daily_deployment_stats(engine: Engine, since: dt.date, until: dt.date) -> dict[str, DailyDeploymentStats]:
    d, h = UsageDailyRow.__table__, UsageDailyLatencyRow.__table__
    out: dict[str, DailyDeploymentStats] = {}
    with engine.connect() as conn:
        for deployment, requests, errors in conn.execute(  # every attempt, count_tokens included
                select(d.c.deployment, func.sum(d.c.requests + d.c.count_tokens_requests), func.sum(d.c.errors))
                .where(d.c.day >= since, d.c.day <= until).group_by(d.c.deployment)):
            name = deployment or "(none)"
            out[name] = DailyDeploymentStats(name, int(requests or 0), int(errors or 0))
        for deployment, bucket, count in conn.execute(
                select(h.c.deployment, h.c.bucket, func.sum(h.c.count))
                .where(h.c.day >= since, h.c.day <= until).group_by(h.c.deployment, h.c.bucket)):
            name = deployment or "(none)"
            out.setdefault(name, DailyDeploymentStats(name)).histogram[int(bucket)] += int(count or 0)
    return out
