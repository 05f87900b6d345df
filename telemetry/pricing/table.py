"""Price table: built-in TOML, optionally extended by a user file; dated rates; deployment map with multipliers.

A row is priced by the model the response names (the deployments map only stands in when it names none),
with the rates in force at the row's `created_at`. An unknown model is NULL plus one warning per process.
"""

from __future__ import annotations

import bisect
import datetime as dt
import difflib
import logging
import re
import threading
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
ZERO = Decimal(0).quantize(QUANTUM)
_DATE_SUFFIX = re.compile(r"-(\d{8})$")
RATE_KEYS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
_TOP_KEYS = ("meta", "models", "deployments", "discounts")  # [discounts]: telemetry.finance reads it
_META_KEYS = ("web_search_per_1000", "web_search_source", "web_search_checked", "source", "checked", "note")
_MODEL_KEYS = (*RATE_KEYS, "aliases", "source", "checked", "effective", "retirement", "long_context", "rates",
               "note")
_PERIOD_KEYS = (*RATE_KEYS, "effective", "source", "checked", "long_context", "note")
_TIER_KEYS = ("threshold", *RATE_KEYS)
_DEPLOYMENT_KEYS = ("model", "multiplier", "note")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_warned: set[str] = set()  # one warning per unknown model per process
_warned_lock = threading.Lock()


class PriceError(ValueError):
    """A price file or deployment map that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens."""

    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal


@dataclass(frozen=True, slots=True)
class Tier:
    """When input + cache write + cache read of one request exceed `threshold`, the whole request is
    billed at these rates (Haiku 5.5 above 100,000; Sonnet 4 / 4.5 above 200,000 with the 1M beta)."""

    threshold: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class RatePeriod:
    effective: dt.date | None  # None: since the model was offered
    rates: Rates
    tier: Tier | None
    source: str
    checked: str


@dataclass(frozen=True)
class ModelPrice:
    name: str
    periods: tuple[RatePeriod, ...]  # ascending by effective date, no two on the same day
    source: str
    checked: str
    retirement: dt.date | None = None
    aliases: tuple[str, ...] = ()
    _starts: tuple[dt.datetime, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = tuple(_EPOCH if p.effective is None else
                       dt.datetime.combine(p.effective, dt.time(), dt.UTC) for p in self.periods)
        object.__setattr__(self, "_starts", starts)

    def period_at(self, when: dt.datetime | None) -> RatePeriod:
        """The rates in force at `when` (UTC); before the first effective date, the first rates."""
        if when is None or len(self.periods) == 1:
            return self.periods[-1] if when is None else self.periods[0]
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        i = bisect.bisect_right(self._starts, when) - 1
        return self.periods[max(i, 0)]

    @property
    def rates(self) -> Rates:
        """The newest rates (for display); pricing a row goes through `period_at`."""
        return self.periods[-1].rates


@dataclass(frozen=True, slots=True)
class Deployment:
    model: str
    multiplier: Decimal = Decimal(1)


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(allowed)})"


def _check_keys(spec: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in spec:
        if key not in allowed:
            raise PriceError(f"{where}: unknown key {key!r}{_suggest(key, allowed)}")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PriceError(f"{where}: expected a table, got {type(value).__name__} {value!r}"[:300])
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PriceError(f"{where}: expected a string, got {type(value).__name__} {value!r}"[:300])
    return value


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date | str):
        raise PriceError(f"{where}: expected a date YYYY-MM-DD, got {value!r}"[:300])
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise PriceError(f"{where}: {value!r} is not a date YYYY-MM-DD") from None
    return value


def _decimal(value: Any, where: str) -> Decimal:
    return non_negative_decimal(value, where, PriceError)


def _rates(spec: dict[str, Any], where: str) -> Rates:
    missing = [k for k in RATE_KEYS if k not in spec]
    if missing:
        raise PriceError(f"{where}: missing {', '.join(missing)}")
    return Rates(**{k: _decimal(spec[k], f"{where}: key {k!r}") for k in RATE_KEYS})


def _tier(spec: Any, where: str) -> Tier:
    spec = _table(spec, where)
    _check_keys(spec, _TIER_KEYS, where)
    threshold = spec.get("threshold", 200_000)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
        raise PriceError(f"{where}: key 'threshold': must be a positive whole number of tokens")
    return Tier(threshold, _rates(spec, where))


def _period(spec: dict[str, Any], where: str, source: str, checked: str) -> RatePeriod:
    effective = _date(spec["effective"], f"{where}: key 'effective'") if "effective" in spec else None
    tier = _tier(spec["long_context"], f"{where}.long_context") if "long_context" in spec else None
    return RatePeriod(
        effective, _rates(spec, where), tier,
        _text(spec["source"], f"{where}: key 'source'") if "source" in spec else source,
        _checked(spec["checked"], f"{where}: key 'checked'") if "checked" in spec else checked,
    )


def _checked(value: Any, where: str) -> str:
    return _date(value, where).isoformat()


def _parse_model(name: str, spec: Any, where: str) -> ModelPrice:
    label = f"{where}: model {name!r}"
    spec = _table(spec, label)
    _check_keys(spec, _MODEL_KEYS, label)
    source = _text(spec["source"], f"{label}: key 'source'") if "source" in spec else where
    checked = _checked(spec["checked"], f"{label}: key 'checked'") if "checked" in spec else ""
    aliases: tuple[str, ...] = ()
    if "aliases" in spec:
        raw = spec["aliases"]
        if not isinstance(raw, list) or not all(isinstance(a, str) and a.strip() for a in raw):
            raise PriceError(f"{label}: key 'aliases': must be a list of model ids, e.g. "
                             f"aliases = [\"{raw if isinstance(raw, str) else 'claude-x-latest'}\"]")
        aliases = tuple(a.strip() for a in raw)
    retirement = _date(spec["retirement"], f"{label}: key 'retirement'") if "retirement" in spec else None
    flat = [k for k in (*RATE_KEYS, "long_context", "effective") if k in spec]
    if "rates" in spec:
        if flat:
            raise PriceError(f"{label}: key {flat[0]!r}: give rates either on the model or in "
                             f"[[models.\"{name}\".rates]], not both")
        raw_periods = spec["rates"]
        if not isinstance(raw_periods, list) or not raw_periods:
            raise PriceError(f"{label}: key 'rates': must be one or more [[models.\"{name}\".rates]] tables")
        periods = []
        for i, item in enumerate(raw_periods):
            pwhere = f"{label}: rates[{i + 1}]"
            item = _table(item, pwhere)
            _check_keys(item, _PERIOD_KEYS, pwhere)
            periods.append(_period(item, pwhere, source, checked))
    else:
        periods = [_period(spec, label, source, checked)]
    periods.sort(key=lambda p: p.effective or dt.date.min)
    for a, b in zip(periods, periods[1:], strict=False):
        if (a.effective or dt.date.min) == (b.effective or dt.date.min):
            when = a.effective.isoformat() if a.effective else "with no effective date"
            raise PriceError(f"{label}: key 'effective': overlapping dated rates (two start {when})")
    return ModelPrice(name, tuple(periods), source, checked, retirement, aliases)


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
    web_search_source: str = ""
    web_search_checked: str = ""
    _resolved: dict[str, str | None] = field(default_factory=dict, repr=False)

    def merge_toml(self, data: dict[str, Any], where: str) -> None:
        """Check the whole document first, then apply it: a bad file changes nothing."""
        for key in data:
            if key not in _TOP_KEYS:
                raise PriceError(f"{where}: unknown table [{key}]{_suggest(key, _TOP_KEYS)}")
        meta = _table(data.get("meta", {}), f"{where}: [meta]")
        _check_keys(meta, _META_KEYS, f"{where}: [meta]")
        web = (_decimal(meta["web_search_per_1000"], f"{where}: [meta]: key 'web_search_per_1000'")
               if "web_search_per_1000" in meta else None)
        models = _table(data.get("models", {}), f"{where}: [models]")
        parsed = {str(name): _parse_model(str(name), spec, where) for name, spec in models.items()}
        aliases: dict[str, str] = {}
        for model in parsed.values():
            for alias in model.aliases:
                label = f"{where}: model {model.name!r}: key 'aliases'"
                if alias in parsed or alias in aliases:
                    raise PriceError(f"{label}: {alias!r} already names "
                                     f"{'a model' if alias in parsed else repr(aliases[alias])}")
                aliases[alias] = model.name
        deployments_spec = _table(data.get("deployments", {}), f"{where}: [deployments]")
        deployments: dict[str, Deployment] = {}
        for name, spec in deployments_spec.items():
            label = f"{where}: deployment {name!r}"
            spec = _table(spec, label)
            _check_keys(spec, _DEPLOYMENT_KEYS, label)
            if not isinstance(spec.get("model"), str) or not spec["model"].strip():
                raise PriceError(f"{label}: key 'model': needs model = \"…\"")
            mult = _decimal(spec.get("multiplier", "1"), f"{label}: key 'multiplier'")
            deployments[str(name)] = Deployment(spec["model"].strip(), mult)
        if web is not None:
            self.web_search_per_1000 = web
        for key, attr in (("web_search_source", "web_search_source"), ("web_search_checked", "web_search_checked")):
            if key in meta:
                setattr(self, attr, str(meta[key]))
        for name, model in parsed.items():
            old = self.models.get(name)
            if old is not None:  # a redefined model brings its own aliases
                for alias in old.aliases:
                    self.aliases.pop(alias, None)
            self.aliases.pop(name, None)
            self.models[name] = model
        self.aliases.update(aliases)
        self.deployments.update(deployments)
        self._resolved.clear()

    def resolve(self, name: str | None) -> str | None:
        """Model id (dated or not, or an alias) → the key of its price; None when unknown."""
        if not name:
            return None
        cached = self._resolved.get(name, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        key = None
        for candidate in (name, _DATE_SUFFIX.sub("", name)):
            if candidate in self.models:
                key = candidate
                break
            if candidate in self.aliases:
                key = self.aliases[candidate]
                break
        if len(self._resolved) < 4096:
            self._resolved[name] = key
        return key

    def model_for(self, deployment: str | None, answered: str | None) -> str | None:
        """The model a record is billed as: the answered one; only when the response names none, the
        deployment's mapping. Never the deployment name itself, and never instead of an answered model."""
        if answered:
            return answered
        mapped = self.deployments.get(deployment or "")
        return mapped.model if mapped else None

    def price_of(self, record: UsageRecord) -> ModelPrice | None:
        key = self.resolve(self.model_for(record.deployment, record.model))
        return self.models[key] if key is not None else None

    def cost(self, record: UsageRecord) -> Decimal | None:
        """List cost in USD (exact, to 1e-10), or None when the model has no price."""
        if record.operation == "count_tokens":
            return ZERO  # token counting is free
        if not (record.input_tokens or record.output_tokens or record.cache_read_input_tokens
                or record.cache_creation_input_tokens or record.web_search_requests):
            return ZERO  # nothing billed (a rejected attempt), whatever the model
        model = self.model_for(record.deployment, record.model)
        key = self.resolve(model)
        if key is None:
            _warn_unpriced(model or f"deployment {record.deployment or '?'} (no model answered)")
            return None
        period = self.models[key].period_at(record.created_at)
        cache_write = record.cache_creation_input_tokens
        rates = period.rates
        tier = period.tier
        if tier is not None and record.input_tokens + cache_write + record.cache_read_input_tokens > tier.threshold:
            rates = tier.rates
        w1h = record.cache_creation_1h_input_tokens
        # without the cache_creation breakdown the whole write is priced at the 5-minute rate
        w5m = max(cache_write - w1h, record.cache_creation_5m_input_tokens)
        # terms without tokens are left out: an exact zero changes no sum's value, and the quantize below fixes
        # the exponent (most calls have no cache tokens: 3 of 5 products and a sum each saved)
        tokens = record.input_tokens * rates.input + record.output_tokens * rates.output
        if w5m:
            tokens += w5m * rates.cache_write_5m
        if w1h:
            tokens += w1h * rates.cache_write_1h
        if record.cache_read_input_tokens:
            tokens += record.cache_read_input_tokens * rates.cache_read
        deployment = self.deployments.get(record.deployment or "")
        total = tokens / MILLION
        if deployment is not None:
            total *= deployment.multiplier  # data-zone uplift
        if record.web_search_requests:
            total += record.web_search_requests * self.web_search_per_1000 / 1000
        return total.quantize(QUANTUM)

    def retirement_of(self, model: str | None) -> dt.date | None:
        key = self.resolve(model)
        return self.models[key].retirement if key is not None else None


def _warn_unpriced(label: str) -> None:
    with _warned_lock:
        if label in _warned:
            return
        _warned.add(label)
    log.warning("foundry-telemetry: no price for model %r; its cost_usd stays NULL "
                "(add it to a price file: FOUNDRY_TELEMETRY_PRICES)", label)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise PriceError(f"price file {path} does not exist") from None
    except IsADirectoryError:
        raise PriceError(f"price file {path} is a folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceError(f"price file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceError(f"price file {path} is not valid TOML: {exc}") from None


def load_price_table(path: str | Path | None = None, deployments: str | None = None) -> PriceTable:
    table = PriceTable()
    builtin = resources.files("telemetry.pricing").joinpath("prices.toml").read_text("utf-8")
    table.merge_toml(tomllib.loads(builtin), "built-in prices")
    if path:
        p = Path(path)
        table.merge_toml(_read_toml(p), f"price file {p}")
    if deployments:
        table.deployments.update(_parse_deployments(deployments, "FOUNDRY_TELEMETRY_DEPLOYMENTS"))
    return table
