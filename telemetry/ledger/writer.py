"""Background ledger writer: bounded queue → batches (by size and time) → SQL; spool on any failure,
replay when the database answers again. The caller never waits on SQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..handoff import Handoff
from ..health import Health
from ..record import UsageRecord
from ..settings import Settings
from .db import ensure_schema, get_engine
from .retention import create_partitions_ahead
from .spool import Spool
from .store import LedgerStore

log = logging.getLogger("telemetry")

_RETRY_S = 2.0


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached (retry later), as opposed to refusing the data (set it aside)."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout | OSError)


class LedgerWriter:
    def __init__(self, settings: Settings, health: Health, *, start: bool = True) -> None:
        self.settings = settings
        self.health = health
        self.spool = Spool(settings.resolved_spool_dir)
        self._queue: Handoff[UsageRecord | threading.Event | None] = Handoff(settings.queue_size,
                                                                              wake_at=settings.batch_size)
        self._store: LedgerStore | None = None
        self._next_try = 0.0
        self.written = 0
        self.spooled = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="foundry-telemetry-ledger", daemon=True)
        if start:
            self._thread.start()

    # -- called from the pipeline thread ---------------------------------------------------------

    def write(self, record: UsageRecord) -> None:
        if self._closed:  # after shutdown: straight to the spool, replayed by the next writer
            self._to_spool([record], None)
        elif not self._queue.put(record):
            self._to_spool([record], "ledger queue full")

    def flush(self, timeout: float | None = 30.0) -> bool:
        if not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put_urgent(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        self._closed = True
        if self._thread.is_alive():
            self._queue.put_urgent(None)
            self._thread.join(timeout)

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self._connect()  # schema check and migrations now, at start-up, not on the first batch mid-traffic
        batch: list[UsageRecord] = []
        deadline = 0.0
        interval, size = self.settings.batch_interval_s, self.settings.batch_size
        while True:
            timeout = interval if not batch else max(0.0, deadline - time.monotonic())
            self._queue.wait(min(timeout, _RETRY_S) if self.spool.pending() else timeout)
            markers: list[threading.Event] = []
            stop = False
            for item in self._queue.drain():
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    if not batch:
                        deadline = time.monotonic() + interval
                    batch.append(item)
            while len(batch) >= size:  # full batches now
                self._write(batch[:size])
                batch = batch[size:]
            if batch and (markers or stop or time.monotonic() >= deadline):  # the rest when due
                self._write(batch)
                batch = []
            self._replay()
            for marker in markers:
                marker.set()
            if stop:
                return

    def _connect(self) -> LedgerStore | None:
        if self._store is not None:
            return self._store
        if time.monotonic() < self._next_try:
            return None
        try:
            ensure_schema(self.settings.db_url)
            engine = get_engine(self.settings.db_url)
            create_partitions_ahead(engine)
            self._store = LedgerStore(engine)
        except Exception as exc:
            self._next_try = time.monotonic() + _RETRY_S
            self.health.failed("ledger_connect", exc)
            return None
        return self._store

    def _write(self, batch: Sequence[UsageRecord]) -> None:
        store = self._connect()
        if store is None or self.spool.pending():
            # keep order: older spooled rows go first
            self._to_spool(batch, None)
            return
        try:
            store.insert(batch)
            self.written += len(batch)
            return
        except Exception as exc:
            self.health.failed("ledger_write", exc)
            if not is_unavailable(exc):
                try:
                    self._insert_one_by_one(store, batch, f"{time.time_ns():020d}-live.jsonl")
                    return
                except Exception as again:  # the database went away meanwhile: spool the lot
                    self.health.failed("ledger_write", again)
        self._next_try = time.monotonic() + _RETRY_S
        self._store = None
        self._to_spool(batch, None)

    def _replay(self) -> None:
        files = self.spool.files()
        if not files:
            return
        store = self._connect()
        if store is None:
            return
        for path in files:
            records = self.spool.read(path)
            try:
                store.insert(records)
            except Exception as exc:
                if is_unavailable(exc):
                    self.health.failed("ledger_replay", exc)
                    self._store = None
                    self._next_try = time.monotonic() + _RETRY_S
                    return
                # the database is up but refuses something in this file: keep the good rows, set the
                # others aside so one bad row can never block the spool
                try:
                    self._insert_one_by_one(store, records, path.name)
                except Exception as again:
                    self.health.failed("ledger_replay", again)
                    self._store = None
                    self._next_try = time.monotonic() + _RETRY_S
                    return
            path.unlink()

    def _insert_one_by_one(self, store: LedgerStore, records: Sequence[UsageRecord], name: str) -> None:
        rejected = []
        for record in records:
            try:
                self.written += store.insert([record])
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                self.health.failed("ledger_rejected", exc)
                rejected.append(record)
        if rejected:
            kept = self.spool.reject(rejected, name)
            log.error("foundry-telemetry: %d usage records were refused by the database; kept in %s",
                      len(rejected), kept)

    def _to_spool(self, records: Sequence[UsageRecord], reason: str | None) -> None:
        try:
            self.spool.append(records)
            self.spooled += len(records)
            if reason:
                self.health.failed("ledger_spill", message=reason)
        except Exception as exc:  # the disk too: nothing else we can do but say so
            self.health.failed("spool_write", exc)
            log.error("foundry-telemetry: %d usage records could not be spooled to %s",
                      len(records), Path(self.spool.directory))
