"""Alerts count what the service did: a stream the caller closes on purpose (`client_closed`) or a cancelled
task (`cancelled`) is no service error — not in error-rate rules, not in daily error counts — but counted apart."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from telemetry.alerts import evaluate, make_rule
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore, is_error
from telemetry.record import CALLER_ENDED
from telemetry.reports.chargeback import chargeback

from .conftest import MSG, rows
from .helpers import make_record
from .test_cli import cli

MINUTE = 1 / 1440


@pytest.fixture
def streamy(db_url: str) -> str:
    """10 attempts on "streamy": 4 streams closed by the caller, 2 cancelled, 1 server error, 3 fine."""
    upgrade(db_url)
    records = [make_record(i, days_ago=2 * MINUTE, deployment="streamy", stream=True) for i in range(10)]
    for r in records[:4]:
        r.error_type = "client_closed"  # status 200: the answer was coming fine
    for r in records[4:6]:
        r.error_type, r.status_code = "cancelled", None  # cancelled before the answer started
    records[6].status_code, records[6].error_type = 500, "api_error"
    LedgerStore(get_engine(db_url)).insert(records)
    return db_url


def rule(kind: str, threshold: str) -> list:
    return [make_rule({"kind": kind, "threshold": threshold}, "t")]


def test_error_rate_leaves_out_what_the_caller_ended(streamy):
    engine = get_engine(streamy)
    assert evaluate(engine, rule("error_rate", "0.1"), 60).firing == []  # 1 of 10, not 7 of 10
    (f,) = evaluate(engine, rule("error_rate", "0.09"), 60).firing
    assert f.value == pytest.approx(0.1) and f.requests == 10
    assert f.detail == {"errors_by_type": {"api_error": 1}, "caller_ended": 6}
    for kind in ("server_error_rate", "auth_error_rate", "rate_limit_rate"):
        assert evaluate(engine, rule(kind, "0.1"), 60).firing == []


def test_daily_errors_and_reports_leave_them_out(streamy):
    today = dt.datetime.now(dt.UTC).date()
    report = chargeback(get_engine(streamy), today - dt.timedelta(days=1), today, ["deployment"])
    assert report.total.requests == 10 and report.total.errors == 1 and report.total.server_errors == 1


@pytest.mark.parametrize(("error_type", "status", "error"), [
    ("client_closed", 200, False), ("cancelled", None, False), ("cancelled", 200, False),
    ("incomplete_stream", 200, True), ("timeout", None, True), ("rate_limit_error", 429, True), (None, 503, True),
    (None, 200, False),
])
def test_is_error(error_type, status, error):
    assert is_error(make_record(0, error_type=error_type, status_code=status)) is error


def test_real_closed_and_cancelled_streams_do_not_fire(client, aclient, tel, sqlite_url):
    """Through the SDK against the emulator: the capture layer's own error types are the ones left out."""
    stream = client.messages.create(model="claude-sonnet-5", max_tokens=200, messages=MSG, stream=True)
    next(iter(stream))
    stream.close()  # the caller stops reading on purpose

    async def cancel_one() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            s = await aclient.messages.create(model="claude-sonnet-5", max_tokens=64, messages=MSG, stream=True,
                                              extra_headers={"x-emulator-fault": "slow;delay_ms=3000"})
            async for _event in s:
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_one())
    client.messages.create(model="claude-sonnet-5", max_tokens=16, messages=MSG)
    tel.flush()
    landed = rows(sqlite_url)
    assert sorted(r.error_type or "" for r in landed) == ["", "cancelled", "client_closed"]
    assert {r.error_type for r in landed} - {None} <= CALLER_ENDED
    quiet = evaluate(get_engine(sqlite_url), rule("error_rate", "0"), 60)
    assert quiet.firing == [] and [(c["value"], c["requests"]) for c in quiet.checked] == [(0.0, 3)]

    failing = client.with_options(max_retries=0)
    with pytest.raises(Exception):  # noqa: B017 - the SDK's RateLimitError
        failing.messages.create(model="claude-sonnet-5", max_tokens=16, messages=MSG,
                                extra_headers={"x-emulator-fault": "429;times=1"})
    tel.flush()
    loud = cli("alerts", "check", "--db", sqlite_url, "--window", "60", "--error-rate", "0", "--format", "json")
    assert loud.returncode == 1
    (f,) = json.loads(loud.stdout)["firing"]
    assert f["value"] == 0.25 and f["detail"] == {"errors_by_type": {"rate_limit_error": 1}, "caller_ended": 2}
