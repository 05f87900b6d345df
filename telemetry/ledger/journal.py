"""Append-only journal: every record reaches the OS (page cache) before it waits for a batch, so a
SIGKILL, the OOM killer or a pod eviction loses (almost) nothing.

The pipeline thread `add`s records (buffered in user space) and `sync`s once per drained hand-off: one
`write(2)` per batch of calls. The writer thread `seal`s the current segment each time round its loop
(fsync, then a new segment) and `discard`s sealed segments once every record in them is durable in the
ledger or the spool. Each live segment is held under an exclusive `flock`, which the kernel drops when the
process dies however it dies; the next writer on the ledger `recover`s segments nobody holds into the spool,
from where they replay idempotently (`record_id` is the primary key). A segment is created under a `.new`
name and renamed to `.jnl` only once locked, so recovery never mistakes a live writer's new segment for a
dead one's.

Lines are compact JSON arrays in the order of the segment's header line, so a journal written by another
version still maps values to the right fields.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import operator
import os
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from ..record import UsageRecord
from .spool import STALE_TMP_S, Spool, claimed, read_fd

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("telemetry")

FIELDS = tuple(f for f in UsageRecord.__dataclass_fields__ if f not in ("chunk_gaps_ms",))
_HEADER = (json.dumps({"journal": 1, "fields": FIELDS}, separators=(",", ":")) + "\n").encode()
_CREATED = FIELDS.index("created_at")
_DECIMALS = tuple(FIELDS.index(f) for f in ("cost_usd", "billed_cost_usd", "discount"))
_seq = itertools.count()
NEW_SUFFIX = ".new"  # a segment being created: not yet locked and headed, so never recovered


def _line_encoder() -> Any:
    """One journal line as bytes: compact ASCII JSON, as `json.dumps(values, separators=(",", ":"),
    default=str)` writes it, through the C encoder built once (`JSONEncoder.encode` builds one per call)."""
    dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
    if c_make_encoder is None:  # pragma: no cover - no C accelerator
        return lambda values: dumps(values).encode() + b"\n"
    # no circular-reference markers: a line is a flat list of scalars and the tags dict of str -> str
    encode = c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False, False, True)
    join = "".join
    return lambda values: (join(encode(values, 0)) + "\n").encode()


@dataclass
class Segment:
    path: Path
    fh: Any  # a buffered binary file, open and flock'ed while the segment is live

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._get = operator.attrgetter(*FIELDS)
        self._dumps = _line_encoder()
        self._current: Segment | None = None
        self._dirty = False  # records added since the last seal
        self.lock = threading.Lock()  # pipeline thread (add/sync) vs writer thread (seal)
        self.sealed: list[Segment] = []

    # -- pipeline thread ---------------------------------------------------------------------------

    def add(self, record: UsageRecord) -> None:
        """Buffer one record; call with `lock` held, together with handing it to the writer."""
        seg = self._current or self._open()
        values = list(self._get(record))
        values[_CREATED] = values[_CREATED].isoformat()
        for i in _DECIMALS:  # exact, as text (what `default=str` made of them, without a call back per value)
            if values[i] is not None:
                values[i] = str(values[i])
        seg.fh.write(self._dumps(values))
        self._dirty = True

    def sync(self) -> None:
        """To the page cache: from here a SIGKILL no longer loses these records."""
        with self.lock:
            if self._current is not None and self._dirty:
                self._current.fh.flush()

    # -- writer thread -----------------------------------------------------------------------------

    def seal(self) -> None:
        """Close the current segment (flushed and fsynced); records added from now on go to a new one.
        Everything in a sealed segment has already been handed to the writer."""
        with self.lock:
            seg = self._current
            if seg is None or not self._dirty:
                return
            self._current = None
            self._dirty = False
            seg.fh.flush()
        with contextlib.suppress(OSError):
            os.fsync(seg.fh.fileno())
        self.sealed.append(seg)  # stays open (and locked) until discarded

    def discard(self) -> None:
        """Every record handed to the writer so far is durable: drop the sealed segments."""
        for seg in self.sealed:
            with contextlib.suppress(OSError):
                seg.path.unlink()
            seg.close()
        self.sealed.clear()

    def close(self, durable: bool) -> None:
        """At shutdown: remove everything when it is all durable, else leave it for the next writer."""
        self.seal()
        if durable:
            self.discard()
        else:
            for seg in self.sealed:
                seg.close()
            self.sealed.clear()

    def _open(self) -> Segment:
        """Create, lock and head the segment under a name `recover` ignores, then rename it into place:
        a `.jnl` is never visible unlocked while its writer lives. (Created under its final name, a
        recovery running between the create and the `flock` claimed the empty file and unlinked it, and
        every record of that segment then went to a file nobody could find after a SIGKILL.)"""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{next(_seq):06d}.jnl"
        new = path.with_name(path.name + NEW_SUFFIX)
        fh = open(new, "xb", buffering=1 << 16)  # noqa: SIM115 - lives as long as the segment
        try:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.write(_HEADER)
            fh.flush()  # a recovery never finds a segment without its header
            os.rename(new, path)  # same inode, still locked
        except BaseException:
            with contextlib.suppress(OSError):
                fh.close()
            with contextlib.suppress(OSError):
                new.unlink()
            raise
        self._current = Segment(path, fh)
        return self._current


def _decode(fields: list[str], values: list[Any]) -> UsageRecord:
    data = dict(zip(fields, values, strict=True))
    data = {k: v for k, v in data.items() if k in UsageRecord.__dataclass_fields__}
    created = dt.datetime.fromisoformat(data["created_at"])
    data["created_at"] = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
    for name in ("cost_usd", "billed_cost_usd", "discount"):
        if data.get(name) is not None:
            data[name] = Decimal(data[name])
    if not isinstance(data.get("operation_id"), str):
        raise TypeError("operation_id must be a string")
    return UsageRecord(**data)


def parse_segment(data: bytes) -> tuple[list[UsageRecord], list[bytes]]:
    lines = data.split(b"\n")
    try:
        header = json.loads(lines[0].decode("utf-8"))
        fields = list(header["fields"])
    except (ValueError, KeyError, TypeError, IndexError):
        return [], [line for line in lines if line.strip()]
    records: list[UsageRecord] = []
    bad: list[bytes] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            records.append(_decode(fields, json.loads(line.decode("utf-8"))))
        except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
            bad.append(line)  # a line torn by a crash mid-write, or damage
    return records, bad


def recover(directory: Path, spool: Spool) -> int:
    """Move the records of journal segments no live writer holds into the spool; returns how many."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    names = sorted(n for n in entries if n.endswith(".jnl"))
    _clean_stale_new(directory, [n for n in entries if n.endswith(".jnl" + NEW_SUFFIX)])
    moved = 0
    for name in names:
        path = directory / name
        with claimed(path) as fd:
            if fd is None:
                continue  # a live writer's segment
            records, bad = parse_segment(read_fd(fd))
            if bad:
                kept = spool.quarantine(bad, name)
                log.error("foundry-telemetry: %d damaged line(s) in journal %s moved to %s", len(bad), name, kept)
            if records:
                spool.append(records)
                moved += len(records)
            path.unlink()
    if moved:
        log.warning("foundry-telemetry: recovered %d usage records from the journal of a writer that died", moved)
    return moved


def _clean_stale_new(directory: Path, names: list[str]) -> None:
    """Segments whose writer died while creating them: they hold at most a header (records are added only
    after the rename), so removing them loses nothing; a fresh one may be a live writer creating it now."""
    now = time.time()
    for name in names:
        path = directory / name
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_TMP_S:
                with claimed(path) as fd:
                    if fd is not None:
                        path.unlink()
