"""Start-up fails open: no setting can make `Telemetry(...)`, `Telemetry.from_env()` or `instrument()` raise
into the app. A bad value is one warning naming it; the app's call succeeds and (ledger on) its row lands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from anthropic import AnthropicFoundry

from telemetry import Telemetry, core

from .conftest import API_KEY, MSG, rows

ENV = ("FOUNDRY_TELEMETRY_DB_URL", "APPLICATIONINSIGHTS_CONNECTION_STRING", "FOUNDRY_TELEMETRY_RETENTION_DAYS",
       "FOUNDRY_TELEMETRY_DEPLOYMENTS", "FOUNDRY_TELEMETRY_PRICES", "FOUNDRY_TELEMETRY_CAPTURE_CONTENT",
       "FOUNDRY_TELEMETRY_SPOOL_DIR")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A clean environment pointing at this test's own ledger, and a fresh once-per-process warning memory."""
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(core, "_warned", set())
    monkeypatch.chdir(tmp_path)  # the default ledger (sqlite:///foundry-usage.db) would land here
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("FOUNDRY_TELEMETRY_DB_URL", url)
    monkeypatch.setenv("FOUNDRY_TELEMETRY_SPOOL_DIR", str(tmp_path / "spool"))
    return {"url": url}


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "telemetry" and r.levelno >= logging.WARNING]


def call(tel: Telemetry, emulator: Any, otel: Any, model: str = "claude-sonnet-5-5") -> str:
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url,
                                             open_telemetry={"tracer_provider": otel.tracer_provider}))
    message = client.messages.create(model=model, max_tokens=16, messages=MSG)
    assert message.content and tel.flush(10)
    return message.id


def start(otel: Any, **kwargs: Any) -> Telemetry:
    kwargs.setdefault("batch_interval_s", 0.05)
    return Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, **kwargs)


BAD_ENV = [  # variable, value, what the warning must say
    ("FOUNDRY_TELEMETRY_RETENTION_DAYS", "thirty", "using 30"),
    ("FOUNDRY_TELEMETRY_RETENTION_DAYS", "-3", "using 30"),
    ("FOUNDRY_TELEMETRY_RETENTION_DAYS", "99999999999", "using 30"),
    ("FOUNDRY_TELEMETRY_CAPTURE_CONTENT", "maybe", "stay unrecorded"),
    ("FOUNDRY_TELEMETRY_PRICES", "{tmp}/missing.toml", "built-in prices"),
    ("FOUNDRY_TELEMETRY_PRICES", "{tmp}/bad.toml", "built-in prices"),
    ("FOUNDRY_TELEMETRY_DEPLOYMENTS", "no-equals-sign", "priced by the model they answer"),
    ("FOUNDRY_TELEMETRY_DEPLOYMENTS", "a=claude-sonnet-5-5*-2", "priced by the model they answer"),
]


@pytest.mark.parametrize(("var", "value", "says"), BAD_ENV, ids=lambda v: str(v)[:30])
def test_bad_env_setting_warns_once_and_the_row_lands(env, monkeypatch, caplog, tmp_path, emulator, otel,
                                                      var, value, says):
    (tmp_path / "bad.toml").write_text("[models.x\n")
    monkeypatch.setenv(var, value.format(tmp=tmp_path))
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        tel = Telemetry.from_env(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
        try:
            message_id = call(tel, emulator, otel)
        finally:
            tel.shutdown()
    said = warnings_from(caplog)
    assert len(said) == 1 and var in said[0] and says in said[0], said
    landed = rows(env["url"])
    assert len(landed) == 1 and landed[0].status_code == 200 and landed[0].response_id == message_id
    assert landed[0].cost_usd is not None and landed[0].prompt is None  # built-in prices; content stays off
    assert tel.settings.retention_days == 30 and tel.settings.capture_content is False


@pytest.mark.parametrize("value", ["notaurl", "mysql://app:hunter2@db/usage", "oracle+nodriver://u@h/x"])
def test_bad_db_url_turns_the_ledger_off_and_the_app_carries_on(env, monkeypatch, caplog, tmp_path, emulator, otel,
                                                                value):
    monkeypatch.setenv("FOUNDRY_TELEMETRY_DB_URL", value.format(tmp=tmp_path))
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        tel = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
        try:
            call(tel, emulator, otel)
        finally:
            tel.shutdown()
    said = warnings_from(caplog)
    assert len(said) == 1 and "FOUNDRY_TELEMETRY_DB_URL" in said[0] and "ledger is off" in said[0], said
    assert "hunter2" not in said[0]
    assert tel.ledger is None and [s.name for s in otel.ours()] == ["chat claude-sonnet-5-5"]  # export still on
    assert not (tmp_path / "foundry-usage.db").exists() and not (tmp_path / "ledger.db").exists()


def test_bad_connection_string_turns_export_off_and_the_ledger_records(env, monkeypatch, caplog, emulator, otel):
    secret = "InstrumentationKey=not-a-uuid-SECRET;IngestionEndpoint=http://127.0.0.1:9/"
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", secret)
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        tel = Telemetry()  # no providers given: Azure Monitor would be configured from the connection string
        try:
            call(tel, emulator, otel)
        finally:
            tel.shutdown()
    said = warnings_from(caplog)
    assert len(said) == 1 and "APPLICATIONINSIGHTS_CONNECTION_STRING" in said[0] and "export is off" in said[0]
    assert "SECRET" not in said[0]
    assert len(rows(env["url"])) == 1


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"db_url": "notaurl"}, "db_url"),
    ({"retention_days": "x"}, "retention_days"),
    ({"retention_days": True}, "retention_days"),
    ({"queue_size": -1}, "queue_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_interval_s": float("nan")}, "batch_interval_s"),
    ({"capture_content": "perhaps"}, "capture_content"),
    ({"spool_dir": 42}, "spool_dir"),
    ({"colour": "red"}, "colour"),
    ({"prices_path": 3.5}, "prices_path"),
])
def test_bad_keyword_argument_warns_once_and_the_call_succeeds(env, caplog, emulator, otel, kwargs, names):
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        tel = start(otel, **kwargs)
        try:
            call(tel, emulator, otel)
        finally:
            tel.shutdown()
    said = warnings_from(caplog)
    assert len(said) == 1 and names in said[0], said
    if names == "db_url":
        assert tel.ledger is None and not Path(env["url"].removeprefix("sqlite:///")).exists()
    else:
        assert len(rows(env["url"])) == 1


def test_telemetry_reads_the_environment_and_keywords_override_it(env, monkeypatch, tmp_path, emulator, otel):
    monkeypatch.setenv("FOUNDRY_TELEMETRY_RETENTION_DAYS", "45")
    monkeypatch.setenv("FOUNDRY_TELEMETRY_DEPLOYMENTS", "chat-prod=claude-sonnet-5-5")
    tel = Telemetry()
    assert (tel.settings.db_url, tel.settings.retention_days) == (env["url"], 45)
    assert tel.prices.deployments["chat-prod"].model == "claude-sonnet-5-5"
    tel.shutdown()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    tel = start(otel, db_url=other, retention_days=7)
    try:
        call(tel, emulator, otel)
    finally:
        tel.shutdown()
    assert tel.settings.retention_days == 7 and len(rows(other)) == 1
    assert Telemetry.from_env(db_url=other, ledger=False).settings.db_url == other


def test_instrument_never_raises(env, caplog, otel):
    tel = start(otel)
    try:
        thing = object()
        with caplog.at_level(logging.WARNING, logger="telemetry"):
            assert tel.instrument(thing) is thing
        assert len(warnings_from(caplog)) == 1 and "returned unchanged" in warnings_from(caplog)[0]
    finally:
        tel.shutdown()


def test_many_bad_settings_at_once_still_start(env, monkeypatch, caplog, tmp_path, emulator, otel):
    for var, value in [("FOUNDRY_TELEMETRY_RETENTION_DAYS", "0"), ("FOUNDRY_TELEMETRY_CAPTURE_CONTENT", "2"),
                       ("FOUNDRY_TELEMETRY_PRICES", str(tmp_path / "nope.toml")),
                       ("FOUNDRY_TELEMETRY_DEPLOYMENTS", "==="),
                       ("APPLICATIONINSIGHTS_CONNECTION_STRING", "garbage")]:
        monkeypatch.setenv(var, value)
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        tel = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, queue_size="big")
        try:
            call(tel, emulator, otel)
        finally:
            tel.shutdown()
    said = warnings_from(caplog)
    assert len(said) == 5, said  # one each; the connection string is unused with providers given
    assert len(rows(env["url"])) == 1
