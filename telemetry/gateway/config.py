"""Gateway configuration: upstream resources (`[NAME=]URL`) and the key map (key fingerprint → identity)."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..context import Attribution
from ..settings import SettingsError

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class GatewayError(SettingsError):
    """Gateway configuration that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Upstream:
    """One Foundry resource. `origin` is scheme://host[:port]; `prefix` a path put before the client's path."""

    name: str
    scheme: str
    host: str
    port: int
    prefix: str = ""

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{self.host}" + ("" if self.port == default else f":{self.port}")

    @property
    def url(self) -> str:
        return self.origin + self.prefix


def parse_upstream(spec: str) -> Upstream:
    """`[NAME=]URL`. URL is the resource endpoint (a trailing `/anthropic/` is accepted: clients send it),
    or a bare Foundry resource name, which means `https://NAME.services.ai.azure.com`."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        name, url = "", spec
    name = name.strip()
    url = url.strip()
    if name and not set(name) <= NAME_CHARS:
        raise GatewayError(f"--upstream {spec!r}: the name may only hold letters, digits, '-', '_' and '.'")
    if url and "://" not in url and set(url) <= NAME_CHARS - {"."}:
        url = f"https://{url}.services.ai.azure.com"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayError(f"--upstream {spec!r}: expected [NAME=]URL with an http(s) URL, or a resource name")
    if parts.query or parts.fragment or parts.username:
        raise GatewayError(f"--upstream {spec!r}: the URL may not carry a query, fragment or credentials")
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/anthropic"):
        prefix = prefix[: -len("/anthropic")]
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise GatewayError(f"--upstream {spec!r}: bad port") from None
    return Upstream(name or "default", parts.scheme, parts.hostname, port, prefix)


def parse_upstreams(specs: Iterable[str]) -> dict[str, Upstream]:
    """In the order given; the first is the default for paths without a `/r/NAME/` prefix."""
    out: dict[str, Upstream] = {}
    for spec in specs:
        upstream = parse_upstream(spec)
        if upstream.name in out:
            raise GatewayError(f"--upstream {spec!r}: the name {upstream.name!r} is given twice")
        out[upstream.name] = upstream
    if not out:
        raise GatewayError("give at least one --upstream [NAME=]URL")
    return out


def fingerprint(key: str) -> str:
    """What the key map is keyed by: the SHA-256 of the key, hex (`printf %s "$KEY" | sha256sum`)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyMap:
    """Key fingerprint → attribution, so a team's key is its chargeback identity without code changes."""

    entries: Mapping[str, Attribution] = field(default_factory=dict)

    def get(self, key: str | None) -> Attribution | None:
        return self.entries.get(fingerprint(key)) if key and self.entries else None

    @classmethod
    def load(cls, path: str | Path) -> KeyMap:
        """TOML (`[keys.<sha256>]` tables, or top-level ones) or JSON (`{"<sha256>": {...}}`) with
        `team`, `project`, `user` and an optional `tags` table."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise GatewayError(f"--key-map {p}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise GatewayError(f"--key-map {p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: "
                               f"{str(exc).splitlines()[0]}") from None
        if isinstance(data, dict) and isinstance(data.get("keys"), dict):
            data = data["keys"]
        if not isinstance(data, dict):
            raise GatewayError(f"--key-map {p}: expected a table of fingerprints")
        entries: dict[str, Attribution] = {}
        for fp, value in data.items():
            fp_l = str(fp).lower()
            if len(fp_l) != 64 or any(c not in "0123456789abcdef" for c in fp_l):
                raise GatewayError(f"--key-map {p}: {str(fp)[:16]!r}… is not a SHA-256 hex fingerprint")
            if not isinstance(value, dict) or not set(value) <= {"team", "project", "user", "tags"}:
                raise GatewayError(f"--key-map {p}: entry {fp_l[:12]}… must hold only team, project, user, tags")
            tags = value.get("tags") or {}
            if not isinstance(tags, dict):
                raise GatewayError(f"--key-map {p}: tags of {fp_l[:12]}… must be a table")
            for k in ("team", "project", "user"):
                if k in value and not isinstance(value[k], str):
                    raise GatewayError(f"--key-map {p}: {k} of {fp_l[:12]}… must be a string")
            entries[fp_l] = Attribution(team=value.get("team"), project=value.get("project"),
                                        user=value.get("user"), tags={str(k): str(v) for k, v in tags.items()})
        return cls(entries)
