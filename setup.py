"""Packaging beyond what pyproject.toml can say: the top-level `migrations/` and `dashboards/` folders ship
inside the wheel as `telemetry/_migrations` and `telemetry/_dashboards` (see `telemetry/resources.py`)."""

from setuptools import find_packages, setup

MAPPED = {"telemetry._migrations": "migrations", "telemetry._dashboards": "dashboards"}

setup(
    packages=[
        *find_packages(include=["telemetry", "telemetry.*"]),
        "telemetry._migrations", "telemetry._migrations.versions",
        "telemetry._dashboards", "telemetry._dashboards.kql",
    ],
    package_dir=MAPPED,
)
