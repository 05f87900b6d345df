"""Environment → one settings object. Bad values are one-line `SettingsError`s at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

DEFAULT_DB_URL = "sqlite:///foundry-usage.db"


class SettingsError(ValueError):
    """Configuration that cannot be used; the message is one line."""


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={value!r} is not a boolean (use true or false)")


def _int(value: str, name: str, minimum: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a whole number") from None
    if n < minimum:
        raise SettingsError(f"{name}={value!r} must be at least {minimum}")
    return n


def discount_fraction(value: object, name: str = "FOUNDRY_TELEMETRY_DISCOUNT") -> Decimal:
    """A contractual discount as an exact fraction, 0 ≤ d < 1 (0.12 is 12 % off the list price)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise SettingsError(f"{name}={value!r} is not a number")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise SettingsError(f"{name}={value!r} is not a number (a fraction such as 0.12)") from None
    if not d.is_finite() or d < 0 or d >= 1:
        raise SettingsError(f"{name}={value!r} must be a fraction with 0 <= discount < 1 (0.12 is 12 % off)")
    return d


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_DB_URL
    connection_string: str | None = None
    retention_days: int = 30
    deployments: str | None = None
    prices_path: str | None = None
    capture_content: bool = False
    spool_dir: str | None = None  # default: next to a SQLite ledger, else ~/.cache/foundry-telemetry
    queue_size: int = 10_000
    batch_size: int = 500
    batch_interval_s: float = 0.5
    ledger: bool = True  # False: no SQL sink (export only)
    discount: Decimal = Decimal(0)  # contractual discount off list, applied before conversion to CCUs

    def __post_init__(self) -> None:
        object.__setattr__(self, "discount", discount_fraction(self.discount, "discount"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if v := env.get("FOUNDRY_TELEMETRY_DB_URL"):
            values["db_url"] = v
        if v := env.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            values["connection_string"] = v
        if (v := env.get("FOUNDRY_TELEMETRY_RETENTION_DAYS")) is not None:
            values["retention_days"] = _int(v, "FOUNDRY_TELEMETRY_RETENTION_DAYS", 1)
        if v := env.get("FOUNDRY_TELEMETRY_DEPLOYMENTS"):
            values["deployments"] = v
        if v := env.get("FOUNDRY_TELEMETRY_PRICES"):
            values["prices_path"] = v
        if (v := env.get("FOUNDRY_TELEMETRY_CAPTURE_CONTENT")) is not None:
            values["capture_content"] = _bool(v, "FOUNDRY_TELEMETRY_CAPTURE_CONTENT")
        if v := env.get("FOUNDRY_TELEMETRY_SPOOL_DIR"):
            values["spool_dir"] = v
        if (v := env.get("FOUNDRY_TELEMETRY_DISCOUNT")) is not None and v.strip():
            values["discount"] = discount_fraction(v)
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise SettingsError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def resolved_spool_dir(self) -> Path:
        if self.spool_dir:
            return Path(self.spool_dir)
        if self.db_url.startswith("sqlite:///") and self.db_url != "sqlite:///:memory:":
            db = Path(self.db_url.removeprefix("sqlite:///"))
            return db.with_name(db.name + ".spool")
        return Path.home() / ".cache" / "foundry-telemetry" / "spool"
