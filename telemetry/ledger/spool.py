"""Durable local spool: batches that could not reach the database wait here, one fsynced file each,
and are replayed oldest first. Replays are idempotent, so a crash mid-replay double-counts nothing.

Layout of a spool folder (one per ledger):
  *.jsonl        pending batches, one JSON record a line
  journal/       the writers' append-only journals (see journal.py)
  rejected/      rows the database refused for their content, each line with its reason; `spool requeue`
  quarantine/    damaged lines (torn, garbled, not UTF-8), kept as bytes for a person to look at

Several processes may share a folder: a file is claimed with an exclusive `flock` before it is read and
unlinked while still held, so no batch is replayed twice and none is skipped.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..record import UsageRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no claiming between processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("telemetry")

_SKIP = {"chunk_gaps_ms", "server_address", "server_port", "max_tokens"}
STALE_TMP_S = 60.0
REJECT_KEY = "_rejected"  # a set-aside line's reason; ignored when the line is replayed


def record_to_json(record: UsageRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.as_dict().items():
        if key in _SKIP:
            continue
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        out[key] = value
    return out


_KNOWN = frozenset(UsageRecord.__dataclass_fields__)


def record_from_json(data: dict[str, Any]) -> UsageRecord:
    if not isinstance(data, dict):
        raise TypeError("a spool line must be a JSON object")
    data = {k: v for k, v in data.items() if k in _KNOWN}
    created = dt.datetime.fromisoformat(data["created_at"])
    data["created_at"] = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
    for key in ("cost_usd", "billed_cost_usd", "discount"):
        if data.get(key) is not None:
            data[key] = Decimal(data[key])
    if not isinstance(data.get("operation_id"), str) or not isinstance(data.get("record_id", ""), str):
        raise TypeError("operation_id and record_id must be strings")
    return UsageRecord(**data)


def _lines(records: Iterable[UsageRecord]) -> str:
    return "".join(json.dumps(record_to_json(r), separators=(",", ":")) + "\n" for r in records)


def write_durably(path: Path, data: bytes) -> None:
    """Write to a `.tmp` beside `path`, fsync, rename: a reader sees the whole file or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


@contextmanager
def claimed(path: Path) -> Iterator[int | None]:
    """An fd of `path` under an exclusive, non-blocking lock, or None when another process holds it or it
    is gone. The lock dies with the process (even SIGKILL), so a crashed claim is never stuck."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        yield None
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield None
                return
            try:  # still the file at that name (not one unlinked by a replay that finished just now)?
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    yield None
                    return
            except OSError:
                yield None
                return
        yield fd
    finally:
        os.close(fd)


def read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_lines(data: bytes) -> tuple[list[UsageRecord], list[bytes]]:
    """Intact records, and the damaged lines (torn, garbled, invalid UTF-8) as they were."""
    records: list[UsageRecord] = []
    bad: list[bytes] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            records.append(record_from_json(json.loads(line.decode("utf-8"))))
        except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
            bad.append(line)
    return records, bad


class Spool:
    def __init__(self, directory: Path, ledger: str | None = None) -> None:
        self.directory = Path(directory)
        self.ledger = ledger  # the ledger_key this folder belongs to, written as its LEDGER marker
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._marked = ledger is None

    def prepare(self) -> None:
        """Create the folder and claim it for its ledger (the LEDGER marker), once."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._marked:
            from ..settings import LEDGER_MARKER

            marker = self.directory / LEDGER_MARKER
            try:
                with open(marker, "x", encoding="utf-8") as fh:
                    fh.write(f"{self.ledger}\n")
            except FileExistsError:
                pass
            except OSError:
                return
            self._marked = True

    @property
    def rejected_dir(self) -> Path:
        return self.directory / "rejected"

    @property
    def quarantine_dir(self) -> Path:
        return self.directory / "quarantine"

    def _name(self, suffix: str = "") -> str:
        with self._lock:
            return f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident() % 10**6:06d}-" \
                   f"{next(self._seq):06d}{suffix}.jsonl"

    def append(self, records: Iterable[UsageRecord]) -> Path:
        data = _lines(records).encode("utf-8")
        self.prepare()
        final = self.directory / self._name()
        write_durably(final, data)
        return final

    def reject(self, records: Iterable[UsageRecord], name: str, reasons: Iterable[str] | str) -> Path:
        """Rows the database refused: kept with their reasons for a person, out of the replay queue."""
        records = list(records)
        why = [reasons] * len(records) if isinstance(reasons, str) else list(reasons)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        lines = "".join(json.dumps({**record_to_json(r), REJECT_KEY: {"reason": w, "at": at}},
                                   separators=(",", ":")) + "\n" for r, w in zip(records, why, strict=True))
        folder = self.rejected_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name if name.endswith(".jsonl") else name + ".jsonl")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def quarantine(self, bad: list[bytes], name: str) -> Path:
        folder = self.quarantine_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        with open(path, "ab") as fh:
            fh.write(b"\n".join(bad) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def files(self) -> list[Path]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [self.directory / n for n in sorted(names) if n.endswith(".jsonl")]

    def read(self, path: Path) -> list[UsageRecord]:
        """Intact records of a file; damaged lines go to quarantine/ with one log line naming the file."""
        records, bad = parse_lines(path.read_bytes())
        if bad:
            self._quarantine_logged(bad, path.name)
        return records

    def _quarantine_logged(self, bad: list[bytes], name: str) -> None:
        kept = self.quarantine(bad, name)
        log.error("foundry-telemetry: %d damaged line(s) in spool file %s moved to %s; the intact lines replay",
                  len(bad), name, kept)

    def replay(self, insert: Any) -> Iterator[tuple[Path, int]]:
        """Claim each pending file in turn, hand its intact records to `insert`, then remove it.
        Yields (file, records) after each; an exception from `insert` leaves the file for later."""
        for path in self.files():
            with claimed(path) as fd:
                if fd is None:
                    continue  # another process has it, or it is gone already
                records, bad = parse_lines(read_fd(fd))
                if bad:
                    self._quarantine_logged(bad, path.name)
                    # the file now holds only what still has to replay, so a crash cannot quarantine twice
                    write_durably(path.with_name(path.name + ".intact"), _lines(records).encode())
                    os.replace(path.with_name(path.name + ".intact"), path)
                    continue  # the rewritten file is replayed on the next pass
                insert(records, path.name)
                path.unlink()
                yield path, len(records)

    def clean_stale_tmp(self, older_than_s: float = STALE_TMP_S) -> int:
        """`.tmp` files left by a crash mid-write; a fresh one may be another process writing now."""
        removed = 0
        now = time.time()
        for folder in (self.directory, self.rejected_dir):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.name.endswith(".tmp") or entry.name.endswith(".intact"):
                    try:
                        if now - entry.stat().st_mtime > older_than_s:
                            os.unlink(entry.path)
                            removed += 1
                    except OSError:
                        pass
        return removed

    def pending(self) -> int:
        return len(self.files())
