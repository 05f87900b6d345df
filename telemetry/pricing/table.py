"""Price table: built-in TOML, optionally extended by a user file; deployment map with multipliers."""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from ..numbers import non_negative_decimal
from ..record import UsageRecord

log = logging.getLogger("telemetry")

MILLION = Decimal(1_000_000)
QUANTUM = Decimal("1e-10")  # costs are kept to 1e-10 USD so that sums in SQL stay exact
_DATE_SUFFIX = re.compile(r"-(\d{8})$")
_RATE_KEYS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")


class PriceError(ValueError):
    """A price file or deployment map that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class Rates:
    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal


@dataclass(frozen=True, slots=True)
class ModelPrice:
    rates: Rates
    source: str
    checked: str
    long_context: Rates | None = None
    long_context_threshold: int | None = None


@dataclass(frozen=True, slots=True)
class Deployment:
    model: str
    multiplier: Decimal = Decimal(1)


def _decimal(value: Any, where: str) -> Decimal:
    return non_negative_decimal(value, where, PriceError)


def _rates(spec: Any, where: str) -> Rates:
    if not isinstance(spec, dict):
        raise PriceError(f"{where}: expected a table of rates")
    missing = [k for k in _RATE_KEYS if k not in spec]
    if missing:
        raise PriceError(f"{where}: missing {', '.join(missing)}")
    return Rates(**{k: _decimal(spec[k], f"{where}.{k}") for k in _RATE_KEYS})


def _parse_deployments(spec: str, where: str) -> dict[str, Deployment]:
    """`name=model[*multiplier],…` as in FOUNDRY_TELEMETRY_DEPLOYMENTS."""
    out: dict[str, Deployment] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise PriceError(f"{where}: {item!r} is not name=model or name=model*multiplier")
        model, star, mult = target.partition("*")
        multiplier = _decimal(mult.strip(), f"{where} {name.strip()}") if star else Decimal(1)
        out[name.strip()] = Deployment(model.strip(), multiplier)
    return out


@dataclass
class PriceTable:
    models: dict[str, ModelPrice] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    deployments: dict[str, Deployment] = field(default_factory=dict)
    web_search_per_1000: Decimal = Decimal(10)
    _warned: set[str] = field(default_factory=set)

    def merge_toml(self, data: dict[str, Any], where: str) -> None:
        meta = data.get("meta", {})
        if "web_search_per_1000" in meta:
            self.web_search_per_1000 = _decimal(meta["web_search_per_1000"], f"{where}: meta.web_search_per_1000")
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise PriceError(f"{where}: [models] must be a table")
        for name, spec in models.items():
            label = f"{where}: models.{name}"
            if not isinstance(spec, dict):
                raise PriceError(f"{label}: expected a table")
            long_spec = spec.get("long_context")
            long_rates = _rates(long_spec, f"{label}.long_context") if long_spec is not None else None
            threshold = long_spec.get("threshold", 200_000) if isinstance(long_spec, dict) else None
            if threshold is not None and (not isinstance(threshold, int) or threshold <= 0):
                raise PriceError(f"{label}.long_context.threshold: must be a positive integer")
            self.models[name] = ModelPrice(
                _rates(spec, label), str(spec.get("source", where)), str(spec.get("checked", "")),
                long_rates, threshold,
            )
            for alias in spec.get("aliases", ()):
                self.aliases[str(alias)] = name
        deployments = data.get("deployments", {})
        if not isinstance(deployments, dict):
            raise PriceError(f"{where}: [deployments] must be a table")
        for name, spec in deployments.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
                raise PriceError(f"{where}: deployments.{name} needs model = \"…\"")
            mult = _decimal(spec.get("multiplier", "1"), f"{where}: deployments.{name}.multiplier")
            self.deployments[name] = Deployment(spec["model"], mult)

    def resolve(self, name: str | None) -> str | None:
        """Model id (dated or not, or a mapped deployment) → the key of its price."""
        if not name:
            return None
        for candidate in (name, _DATE_SUFFIX.sub("", name)):
            if candidate in self.models:
                return candidate
            if candidate in self.aliases:
                return self.aliases[candidate]
        return None

    def model_for(self, deployment: str | None, answered: str | None) -> str | None:
        """The model a record is billed as: the answered one, else the deployment's mapping, else itself."""
        mapped = self.deployments.get(deployment or "")
        for candidate in (answered, mapped.model if mapped else None, deployment):
            if self.resolve(candidate):
                return candidate
        return answered or (mapped.model if mapped else None)

    def cost(self, record: UsageRecord) -> Decimal | None:
        if not (record.total_input_tokens or record.output_tokens or record.web_search_requests):
            return Decimal(0).quantize(QUANTUM)  # nothing billed (a rejected attempt), whatever the model
        model = self.model_for(record.deployment, record.model)
        key = self.resolve(model)
        if key is None:
            label = model or record.deployment or "?"
            if label not in self._warned:
                self._warned.add(label)
                log.warning("foundry-telemetry: no price for model %r; its cost_usd stays NULL", label)
            return None
        price = self.models[key]
        cache_write = record.cache_creation_input_tokens
        total_in = record.input_tokens + cache_write + record.cache_read_input_tokens
        rates = price.rates
        if price.long_context and price.long_context_threshold and total_in > price.long_context_threshold:
            rates = price.long_context
        w1h = record.cache_creation_1h_input_tokens
        # without the cache_creation breakdown the whole write is priced at the 5-minute rate
        w5m = max(cache_write - w1h, record.cache_creation_5m_input_tokens)
        tokens = (
            record.input_tokens * rates.input
            + w5m * rates.cache_write_5m
            + w1h * rates.cache_write_1h
            + record.cache_read_input_tokens * rates.cache_read
            + record.output_tokens * rates.output
        )
        deployment = self.deployments.get(record.deployment or "")
        multiplier = deployment.multiplier if deployment is not None else Decimal(1)  # data-zone uplift
        total = tokens / MILLION * multiplier + record.web_search_requests * self.web_search_per_1000 / 1000
        return total.quantize(QUANTUM)


def load_price_table(path: str | Path | None = None, deployments: str | None = None) -> PriceTable:
    table = PriceTable()
    builtin = resources.files("telemetry.pricing").joinpath("prices.toml").read_text("utf-8")
    table.merge_toml(tomllib.loads(builtin), "built-in prices")
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text("utf-8"))
        except FileNotFoundError:
            raise PriceError(f"price file {p} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PriceError(f"price file {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PriceError(f"price file {p} is not valid TOML: {exc}") from None
        table.merge_toml(data, f"price file {p}")
    if deployments:
        table.deployments.update(_parse_deployments(deployments, "FOUNDRY_TELEMETRY_DEPLOYMENTS"))
    return table
