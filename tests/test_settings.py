"""Settings from the environment: values, defaults, and one-line errors for bad ones."""

from __future__ import annotations

import pytest

from telemetry.settings import DEFAULT_DB_URL, Settings, SettingsError


def test_defaults_and_env():
    assert Settings.from_env({}).db_url == DEFAULT_DB_URL == "sqlite:///foundry-usage.db"
    s = Settings.from_env({
        "FOUNDRY_TELEMETRY_DB_URL": "postgresql+psycopg://u@h/db",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x",
        "FOUNDRY_TELEMETRY_RETENTION_DAYS": "45",
        "FOUNDRY_TELEMETRY_DEPLOYMENTS": "a=claude-haiku-4-5",
        "FOUNDRY_TELEMETRY_PRICES": "/tmp/p.toml",
        "FOUNDRY_TELEMETRY_CAPTURE_CONTENT": "true",
    })
    assert (s.db_url, s.connection_string, s.retention_days, s.deployments, s.prices_path, s.capture_content) == (
        "postgresql+psycopg://u@h/db", "InstrumentationKey=x", 45, "a=claude-haiku-4-5", "/tmp/p.toml", True)
    assert Settings.from_env({}, db_url="sqlite:///x.db").db_url == "sqlite:///x.db"  # kwargs win


@pytest.mark.parametrize(("env", "message"), [
    ({"FOUNDRY_TELEMETRY_RETENTION_DAYS": "thirty"}, "not a whole number"),
    ({"FOUNDRY_TELEMETRY_RETENTION_DAYS": "0"}, "at least 1"),
    ({"FOUNDRY_TELEMETRY_CAPTURE_CONTENT": "maybe"}, "not a boolean"),
])
def test_bad_env_is_one_line(env, message):
    with pytest.raises(SettingsError, match=message) as info:
        Settings.from_env(env)
    assert "\n" not in str(info.value)


def test_unknown_kwarg():
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.from_env({}, colour="red")


def test_content_capture_is_off_by_default():
    assert Settings.from_env({}).capture_content is False


def test_lenient_read_never_raises_and_keywords_win():
    bad = {"FOUNDRY_TELEMETRY_DB_URL": "notaurl", "FOUNDRY_TELEMETRY_RETENTION_DAYS": "x"}
    s = Settings.from_env(bad, strict=False, colour="red")
    assert s.ledger is False and s.retention_days == 30 and len(s.problems) == 3
    assert all("\n" not in p for p in s.problems)
    s = Settings.from_env(bad, strict=False, db_url="sqlite:///ok.db", retention_days=9)
    assert (s.ledger, s.db_url, s.retention_days, s.problems) == (True, "sqlite:///ok.db", 9, ())
    s = Settings.from_env(bad, strict=False, ledger=True)  # a rejected URL keeps the ledger off
    assert s.ledger is False and s.db_url == DEFAULT_DB_URL
    with pytest.raises(SettingsError, match="FOUNDRY_TELEMETRY_DB_URL"):
        Settings.from_env(bad)


def test_secrets_never_reach_a_problem_message():
    s = Settings.from_env({"FOUNDRY_TELEMETRY_DB_URL": "mysql://app:hunter2@db/x"}, strict=False)
    assert s.problems and "hunter2" not in s.problems[0] and "app:***@" in s.problems[0]
