"""Files that ship with the package: Alembic migrations and the dashboards users deploy.

In a wheel they live inside the package (`telemetry/_migrations`, `telemetry/_dashboards`, mapped from the
repository's top-level folders by setup.py); in a source checkout or editable install they are read from
the top-level `migrations/` and `dashboards/` folders themselves."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


class ResourceMissing(RuntimeError):
    """The installation is incomplete; the message is one line."""


def _find(installed: str, source: str, marker: str) -> Path:
    for candidate in (_PACKAGE / installed, _PACKAGE.parent / source):
        if (candidate / marker).is_file():
            return candidate
    raise ResourceMissing(f"{source}/ is missing from this installation of foundry-telemetry "
                          f"(looked in {_PACKAGE / installed} and {_PACKAGE.parent / source}); reinstall it")


def migrations_dir() -> Path:
    return _find("_migrations", "migrations", "env.py")


def dashboards_dir() -> Path:
    return _find("_dashboards", "dashboards", "alerts.json")
