"""Environment → one settings object. Bad values are one-line `SettingsError`s at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
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


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_DB_URL
    connection_string: str | None = None
    retention_days: int = 30
    deployments: str | None = None
    prices_path: str | None = None
    capture_content: bool = False
    spool_dir: str | None = None  # default: next to a SQLite ledger, else one per ledger under ~/.cache
    queue_size: int = 10_000
    batch_size: int = 500
    batch_interval_s: float = 0.5
    ledger: bool = True  # False: no SQL sink (export only)
    journal: bool = True  # every record journaled before it waits for a batch (survives SIGKILL)

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
        """A spool belongs to one ledger, so its rows only ever replay into the ledger they were written for:
        next to a SQLite file, else `~/.cache/foundry-telemetry/spool/<hash of the URL without password>`."""
        if self.spool_dir:  # as given, unless it already belongs to another ledger (its LEDGER marker)
            folder = Path(self.spool_dir).expanduser()
            key = ledger_key(self.db_url)
            try:
                owner = (folder / LEDGER_MARKER).read_text().strip()
            except (OSError, UnicodeDecodeError):
                owner = key
            return folder if owner == key else folder / "ledgers" / key
        if self.db_url.startswith("sqlite:///") and self.db_url.split("?")[0] != "sqlite:///:memory:":
            db = Path(self.db_url.removeprefix("sqlite:///").split("?")[0]).expanduser()
            return db.with_name(db.name + ".spool")
        return Path.home() / ".cache" / "foundry-telemetry" / "spool" / ledger_key(self.db_url)


LEDGER_MARKER = "LEDGER"  # in a spool folder: the ledger_key of the ledger it belongs to


def ledger_key(url: str) -> str:
    """A ledger's identity: its URL (driver name normalised, password dropped), hashed."""
    import hashlib

    text = url
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        backend = parsed.get_backend_name()
        parsed = parsed.set(drivername=backend, password=None)
        if parsed.host:
            parsed = parsed.set(host=parsed.host.lower())
        text = parsed.render_as_string(hide_password=False)
    except Exception:  # not a URL SQLAlchemy reads: hash it as given (the writer reports the bad URL)
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:16]
