"""Latency, error and cost rules evaluated on the ledger. A rule fires when its value is strictly above
its threshold; at the threshold it stays quiet. The same rules ship as Azure scheduled-query alerts
(dashboards/alerts.json) over the KQL in dashboards/kql/. Monthly budgets (`[[budget]]`, `--budget`) are
evaluated by telemetry.finance.budget on billed cost, with a forecast to month end (dashboards/budgets.json).

Alerts count what the service did: an attempt the caller ended on purpose (`client_closed`, `cancelled`,
see telemetry.record.CALLER_ENDED) is no error; it is reported apart, as `caller_ended`."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from .finance.budget import Budget, BudgetError, evaluate_budget, make_budget
from .numbers import non_negative_decimal, plain
from .reports.stats import DeploymentStats, deployment_stats

KINDS = {
    "latency_p95": "p95 latency per deployment, ms",
    "error_rate": "share of failed attempts per deployment (streams the caller closed are not failures)",
    "server_error_rate": "share of 5xx attempts per deployment",
    "rate_limit_rate": "share of 429 attempts per deployment",
    "auth_error_rate": "share of 401/403 attempts per deployment",
    "cost_per_hour": "spend per hour over the window, USD, all deployments",
}


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    kind: str
    threshold: Decimal
    deployment: str | None = None
    min_requests: int = 1
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or (f"{self.kind} > {self.threshold}" + (f" [{self.deployment}]" if self.deployment else ""))


@dataclass
class Firing:
    rule: str
    kind: str
    deployment: str | None
    value: float
    threshold: float
    requests: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    window_minutes: int
    start: dt.datetime
    end: dt.datetime
    firing: list[Firing]
    checked: list[dict[str, Any]]
    budgets: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"window_minutes": self.window_minutes, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "firing": [asdict(f) for f in self.firing], "checked": self.checked,
                "budgets": self.budgets}


def _number(value: Any, where: str) -> Decimal:
    return non_negative_decimal(value, where, RuleError)


def make_rule(spec: dict[str, Any], where: str) -> Rule:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise RuleError(f"{where}: kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if "threshold" not in spec:
        raise RuleError(f"{where}: threshold is required")
    threshold = _number(spec["threshold"], f"{where}.threshold")
    if kind.endswith("_rate") and threshold > 1:
        raise RuleError(f"{where}.threshold: a rate is a fraction between 0 and 1 (got {threshold})")
    min_requests = spec.get("min_requests", 1)
    if not isinstance(min_requests, int) or isinstance(min_requests, bool) or min_requests < 1:
        raise RuleError(f"{where}.min_requests: must be a whole number ≥ 1")
    unknown = set(spec) - {"kind", "threshold", "deployment", "min_requests", "name"}
    if unknown:
        raise RuleError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    return Rule(kind, threshold, spec.get("deployment"), min_requests, spec.get("name"))


def load_rules(path: str | Path) -> tuple[list[Rule], dict[str, Any]]:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise RuleError(f"rule file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"rule file {p} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"rule file {p}: {exc}") from None
    specs = data.get("rule", [])
    budget_specs = data.get("budget", [])
    if not isinstance(specs, list) or not isinstance(budget_specs, list) or not (specs or budget_specs):
        raise RuleError(f"rule file {p}: needs at least one [[rule]] or [[budget]] table")
    rules = [make_rule(s if isinstance(s, dict) else {}, f"{p} rule {i + 1}") for i, s in enumerate(specs)]
    options: dict[str, Any] = {k: data[k] for k in ("window_minutes", "webhook") if k in data}
    try:
        options["budgets"] = [make_budget(s if isinstance(s, dict) else {}, f"{p} budget {i + 1}")
                              for i, s in enumerate(budget_specs)]
    except BudgetError as exc:
        raise RuleError(str(exc)) from None
    if "window_minutes" in options and (not isinstance(options["window_minutes"], int)
                                        or options["window_minutes"] < 1):
        raise RuleError(f"rule file {p}: window_minutes must be a whole number ≥ 1")
    return rules, options


def _value(rule: Rule, s: DeploymentStats) -> float | None:
    if rule.kind == "latency_p95":
        return s.p(0.95)
    count = {"error_rate": s.errors, "server_error_rate": s.server_errors,
             "rate_limit_rate": s.rate_limited, "auth_error_rate": s.auth_errors}[rule.kind]
    return s.rate(count)


def evaluate(engine: Engine, rules: list[Rule], window_minutes: int, now: dt.datetime | None = None,
             budgets: list[Budget] | None = None) -> Evaluation:
    end = now or dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(minutes=window_minutes)
    stats = deployment_stats(engine, start, end)
    firing: list[Firing] = []
    checked: list[dict[str, Any]] = []
    for rule in rules:
        threshold = float(rule.threshold)
        if rule.kind == "cost_per_hour":
            cost = sum((s.cost_usd for s in stats.values()), Decimal(0))
            per_hour = cost * 60 / window_minutes
            requests = sum(s.requests - s.count_tokens for s in stats.values())  # billed calls only
            unpriced = sum(s.unpriced for s in stats.values())
            counted = sum(s.count_tokens for s in stats.values())
            checked.append({"rule": rule.label, "value": float(per_hour), "requests": requests,
                            "cost_usd": plain(cost), "unpriced": unpriced, "count_tokens_requests": counted})
            if per_hour > rule.threshold and requests >= rule.min_requests:
                firing.append(Firing(rule.label, rule.kind, None, float(per_hour), threshold, requests,
                                     {"cost_usd": plain(cost), "unpriced": unpriced,
                                      "count_tokens_requests": counted}))
            continue
        for name, s in sorted(stats.items()):
            if rule.deployment and name != rule.deployment:
                continue
            value = _value(rule, s)
            checked.append({"rule": rule.label, "deployment": name, "value": value, "requests": s.requests})
            if value is None or s.requests < rule.min_requests:
                continue
            if Decimal(str(value)) > rule.threshold:
                detail = {"errors_by_type": dict(s.error_types), "caller_ended": s.caller_ended} if (
                    rule.kind.endswith("rate")) else {"p50_ms": s.p(0.5), "p99_ms": s.p(0.99)}
                firing.append(Firing(rule.label, rule.kind, name, value, threshold, s.requests, detail))
    statuses = []
    for budget in budgets or ():
        status = evaluate_budget(engine, budget, end)
        statuses.append(status.as_dict())
        for f in status.firing:
            firing.append(Firing(budget.label, f["kind"], None, float(f["value"]), float(f["threshold"]), 0,
                                 {"message": f["message"], **{k: v for k, v in status.as_dict().items()
                                                              if k not in ("firing", "budget")}}))
    return Evaluation(window_minutes, start, end, firing, checked, statuses)


def post_webhook(url: str, evaluation: Evaluation, timeout: float = 10.0) -> None:
    payload = {"source": "foundry-telemetry", **evaluation.as_dict()}
    response = httpx.post(url, content=json.dumps(payload, default=str),
                          headers={"content-type": "application/json"}, timeout=timeout)
    response.raise_for_status()
