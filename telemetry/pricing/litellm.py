"""`prices check FILE`: the table in force against a price file in LiteLLM's format
(`model_prices_and_context_window.json`: USD per token, `input_cost_per_token`, `output_cost_per_token`,
`cache_creation_input_token_cost`, `cache_creation_input_token_cost_above_1hr`, `cache_read_input_token_cost`,
tiers as `*_above_{N}k_tokens`, `deprecation_date`). Foundry's own entries (`azure_ai/…`) win over the plain
Anthropic ones."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..numbers import plain
from .table import RATE_KEYS, PriceError, PriceTable, Rates

MILLION = Decimal(1_000_000)
FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_write_5m": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
    "cache_read": "cache_read_input_token_cost",
}
_TIER_KEY = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")
_PREFIXES = ("azure_ai/", "anthropic/")
_PROVIDERS = {"anthropic", "azure_ai"}


@dataclass
class Mismatch:
    model: str
    field: str
    table: str | None
    file: str | None
    file_key: str


@dataclass
class CheckResult:
    mismatches: list[Mismatch] = field(default_factory=list)
    missing_in_file: list[str] = field(default_factory=list)  # our models the file has no entry for
    missing_in_table: list[str] = field(default_factory=list)  # Claude entries the table cannot price
    missing_fields: list[Mismatch] = field(default_factory=list)  # a rate the file does not give
    compared: dict[str, str] = field(default_factory=dict)  # our model → the file's entry it was checked against

    def as_dict(self) -> dict[str, Any]:
        row = lambda m: {"model": m.model, "field": m.field, "table": m.table, "file": m.file,  # noqa: E731
                         "file_key": m.file_key}
        return {"mismatches": [row(m) for m in self.mismatches], "missing_in_file": self.missing_in_file,
                "missing_in_table": self.missing_in_table,
                "missing_fields": [row(m) for m in self.missing_fields], "compared": self.compared}


def _per_million(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str | float):
        raise PriceError(f"{where}: {value!r} is not a number")
    try:
        return (Decimal(str(value)) * MILLION).normalize()
    except InvalidOperation:
        raise PriceError(f"{where}: {value!r} is not a number") from None


def read_litellm(path: str | Path) -> dict[str, dict[str, Any]]:
    p = Path(path)
    try:
        data = json.loads(p.read_text("utf-8"), parse_float=Decimal)  # exact: 3e-07 is 0.3 per million
    except FileNotFoundError:
        raise PriceError(f"price file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceError(f"price file {p}: {exc}") from None
    except ValueError as exc:
        raise PriceError(f"price file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PriceError(f"price file {p}: expected a JSON object of model entries (LiteLLM's format)")
    return {k: v for k, v in data.items() if isinstance(v, dict) and k != "sample_spec"}


def _claude_entries(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, entry in entries.items():
        provider = entry.get("litellm_provider")
        bare = next((key[len(p):] for p in _PREFIXES if key.startswith(p)), key)
        if "claude" in bare and "/" not in bare and (provider in _PROVIDERS or provider is None):
            out[key] = entry
    return out


def _rank(key: str, model: str) -> int:
    return {f"azure_ai/{model}": 0, model: 1, f"anthropic/{model}": 2}.get(key, 3)


def _compare(result: CheckResult, model: str, key: str, ours: Rates, entry: dict[str, Any], suffix: str,
             label: str) -> None:
    for name in RATE_KEYS:
        file_key = FIELDS[name] + suffix
        mine = getattr(ours, name)
        if file_key not in entry:
            result.missing_fields.append(Mismatch(model, label + name, plain(mine), None, f"{key}: {file_key}"))
            continue
        theirs = _per_million(entry[file_key], f"{key}.{file_key}")
        if theirs != mine:
            result.mismatches.append(Mismatch(model, label + name, plain(mine), plain(theirs), f"{key}: {file_key}"))


def check(table: PriceTable, path: str | Path, today: dt.date | None = None) -> CheckResult:
    entries = _claude_entries(read_litellm(path))
    now = dt.datetime.combine(today or dt.datetime.now(dt.UTC).date(), dt.time(12), dt.UTC)
    result = CheckResult()
    by_model: dict[str, list[str]] = {}
    for key in entries:
        bare = next((key[len(p):] for p in _PREFIXES if key.startswith(p)), key)
        resolved = table.resolve(bare)
        if resolved is None:
            result.missing_in_table.append(key)
        else:
            by_model.setdefault(resolved, []).append(key)
    for model in sorted(table.models):
        keys = by_model.get(model)
        if not keys:
            result.missing_in_file.append(model)
            continue
        key = min(keys, key=lambda k: (_rank(k, model), k))
        result.compared[model] = key
        entry = entries[key]
        price = table.models[model]
        period = price.period_at(now)
        _compare(result, model, key, period.rates, entry, "", "")
        tiers = sorted(int(m.group(1)) for k in entry if (m := _TIER_KEY.match(k)))
        theirs = tiers[0] * 1000 if tiers else None
        mine = period.tier.threshold if period.tier else None
        if theirs != mine:
            result.mismatches.append(Mismatch(model, "tier threshold", str(mine) if mine else None,
                                              str(theirs) if theirs else None,
                                              f"{key}: input_cost_per_token_above_*k_tokens"))
        elif period.tier is not None:
            _compare(result, model, key, period.tier.rates, entry, f"_above_{tiers[0]}k_tokens",
                     f"above {mine}: ")
        if ("deprecation_date" in entry and price.retirement is not None
                and str(entry["deprecation_date"])[:10] != price.retirement.isoformat()):
            result.mismatches.append(Mismatch(model, "retirement", price.retirement.isoformat(),
                                              str(entry["deprecation_date"]), f"{key}: deprecation_date"))
    result.missing_in_table.sort()
    return result
