"""Background ledger writer: bounded queue → batches (by size and time) → SQL; spool when the database
cannot take them, replay when it answers again. The caller never waits on SQL.

Every record is journaled (journal.py) before it waits for a batch. Failures are told apart by cause
(faults.py): lost races are retried in the store, an unavailable database spools and reconnects with
backoff, and only rows refused for their content are set aside (spool/rejected/, with the reason).
The loop never dies: anything unexpected is counted, logged at a bounded rate, and the loop goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..handoff import Handoff
from ..health import Health
from ..record import UsageRecord
from ..settings import Settings, ledger_key
from .db import ensure_schema, get_engine
from .faults import REFUSED, classify, is_unavailable, reason
from .journal import Journal, recover
from .retention import create_partitions_ahead
from .spool import Spool
from .store import LedgerStore

log = logging.getLogger("telemetry")

__all__ = ["LedgerWriter", "is_unavailable"]

_MIN_BACKOFF_S = 0.25
_MAX_BACKOFF_S = 5.0
_RECOVER_EVERY_S = 5.0  # look for journals of writers that died (other processes on this ledger)
_HELD_MAX = 100_000  # records that reached neither the database nor the disk, kept in memory to retry


class _Marker:
    """A flush request: set by the writer thread, with whether everything so far is durable."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class LedgerWriter:
    def __init__(self, settings: Settings, health: Health, *, start: bool = True) -> None:
        self.settings = settings
        self.health = health
        self.spool = Spool(settings.resolved_spool_dir, ledger_key(settings.db_url))
        self.journal: Journal | None = Journal(self.spool.directory / "journal") \
            if getattr(settings, "journal", True) else None
        self._queue: Handoff[UsageRecord | _Marker | None] = Handoff(settings.queue_size, wake_at=settings.batch_size)
        self._store: LedgerStore | None = None
        self._next_try = 0.0
        self._backoff = _MIN_BACKOFF_S
        self._held: list[UsageRecord] = []
        self._held_lock = threading.Lock()
        self._next_recover = 0.0
        self.written = 0
        self.spooled = 0
        self.dropped = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="foundry-telemetry-ledger", daemon=True)
        if start:
            self._thread.start()

    # -- called from the pipeline thread ---------------------------------------------------------

    def write(self, record: UsageRecord) -> None:
        if self._closed:  # after shutdown: straight to the spool, replayed by the next writer
            self._to_spool([record], None)
            return
        journal = self.journal
        if journal is not None:
            with journal.lock:  # journaled and handed over together: a seal never splits the two
                try:
                    journal.add(record)
                except Exception as exc:
                    self.health.failed("journal_write", exc)
                queued = self._queue.put(record)
        else:
            queued = self._queue.put(record)
        if not queued:
            self._to_spool([record], "ledger queue full")

    def drained(self) -> None:
        """The pipeline finished a hand-off: everything journaled so far goes to the OS in one write."""
        if self.journal is not None:
            try:
                self.journal.sync()
            except Exception as exc:
                self.health.failed("journal_write", exc)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """True only when every record so far is durable (in the ledger or the spool)."""
        if not self._thread.is_alive():
            if self._closed:
                return not self._held
            self.health.failed("ledger_thread", message="the ledger writer thread is not running")
            return False
        marker = _Marker()
        self._queue.put_urgent(marker)
        if not marker.done.wait(timeout):
            self.health.failed("ledger_flush", message=f"not durable within {timeout} s")
            return False
        return marker.ok

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
        self._safely("spool_clean", self.spool.clean_stale_tmp)
        self._safely("spool_mark", self.spool.prepare)
        while True:
            try:
                busy = self._held or self._has_spool()
                timeout = interval if not batch else max(0.0, deadline - time.monotonic())
                self._queue.wait(min(timeout, self._backoff) if busy else timeout)
                if self.journal is not None:
                    self.journal.seal()  # all it holds is in the queue now, drained just below
                markers: list[_Marker] = []
                stop = False
                for item in self._queue.drain():
                    if item is None:
                        stop = True
                    elif isinstance(item, _Marker):
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
                if self._held:
                    with self._held_lock:
                        held, self._held = self._held, []
                    self._write(held)
                if not batch and not self._held and self.journal is not None:
                    self.journal.discard()  # everything journaled so far is in the ledger or the spool
                self._recover()
                self._replay()
                for marker in markers:
                    marker.ok = not batch and not self._held
                    marker.done.set()
                if stop:
                    if self.journal is not None:
                        self.journal.close(durable=not batch and not self._held)
                    if self._held:  # neither database nor disk at exit: only the journal (if any) has them
                        self.health.failed("ledger_exit", message=f"{len(self._held)} records not durable at "
                                                                  "shutdown (left to the journal, if writable)")
                    return
            except Exception as exc:  # never die: count it, say it, go on
                self.health.failed("ledger_loop", exc)
                time.sleep(0.05)

    def _safely(self, kind: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:
            self.health.failed(kind, exc)

    def _has_spool(self) -> bool:
        try:
            return bool(self.spool.files())
        except Exception:
            return False

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
            self._unavailable("ledger_connect", exc)
            return None
        return self._store

    def _unavailable(self, kind: str, exc: BaseException) -> None:
        """The database cannot take writes now: drop its pooled connections (a connection opened while the
        file was read-only stays read-only), back off, reconnect later."""
        self.health.failed(kind, exc, message=f"ledger unavailable ({reason(exc)}); spooling, retrying")
        store, self._store = self._store, None
        with contextlib.suppress(Exception):
            (store.engine if store is not None else get_engine(self.settings.db_url)).dispose()
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def _write(self, batch: Sequence[UsageRecord]) -> None:
        store = self._connect()
        if store is not None:
            try:
                self.written += store.insert(batch)
                self._backoff = _MIN_BACKOFF_S
                return
            except Exception as exc:
                if classify(exc) == REFUSED:
                    try:
                        self._insert_one_by_one(store, batch, f"{time.time_ns():020d}-live.jsonl")
                        return
                    except Exception as again:  # the database went away meanwhile: spool the lot
                        exc = again
                self._unavailable("ledger_write", exc)
        self._to_spool(batch, None)

    def _recover(self) -> None:
        """Journals of writers that died (this ledger, any process) go to the spool, then replay."""
        if self.journal is None or time.monotonic() < self._next_recover:
            return
        self._next_recover = time.monotonic() + _RECOVER_EVERY_S
        try:
            recover(self.journal.directory, self.spool)
        except Exception as exc:
            self.health.failed("journal_recover", exc)

    def _replay(self) -> None:
        if not self._has_spool():
            return
        store = self._connect()
        if store is None:
            return

        def insert(records: Sequence[UsageRecord], name: str) -> None:
            try:
                self.written += store.insert(records)
            except Exception as exc:
                if classify(exc) != REFUSED:
                    raise
                # the database is up but refuses something in this file: keep the good rows, set the
                # others aside so one bad row can never block the spool
                self._insert_one_by_one(store, records, name)

        try:
            for _ in self.spool.replay(insert):
                pass
            self._backoff = _MIN_BACKOFF_S
        except Exception as exc:
            if classify(exc) == REFUSED and not isinstance(exc, OSError):
                self.health.failed("ledger_replay", exc)
            else:
                self._unavailable("ledger_replay", exc)

    def _insert_one_by_one(self, store: LedgerStore, records: Sequence[UsageRecord], name: str) -> None:
        rejected: list[UsageRecord] = []
        reasons: list[str] = []
        for record in records:
            try:
                self.written += store.insert([record])
            except Exception as exc:
                if classify(exc) != REFUSED:
                    raise
                self.health.failed("ledger_rejected", exc)
                rejected.append(record)
                reasons.append(reason(exc))
        if rejected:
            kept = self.spool.reject(rejected, name, reasons)
            log.error("foundry-telemetry: %d usage records were refused by the database (%s); kept in %s "
                      "(see `foundry-telemetry spool status`)", len(rejected), reasons[0], kept)

    def _to_spool(self, records: Sequence[UsageRecord], why: str | None) -> None:
        try:
            self.spool.append(records)
            self.spooled += len(records)
            if why:
                self.health.failed("ledger_spill", message=why)
        except Exception as exc:  # the disk too: hold them in memory and try again, never drop silently
            self.health.failed("spool_write", exc, message=f"cannot spool to {Path(self.spool.directory)} "
                                                           f"({reason(exc)}); holding records in memory")
            with self._held_lock:
                room = max(_HELD_MAX - len(self._held), 0)
                self._held.extend(records[:room])
            if len(records) > room:
                self.dropped += len(records) - room
                self.health.failed("ledger_dropped", message=f"{len(records) - room} records lost")
