"""Environment (and keyword arguments) → one settings object.

Two ways to read it: strict (the CLI: a bad value is a one-line `SettingsError`, exit 2) and lenient (an app's
start-up: a bad value is dropped with one warning naming it and what happens instead, because telemetry must
never stop the application it observes)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

DEFAULT_DB_URL = "sqlite:///foundry-usage.db"


class SettingsError(ValueError):
    """Configuration that cannot be used; the message is one line."""


def redact(text: str) -> str:
    """Passwords in URLs (`scheme://user:secret@host`) and key=value secrets never reach a message."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(?i)((?:password|pwd|key|secret|token)=)[^;&\s]*", r"\1***", text)


def _shown(value: object) -> str:
    text = redact(value if isinstance(value, str) else repr(value))
    text = text if len(text) <= 80 else text[:77] + "..."
    return repr(text) if isinstance(value, str) else text


def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off", ""):
            return False
    raise SettingsError(f"{name}={_shown(value)} is not a boolean (use true or false)")


def _int(value: object, name: str, minimum: int = 0, maximum: int = 10**9) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SettingsError(f"{name}={_shown(value)} is not a whole number")
    try:
        n = int(value)
    except ValueError:
        raise SettingsError(f"{name}={_shown(value)} is not a whole number") from None
    if n < minimum:
        raise SettingsError(f"{name}={_shown(value)} must be at least {minimum}")
    if n > maximum:
        raise SettingsError(f"{name}={_shown(value)} must be at most {maximum}")
    return n


def _days(value: object, name: str) -> int:
    return _int(value, name, 1, 36_600)  # a hundred years: any more is a typo, and past what dates can hold


def _positive_int(value: object, name: str) -> int:
    return _int(value, name, 1)


def _catch_up_ms(value: object, name: str) -> int:
    return _int(value, name, 0, 60_000)


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"{name}={_shown(value)} is not a number of seconds")
    try:
        s = float(value)
    except ValueError:
        raise SettingsError(f"{name}={_shown(value)} is not a number of seconds") from None
    if not 0 < s <= 3600:
        raise SettingsError(f"{name}={_shown(value)} must be between 0 and 3600 seconds")
    return s


def _text(value: object, name: str) -> str | None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise SettingsError(f"{name}={_shown(value)} is not text")
    return value.strip() or None


def discount_fraction(value: object, name: str = "FOUNDRY_TELEMETRY_DISCOUNT") -> Decimal:
    """A contractual discount as an exact fraction, 0 ≤ d < 1 (0.12 is 12 % off the list price)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise SettingsError(f"{name}={_shown(value)} is not a number")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise SettingsError(f"{name}={_shown(value)} is not a number (a fraction such as 0.12)") from None
    if not d.is_finite() or d < 0 or d >= 1:
        raise SettingsError(f"{name}={_shown(value)} must be a fraction with 0 <= discount < 1 (0.12 is 12 % off)")
    return d


def check_db_url(value: object, name: str) -> str:
    text = _text(value, name)
    if text is None:
        raise SettingsError(f"{name} is empty")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(text)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise SettingsError(f"{name}={_shown(text)} is not a database URL (e.g. sqlite:///usage.db)") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise SettingsError(f"{name}={_shown(text)} needs a database driver that is not installed "
                            f"({exc.name or exc})") from None
    return text


# setting → how to read it (from the environment's text or a keyword argument's value)
_PARSERS: dict[str, Callable[[object, str], Any]] = {
    "db_url": check_db_url, "connection_string": _text, "retention_days": _days, "deployments": _text,
    "prices_path": _text, "capture_content": _bool, "spool_dir": _text, "queue_size": _positive_int,
    "batch_size": _positive_int, "batch_interval_s": _seconds, "ledger": _bool, "journal": _bool,
    "discount": discount_fraction, "otel_shortcuts": _bool, "journal_catch_up_ms": _catch_up_ms,
}
ENV_VARS: dict[str, str] = {
    "FOUNDRY_TELEMETRY_DB_URL": "db_url",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "connection_string",
    "FOUNDRY_TELEMETRY_RETENTION_DAYS": "retention_days",
    "FOUNDRY_TELEMETRY_DEPLOYMENTS": "deployments",
    "FOUNDRY_TELEMETRY_PRICES": "prices_path",
    "FOUNDRY_TELEMETRY_CAPTURE_CONTENT": "capture_content",
    "FOUNDRY_TELEMETRY_SPOOL_DIR": "spool_dir",
    "FOUNDRY_TELEMETRY_DISCOUNT": "discount",
    "FOUNDRY_TELEMETRY_OTEL_SHORTCUTS": "otel_shortcuts",
    "FOUNDRY_TELEMETRY_JOURNAL_CATCH_UP_MS": "journal_catch_up_ms",
}
_BLANK_IS_UNSET = {"db_url", "connection_string", "deployments", "prices_path", "spool_dir", "discount"}


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
    discount: Decimal = Decimal(0)  # contractual discount off list, applied before conversion to CCUs
    otel_shortcuts: bool = True  # the checked OpenTelemetry SDK shortcuts (otel_shortcuts.py); False: public API only
    # a call ending while the journal is this far behind the calls waits (≤ 3 ms) for the pipeline to journal
    # what is waiting (pipeline.py, "Catching the journal up"); 0: never wait
    journal_catch_up_ms: int = 7
    # lenient reads: what was ignored and why, one line each (Telemetry logs them once)
    problems: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, strict: bool = True,
                 **overrides: object) -> Settings:
        """Environment first, keyword arguments (not None) over it. `strict=False` never raises."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        problems: list[str] = []
        defaults = {f.name: f.default for f in fields(cls)}

        given: dict[str, tuple[str, object]] = {}  # setting → (where it came from, raw value); keywords win
        for var, name in ENV_VARS.items():
            raw = env.get(var)
            if raw is not None and not (name in _BLANK_IS_UNSET and not raw.strip()):
                given[name] = (var, raw)
        for key, value in overrides.items():
            if key not in _PARSERS:
                if strict:
                    raise SettingsError(f"unknown setting {key!r}")
                problems.append(f"unknown setting {key!r} is ignored")
            elif value is not None:
                given[key] = (key, value)
        url_rejected = False
        for name, (label, raw) in given.items():
            try:
                values[name] = _PARSERS[name](raw, label)
            except SettingsError as exc:
                if strict:
                    raise
                problems.append(f"{exc}; {_instead(name, defaults[name])}")
                url_rejected = url_rejected or name == "db_url"
        if url_rejected:
            values["ledger"] = False  # never write to another database than the one asked for
        return cls(**values, problems=tuple(problems))  # type: ignore[arg-type]

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


def _instead(name: str, fallback: object) -> str:
    if name == "db_url":
        return "the usage ledger is off in this process (spans and metrics are still exported)"
    if name == "capture_content":
        return "prompt and completion text stay unrecorded"
    if fallback is None:
        return "ignored"
    return f"using {fallback!r}" if isinstance(fallback, str) else f"using {fallback}"
