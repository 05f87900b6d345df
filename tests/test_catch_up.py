"""A call that ends while the journal is behind waits for it (pipeline.py, "Catching the journal up"): a
caller that keeps the GIL must not leave the records of its calls only in memory for seconds, where a SIGKILL
takes them. No timing asserts: the worker is made as starved as it gets (it never wakes by itself), and what is
checked is where the records are when the call returns."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import telemetry.pipeline as pipeline
from telemetry import Telemetry
from telemetry.health import Health
from telemetry.pipeline import Pipeline
from telemetry.pricing import PriceTable

from .test_request_path import _client, _create, _stream


def journaled(spool: Path) -> int:
    """Records in the journal's segments as the page cache has them (each segment starts with its header)."""
    return sum(p.read_bytes().count(b"\n") - 1 for p in spool.rglob("*.jnl"))


@pytest.fixture
def starved(monkeypatch):
    """The pipeline thread never looks for work by itself (a 30 s poll, as if the caller kept the GIL) and a
    caller's catch-up may wait long (a slow CI machine still ends it as soon as the journal has the records)."""
    monkeypatch.setattr(pipeline, "POLL_S", 30.0)
    monkeypatch.setattr(pipeline, "CATCH_UP_WAIT_S", 10.0)


@pytest.mark.parametrize("call", [_create, _stream], ids=["create", "stream"])
@pytest.mark.parametrize("catch_up_ms", [7, 0], ids=["on", "off"])
def test_a_call_ending_while_the_journal_is_behind_waits_until_it_has_caught_up(starved, tmp_path, call,
                                                                               catch_up_ms):
    spool = tmp_path / "spool"
    tel = Telemetry(db_url=f"sqlite:///{tmp_path}/l.db", spool_dir=str(spool), journal_catch_up_ms=catch_up_ms)
    try:
        assert tel.flush()  # started, schema current; the worker now waits 30 s for work
        client = _client(tel)
        call(client)
        assert journaled(spool) == 0  # not behind yet: the first call does not wait
        time.sleep(0.02)  # the first capture now waits longer than 7 ms
        call(client)
        if catch_up_ms:
            # the record that was behind reached the journal before the second call returned (the second's own
            # may still be on its way: the worker lets the caller go once it has journaled a stretch of ~1 ms)
            assert journaled(spool) >= 1
            assert tel._pipeline.catch_ups == 1 and tel._pipeline.catch_up_timeouts == 0
        else:
            assert journaled(spool) == 0 and tel._pipeline.catch_ups == 0
        assert tel.flush()
        with sqlite3.connect(tmp_path / "l.db") as db:
            counts = db.execute("SELECT count(*), (SELECT sum(requests) FROM usage_daily) "
                                "FROM usage_records").fetchone()
        assert counts == (2, 2)  # every attempt a row, and in the daily totals
    finally:
        tel.shutdown()


class _StuckSink:
    """A sink whose write blocks until released: the pipeline thread stuck on a slow disk."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written: list[Any] = []

    def write(self, record: Any) -> None:
        self.release.wait(30)
        self.written.append(record)

    def drained(self) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        pass


def test_a_stuck_pipeline_costs_callers_one_short_wait_then_backs_off(monkeypatch):
    monkeypatch.setattr(pipeline, "POLL_S", 30.0)
    monkeypatch.setattr(pipeline, "CATCH_UP_WAIT_S", 0.05)
    sink, health = _StuckSink(), Health()
    pipe = Pipeline(PriceTable(), [sink], health, catch_up_after_ms=7)
    try:
        ms = 1_000_000
        pipe.submit(SimpleNamespace(t_end=0))  # type: ignore[arg-type]
        pipe.submit(SimpleNamespace(t_end=10 * ms))  # type: ignore[arg-type]  # 10 ms behind: waits, in vain
        assert (pipe.catch_ups, pipe.catch_up_timeouts) == (1, 1)
        for t in range(11, 19):  # within the 10 ms back-off: nobody waits
            pipe.submit(SimpleNamespace(t_end=t * ms))  # type: ignore[arg-type]
        assert pipe.catch_ups == 1
        pipe.submit(SimpleNamespace(t_end=30 * ms))  # type: ignore[arg-type]  # past it: one more try, in vain
        assert (pipe.catch_ups, pipe.catch_up_timeouts) == (2, 2)
        pipe.submit(SimpleNamespace(t_end=45 * ms))  # type: ignore[arg-type]  # the back-off doubled to 20 ms
        assert pipe.catch_ups == 2
        sink.release.set()  # the disk answers: nothing was lost, and the worker says what happened
        assert pipe.flush(10)
        assert len(sink.written) == 12
        assert health.snapshot().get("pipeline_behind") == 2
    finally:
        sink.release.set()
        pipe.close(10)


def test_a_stall_is_a_failure_a_wait_in_vain_is_counted(monkeypatch, caplog):
    """Waits in vain one or two in a row (a GC pass, a ledger batch) are counted quietly; the third in a row is
    a stall: logged and exported as a failure."""
    monkeypatch.setattr(pipeline, "POLL_S", 30.0)
    monkeypatch.setattr(pipeline, "CATCH_UP_WAIT_S", 0.02)
    sink, health = _StuckSink(), Health()
    pipe = Pipeline(PriceTable(), [sink], health, catch_up_after_ms=7)
    try:
        ms = 1_000_000
        # 10, 30 and 60 ms each wait (past the back-off the one before set: 10, then 20 ms) behind the capture
        # of 12 ms, queued while the worker is stuck on the first two
        for t in (0, 10, 12, 30, 60):
            pipe.submit(SimpleNamespace(t_end=t * ms))  # type: ignore[arg-type]
        assert (pipe.catch_up_timeouts, pipe.catch_up_stalls) == (3, 1)
        with caplog.at_level("WARNING", logger="telemetry"):
            sink.release.set()
            assert pipe.flush(10)
        assert health.snapshot().get("pipeline_behind") == 3
        assert [r.getMessage() for r in caplog.records if "pipeline_behind" in r.getMessage()] != []
        assert len(sink.written) == 5
    finally:
        sink.release.set()
        pipe.close(10)


def test_caught_up_callers_never_wait(tmp_path, monkeypatch):
    """The common case, a pipeline that keeps up: no call waits at all."""
    tel = Telemetry(db_url=f"sqlite:///{tmp_path}/l.db", spool_dir=str(tmp_path / "spool"))
    try:
        client = _client(tel)
        for _ in range(20):
            _create(client)
            assert tel.flush()  # the pipeline has everything before the next call ends
        assert tel._pipeline.catch_ups == 0
    finally:
        tel.shutdown()
